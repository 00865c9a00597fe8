"""The three servers the benchmark compares, started one at a time on the same GGUF and settings.

llama.cpp's llama-server and llama-cpp-python's server live in a cache outside the repository
(`make bench-tools` builds them there); nothing of them is committed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import free_port  # noqa: E402

CACHE = Path(os.environ.get("EDGE_BENCH_CACHE", Path.home() / ".cache" / "edge-bench"))
LLAMA_SERVER = CACHE / "llama-server-build" / "bin" / "llama-server"
LCP_PYTHON = CACHE / "lcp-venv" / "bin" / "python"


@dataclass(frozen=True)
class Settings:
    """What every server gets: slots, tokens per slot, threads, batch size, layers on the GPU."""

    gguf: Path
    parallel: int
    ctx_per_slot: int
    threads: int
    batch: int = 512
    gpu_layers: int = 0  # -1: all (a GPU build)


def _command(name: str, settings: Settings, port: int) -> list[str]:
    s = settings
    if name == "edge":
        return [sys.executable, "-m", "edge.cli", "serve", "--port", str(port), "--model", str(s.gguf),
                "--parallel", str(s.parallel), "--ctx-size", str(s.ctx_per_slot), "--threads", str(s.threads),
                "--max-queue", "1000", "--log-level", "warning", "--n-gpu-layers", str(s.gpu_layers)]
    if name == "llama-server":
        # -c is the total: llama-server splits it into -np slots of c/np tokens each.
        return [str(LLAMA_SERVER), "-m", str(s.gguf), "--port", str(port), "--host", "127.0.0.1",
                "-np", str(s.parallel), "-c", str(s.ctx_per_slot * s.parallel), "-t", str(s.threads),
                "-tb", str(s.threads), "-b", str(s.batch), "-ub", str(s.batch), "--jinja", "--no-webui",
                "-ngl", str(s.gpu_layers)]
    if name == "llama-cpp-python":
        # One Llama object: it has no slots, so it gets one slot's context.
        return [str(LCP_PYTHON), "-m", "llama_cpp.server", "--model", str(s.gguf), "--port", str(port),
                "--host", "127.0.0.1", "--n_ctx", str(s.ctx_per_slot), "--n_threads", str(s.threads),
                "--n_threads_batch", str(s.threads), "--n_batch", str(s.batch), "--n_ubatch", str(s.batch),
                "--n_gpu_layers", str(s.gpu_layers)]
    raise ValueError(name)


class RunningServer:
    """A server child process; `url` is its base URL, `model` the name requests must use."""

    def __init__(self, name: str, settings: Settings, log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = ""
        self._log = (log_dir / f"{name}.log").open("w")
        self.process = subprocess.Popen(_command(name, settings, self.port), stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self._log.name}")
            try:
                response = httpx.get(f"{self.url}/v1/models", timeout=2)
                if response.status_code == 200:
                    self.model = response.json()["data"][0]["id"]  # the name each server answers to
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready; see {self._log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def available(name: str) -> bool:
    return name == "edge" or (LLAMA_SERVER if name == "llama-server" else LCP_PYTHON).exists()
