"""The servers the benchmark compares, started on the same GGUF and settings.

llama.cpp's llama-server runs twice: with its defaults, and with `--no-repack` (extra buffer types
off, the same as edge's `--cpu-kernels plain`). On a machine whose llama.cpp build has AMX kernels
that fault (KVM guests of Sapphire Rapids class Xeons), the default crashes on its first batched
matrix product (llama-server's own warm-up at start, or the first request); a server that dies is
recorded as a Failure instead of ending the benchmark.

llama.cpp's llama-server and llama-cpp-python's server live in a cache outside the repository
(`make bench-tools` builds them there); nothing of them is committed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import free_port  # noqa: E402

from edge.plan.placement import cpu_kernels  # noqa: E402
from edge.settings import Settings as EdgeSettings  # noqa: E402

CACHE = Path(os.environ.get("EDGE_BENCH_CACHE", Path.home() / ".cache" / "edge-bench"))
LLAMA_SERVER = CACHE / "llama-server-build" / "bin" / "llama-server"
LLAMA_SERVER_ISA = CACHE / "llama-server-isa-build" / "bin" / "llama-server"  # explicit ISA flags, no native
LCP_PYTHON = CACHE / "lcp-venv" / "bin" / "python"

SERVERS = ("edge", "llama-server", "llama-server-norepack", "llama-server-isa", "llama-server-isa-norepack",
           "llama-cpp-python")
LABELS = {"edge": "edge", "llama-server": "llama-server (default)",
          "llama-server-norepack": "llama-server --no-repack", "llama-server-isa": "llama-server ISA build",
          "llama-server-isa-norepack": "llama-server ISA build --no-repack", "llama-cpp-python": "llama-cpp-python"}
READY_TIMEOUT = 180.0  # seconds a server may take to load and answer /v1/models
EXIT_GRACE = 10.0  # seconds a server whose request broke off gets to finish dying before we call it alive


def label(name: str) -> str:
    """How the report names a server."""
    return LABELS.get(name, name)


@dataclass(frozen=True)
class Settings:
    """What every server gets: slots, tokens per slot, threads, batch size, layers on the GPU."""

    gguf: Path
    parallel: int
    ctx_per_slot: int
    threads: int
    batch: int = 512
    gpu_layers: int = 0  # -1: all (a GPU build)


@dataclass(frozen=True)
class Failure:
    """Why a server stopped counting: in which phase, how it ended, and its log's last line."""

    phase: str  # "start", "first request", "round 2, concurrency phase"
    how: str  # "crashed with SIGILL", "exited with code 1", "answered HTTP 500"...
    died: bool  # the process ended (a signal or an exit code), rather than failing a request alive
    log_tail: str = ""

    @property
    def outcome(self) -> str:
        """One word for a table cell: crashed (a signal), exited (an exit code) or failed (alive)."""
        if self.how.startswith("crashed"):
            return "crashed"
        return "exited" if self.died else "failed"

    def sentence(self) -> str:
        """`crashed with SIGILL on its first request`, `exited with code 1 during start` ..."""
        where = {"start": "during start", "first request": "on its first request"}.get(self.phase, f"in {self.phase}")
        return f"{self.how} {where}"


class ServerFailed(RuntimeError):
    """A server crashed or failed; `failure` says where and how."""

    def __init__(self, name: str, failure: Failure) -> None:
        super().__init__(f"{name}: {failure.sentence()}")
        self.failure = failure


def exit_description(code: int) -> str:
    """`crashed with SIGILL` for a signal (Popen's negative codes), `exited with code N` otherwise."""
    if code < 0:
        try:
            return f"crashed with {signal.Signals(-code).name}"
        except ValueError:
            return f"crashed with signal {-code}"
    return f"exited with code {code}"


def _llama_server(s: Settings, port: int, binary: Path = LLAMA_SERVER) -> list[str]:
    # -c is the total: llama-server splits it into -np slots of c/np tokens each.
    return [str(binary), "-m", str(s.gguf), "--port", str(port), "--host", "127.0.0.1",
            "-np", str(s.parallel), "-c", str(s.ctx_per_slot * s.parallel), "-t", str(s.threads),
            "-tb", str(s.threads), "-b", str(s.batch), "-ub", str(s.batch), "--jinja", "--no-webui",
            "-ngl", str(s.gpu_layers)]


