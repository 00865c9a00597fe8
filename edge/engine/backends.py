"""ggml backend devices and buffer types, through ctypes.

llama-cpp-python binds llama.h but not ggml-backend.h, and declares
`llama_model_params.tensor_buft_overrides` as a bare pointer. Filling it needs buffer types
(`ggml_backend_buffer_type_t`) that only ggml's own functions return, so the few functions needed
are declared here against the ggml library that llama-cpp-python ships (and has already loaded).
Declarations follow ggml/include/ggml-backend.h.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from functools import cache

import llama_cpp

# enum ggml_backend_dev_type (ggml-backend.h)
DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL"}


class OverrideError(ValueError):
    """An --override-tensor value names a bad pattern or an unknown device."""


class _BuftOverride(ctypes.Structure):
    # struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; }
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class _GgufInitParams(ctypes.Structure):
    # struct gguf_init_params { bool no_alloc; struct ggml_context ** ctx; }
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


GGUF_TYPE_UINT32, GGUF_TYPE_STRING = 4, 8  # enum gguf_type


def gguf_header(path: str, keys: tuple[str, ...]) -> tuple[dict[str, int | str], list[tuple[str, str]]]:
    """The u32/string values of `keys` that the GGUF file has, and (name, ggml type name) of each tensor.

    Reads the header only (no tensor data); ValueError when llama.cpp cannot parse it."""
    lib = ggml_library()
    ctx = lib.gguf_init_from_file(path.encode(), _GgufInitParams(True, None))
    if not ctx:
        raise ValueError(f"{path} is not a readable GGUF file")
    try:
        values: dict[str, int | str] = {}
        for key in keys:
            key_id = lib.gguf_find_key(ctx, key.encode())
            kind = lib.gguf_get_kv_type(ctx, key_id) if key_id >= 0 else -1
            if kind == GGUF_TYPE_UINT32:
                values[key] = lib.gguf_get_val_u32(ctx, key_id)
            elif kind == GGUF_TYPE_STRING:
                values[key] = lib.gguf_get_val_str(ctx, key_id).decode(errors="replace")
        tensors = [(lib.gguf_get_tensor_name(ctx, i).decode(), lib.ggml_type_name(lib.gguf_get_tensor_type(ctx, i)).decode())
                   for i in range(lib.gguf_get_n_tensors(ctx))]
        return values, tensors
    finally:
        lib.gguf_free(ctx)


@cache
def ggml_library() -> ctypes.CDLL:
    """The ggml library llama-cpp-python loaded; its handle also resolves ggml-base's symbols."""
    from llama_cpp._ggml import libggml  # the same copy llama.cpp itself uses: one device registry

    lib = libggml
    declarations = {
        "ggml_backend_dev_count": ([], ctypes.c_size_t),
        "ggml_backend_dev_get": ([ctypes.c_size_t], ctypes.c_void_p),
        "ggml_backend_dev_name": ([ctypes.c_void_p], ctypes.c_char_p),
        "ggml_backend_dev_description": ([ctypes.c_void_p], ctypes.c_char_p),
        "ggml_backend_dev_type": ([ctypes.c_void_p], ctypes.c_int),
        "ggml_backend_dev_memory": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                     ctypes.POINTER(ctypes.c_size_t)], None),
        "ggml_backend_dev_buffer_type": ([ctypes.c_void_p], ctypes.c_void_p),
        "ggml_backend_dev_host_buffer_type": ([ctypes.c_void_p], ctypes.c_void_p),
        "ggml_backend_buft_name": ([ctypes.c_void_p], ctypes.c_char_p),
        "ggml_backend_reg_count": ([], ctypes.c_size_t),
        "ggml_backend_reg_get": ([ctypes.c_size_t], ctypes.c_void_p),
        "ggml_backend_reg_name": ([ctypes.c_void_p], ctypes.c_char_p),
        # used by edge.rpc to attach remote workers' devices
        "ggml_backend_dev_by_type": ([ctypes.c_int], ctypes.c_void_p),
        "ggml_backend_reg_dev_count": ([ctypes.c_void_p], ctypes.c_size_t),
        "ggml_backend_reg_dev_get": ([ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p),
        "ggml_backend_device_register": ([ctypes.c_void_p], None),
        # used for the CPU backend's extra buffer types (AMX, CPU_REPACK, ...)
        "ggml_backend_dev_backend_reg": ([ctypes.c_void_p], ctypes.c_void_p),
        "ggml_backend_reg_get_proc_address": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p),
        # gguf.h, used by gguf_info.weight_types: llama.cpp's own header parser, milliseconds where
        # gguf-py's reader takes seconds on a large vocabulary
        "gguf_init_from_file": ([ctypes.c_char_p, _GgufInitParams], ctypes.c_void_p),
        "gguf_free": ([ctypes.c_void_p], None),
        "gguf_find_key": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int64),
        "gguf_get_kv_type": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_int),
        "gguf_get_val_u32": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_uint32),
        "gguf_get_val_str": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_char_p),
        "gguf_get_n_tensors": ([ctypes.c_void_p], ctypes.c_int64),
        "gguf_get_tensor_name": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_char_p),
        "gguf_get_tensor_type": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_int),
        "ggml_type_name": ([ctypes.c_int], ctypes.c_char_p),
    }
    for name, (argtypes, restype) in declarations.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return lib


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    type: str
    free_bytes: int
    total_bytes: int
    buffer_type: str


