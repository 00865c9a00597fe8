"""Fixtures for the fit tests: the tiny Mixtral, built once per cache and quantized by llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_moe import TinyMoeFiles

@pytest.fixture(scope="session")
def tiny_moe(request: pytest.FixtureRequest) -> TinyMoeFiles:
    # pytest's cache folder (.pytest_cache/, git-ignored): built at test time, reused across runs.
    return TinyMoeFiles(Path(request.config.cache.mkdir("tiny-moe")))
