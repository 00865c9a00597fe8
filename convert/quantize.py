"""llama.cpp quantization of a bf16 GGUF, through llama-cpp-python's C binding.

llama_model_quantize writes its output itself; we give it a *.part name (or a *.part prefix
for split outputs) and rename when it returns 0. It prints its own per-tensor progress; we wrap
it in a per-output bar so a multi-quant run shows overall progress and ETA.
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ConvertError


def ftype_for(name: str) -> int:
    """llama_ftype for a quant name such as Q4_K_M or IQ4_XS (case-insensitive)."""
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None)
    if name.upper() == "F32":
        value = llama_cpp.LLAMA_FTYPE_ALL_F32
    if value is None:
        raise ConvertError(f"unknown quant type {name!r} (examples: Q4_K_M, Q5_K_M, Q8_0, IQ4_XS, BF16)")
    return int(value)


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Per-tensor importance vectors from a GGUF imatrix (llama-imatrix's default format):
    `NAME.in_sum2` holds summed squares per row of experts, `NAME.counts` how many tokens
    contributed; the importance is their ratio (1 where nothing was counted), as llama-quantize does."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ConvertError(f"cannot read imatrix {path} (GGUF format expected): {e}") from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    out: dict[str, np.ndarray] = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2") or name[:-8] + ".counts" not in tensors:
            continue
        counts = tensors[name[:-8] + ".counts"].reshape(-1)
        rows = sums.reshape(len(counts), -1)
        safe = np.where(counts > 0, counts, 1.0)[:, None]
        out[name[:-8]] = np.where(counts[:, None] > 0, rows / safe, 1.0).astype(np.float32).reshape(-1)
    if not out:
        raise ConvertError(f"no importance data (*.in_sum2 / *.counts tensors) in {path}")
    return out


def _imatrix_array(data: dict[str, np.ndarray]):  # noqa: ANN202 - (ctypes array, keep-alive list)
    import llama_cpp

    entries = (llama_cpp.llama_model_imatrix_data * (len(data) + 1))()  # NULL-terminated
    keep = []
    for i, (name, values) in enumerate(data.items()):
        values = np.ascontiguousarray(values)
        keep += [name.encode(), values]
        entries[i].name = keep[-2]
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    return entries, keep


@contextmanager
def progress(files: list[Path], expected: int, label: str) -> Iterator[None]:
    """A tqdm bar (with ETA) fed by the growing output files: llama_model_quantize has no
    progress callback, but it writes tensors in order, so bytes written track work done."""
    from tqdm import tqdm

    stop = threading.Event()
    bar = tqdm(desc=label, total=expected, unit="B", unit_scale=True)

    def poll() -> None:
        while not stop.wait(0.5):
            done = sum(f.stat().st_size for f in files if f.is_file())
            bar.update(max(0, min(done, expected) - bar.n))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.update(expected - bar.n)
        bar.close()


def quantize(src: Path, dst: Path, qname: str, threads: int, imatrix: Path | None, keep_split: bool) -> None:
    """Quantize src (first split if split) into dst (a .part path, or a .part prefix when split)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_for(qname)
    params.nthread = threads
    params.keep_split = keep_split
    keep = None
    if imatrix is not None:
        entries, keep = _imatrix_array(load_imatrix(imatrix))
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise ConvertError(f"llama.cpp quantization to {qname} failed (code {rc}); see its log above")
    del keep
