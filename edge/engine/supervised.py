"""The engine in a child process that is restarted when it dies.

llama.cpp aborts its whole process when an RPC worker cannot be reached or goes away. Serving
across workers therefore runs the model and its engine in a child process: the HTTP server
tokenizes and renders prompts itself (with a vocabulary-only copy of the model), sends requests
down a pipe and relays the events that come back. When the child dies, the requests it was
running fail with a clear message, new ones are refused as unavailable (503 with Retry-After),
and the child is started again until the model loads.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

from edge.engine.engine import Engine, EngineConfig, check_fits
from edge.engine.llama_model import LlamaModel, LoadOptions
from edge.engine.jobs import (
    Cancellable, EngineRefusal, EngineUnavailable, Event, Generation, GenerationDone, GenerationFailed, GenerationRequest,
)
from edge.engine.metrics import SupervisorMetrics

log = logging.getLogger("edge.supervisor")

RETRY_AFTER_SECONDS = 5
_POLL_SECONDS = 0.05  # how often cancellations are forwarded while waiting for events
_METRICS_TIMEOUT = 2.0  # seconds GET /metrics waits for the child's figures


@dataclass(frozen=True)
class ChildSpec:
    """Everything the child needs to load the model; crosses the process boundary by pickling."""

    model_path: Path
    options: LoadOptions
    config: EngineConfig
    rpc_endpoints: tuple[str, ...] = ()
    log_level: str = "INFO"


class SupervisedEngine:
    """Same `submit` as `Engine`, with the engine in a supervised child process."""

    def __init__(self, spec: ChildSpec) -> None:
        self.config = spec.config
        # The engine's own metrics live in the child and are fetched through the pipe per scrape.
        self.metrics = SupervisorMetrics(self._child_metrics)
        self._metrics_lock = threading.Lock()  # one scrape at a time waits for the child's reply
        self._metrics_reply: bytes = b""
        self._metrics_arrived = threading.Event()
        self._spec = spec
        self._context = multiprocessing.get_context("spawn")  # no fork of a process running threads
        self._pending: dict[int, Generation] = {}
        self._cancel_sent: set[int] = set()
        self._ids = itertools.count()
        self._lock = threading.Lock()  # guards _pending and sends on the pipe
        self._conn: Connection | None = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="edge-supervisor", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Generation:
        check_fits(request, self.config)
        generation = Generation(request, loop)
        with self._lock:
            if not self._ready.is_set() or self._conn is None:
                self.metrics.unavailable.inc()
                raise EngineUnavailable("the model is loading or its RPC workers are unreachable; retry shortly",
                                        RETRY_AFTER_SECONDS)
            request_id = next(self._ids)
            self._pending[request_id] = generation
            self._conn.send(("submit", request_id, request))
        return generation

    def retry_after(self) -> int:
        return RETRY_AFTER_SECONDS

    def _child_metrics(self) -> bytes:
        """The child engine's /metrics text, or nothing when it is down or does not answer in time."""
        with self._metrics_lock:
            self._metrics_arrived.clear()
            with self._lock:
                if self._conn is None:
                    return b""
                self._conn.send(("metrics",))
            return self._metrics_reply if self._metrics_arrived.wait(_METRICS_TIMEOUT) else b""

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(("close",))
                except OSError:
                    pass
        self._thread.join(timeout=30)

    # --- supervisor thread -----------------------------------------------------------------

    def _supervise(self) -> None:
        backoff = 1.0
        for attempt in itertools.count():
            if self._closing.is_set():
                return
            if attempt:
                self.metrics.restarts.inc()
            parent_end, child_end = self._context.Pipe()
            process = self._context.Process(target=_child_main, args=(self._spec, child_end), daemon=True)
            process.start()
            child_end.close()
            started = time.monotonic()
            self._relay(parent_end)
            process.join(timeout=10)
            self._fail_pending("the model worker process stopped (a llama.cpp RPC worker went away?); retry shortly")
            if self._closing.is_set():
                return
            log.error("engine process exited with code %s; restarting in %.0f s", process.exitcode, backoff)
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            self._closing.wait(backoff)

    def _relay(self, conn: Connection) -> None:
        """Pass events from the child to their generations until the pipe breaks."""
        try:
            if conn.recv() != ("ready",):
                return
            with self._lock:
                self._conn = conn
                self._ready.set()
            self.metrics.up.set(1)
            log.info("engine process ready")
            while True:
                self._forward_cancellations(conn)
                if conn.poll(_POLL_SECONDS):
                    request_id, event = conn.recv()
                    if request_id == "metrics":  # the answer to _child_metrics
                        self._metrics_reply = event
                        self._metrics_arrived.set()
                    else:
                        self._deliver(request_id, event)
        except (EOFError, OSError):
            pass
        finally:
            self.metrics.up.set(0)
            with self._lock:
                self._ready.clear()
                self._conn = None

    def _forward_cancellations(self, conn: Connection) -> None:
        with self._lock:
            for request_id, generation in self._pending.items():
                if generation.cancelled and request_id not in self._cancel_sent:
                    conn.send(("cancel", request_id))
                    self._cancel_sent.add(request_id)

    def _deliver(self, request_id: int, event: Event) -> None:
        with self._lock:
            generation = self._pending.get(request_id)
            if isinstance(event, GenerationDone):
                self._pending.pop(request_id, None)
                self._cancel_sent.discard(request_id)
        if generation is not None:
            generation.publish(event)

    def _fail_pending(self, message: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._cancel_sent.clear()
        for generation in pending.values():
            generation.publish(GenerationFailed(message, "engine_unavailable"))
            generation.publish(GenerationDone(len(generation.request.prompt_tokens)))


class _PipeHandle(Cancellable):
    """The child's stand-in for a Generation: events go back up the pipe."""

    def __init__(self, request_id: int, request: GenerationRequest, conn: Connection, lock: threading.Lock,
                 registry: dict[int, _PipeHandle]) -> None:
        super().__init__(request)
        self._id = request_id
        self._conn = conn
        self._lock = lock
        self._registry = registry

    def publish(self, event: Event) -> None:
        with self._lock:
            self._conn.send((self._id, event))
            if isinstance(event, GenerationDone):
                self._registry.pop(self._id, None)


def _child_main(spec: ChildSpec, conn: Connection) -> None:
    """Runs in the child: register workers, load, then serve requests from the pipe."""
    from edge.rpc import local_accelerators, register_workers

    os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort here is expected; skip ggml's gdb backtrace
    logging.basicConfig(level=spec.log_level, format="%(asctime)s %(levelname)s engine-process %(name)s: %(message)s")
    remote = register_workers(list(spec.rpc_endpoints))
    for device in remote:
        log.info("RPC device %s at %s: %.0f MiB free", device.name, device.endpoint, device.free_bytes / 2**20)
    # Remote devices first, as llama.cpp orders them itself, then this machine's GPUs.
    devices = [device.handle for device in remote] + local_accelerators()
    model = LlamaModel(spec.model_path, replace(spec.options, devices=tuple(devices)))
    engine = Engine(model, spec.config)
    send_lock = threading.Lock()
    handles: dict[int, _PipeHandle] = {}
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        if message[0] == "close":
            break
        if message[0] == "metrics":
            with send_lock:
                conn.send(("metrics", engine.metrics.render()))
        elif message[0] == "cancel":
            with send_lock:
                handle = handles.get(message[1])
            if handle is not None:
                handle.cancel()
        elif message[0] == "submit":
            _, request_id, request = message
            handle = _PipeHandle(request_id, request, conn, send_lock, handles)
            with send_lock:
                handles[request_id] = handle
            try:
                engine.enqueue(handle)
            except EngineRefusal as error:  # the same code as the in-process engine's refusal
                handle.publish(GenerationFailed(error.message, error.code))
                handle.publish(GenerationDone(len(request.prompt_tokens)))
    engine.close()
