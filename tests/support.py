"""Test support: real `edge serve` processes on 127.0.0.1, and the constants tests share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from edge.cards import EMBEDDED_MODEL, DEFAULT_MODELS_DIR, load_cards, resolve_model

MODEL = EMBEDDED_MODEL
TEST_CTX = 1024  # small enough that `max_tokens: null` finishes quickly
API_KEY = "sk-test-key"
PRICED_MODEL = "smollm2-priced"
PRICE = 0.65
# A tool the tiny model can call with a short argument (maxLength keeps its JSON bounded).
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                   "required": ["city"], "additionalProperties": False}}}
EMBEDDED_GGUF: Path = resolve_model(None, DEFAULT_MODELS_DIR)[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """An `edge serve` child process; `url` is its base URL."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("w")
        command = [sys.executable, "-m", "edge.cli", "serve", "--port", str(self.port), "--threads", "2", *args]
        self.process = subprocess.Popen(command, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT)
        self.log_path = log_path
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180.0) -> None:  # a first start probes CPU kernels
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"edge serve exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"edge serve did not become ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def metric(server: Server, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of GET /metrics, read with Prometheus' own text parser (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or all(sample.labels.get(k) == v for k, v in labels.items())):
                return sample.value
    return 0.0


def wait_for_metric(server: Server, name: str, value: float, timeout: float = 60.0) -> None:
    """Poll until the metric reaches `value` (a precondition of a test, not a speed check)."""
    deadline = time.monotonic() + timeout
    while metric(server, name) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never reached {value}")
        time.sleep(0.1)


def leave_mid_stream_cancels(server: Server, path: str, body: dict, marker: str) -> None:
    """Stream `body` to `path`, hang up at the first line holding `marker`, and check that the
    generation was cancelled and its slot freed (the request's life is one on every surface)."""
    cancelled = metric(server, "edge_requests_total", {"status": "cancelled"})
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if marker in line:
                break
    wait_for_metric(server, "edge_busy_slots", 0)
    assert metric(server, "edge_requests_total", {"status": "cancelled"}) == cancelled + 1
