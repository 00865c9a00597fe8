"""One conversion run: checkpoint -> direct GGUF outputs -> llama.cpp quants, resumable.

Every output is written as *.part and renamed when complete, so "the final name exists" means
"complete": a re-run skips those and redoes the rest. A bf16 intermediate feeds the llama.cpp
quant types; it is kept if asked for (or requested as an output itself), else deleted at the end.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from . import arch, source, vocab
from .errors import ConvertError
from .quantize import ftype_for, progress, quantize
from .safetensors import ShardReader
from .writer import DIRECT_TYPES, FILE_TYPES, LazyTensor, PartWriter, commit, output_paths, tensor_type, type_nbytes

# Bits per weight of llama.cpp quant outputs, measured from the published WizardLM-2-8x22B
# GGUF sizes (140.6B parameters); used only to check disk space before starting.
BITS_PER_WEIGHT = {"Q2_K": 3.0, "Q3_K_S": 3.6, "Q3_K_M": 3.9, "Q3_K_L": 4.2, "IQ4_XS": 4.4,
                   "IQ4_NL": 4.6, "Q4_0": 4.6, "Q4_1": 5.0, "Q4_K_S": 4.7, "Q4_K_M": 4.9,
                   "Q5_0": 5.6, "Q5_1": 6.0, "Q5_K_S": 5.6, "Q5_K_M": 5.7, "Q6_K": 6.6}
UNKNOWN_BPW = 8.5  # anything not listed: assume the Q8_0 size, an upper bound for quants
METADATA_SLACK = 64 * 1024 * 1024  # vocab, merges and padding per output


@dataclass
class Options:
    model: str
    quants: list[str]
    out: Path = Path("models")
    revision: str | None = None
    split_max_size: int = 0
    keep_bf16: bool = False
    threads: int = 0
    imatrix: Path | None = None
    cards: Path = Path(__file__).resolve().parent.parent / "models"
    tokenizer_pre: str | None = None
    name: str | None = None


def run(opts: Options) -> list[Path]:
    """Convert; return the paths of all requested outputs (written now or found complete)."""
    quants = [q.strip().upper() for q in opts.quants if q.strip()]
    for q in quants:
        if q not in DIRECT_TYPES:
            ftype_for(q)  # validate names before any work
    ckpt = source.load(opts.model, opts.revision)
    _, spec = arch.spec_for(ckpt.config)
    tensors = arch.plan(ckpt.config, spec, ckpt.tensors)
    name = opts.name or ckpt.name
    opts.out.mkdir(parents=True, exist_ok=True)
    with ShardReader() as reader:
        build = lambda q: _writer(ckpt, spec, tensors, DIRECT_TYPES[q], opts, reader, name, q)  # noqa: E731
        direct = [q for q in quants if q in DIRECT_TYPES]
        llama_types = [q for q in quants if q not in DIRECT_TYPES]
        if llama_types and "BF16" not in direct:
            direct.append("BF16")  # the intermediate
        writers = {q: build(q) for q in direct}
        splits = len(writers["BF16"].tensors) if "BF16" in writers else 1
        pending_quants = [q for q in llama_types if not _complete(_path(opts, name, q), splits)]
        _check_disk(opts.out, writers, pending_quants, tensors)
        for q, w in writers.items():
            _write(w, q, opts.out)
        outputs = [w.final_paths() for q, w in writers.items() if q in quants]
        for q in llama_types:
            outputs.append(_quantize(writers["BF16"], _path(opts, name, q), q, splits, opts, _estimate(tensors, q)))
    if llama_types and "BF16" not in quants and not opts.keep_bf16:
        for p in writers["BF16"].final_paths():
            p.unlink(missing_ok=True)
    return [p for group in outputs for p in group]


def _path(opts: Options, name: str, q: str) -> Path:
    return opts.out / f"{name}-{q}.gguf"


def _complete(path: Path, splits: int) -> bool:
    return all(p.is_file() for p in output_paths(path, splits))


def _writer(ckpt: source.Checkpoint, spec: arch.ArchSpec, tensors: list[arch.OutTensor], qtype: Q,
            opts: Options, reader: ShardReader, name: str, q: str) -> PartWriter:
    """A writer with all metadata and (lazy) tensors added; nothing written yet."""
    w = PartWriter(_path(opts, name, q), gguf.MODEL_ARCH_NAMES[spec.arch], split_max_size=opts.split_max_size)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    arch.add_hparams(w, ckpt.config)
    w.add_file_type(FILE_TYPES[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    template = source.card_template(opts.cards, ckpt.hub_id, ckpt.name)
    vocab.add_vocab(w, ckpt.path, ckpt.config, template, opts.tokenizer_pre)
    for t in tensors:
        lazy = LazyTensor(t, tensor_type(t, qtype), reader)
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), lazy.nbytes, raw_dtype=lazy.qtype)
        w.tensors[-1][t.name].tensor = lazy  # type: ignore[assignment]
    w.add_size_label(gguf.size_label(*w.get_total_parameter_count()))  # e.g. "8x22B", as llama.cpp
    return w


def _write(w: PartWriter, q: str, out: Path) -> None:
    finals = w.final_paths()
    if all(p.is_file() for p in finals):
        print(f"{finals[0].name}: complete, skipped", file=sys.stderr)
        return
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()
    commit(w.format_shard_names(w.path), finals)  # type: ignore[arg-type]
    print(f"wrote {', '.join(p.name for p in finals)} ({q})", file=sys.stderr)


def _estimate(tensors: list[arch.OutTensor], q: str) -> int:
    """Expected output bytes of a llama.cpp quant (for the disk check and the progress bar)."""
    return int(sum(t.n_elements for t in tensors) * BITS_PER_WEIGHT.get(q, UNKNOWN_BPW) / 8)


def _quantize(bf16: PartWriter, dst: Path, q: str, splits: int, opts: Options, expected: int) -> list[Path]:
    finals = output_paths(dst, splits)
    if all(p.is_file() for p in finals):
        print(f"{finals[0].name}: complete, skipped", file=sys.stderr)
        return finals
    src = bf16.final_paths()[0]
    if splits > 1:
        # llama.cpp names split outputs PREFIX-0000i-of-0000N.gguf; make the prefix a .part one.
        prefix = dst.with_name(dst.stem + ".part")
        parts = [Path(gguf.SHARD_NAME_FORMAT.format(str(prefix), i + 1, splits)) for i in range(splits)]
    else:
        prefix = Path(f"{dst}.part")
        parts = [prefix]
    with progress(parts, expected, f"Quantizing {q}"):
        quantize(src, prefix, q, opts.threads, opts.imatrix, keep_split=splits > 1)
    commit(parts, finals)
    print(f"wrote {', '.join(p.name for p in finals)} ({q})", file=sys.stderr)
    return finals


def _check_disk(out: Path, writers: dict[str, PartWriter], quants: list[str], tensors: list[arch.OutTensor]) -> None:
    need = 0
    for w in writers.values():
        if not all(p.is_file() for p in w.final_paths()):
            need += sum(ti.nbytes for shard in w.tensors for ti in shard.values()) + METADATA_SLACK
    for q in quants:
        need += _estimate(tensors, q) + METADATA_SLACK
    free = shutil.disk_usage(out).free
    if need > free:
        raise ConvertError(f"not enough disk space in {out}: need {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
