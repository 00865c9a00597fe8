"""`edge info`: what this build of llama.cpp can do, and the memory this machine has."""

from __future__ import annotations

import json
import os

import llama_cpp

from edge.engine import backends
from edge.plan.llama_build import installed_verdict

GB = 1e9


def machine_ram() -> int:
    """Physical memory in bytes (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def available_ram() -> int:
    """Memory available without swapping (Linux's MemAvailable), else 0."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def collect() -> dict[str, object]:
    backends.ensure_backends()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "rpc": bool(llama_cpp.llama_supports_rpc()),
        "mmap": bool(llama_cpp.llama_supports_mmap()),
        "mlock": bool(llama_cpp.llama_supports_mlock()),
        "max_devices": int(llama_cpp.llama_max_devices()),
        "backends": backends.backends(),
        "devices": [vars(device) for device in backends.devices()],
        "ram_total": machine_ram(),
        "ram_available": available_ram(),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "llama_build": _build_record(),
    }


def _build_record() -> dict[str, object]:
    """The build `make install` chose for this environment, and why."""
    verdict = installed_verdict()
    if verdict is None:
        return {"build": None, "line": "llama.cpp build: not recorded (installed without `make install`)"}
    return {**verdict.to_dict(), "line": verdict.line()}


def format_info(info: dict[str, object]) -> str:
    yes = {True: "yes", False: "no"}
    lines = [
        f"llama-cpp-python {info['llama_cpp_python']}",
        f"GPU offload: {yes[info['gpu_offload']]}   RPC: {yes[info['rpc']]}   "
        f"mmap: {yes[info['mmap']]}   mlock: {yes[info['mlock']]}",
        f"backends: {', '.join(info['backends']) or 'none'}",
        "devices:",
    ]
    for device in info["devices"]:
        lines.append(f"  {device['name']:<10} {device['type']:<5} {device['description']}: "
                     f"{device['free_bytes'] / GB:.1f} GB free of {device['total_bytes'] / GB:.1f} GB "
                     f"(buffer type {device['buffer_type']})")
    lines.append(f"RAM: {info['ram_total'] / GB:.1f} GB, {info['ram_available'] / GB:.1f} GB available")
    lines.append(f"CPU features: {info['system_info']}")
    lines.append(info["llama_build"]["line"])
    if "cpu_kernels" in info:
        lines.append(info["cpu_kernels"]["line"])
    return "\n".join(lines)


def as_json(info: dict[str, object]) -> str:
    return json.dumps(info, indent=2)
