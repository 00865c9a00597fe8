"""The benchmark's own pure parts: the ISA flags of the llama-server it compares against, and the
arithmetic of the step profile table."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from step_profile import PHASES, breakdown  # noqa: E402

from edge.plan.isa_flags import cmake_flags, cpu_flags  # noqa: E402

ZEN = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2\nprocessor\t: 1\nflags\t\t: fpu\n"
SAPPHIRE_RAPIDS = "flags : avx avx2 fma f16c bmi2 avx512f avx512_vnni avx512_bf16 avx512vbmi amx_tile amx_int8\n"


def test_each_extension_the_cpu_has_is_on_and_native_and_amx_are_off():
    zen = cmake_flags(cpu_flags(ZEN))
    assert zen[0] == "-DGGML_NATIVE=OFF"
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_SSE42=ON"} <= set(zen)
    assert {"-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF", "-DGGML_AMX_INT8=OFF"} <= set(zen)
    xeon = set(cmake_flags(cpu_flags(SAPPHIRE_RAPIDS)))
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AVX512_VBMI=ON"} <= xeon
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= xeon  # never, even with AMX
    assert cpu_flags("no flags here") == set()


def test_breakdown_is_per_step_and_per_sequence():
    before = {**{phase: 1.0 for phase in PHASES}, "wait": 0.5, "steps": 10, "sequences": 20}
    after = {**before, "decode": 1.8, "sample": 1.004, "text": 1.002, "publish": 1.001, "other": 1.001,
             "schedule": 1.002, "wait": 0.501, "steps": 20, "sequences": 100}
    shaped = breakdown(before, after)
    assert shaped["steps"] == 10 and shaped["sequences_per_step"] == 8
    assert abs(shaped["decode_ms"] - 80) < 1e-9 and abs(shaped["sample_ms"] - 0.4) < 1e-9
    assert abs(shaped["wait_ms"] - 0.1) < 1e-9
    assert abs(shaped["per_sequence_us"] - 1e6 * 0.008 / 80) < 1e-6  # sample + text + publish + other
    assert abs(shaped["python_share"] - 0.01 / 0.81) < 1e-9
    assert breakdown(before, before) is None
