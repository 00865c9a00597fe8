"""llama.cpp's libraries must be loaded before gguf's tokenizer libraries (see edge/__init__.py)."""

from __future__ import annotations

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
