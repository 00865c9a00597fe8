"""The engine process's side of the pipe to `edge serve` (see supervised.py), and the pipe writer
both sides use.

Messages are tuples whose first item names them:

    server -> engine process: ("submit", id, GenerationRequest), ("cancel", id), ("metrics", token), ("close",)
    engine process -> server: ("ready",), ("event", id, Event), ("metrics", token, bytes), ("fatal", message)

On each side one thread only reads the pipe and one only writes it (a PipeWriter, which drains a
queue). No lock is ever held while a thread waits on the pipe, so when both pipe buffers are full
(a long prompt going down while streams come up) each side still reads, and nothing waits in a
circle. Callers of `post` (the event loop, the engine thread) never wait on the pipe at all.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Protocol

from edge.engine.config import EngineConfig
from edge.engine.engine import Engine
from edge.engine.jobs import (
    Cancellable, EngineRefusal, Event, GenerationDone, GenerationFailed, GenerationHandle, GenerationRequest,
)
from edge.engine.interface import EngineMetrics
from edge.engine.llama_model import LlamaModel, LoadOptions

log = logging.getLogger("edge.engine-process")

EXIT_ENGINE_DIED = 3  # the engine thread raised: its requests would never end, so the process ends
EXIT_BAD_MESSAGE = 4  # a message from the server could not be handled (a bug): start afresh
EXIT_SEND_FAILED = 5  # a message to the server could not be written (a bug, or the server is gone)
_FLUSH_SECONDS = 5.0  # how long an ending process tries to send what it has queued
_DEATH_CHECK_SECONDS = 0.1  # how often the reader, waiting for messages, looks whether the engine died

Message = tuple


@dataclass(frozen=True)
class ChildSpec:
    """Everything the child needs to load the model; crosses the process boundary by pickling."""

    model_path: Path
    options: LoadOptions
    config: EngineConfig
    rpc_endpoints: tuple[str, ...] = ()
    log_level: str = "INFO"


class PipeWriter:
    """The only writer of one pipe end: `post` queues a message, a thread pickles and sends it.

    A message that cannot be pickled goes to `unsendable`, which may return one to send instead.
    When the pipe breaks (the other side is gone) or anything else fails, the thread calls
    `on_broken` and stops; later posts are dropped with the queue.
    """

    def __init__(self, conn: Connection, name: str, unsendable: Callable[[Message, Exception], Message | None],
                 on_broken: Callable[[Exception], None]) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._unsendable = unsendable
        self._on_broken = on_broken
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def post(self, message: Message) -> None:
        """Queue `message`; never blocks."""
        self._queue.put(message)

    def close(self, timeout: float) -> bool:
        """Send what is queued, then stop; False if that takes longer than `timeout` seconds."""
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while (message := self._queue.get()) is not None:
                data = self._encode(message)
                if data is not None:
                    self._conn.send_bytes(data)
        except Exception as error:  # OSError when the other side is gone; anything else is a bug
            self._on_broken(error)

    def _encode(self, message: Message) -> memoryview | None:
        """The pickled message; what `unsendable` says instead when it cannot be pickled."""
        try:
            return ForkingPickler.dumps(message)
        except Exception as error:
            replacement = self._unsendable(message, error)
        return None if replacement is None else ForkingPickler.dumps(replacement)


class ChildEngine(Protocol):
    """What the engine process needs of its engine (edge.engine.engine.Engine in production)."""

    @property
    def metrics(self) -> EngineMetrics: ...

    def enqueue(self, handle: GenerationHandle) -> None: ...

    def close(self) -> None: ...


# Builds the engine; its argument is the callback the engine thread calls if its loop raises.
EngineFactory = Callable[[Callable[[BaseException], None]], ChildEngine]


class _PipeHandle(Cancellable):
    """The child's stand-in for a Generation: events are posted to the writer, never sent here."""

    def __init__(self, request_id: int, request: GenerationRequest, writer: PipeWriter,
                 forget: Callable[[int], None]) -> None:
        super().__init__(request)
        self._id = request_id
        self._writer = writer
        self._forget = forget

    def publish(self, event: Event) -> None:
        """Called from the engine thread (or the reader, for a refusal): queues, never waits on the pipe."""
        self._writer.post(("event", self._id, event))
        if isinstance(event, GenerationDone):
            self._forget(self._id)


