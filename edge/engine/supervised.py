"""The engine in a child process that is restarted when it dies.

llama.cpp aborts its whole process when an RPC worker cannot be reached or goes away. Serving
across workers therefore runs the model and its engine in a child process: the HTTP server
tokenizes and renders prompts itself (with a vocabulary-only copy of the model), sends requests
down a pipe and relays the events that come back. When the child dies, exits, stops making sense
(a message that cannot be read) or reports that its engine thread died, the requests it was
running fail with "engine_unavailable", new ones are refused as unavailable (503 with
Retry-After), and a new child is started until the model loads.

Threads here: `submit` and `cancel` only queue messages, whichever thread calls them (the event
loop, say); one writer thread per child sends them (child.PipeWriter); the supervisor thread
reads the child's messages and restarts it. `_lock` guards the bookkeeping only and is never
held while anything waits on the pipe (the child side works the same way; see child.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess

from edge.engine.child import ChildSpec, Message, PipeWriter, run_child
from edge.engine.config import check_fits
from edge.engine.jobs import (
    EngineUnavailable, Event, Generation, GenerationDone, GenerationFailed, GenerationRequest, ShuttingDown,
)
from edge.engine.metrics import SupervisorMetrics

__all__ = ["RETRY_AFTER_SECONDS", "ChildSpec", "SupervisedEngine"]

log = logging.getLogger("edge.supervisor")

RETRY_AFTER_SECONDS = 5
_METRICS_TIMEOUT = 2.0  # seconds GET /metrics waits for the child's figures
_STOP_GRACE = 5.0  # seconds a child gets to end by itself before it is terminated, then killed
_LOST = "the model worker process stopped (a llama.cpp RPC worker went away?); retry shortly"

ChildMain = Callable[[ChildSpec, Connection], None]


class _RemoteGeneration(Generation):
    """A Generation whose first `cancel` queues a cancel message for the child at once.

    So a cancel reaches the child as soon as the writer thread gets to it, without anything
    polling the generations for their flags.
    """

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop,
                 tell_child: Callable[[], None]) -> None:
        super().__init__(request, loop)
        self._tell_child: Callable[[], None] | None = tell_child
        self._once = threading.Lock()

    def cancel(self) -> None:
        super().cancel()
        with self._once:
            tell, self._tell_child = self._tell_child, None
        if tell is not None:
            tell()

    def settle(self) -> None:
        """The child is done with this request: a later cancel (the API cancels every finished
        generation) need not cross the pipe."""
        with self._once:
            self._tell_child = None


class _Link:
    """One child process: the process, the parent's end of its pipe, and the writer of that end."""

    def __init__(self, context: SpawnContext, child_main: ChildMain, spec: ChildSpec,
                 unsendable: Callable[[Message, Exception], Message | None]) -> None:
        self.conn, child_end = context.Pipe()
        self.process: SpawnProcess = context.Process(target=child_main, args=(spec, child_end), daemon=True,
                                                     name="edge-engine")
        try:
            self.process.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            child_end.close()  # the child holds its own copy: EOF here once it exits
        self.writer = PipeWriter(self.conn, "edge-supervisor-send", unsendable, self._broken)
        self._stopping = False

    def post(self, message: Message) -> None:
        self.writer.post(message)

    def kill(self) -> None:
        """End the child now; the reader then sees EOF."""
        self.process.kill()

    def stop(self) -> int | None:
        """Ask the child to exit, then terminate it, then kill it, each after a bounded wait; its exit code."""
        self._stopping = True
        self.writer.post(("close",))
        self.process.join(_STOP_GRACE)
        for end in (self.process.terminate, self.process.kill):
            if self.process.exitcode is None:
                end()
                self.process.join(2.0)
        # A writer blocked on a dead child's pipe gets EPIPE; close the pipe only once nothing uses it.
        if self.writer.close(2.0):
            self.conn.close()
        return self.process.exitcode

    def _broken(self, error: Exception) -> None:
        """The writer failed: the child is gone, or cannot be talked to; either way it is lost."""
        if not self._stopping:
            log.error("could not write to the engine process (%r); stopping it", error)
            self.kill()


