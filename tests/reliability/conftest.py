"""Markers of the reliability suite. Its tests run in the default `make test`; select them alone
with `-m reliability` (or `-m stress` for the chaos run under CPU stress), or skip them with
`-m "not reliability"`."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: chaos, fuzzing and shutdown tests against a real server")
    config.addinivalue_line("markers", "stress: the chaos run with every core kept busy by other processes")
