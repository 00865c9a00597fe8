"""Session fixtures: the test checkpoints and their conversions (each converted once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from convert.pipeline import Options, run

from . import fixtures

TYPES = ["BF16", "F32", "Q8_0", "Q4_K_M"]
BUILDERS = {"tiny-mixtral": fixtures.tiny_mixtral, "tiny-llama": fixtures.tiny_llama, "smollm2": fixtures.smollm2}


@pytest.fixture(scope="session")
def checkpoint():
    """name -> checkpoint directory (built on first use, then cached across sessions)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = BUILDERS[name]()
        return cache[name]

    return get


@pytest.fixture(scope="session")
def converted(checkpoint, tmp_path_factory):
    """(model name, type) -> GGUF path; all TYPES of a model come from one converter run."""
    done: dict[str, dict[str, Path]] = {}

    def get(name: str, qtype: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(f"gguf-{name}")
            paths = run(Options(model=str(checkpoint(name)), quants=TYPES, out=out, threads=2))
            done[name] = dict(zip(TYPES, paths))
        return done[name][qtype]

    return get
