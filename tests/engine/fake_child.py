"""Engine processes for the supervisor's tests, started by SupervisedEngine like the real one.

`main` runs the real engine-process loop (edge.engine.child.EngineSide) around FakeEngine, so no
model is loaded; the first prompt token of a request says what the fake does with it.
`real_engine_child` runs the real child (model and Engine) with a decode step that raises on a
poisoned prompt. Module-level functions only: the spawned child imports them by name.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from edge.engine.child import ChildSpec, EngineSide, run_child
from edge.engine.jobs import (
    ChoiceFinished, GenerationDone, GenerationFailed, GenerationHandle, QueueFull, RequestInvalid, Started, TextDelta,
)

ECHO = 1         # Started, max_tokens TextDeltas of prompt_tokens[1] (default 1) characters, ChoiceFinished, Done
HOLD = 2         # Started, then nothing until cancelled (then Done, as the real engine does) or closed
STALL = 3        # enqueue never returns: the engine process stops reading its pipe
RAISE = 4        # the engine loop raises: the engine thread dies
BAD_EVENT = 5    # an event that pickles here but cannot be unpickled by the server
CRASH = 6        # the process dies at once, as when llama.cpp aborts
FULL = 7         # refused with QueueFull (retry after 7 s)
INVALID = 8      # refused with RequestInvalid
BUG = 9          # enqueue raises a RuntimeError: a bug, not a refusal
UNPICKLABLE = 10  # an event that cannot be pickled in the engine process

POISON = 7777  # first prompt token that makes the real engine's decode step raise


def _refuse_to_load() -> None:
    raise RuntimeError("this event cannot be read")


class Unreadable:
    """Pickles fine; unpickling it raises (a message the server cannot make sense of)."""

    def __reduce__(self):
        return _refuse_to_load, ()


class _Metrics:
    def render(self) -> bytes:
        return b"# TYPE fake_engine_metric gauge\nfake_engine_metric 1.0\n"


class FakeEngine:
    """Enough of Engine for the engine process: enqueue, metrics, close, and a loop thread that
    calls `on_death` if it raises (the contract of Engine's `on_death`)."""

    def __init__(self, on_death: Callable[[BaseException], None]) -> None:
        self.metrics = _Metrics()
        self._on_death = on_death
        self._inbox: queue.Queue[GenerationHandle | None] = queue.Queue()
        self._held: list[GenerationHandle] = []
        self._thread = threading.Thread(target=self._run, name="fake-engine", daemon=True)
        self._thread.start()

    def enqueue(self, handle: GenerationHandle) -> None:
        op = handle.request.prompt_tokens[0]
        if op == STALL:
            time.sleep(3600)
        elif op == CRASH:
            os._exit(9)
        elif op == FULL:
            raise QueueFull("2 requests are already waiting; retry later", 7)
        elif op == INVALID:
            raise RequestInvalid("n=2 needs the server started with --parallel 2 or more")
        elif op == BUG:
            raise RuntimeError("a bug while queueing")
        self._inbox.put(handle)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as error:  # noqa: BLE001 - the contract: any failure of the loop
            self._on_death(error)

    def _step(self) -> bool:
        try:
            handle = self._inbox.get(timeout=0.01)
        except queue.Empty:
            handle = False
        if handle is None:
            for held in self._held:
                held.publish(GenerationFailed("the server is shutting down", "shutting_down"))
                held.publish(GenerationDone(len(held.request.prompt_tokens)))
            return False
        if handle:
            self._start(handle)
        for held in [held for held in self._held if held.cancelled]:
            self._held.remove(held)
            held.publish(GenerationDone(len(held.request.prompt_tokens)))
        return True

    def _start(self, handle: GenerationHandle) -> None:
        request = handle.request
        op = request.prompt_tokens[0]
        if op == RAISE:
            raise RuntimeError("the engine loop failed")
        handle.publish(Started(0))
        if op == HOLD:
            self._held.append(handle)
            return
        if op == BAD_EVENT:
            handle.publish(Unreadable())
        elif op == UNPICKLABLE:
            handle.publish(TextDelta(0, lambda: None))
        else:
            width = request.prompt_tokens[1] if len(request.prompt_tokens) > 1 and request.prompt_tokens[1] else 1
            for _ in range(request.max_tokens):
                handle.publish(TextDelta(0, "x" * width))
            handle.publish(ChoiceFinished(0, "length", request.max_tokens))
        handle.publish(GenerationDone(len(request.prompt_tokens)))


def main(spec: ChildSpec, conn: Connection) -> None:
    """An engine process around FakeEngine."""
    logging.basicConfig(level="INFO", format="%(levelname)s fake-engine-process %(name)s: %(message)s")
    sys.exit(EngineSide(conn, FakeEngine).serve())


def never_ready(spec: ChildSpec, conn: Connection) -> None:
    """An engine process whose model never finishes loading."""
    time.sleep(3600)


def real_engine_child(spec: ChildSpec, conn: Connection) -> None:
    """The real engine process, whose decode step raises once a request with a POISON prompt runs."""
    from edge.engine.engine import Engine

    step = Engine._step

    def poisoned_step(self, active) -> None:
        if any(job.request.prompt_tokens[0] == POISON for job in active):
            raise RuntimeError("poisoned decode step")
        step(self, active)

    Engine._step = poisoned_step
    run_child(spec, conn)
