"""The CMake flags that build llama.cpp for this CPU's instruction sets explicitly, instead of
`-march=native`: GGML_NATIVE off, each extension this CPU reports in /proc/cpuinfo on, AMX off
(its kernels are used only where edge's probe proved them; see edge/plan/cpu_kernels).

    python3 edge/plan/isa_flags.py    # prints the flags, for cmake

`make install` builds llama.cpp with them beside pip's native build and keeps the faster
(edge/plan/llama_build.py); `make bench-tools` builds llama-server both ways. Standard library
only: it runs before the environment exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

# /proc/cpuinfo flag -> ggml's CMake option, in the order ggml's own CMakeLists lists them.
GGML_OPTIONS = (("sse4_2", "GGML_SSE42"), ("avx", "GGML_AVX"), ("avx_vnni", "GGML_AVX_VNNI"), ("avx2", "GGML_AVX2"),
                ("bmi2", "GGML_BMI2"), ("f16c", "GGML_F16C"), ("fma", "GGML_FMA"), ("avx512f", "GGML_AVX512"),
                ("avx512vbmi", "GGML_AVX512_VBMI"), ("avx512_vnni", "GGML_AVX512_VNNI"),
                ("avx512_bf16", "GGML_AVX512_BF16"))


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return set(value.split())
    return set()


def cmake_flags(flags: set[str]) -> list[str]:
    """-D options for ggml: native off, every listed extension on or off as this CPU has it, no AMX."""
    options = ["-DGGML_NATIVE=OFF"]
    options += [f"-D{option}={'ON' if flag in flags else 'OFF'}" for flag, option in GGML_OPTIONS]
    return options + ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


def main() -> int:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        print("isa_flags: /proc/cpuinfo cannot be read (not Linux?)", file=sys.stderr)
        return 1
    print(" ".join(cmake_flags(cpu_flags(cpuinfo))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
