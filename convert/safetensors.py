"""Lazy safetensors reading: parse the header ourselves, map the data, never load a whole file.

Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets: [begin, end]}} (offsets relative to the end of the header), then raw data.
bf16 has no numpy dtype, so it is read as raw uint16 and widened by bit shifting when needed.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from .errors import ConvertError

# safetensors dtype -> (numpy dtype used to hold the raw bits, bytes per element)
DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}
# A real header is a few MB at most (WizardLM-2 shards: ~40 KB); anything bigger is corruption.
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live; nothing is read until a reader asks."""

    name: str
    path: Path
    dtype: str  # safetensors dtype name: BF16, F16 or F32
    shape: tuple[int, ...]
    offset: int  # absolute offset of the first byte in the file
    nbytes: int

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate a safetensors header; raise ConvertError on anything inconsistent."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise ConvertError(f"corrupt safetensors file {path}: shorter than its 8-byte header length")
        (hlen,) = struct.unpack("<Q", raw_len)
        if hlen > MAX_HEADER or 8 + hlen > size:
            raise ConvertError(f"corrupt safetensors header in {path}: header length {hlen} does not fit a {size}-byte file")
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConvertError(f"corrupt safetensors header in {path}: {e.__class__.__name__}") from None
    if not isinstance(header, dict):
        raise ConvertError(f"corrupt safetensors header in {path}: not a JSON object")
    header.pop("__metadata__", None)
    return {name: _tensor_ref(path, name, entry, 8 + hlen, size) for name, entry in header.items()}


def _tensor_ref(path: Path, name: str, entry: object, base: int, size: int) -> TensorRef:
    try:
        dtype, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])  # type: ignore[index]
        begin, end = (int(x) for x in entry["data_offsets"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise ConvertError(f"corrupt safetensors header in {path}: bad entry for {name}") from None
    if dtype not in DTYPES:
        raise ConvertError(f"unsupported dtype {dtype} for tensor {name} in {path} (supported: BF16, F16, F32)")
    nbytes = prod(shape) * DTYPES[dtype].itemsize
    if end - begin != nbytes or begin < 0 or base + end > size:
        raise ConvertError(f"corrupt safetensors file {path}: tensor {name} lies outside the file or has a wrong size")
    return TensorRef(name, path, dtype, shape, base + begin, nbytes)


class ShardReader:
    """Read-only maps of the shard files, opened once, released page by page after use.

    Pages of a file mapping that were touched count toward RSS until unmapped or dropped, so
    after each tensor we madvise(DONTNEED) its range: peak RSS stays at one tensor, not a shard.
    """

    def __init__(self) -> None:
        self._maps: dict[Path, tuple[int, mmap.mmap]] = {}

    def _map(self, path: Path) -> tuple[int, mmap.mmap]:
        if path not in self._maps:
            fd = os.open(path, os.O_RDONLY)
            self._maps[path] = (fd, mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
        return self._maps[path]

    def fd(self, ref: TensorRef) -> int:
        return self._map(ref.path)[0]

    def array(self, ref: TensorRef) -> np.ndarray:
        """A zero-copy view of the tensor's raw data (bf16 as uint16)."""
        mm = self._map(ref.path)[1]
        count = ref.nbytes // ref.np_dtype.itemsize
        return np.frombuffer(mm, dtype=ref.np_dtype, count=count, offset=ref.offset).reshape(ref.shape)

    def release(self, ref: TensorRef) -> None:
        """Drop the tensor's pages from this process (the page cache keeps them)."""
        mm = self._map(ref.path)[1]
        start = ref.offset - ref.offset % mmap.PAGESIZE
        length = ref.offset + ref.nbytes - start
        if length > 0:
            mm.madvise(mmap.MADV_DONTNEED, start, length)

    def close(self) -> None:
        for fd, mm in self._maps.values():
            try:
                mm.close()
            except BufferError:
                # a numpy view still references the map; the OS unmaps it at exit
                pass
            os.close(fd)
        self._maps.clear()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen raw source data to float32 exactly (bf16 is the top half of an f32)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)