def _command(name: str, settings: Settings, port: int) -> list[str]:
    s = settings
    if name == "edge":
        # --cpu-kernels is left to its default (auto, or EDGE_CPU_KERNELS), as a user would run it;
        # serve_bench.edge_kernels computes the same decision from the same probe cache.
        return [sys.executable, "-m", "edge.cli", "serve", "--port", str(port), "--model", str(s.gguf),
                "--parallel", str(s.parallel), "--ctx-size", str(s.ctx_per_slot), "--threads", str(s.threads),
                "--max-queue", "1000", "--log-level", "warning", "--n-gpu-layers", str(s.gpu_layers)]
    if name.startswith("llama-server"):
        command = _llama_server(s, port, LLAMA_SERVER_ISA if name.startswith("llama-server-isa") else LLAMA_SERVER)
        return [*command, "--no-repack"] if name.endswith("-norepack") else command
    if name == "llama-cpp-python":
        # One Llama object: it has no slots, so it gets one slot's context. It has no setting for
        # llama.cpp's use_extra_bufts, so it always runs with the default (AMX where built).
        return [str(LCP_PYTHON), "-m", "llama_cpp.server", "--model", str(s.gguf), "--port", str(port),
                "--host", "127.0.0.1", "--n_ctx", str(s.ctx_per_slot), "--n_threads", str(s.threads),
                "--n_threads_batch", str(s.threads), "--n_batch", str(s.batch), "--n_ubatch", str(s.batch),
                "--n_gpu_layers", str(s.gpu_layers)]
    raise ValueError(name)


class RunningServer:
    """A server child process; `url` is its base URL, `model` the name requests must use.
    Raises ServerFailed when it dies or never becomes ready."""

    def __init__(self, name: str, settings: Settings, log_dir: Path, extra_args: tuple[str, ...] = (),
                 log_name: str | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = ""
        self.log_path = log_dir / f"{log_name or name}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen([*_command(name, settings, self.port), *extra_args], stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise ServerFailed(self.name, Failure("start", exit_description(code), True, self.log_tail()))
            try:
                response = httpx.get(f"{self.url}/v1/models", timeout=2)
                if response.status_code == 200:
                    self.model = response.json()["data"][0]["id"]  # the name each server answers to
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerFailed(self.name, Failure("start", f"did not become ready within {timeout:.0f} s", False,
                                              self.log_tail()))

    def failure(self, phase: str, error: Exception) -> Failure:
        """What `error`, raised by a request in `phase`, means: a crash when the process is gone
        (it may take a moment to die after its connection broke off), else a failed request."""
        try:
            code = self.process.wait(timeout=EXIT_GRACE)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            return Failure(phase, exit_description(code), True, self.log_tail())
        if isinstance(error, httpx.HTTPStatusError):
            how = f"answered HTTP {error.response.status_code}"
        else:
            how = f"failed a request ({type(error).__name__}: {error})"
        return Failure(phase, how, False, self.log_tail())

    def log_tail(self) -> str:
        """The last non-empty line of the server's log, for the report."""
        if not self._log.closed:
            self._log.flush()
        try:
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1][:200] if lines else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._log.closed:
            self._log.close()


def available(name: str) -> bool:
    """Whether `name`'s program is here (`make bench-tools` builds the comparators)."""
    if name == "edge":
        return True
    if name == "llama-cpp-python":
        return LCP_PYTHON.exists()
    return (LLAMA_SERVER_ISA if name.startswith("llama-server-isa") else LLAMA_SERVER).exists()


def llama_server_amx() -> tuple[bool | None, str]:
    """Whether this llama-server build has llama.cpp's AMX kernels (AMX_INT8 = 1 in its system info),
    and the system info line; None when it could not be read.

    llama-server logs its system info only at trace verbosity, so it is asked once on its own: with
    `--verbosity 4` and a model file that does not exist it prints the line, then exits."""
    if not LLAMA_SERVER.exists():
        return None, ""
    command = [str(LLAMA_SERVER), "--verbosity", "4", "-m", str(CACHE / "no-such-model.gguf"),
               "--port", str(free_port()), "--host", "127.0.0.1", "--no-webui"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=60)
    except subprocess.TimeoutExpired:
        return None, ""
    match = re.search(r"^.*system_info:.*$", done.stdout + done.stderr, re.MULTILINE)
    if not match:
        return None, ""
    line = match.group(0).strip()
    line = line[line.index("system_info:"):]  # without the log's timestamp prefix
    return bool(re.search(r"\bAMX_INT8 = 1\b", line)), line


def edge_kernels(settings: Settings) -> tuple[str | None, str]:
    """The CPU kernels `edge serve` decides on for this model and thread count, and its log line.

    It is computed here by the call `edge serve` makes at start (--cpu-kernels and the probe's
    cache folder from the same EDGE_* variables the server reads), before the servers start: the
    server then finds the verdict in that cache and loads with exactly this choice. Its log
    (--log-level warning, which keeps request logging out of its timings) would not show the line."""
    try:
        choice = cpu_kernels(EdgeSettings(threads=settings.threads), settings.gguf)
    except ValueError as error:  # a forced choice that cannot run here, or no survivor
        return None, f"CPU kernels: undecided ({error})"
    return choice.kernel, choice.line()
