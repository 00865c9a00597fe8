"""One model across two `edge worker`s on 127.0.0.1, and a service that survives losing one."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import Server, free_port, metric

from convert.pipeline import Options, run
from tests.conversion import fixtures

PROMPT = "The quick brown fox"


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"edge worker on port {port} did not start")


class Worker:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self._log = log.open("a")
        self.process = subprocess.Popen([sys.executable, "-m", "edge.cli", "worker", "--port", str(port), "--threads", "1"],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        _wait_listening(port)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixtral")
    [gguf] = run(Options(model=str(fixtures.tiny_mixtral()), quants=["F16"], out=out, threads=2))
    return gguf


@pytest.fixture()
def workers(tmp_path) -> Iterator[list[Worker]]:
    started = [Worker(free_port(), tmp_path / f"worker{i}.log") for i in range(2)]
    yield started
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()


def greedy_text(url: str) -> str:
    body = {"model": "x", "prompt": PROMPT, "max_tokens": 24, "temperature": 0}
    served = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    response = httpx.post(f"{url}/v1/completions", json={**body, "model": served}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_split_across_two_workers_matches_one_process(mixtral, workers, tmp_path):
    alone = Server(["--model", str(mixtral), "--ctx-size", "256"], {}, tmp_path / "alone.log")
    try:
        expected = greedy_text(alone.url)
    finally:
        alone.stop()
    endpoints = ",".join(f"127.0.0.1:{w.port}" for w in workers)
    split = Server(["--model", str(mixtral), "--ctx-size", "256", "--rpc", endpoints, "--log-level", "debug"], {},
                   tmp_path / "split.log")
    try:
        assert greedy_text(split.url) == expected and expected.strip()
        # /metrics shows the engine process's own figures, and the HTTP process's beside them.
        assert metric(split, "edge_requests_total", {"status": "completed"}) == 1
        assert metric(split, "edge_completion_tokens_total") > 0
        assert metric(split, "edge_engine_up") == 1 and metric(split, "edge_engine_restarts_total") == 0
    finally:
        split.stop()
    log = (tmp_path / "split.log").read_text()
    for worker in workers:  # llama.cpp put weights on each remote device
        assert f"[127.0.0.1:{worker.port}] model buffer size" in log


def test_losing_a_worker_fails_the_request_then_the_service_recovers(mixtral, workers, tmp_path):
    endpoints = ",".join(f"127.0.0.1:{w.port}" for w in workers)
    server = Server(["--model", str(mixtral), "--ctx-size", "512", "--rpc", endpoints], {}, tmp_path / "serve.log")
    try:
        served = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        body = {"model": served, "prompt": PROMPT, "max_tokens": 400, "temperature": 0, "stream": True}
        events = []
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as response:
            for line in filter(None, response.iter_lines()):
                if not events:
                    workers[0].kill()  # mid-request: the first tokens have arrived
                events.append(line)
        assert any('"error"' in line and "worker" in line for line in events), events[-3:]
        assert events[-1] == "data: [DONE]"

        refused = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False}, timeout=30)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "engine_unavailable"

        workers[0] = Worker(workers[0].port, tmp_path / "worker0-again.log")  # the worker is back
        deadline = time.monotonic() + 90
        while httpx.get(f"{server.url}/health").status_code != 200:
            assert time.monotonic() < deadline, "the service did not recover"
            time.sleep(0.5)
        assert greedy_text(server.url).strip()
        assert server.process.poll() is None  # the HTTP server never died
        assert metric(server, "edge_requests_unavailable_total") >= 1  # the 503 above
        assert metric(server, "edge_engine_restarts_total") >= 1 and metric(server, "edge_engine_up") == 1
        assert metric(server, "edge_requests_total", {"status": "completed"}) == 1  # the new engine process
    finally:
        server.stop()


def test_plan_counts_the_workers_memory(workers):
    endpoints = ",".join(f"127.0.0.1:{w.port}" for w in workers)
    command = [sys.executable, "-m", "edge.cli", "plan", "wizardlm-2-8x22b", "--quant", "Q4_K_M", "--ctx", "8192",
               "--ram", "64", "--json"]
    alone = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    shared = json.loads(subprocess.run([*command, "--rpc", endpoints], capture_output=True, text=True, check=True).stdout)
    assert alone["machine"]["vram"] == 0 and shared["machine"]["vram"] > 1e9  # each worker reports its free RAM
    unreachable = subprocess.run([*command, "--rpc", "127.0.0.1:1"], capture_output=True, text=True)
    assert unreachable.returncode == 2
    assert unreachable.stderr.strip() == "edge: cannot reach the RPC worker at 127.0.0.1:1"
