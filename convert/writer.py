"""GGUF output: tensor data streamed from the shards, written to *.part files, then renamed.

The gguf package's GGUFWriter writes header, metadata and tensor infos and splits into
NAME-0000i-of-0000N.gguf; we hand it lazy tensors whose tofile() streams from the source maps,
so no tensor (and no merged expert stack) is ever held whole in memory unless it must be
transformed, and then only one expert or one projection at a time.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import MODEL_TENSOR as T

from .arch import OutTensor, permute_rows
from .safetensors import DTYPES, ShardReader, TensorRef, to_float32

DIRECT_TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0}
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}
SOURCE_TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}
# Elements converted per step when a dtype change is needed: bounds the working set (~64 MB f32).
CHUNK_ELEMENTS = 16 * 1024 * 1024


def tensor_type(t: OutTensor, requested: Q) -> Q:
    """Per-tensor type, following llama.cpp's rules: norms, 1-D tensors and the MoE router stay
    F32 (its kernels expect that); Q8_0 needs rows in whole 32-element blocks, else F16."""
    if len(t.shape) <= 1 or t.name.endswith("_norm.weight") or t.kind == T.FFN_GATE_INP:
        return Q.F32
    if requested == Q.Q8_0 and t.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return Q.F16
    return requested


def type_nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    return n // block * size


class LazyTensor:
    """What GGUFWriter needs of a tensor (nbytes, tofile), computed at write time."""

    def __init__(self, t: OutTensor, qtype: Q, reader: ShardReader) -> None:
        self.t, self.qtype, self.reader = t, qtype, reader
        self.nbytes = type_nbytes(t.shape, qtype)

    def tofile(self, fout) -> None:  # noqa: ANN001 - a binary file object from GGUFWriter
        for ref in self.t.sources:
            if SOURCE_TYPES[ref.dtype] == self.qtype and not self.t.permute_heads:
                _copy_raw(fout, ref, self.reader)
            else:
                _write_converted(fout, ref, self.reader, self.qtype, self.t.permute_heads)
            self.reader.release(ref)


def _copy_raw(fout, ref: TensorRef, reader: ShardReader) -> None:  # noqa: ANN001
    """Same type in and out: let the kernel copy file to file (no user-space buffers)."""
    fout.flush()
    pos = fout.tell()
    src, dst, done = reader.fd(ref), fout.fileno(), 0
    try:
        while done < ref.nbytes:
            n = os.copy_file_range(src, dst, ref.nbytes - done, ref.offset + done, pos + done)
            if n == 0:
                raise OSError("copy_file_range made no progress")
            done += n
        fout.seek(pos + done)
    except OSError:
        # Filesystems without copy_file_range: write from the map instead.
        fout.seek(pos + done)
        fout.write(memoryview(reader.array(ref)).cast("B")[done:])


def _write_converted(fout, ref: TensorRef, reader: ShardReader, qtype: Q, heads: int) -> None:  # noqa: ANN001
    raw = reader.array(ref)
    if heads:
        raw = permute_rows(raw, heads)  # materialises this one matrix (one q or k projection)
    rows = raw.reshape(-1, raw.shape[-1]) if raw.ndim > 1 else raw.reshape(1, -1)
    step = max(1, CHUNK_ELEMENTS // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        fout.write(_encode(rows[start:start + step], ref.dtype, qtype).tobytes())


def _encode(raw: np.ndarray, src_dtype: str, qtype: Q) -> np.ndarray:
    if qtype == Q.BF16 and src_dtype == "BF16":
        return np.ascontiguousarray(raw)  # only permuted: the bits are unchanged
    data = to_float32(raw, src_dtype)
    if qtype == Q.F32:
        return data
    if qtype == Q.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)  # BF16 (round to nearest even) or Q8_0


class PartWriter(gguf.GGUFWriter):
    """GGUFWriter whose files are NAME.gguf.part (or NAME-0000i-of-0000N.gguf.part)."""

    def format_shard_names(self, path: Path) -> list[Path]:
        return [Path(f"{p}.part") for p in super().format_shard_names(path)]

    def final_paths(self) -> list[Path]:
        assert self.path is not None
        return super().format_shard_names(self.path)


def output_paths(path: Path, n_splits: int) -> list[Path]:
    """The files a finished output consists of (what `complete` checks)."""
    if n_splits <= 1:
        return [path]
    return [path.with_name(gguf.SHARD_NAME_FORMAT.format(path.stem, i + 1, n_splits)) for i in range(n_splits)]


def commit(parts: list[Path], finals: list[Path]) -> None:
    """fsync then rename, first split last: llama.cpp opens -00001-, so it appears only when
    every other split is already in place."""
    for part in parts:
        with open(part, "rb") as f:
            os.fsync(f.fileno())
    for part, final in reversed(list(zip(parts, finals))):
        os.replace(part, final)


def source_nbytes(tensors: list[OutTensor]) -> int:
    return sum(ref.nbytes for t in tensors for ref in t.sources)


def supported_source(dtype: str) -> bool:
    return dtype in DTYPES