def device_handles() -> list[int]:
    """Every registered ggml device (ggml_backend_dev_t, valid in this process)."""
    lib = ggml_library()
    return [lib.ggml_backend_dev_get(index) for index in range(lib.ggml_backend_dev_count())]


def devices() -> list[Device]:
    """Every ggml device this build registered, with the memory it reports free."""
    lib = ggml_library()
    found = []
    for dev in device_handles():
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = lib.ggml_backend_dev_type(dev)
        buft = lib.ggml_backend_dev_buffer_type(dev)
        found.append(Device(
            lib.ggml_backend_dev_name(dev).decode(), lib.ggml_backend_dev_description(dev).decode(),
            DEVICE_TYPES.get(kind, str(kind)), free.value, total.value,
            lib.ggml_backend_buft_name(buft).decode() if buft else "",
        ))
    return found


def backends() -> list[str]:
    """Names of the registered backends (CPU, CUDA, Metal, RPC, ...)."""
    lib = ggml_library()
    return [lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)).decode() for i in range(lib.ggml_backend_reg_count())]


def _buffer_types() -> dict[str, int]:
    """Buffer types by lower-cased name: each device's own, and its pinned host type if it has one."""
    lib = ggml_library()
    table: dict[str, int] = {}
    for dev in device_handles():
        for buft in (lib.ggml_backend_dev_buffer_type(dev), lib.ggml_backend_dev_host_buffer_type(dev)):
            if buft:
                table.setdefault(lib.ggml_backend_buft_name(buft).decode().lower(), buft)
    return table


def parse_override(spec: str) -> tuple[str, str]:
    """'PATTERN=DEVICE' -> (pattern, device), checking the regex now rather than inside llama.cpp."""
    pattern, sep, device = spec.rpartition("=")
    if not sep or not pattern or not device:
        raise OverrideError(f"--override-tensor expects PATTERN=DEVICE, got {spec!r}")
    try:
        re.compile(pattern)
    except re.error as error:
        raise OverrideError(f"--override-tensor pattern {pattern!r} is not a valid regex: {error}") from error
    return pattern, device


class TensorOverrides:
    """A NULL-terminated llama_model_tensor_buft_override array; keep it alive as long as the model."""

    def __init__(self, rules: list[tuple[str, str]]) -> None:
        table = _buffer_types()
        self._patterns = [pattern.encode() for pattern, _ in rules]  # the array points into these
        self.array = (_BuftOverride * (len(rules) + 1))()
        for slot, ((pattern, device), encoded) in enumerate(zip(rules, self._patterns)):
            buft = table.get(device.lower())
            if buft is None:
                known = ", ".join(sorted(table))
                raise OverrideError(f"unknown device {device!r} for tensors {pattern!r} (this build has: {known})")
            self.array[slot].pattern = encoded
            self.array[slot].buft = buft
        # The last element stays {NULL, NULL}: llama.cpp stops there.

    def __len__(self) -> int:
        return len(self._patterns)

    @property
    def pointer(self) -> int:
        return ctypes.addressof(self.array)


