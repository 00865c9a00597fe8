"""llama.cpp's RPC backend through ctypes: run a worker, or register remote workers' devices.

llama-cpp-python binds none of this (its `rpc_servers` argument is silently ignored), but the
library it builds contains the RPC backend when compiled with -DGGML_RPC=on, as `make` does.

Beware: llama.cpp aborts the whole process when a worker cannot be reached or goes away, so
`register_workers` and everything that then uses the devices must run in a process we can lose
(see edge/engine/supervised.py).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.queues
import os
import queue
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import llama_cpp

from edge.engine.backends import DEVICE_TYPES, device_handles, ggml_library

_CPU_DEVICE_TYPE = 0  # GGML_BACKEND_DEVICE_TYPE_CPU
_ACCELERATOR_TYPES = {code for code, name in DEVICE_TYPES.items() if name in ("GPU", "IGPU")}


class RpcUnavailable(RuntimeError):
    """This build of llama.cpp has no RPC backend."""


@dataclass(frozen=True)
class RemoteDevice:
    endpoint: str
    name: str
    free_bytes: int
    total_bytes: int
    handle: int  # ggml_backend_dev_t, valid in this process only


@cache
def _libraries() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """ggml's core (declared in edge.engine.backends) and the RPC library beside it."""
    if not llama_cpp.llama_supports_rpc():
        raise RpcUnavailable("this llama-cpp-python build has no RPC backend; reinstall with `make install`")
    rpc = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-rpc.so"))
    size_t = ctypes.c_size_t
    declarations = {
        "ggml_backend_rpc_add_server": ([ctypes.c_char_p], ctypes.c_void_p),
        "ggml_backend_rpc_get_device_memory":
            ([ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(size_t), ctypes.POINTER(size_t)], None),
        "ggml_backend_rpc_start_server":
            ([ctypes.c_char_p, ctypes.c_char_p, size_t, size_t, ctypes.POINTER(ctypes.c_void_p)], None),
    }
    for name, (argtypes, restype) in declarations.items():
        function = getattr(rpc, name)
        function.argtypes, function.restype = argtypes, restype
    return ggml_library(), rpc


def serve_worker(host: str, port: int, threads: int, cache_dir: Path | None) -> None:
    """Expose this machine's CPU to RPC clients on host:port. Blocks for good."""
    ggml, rpc = _libraries()
    cpu = ggml.ggml_backend_dev_by_type(_CPU_DEVICE_TYPE)
    devices = (ctypes.c_void_p * 1)(cpu)
    cache = str(cache_dir).encode() if cache_dir else None
    rpc.ggml_backend_rpc_start_server(f"{host}:{port}".encode(), cache, threads, 1, devices)


def register_workers(endpoints: list[str]) -> list[RemoteDevice]:
    """Make every device of every worker available to llama.cpp's model loader.

    Aborts the process if a worker is unreachable: call it only in a supervised child.
    """
    ggml, rpc = _libraries()
    devices = []
    for endpoint in endpoints:
        registry = rpc.ggml_backend_rpc_add_server(endpoint.encode())
        for index in range(ggml.ggml_backend_reg_dev_count(registry)):
            device = ggml.ggml_backend_reg_dev_get(registry, index)
            ggml.ggml_backend_device_register(device)
            free, total = ctypes.c_size_t(), ctypes.c_size_t()
            ggml.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
            name = ggml.ggml_backend_dev_name(device).decode()
            devices.append(RemoteDevice(endpoint, name, free.value, total.value, device))
    return devices


def local_accelerators() -> list[int]:
    """This machine's GPU devices (none on a CPU build), to use beside the remote ones."""
    ggml, _ = _libraries()
    return [h for h in device_handles() if ggml.ggml_backend_dev_type(h) in _ACCELERATOR_TYPES
            and not ggml.ggml_backend_dev_name(h).startswith(b"RPC")]


def _report_memory(endpoints: list[str], results: multiprocessing.queues.Queue) -> None:
    os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort here is an answer, not a crash to debug
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the caller reports it in one line of its own
    _, rpc = _libraries()
    for endpoint in endpoints:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        rpc.ggml_backend_rpc_get_device_memory(endpoint.encode(), 0, ctypes.byref(free), ctypes.byref(total))
        results.put((endpoint, free.value, total.value))


def probe_workers(endpoints: list[str], timeout: float = 30.0) -> list[tuple[str, int, int]]:
    """(endpoint, free bytes, total bytes) of each worker's first device.

    Asked from a throwaway process, because llama.cpp aborts when a worker cannot be reached.
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_report_memory, args=(endpoints, results), daemon=True)
    child.start()
    answers = []
    try:
        for endpoint in endpoints:
            answers.append(results.get(timeout=timeout))
    except queue.Empty:
        raise RpcUnavailable(f"cannot reach the RPC worker at {endpoint}") from None
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
    return answers


def parse_endpoints(text: str) -> list[str]:
    """'host:port,host:port' -> a list; raises ValueError on anything else."""
    endpoints = [part.strip() for part in text.split(",") if part.strip()]
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--rpc: {endpoint!r} is not host:port")
    if not endpoints:
        raise ValueError("--rpc: give at least one host:port")
    return endpoints
