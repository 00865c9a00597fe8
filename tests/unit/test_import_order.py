"""llama.cpp's libraries must be loaded before gguf's tokenizer libraries (see edge/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ORDER = ("import sys, {module}\n"
         "loaded = list(sys.modules)  # in import order\n"
         "print(loaded.index('llama_cpp') < min(loaded.index(m) for m in ('gguf', 'sentencepiece') if m in loaded))")


@pytest.mark.parametrize("module", ["edge.cli", "edge.plan.report", "convert.cli", "convert.pipeline"])
def test_llama_cpp_is_loaded_before_gguf(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", ORDER.format(module=module)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


SPIN = ("import os\n"
        "maps = lambda: open('/proc/self/maps').read()\n"
        "before = 'libgomp' in maps()\n"
        "import edge.cli\n"
        "print(before, 'libgomp' in maps(), os.environ['GOMP_SPINCOUNT'])")


@pytest.mark.parametrize(("given", "expected"), [(None, "10000"), ("777", "777")])
def test_openmp_spin_count_is_set_before_libgomp_loads(given: str | None, expected: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    result = subprocess.run([sys.executable, "-c", SPIN], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    before, after, spin_count = result.stdout.split()
    assert before == "False"  # libgomp reads the variable when it loads: it must load after edge sets it
    assert spin_count == expected
    if after != "True":
        pytest.skip("this llama.cpp build does not use OpenMP (no libgomp loaded)")
