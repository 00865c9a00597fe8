"""Shared fixtures: real `edge serve` processes on 127.0.0.1 running the embedded SmolLM2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from support import API_KEY, EMBEDDED_GGUF, EMBEDDED_MODEL, PRICE, PRICED_MODEL, TEST_CTX, DEFAULT_MODELS_DIR, Server, load_cards


# The test servers' CPU kernel verdicts outlive a session (keyed by CPU, build and model like any):
# a session of unit tests then pays nothing for them, and only a new machine or build probes.
TEST_KERNEL_CACHE = Path(os.environ.get("EDGE_TEST_CACHE_DIR", Path.home() / ".cache" / "edge-tests"))


@pytest.fixture(scope="session", autouse=True)
def kernel_cache() -> Iterator[None]:
    """Every `edge serve` the tests start shares one CPU kernel cache, never the user's ~/.cache/edge."""
    from edge.plan.cpu_kernels import choose
    from edge.plan.gguf_info import weight_types

    previous = os.environ.get("EDGE_CACHE_DIR")
    os.environ["EDGE_CACHE_DIR"] = str(TEST_KERNEL_CACHE)
    # Probe the embedded model up front (once per machine and build), and keep the verdict even if the
    # machine is busy (test servers start while others run): every `edge serve --threads 2` of it reads it.
    choose("auto", weight_types(EMBEDDED_GGUF), 2, TEST_KERNEL_CACHE, busy=lambda: "")
    yield
    if previous is None:
        os.environ.pop("EDGE_CACHE_DIR", None)
    else:
        os.environ["EDGE_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The embedded model with defaults, except a small context."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    srv = Server(["--ctx-size", str(TEST_CTX)], {}, log)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def priced_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same GGUF under a card of our own (price 0.65) behind an API key, configured by EDGE_*."""
    models = tmp_path_factory.mktemp("models")
    embedded = load_cards(DEFAULT_MODELS_DIR)[EMBEDDED_MODEL]
    (models / "priced.toml").write_text(
        f'name = "{PRICED_MODEL}"\nhub_id = "test/priced"\npackage = "{embedded.package}"\n'
        f'gguf = "{embedded.gguf}"\ncontext_length = 512\nprice_per_mtoken = {PRICE}\n'
    )
    env = {"EDGE_MODELS_DIR": str(models), "EDGE_MODEL": PRICED_MODEL, "EDGE_API_KEYS": f"other-key,{API_KEY}"}
    srv = Server([], env, models / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as session:
        yield session
