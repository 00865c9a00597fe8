"""Tokens/s of the embedded model in one process vs split across two local `edge worker`s.

Writes bench/reports/rpc.md. On one machine the split can only be slower (every layer's
activations cross a socket); the point of RPC is capacity, not speed. Run: make bench-rpc
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support import Server, free_port  # noqa: E402

TOKENS = 128
RUNS = 3
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # counting never stops early


def _decode_rate(url: str) -> float:
    """Best of RUNS: completion tokens per second of wall time, prompt included."""
    body = {"model": httpx.get(f"{url}/v1/models").json()["data"][0]["id"], "prompt": PROMPT,
            "max_tokens": TOKENS, "temperature": 0}
    rates = []
    for _ in range(RUNS):
        started = time.perf_counter()
        usage = httpx.post(f"{url}/v1/completions", json=body, timeout=600).json()["usage"]
        rates.append(usage["completion_tokens"] / (time.perf_counter() - started))
    return max(rates)


def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="edge-rpc-bench-"))
    rates = {}
    for threads in (2, 1):
        alone = Server(["--threads", str(threads)], {}, logs / f"alone-{threads}.log")
        try:
            rates[threads] = _decode_rate(alone.url)
        finally:
            alone.stop()
    ports = [free_port(), free_port()]
    workers = [subprocess.Popen([sys.executable, "-m", "edge.cli", "worker", "--port", str(p), "--threads", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    try:
        time.sleep(5)
        split = Server(["--rpc", ",".join(f"127.0.0.1:{p}" for p in ports)], {}, logs / "split.log")
        try:
            two_workers = _decode_rate(split.url)
        finally:
            split.stop()
    finally:
        for worker in workers:
            worker.kill()
    load = os.getloadavg()[0]
    report = REPO / "bench" / "reports" / "rpc.md"
    report.write_text(
        "# One process vs two local RPC workers\n\n"
        f"`make bench-rpc` (bench/rpc_bench.py), {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end.\n"
        f"Embedded SmolLM2-135M Q4_1, {TOKENS} completion tokens, best of {RUNS}.\n\n"
        "| setup | tokens/s |\n|---|---|\n"
        f"| one process, 2 threads | {rates[2]:.1f} |\n"
        f"| one process, 1 thread | {rates[1]:.1f} |\n"
        f"| split over two `edge worker`s on 127.0.0.1, 1 thread each | {two_workers:.1f} |\n\n"
        f"Split / one process: {two_workers / rates[2]:.2f}x (2 threads), {two_workers / rates[1]:.2f}x (1 thread).\n"
        "Every decode step crosses two sockets and the workers share this machine's cores, so on one\n"
        "quiet machine the split should not be faster: RPC buys capacity (a model larger than one\n"
        "machine's memory), not speed. On a loaded machine, llama.cpp's threads in one process wait for\n"
        "each other at every step, which can make the single-process figure the lower one.\n"
    )
    print(report.read_text())


if __name__ == "__main__":
    main()
