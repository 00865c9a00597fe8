"""A GGUF copied with some metadata changed and some tensors left out, tensor bytes unchanged.

One use: a layer-truncated copy of a model (its first blocks, its output head) is a draft model
that shares the model's vocabulary (`edge serve --draft-model`; bench/spec_bench.py builds one).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import llama_cpp  # noqa: F401  (loaded before gguf: see edge/__init__.py)
import gguf

from .errors import ConvertError

_BLOCK = re.compile(r"blk\.(\d+)\.")


def copy_gguf(source: Path, target: Path, changes: dict[str, object] | None = None,
              keep_tensor: Callable[[str], bool] = lambda name: True) -> Path:
    """Write `target`: `source`'s metadata with `changes` (key -> value of the key's own type) and
    the tensors whose names `keep_tensor` accepts."""
    reader = gguf.GGUFReader(source)
    changes = dict(changes or {})
    unknown = set(changes) - set(reader.fields)
    if unknown:
        raise ConvertError(f"{source.name} has no metadata key {', '.join(sorted(unknown))}")
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(target, architecture, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer writes these itself
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, changes.get(field.name, field.contents()), value_type, sub_type=sub_type)
    tensors = [tensor for tensor in reader.tensors if keep_tensor(tensor.name)]
    for tensor in tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return target


def first_blocks(source: Path, target: Path, blocks: int) -> Path:
    """A copy of `source` with only its first `blocks` transformer blocks (embeddings, final norm
    and output head kept): the same vocabulary at a fraction of the compute."""
    reader = gguf.GGUFReader(source)
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=architecture)
    total = reader.fields[key].contents()
    if not 1 <= blocks <= total:
        raise ConvertError(f"{source.name} has {total} blocks; cannot keep {blocks}")
    del reader

    def kept(name: str) -> bool:
        match = _BLOCK.match(name)
        return match is None or int(match.group(1)) < blocks

    return copy_gguf(source, target, {key: blocks}, kept)