# ggml_backend_dev_get_extra_bufts_t: returns the CPU device's NULL-terminated list of extra buffer types.
_GET_EXTRA_BUFTS = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)


def _extra_buft_list() -> int:
    """Address of the CPU backend's extra buffer type list (0 if none), which llama.cpp reads when it
    places weights: NULL-terminated, in its order of preference."""
    lib = ggml_library()
    ensure_backends()
    cpu = lib.ggml_backend_dev_by_type(0)
    if not cpu:
        return 0
    address = lib.ggml_backend_reg_get_proc_address(lib.ggml_backend_dev_backend_reg(cpu), b"ggml_backend_dev_get_extra_bufts")
    return (_GET_EXTRA_BUFTS(address)(cpu) or 0) if address else 0


@cache
def extra_buffer_types() -> tuple[tuple[str, int], ...]:
    """(name, handle) of each extra CPU buffer type this build offers (AMX, CPU_REPACK, ...).

    Read once per process, before `restrict_extra_buffer_types` can have shortened the list."""
    lib = ggml_library()
    address = _extra_buft_list()
    if not address:
        return ()
    view = ctypes.cast(address, ctypes.POINTER(ctypes.c_void_p))
    found = []
    while view[len(found)]:
        found.append(view[len(found)])
    return tuple((lib.ggml_backend_buft_name(buft).decode(), buft) for buft in found)


def restrict_extra_buffer_types(names: tuple[str, ...]) -> None:
    """Let llama.cpp place weights only in the extra CPU buffer types named (in its own order).

    llama.cpp has no parameter that leaves out one extra buffer type: with `use_extra_bufts` it tries
    every type in the list the CPU backend returns (AMX first, then CPU_REPACK), each deciding by
    itself which tensors it supports. That list is a plain array in the CPU backend's memory, so it is
    rewritten here; llama.cpp reads it afresh at every model load, and the per-tensor support checks
    stay llama.cpp's own. Call it before each load: it holds for every later load in this process.
    """
    offered = extra_buffer_types()
    if not offered:
        return
    array = (ctypes.c_void_p * (len(offered) + 1)).from_address(_extra_buft_list())
    kept = [handle for name, handle in offered if name in names]
    for index in range(len(offered) + 1):
        array[index] = kept[index] if index < len(kept) else None


# CPU weight kernels, by the extra buffer types weights may go to. "amx": llama.cpp's default (every
# extra type: AMX first, then CPU_REPACK's repacked layouts); "repack": all but AMX; "plain": none,
# weights stay as stored and run through the plain CPU kernels, which every x86 CPU can run.
CPU_KERNELS = ("amx", "repack", "plain")
AMX_BUFFER_TYPE = "AMX"


def kernel_buffer_types(kernel: str) -> tuple[str, ...]:
    """The extra buffer types a CPU kernel choice lets llama.cpp use; ValueError if this build lacks it."""
    names = tuple(name for name, _ in extra_buffer_types())
    kept = {"amx": names, "repack": tuple(n for n in names if n != AMX_BUFFER_TYPE), "plain": ()}.get(kernel)
    if kept is None:
        raise ValueError(f"CPU kernels must be one of {', '.join(CPU_KERNELS)}, not {kernel!r}")
    if kernel == "amx" and AMX_BUFFER_TYPE not in names:
        raise ValueError("--cpu-kernels amx: this llama.cpp build has no AMX kernels (built without AMX, or the "
                         "CPU lacks it)")
    if kernel == "repack" and not kept:
        raise ValueError("--cpu-kernels repack: this llama.cpp build has no repacking CPU buffer type")
    return kept


def offered_kernels() -> list[str]:
    """The CPU kernel choices this build has, in CPU_KERNELS order."""
    offered = []
    for kernel in CPU_KERNELS:
        try:
            kernel_buffer_types(kernel)
        except ValueError:
            continue
        offered.append(kernel)
    return offered


def ensure_backends() -> None:
    """Initialise llama.cpp's backends so the device registry is populated."""
    llama_cpp.llama_backend_init()