class SupervisedEngine:
    """An EngineClient (interface.py) whose engine runs in a supervised child process.

    `child_main` is what the child runs (child.run_child: load the model and serve the pipe);
    tests give one with a fake engine.
    """

    def __init__(self, spec: ChildSpec, child_main: ChildMain = run_child) -> None:
        self.config = spec.config
        # The engine's own metrics live in the child and are fetched through the pipe per scrape.
        self.metrics = SupervisorMetrics(self._child_metrics)
        self._spec = spec
        self._child_main = child_main
        self._context = multiprocessing.get_context("spawn")  # no fork of a process running threads
        self._ids = itertools.count()  # request ids and scrape tokens, unique for this engine's life
        self._lock = threading.Lock()  # guards the four fields below; never held while waiting on the pipe
        self._link: _Link | None = None  # the current child, from its start until it is gone
        self._ready = threading.Event()  # set while the current child serves
        self._pending: dict[int, _RemoteGeneration] = {}
        self._scrapes: dict[int, Future[bytes]] = {}
        self._closing = threading.Event()
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="edge-supervisor", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        """True only while a child is serving (not while it loads, restarts or is being replaced)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Generation:
        """Queue `request` for the child and return at once; raises RequestInvalid or EngineUnavailable."""
        check_fits(request, self.config)
        if self._closing.is_set():
            raise ShuttingDown("the server is shutting down", RETRY_AFTER_SECONDS)
        with self._lock:
            link = self._link
            if link is None or not self._ready.is_set():
                self.metrics.unavailable.inc()
                raise EngineUnavailable("the model is loading or its RPC workers are unreachable; retry shortly",
                                        RETRY_AFTER_SECONDS)
            request_id = next(self._ids)
            generation = _RemoteGeneration(request, loop, lambda: link.post(("cancel", request_id)))
            self._pending[request_id] = generation
        # Pickling a long prompt and sending it is the writer thread's work, not the event loop's.
        link.post(("submit", request_id, request))
        return generation

    def retry_after(self) -> int:
        return RETRY_AFTER_SECONDS

    def close(self) -> None:
        """Stop the child and the supervisor: bounded waits, the child killed if it does not exit.
        Idempotent, and safe to call from any thread (a shutdown timer, then the owner)."""
        with self._close_lock:
            self._close()

    def _close(self) -> None:
        self._closing.set()
        with self._lock:
            link = self._link
        if link is not None:
            link.post(("close",))  # it ends its running requests ("shutting_down") and exits
        self._thread.join(_STOP_GRACE)
        if self._thread.is_alive():  # the child is stuck (or still loading): the relay needs its EOF
            with self._lock:
                link = self._link
            if link is not None:
                link.kill()
            self._thread.join(_STOP_GRACE)
        if self._thread.is_alive():
            log.error("the engine supervisor did not stop within %.0f s", 2 * _STOP_GRACE)

    def _child_metrics(self) -> bytes:
        """The child engine's /metrics text, or nothing when it is down or does not answer in time."""
        reply: Future[bytes] = Future()
        with self._lock:
            link = self._link if self._ready.is_set() else None
            if link is None:
                return b""
            token = next(self._ids)
            self._scrapes[token] = reply
        link.post(("metrics", token))
        try:
            return reply.result(_METRICS_TIMEOUT)
        except TimeoutError:
            return b""
        finally:
            with self._lock:
                self._scrapes.pop(token, None)

    # --- supervisor thread -----------------------------------------------------------------

    def _supervise(self) -> None:
        """Start a child, relay it until it is lost, start another after a back-off; until close()."""
        backoff = 1.0
        for attempt in itertools.count():
            if self._closing.is_set():
                return
            if attempt:
                self.metrics.restarts.inc()
            started = time.monotonic()
            try:
                code = self._run_child()
            except Exception:  # starting it failed (out of processes, say): try again like any loss
                log.exception("could not run the engine process")
                code = None
            if self._closing.is_set():
                return
            log.error("engine process exited with code %s; restarting in %.0f s", code, backoff)
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            self._closing.wait(backoff)

    def _run_child(self) -> int | None:
        """One child's life: start, relay its messages until it is lost, fail what it ran, stop it."""
        link = _Link(self._context, self._child_main, self._spec, self._unsendable)
        with self._lock:
            self._link = link
        reason = _LOST
        try:
            if not self._closing.is_set():  # close() may have looked for a child before this one existed
                reason = self._relay(link) or _LOST
        except (EOFError, OSError):  # the child exited or was killed
            pass
        except Exception as error:  # a message that makes no sense, or a bug here: start afresh
            log.exception("bad message from the engine process; replacing it")
            reason = f"the model worker process failed ({error!r}); retry shortly"
        finally:
            self._detach(reason)
        return link.stop()

    def _relay(self, link: _Link) -> str | None:
        """Pass the child's messages on until it goes; what it reported if it said why."""
        if (first := link.conn.recv()) != ("ready",):
            raise ValueError(f"expected ('ready',) from the engine process, got {first!r:.200}")
        with self._lock:
            self._ready.set()
        self.metrics.up.set(1)
        log.info("engine process ready")
        while True:
            kind, *rest = link.conn.recv()
            if kind == "event":
                self._deliver(*rest)
            elif kind == "metrics":
                self._scraped(*rest)
            elif kind == "fatal":
                log.error("engine process: %s", rest[0])
                return f"the model worker process failed: {rest[0]}; retry shortly"
            else:
                raise ValueError(f"unknown message {kind!r:.200} from the engine process")

    def _deliver(self, request_id: int, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"not an engine event: {event!r:.200}")
        with self._lock:
            generation = self._pending.get(request_id)
            if isinstance(event, GenerationDone):
                self._pending.pop(request_id, None)
        if generation is None:
            return
        if isinstance(event, GenerationDone):
            generation.settle()
        generation.publish(event)
        if generation.cancelled:
            generation.cancel()  # its event loop is gone (publish set the flag): tell the child, once

    def _scraped(self, token: int, text: bytes) -> None:
        if not isinstance(text, bytes):
            raise TypeError(f"metrics reply is not bytes: {type(text).__name__}")
        with self._lock:
            reply = self._scrapes.get(token)
        if reply is not None and not reply.done():
            reply.set_result(text)

    def _detach(self, reason: str) -> None:
        """The child serves no more: not ready, and everything it had is failed or answered now."""
        failure = (GenerationFailed("the server is shutting down", "shutting_down") if self._closing.is_set()
                   else GenerationFailed(reason, "engine_unavailable"))
        with self._lock:
            self._ready.clear()
            self._link = None
            pending, self._pending = self._pending, {}
            scrapes, self._scrapes = self._scrapes, {}
        self.metrics.up.set(0)
        for reply in scrapes.values():
            if not reply.done():
                reply.set_result(b"")
        for generation in pending.values():
            self._end(generation, failure)

    def _unsendable(self, message: Message, error: Exception) -> Message | None:
        """The writer could not pickle `message`: a request that cannot cross the pipe fails alone."""
        log.error("could not send a %r message to the engine process: %r", message[0], error)
        if message[0] == "submit":
            with self._lock:
                generation = self._pending.pop(message[1], None)
            if generation is not None:
                self._end(generation, GenerationFailed(f"the request could not be passed to the engine "
                                                       f"process: {error}", "invalid_request"))
        return None  # nothing is sent instead

    @staticmethod
    def _end(generation: _RemoteGeneration, failure: GenerationFailed) -> None:
        generation.settle()
        generation.publish(failure)
        generation.publish(GenerationDone(len(generation.request.prompt_tokens)))