class EngineSide:
    """The engine process's reader: messages from the server to the engine, replies to the writer."""

    def __init__(self, conn: Connection, make_engine: EngineFactory) -> None:
        self._conn = conn
        self._writer = PipeWriter(conn, "edge-engine-send", self._unsendable, self._broken)
        self._handles: dict[int, _PipeHandle] = {}
        self._handles_lock = threading.Lock()  # the reader adds, the engine thread removes
        self._stop = threading.Event()  # set from another thread: the engine died or the pipe broke
        self._stop_code = 0
        self._engine = make_engine(self._engine_died)

    def serve(self) -> int:
        """Serve until the server says close or goes away; the exit code: 0 then, non-zero when the
        engine died, a message could not be handled or the pipe could not be written."""
        self._writer.post(("ready",))
        try:
            while not self._stop.is_set():
                # A timed wait rather than a blocking recv: the engine may die while no message comes.
                if self._conn.poll(_DEATH_CHECK_SECONDS) and not self._handle(self._conn.recv()):
                    break
        except (EOFError, OSError):  # the server is gone: nobody is left to answer
            pass
        except Exception as error:
            log.exception("engine process: could not handle a message from the server")
            return self._end(f"the engine process failed ({error!r})", EXIT_BAD_MESSAGE)
        if self._stop_code == EXIT_ENGINE_DIED:
            # The engine's state is unknown after its thread raised: end without touching it.
            return self._end(None, EXIT_ENGINE_DIED)
        self._engine.close()  # requests still running end with "shutting_down" events
        return self._end(None, self._stop_code)

    def _handle(self, message: Message) -> bool:
        """Act on one message; False for "close"."""
        kind = message[0]
        if kind == "submit":
            self._submit(message[1], message[2])
        elif kind == "cancel":
            with self._handles_lock:
                handle = self._handles.get(message[1])
            if handle is not None:
                handle.cancel()
        elif kind == "metrics":
            self._writer.post(("metrics", message[1], self._engine.metrics.render()))
        elif kind == "close":
            return False
        else:
            raise ValueError(f"unknown message {kind!r}")
        return True

    def _submit(self, request_id: int, request: GenerationRequest) -> None:
        handle = _PipeHandle(request_id, request, self._writer, self._forget)
        with self._handles_lock:
            self._handles[request_id] = handle
        try:
            self._engine.enqueue(handle)
        except EngineRefusal as error:  # the same code as the in-process engine's refusal
            self._refuse(handle, error.message, error.code)
        except Exception as error:  # one request the engine could not take; the others go on
            log.exception("engine process: request %d could not be queued", request_id)
            self._refuse(handle, f"the engine could not take the request: {error}", "decode_failed")

    @staticmethod
    def _refuse(handle: _PipeHandle, message: str, code: str) -> None:
        handle.publish(GenerationFailed(message, code))
        handle.publish(GenerationDone(len(handle.request.prompt_tokens)))

    def _forget(self, request_id: int) -> None:
        with self._handles_lock:
            self._handles.pop(request_id, None)

    def _engine_died(self, error: BaseException) -> None:
        """The engine thread's loop raised (called on that thread): report it and let the process end."""
        log.critical("engine process: the engine thread died", exc_info=error)
        self._writer.post(("fatal", f"the engine failed ({error!r})"))
        self._stop_code = EXIT_ENGINE_DIED
        self._stop.set()

    def _end(self, fatal: str | None, code: int) -> int:
        if fatal is not None:
            self._writer.post(("fatal", fatal))
        if not self._writer.close(_FLUSH_SECONDS):
            log.warning("engine process: the server did not read the last messages")
        return code

    def _unsendable(self, message: Message, error: Exception) -> Message | None:
        log.error("engine process: could not send a %r message: %r", message[0], error)
        if message[0] == "event":  # the request fails rather than miss an event silently
            return "event", message[1], GenerationFailed(f"an engine event could not be sent: {error}", "decode_failed")
        return None

    def _broken(self, error: Exception) -> None:
        """Nothing more can reach the server (it is gone, or a bug in sending): the process ends."""
        if not isinstance(error, OSError):
            log.error("engine process: could not write to the server: %r", error)
        self._stop_code = self._stop_code or EXIT_SEND_FAILED
        self._stop.set()


def run_child(spec: ChildSpec, conn: Connection) -> None:
    """The engine process (the default child target): register workers, load, serve the pipe."""
    os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort here is expected; skip ggml's gdb backtrace
    logging.basicConfig(level=spec.log_level, format="%(asctime)s %(levelname)s engine-process %(name)s: %(message)s")
    sys.exit(EngineSide(conn, partial(load_engine, spec)).serve())


def load_engine(spec: ChildSpec, on_death: Callable[[BaseException], None]) -> Engine:
    """The RPC workers' devices registered, the model loaded onto them, and its engine."""
    from edge.rpc import local_accelerators, register_workers

    remote = register_workers(list(spec.rpc_endpoints))
    for device in remote:
        log.info("RPC device %s at %s: %.0f MiB free", device.name, device.endpoint, device.free_bytes / 2**20)
    # Remote devices first, as llama.cpp orders them itself, then this machine's GPUs.
    devices = [device.handle for device in remote] + local_accelerators()
    model = LlamaModel(spec.model_path, replace(spec.options, devices=tuple(devices)))
    return Engine(model, spec.config, on_death=on_death)
