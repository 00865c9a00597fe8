"""The lifecycle tier's fake engine: an EngineClient whose events each test publishes itself, so that every
race can be timed exactly (the end-to-end tests on the real engine, tests/api, stay beside these)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.engine.jobs import Generation, GenerationRequest

MODEL_ID = "fake"


class _Metrics:
    def render(self) -> bytes:
        return b""


@dataclass
class FakeEngine:
    """An EngineClient whose generations the test drives: `on_submit` runs in the submitting thread,
    then the test publishes events (any thread) and checks what the server cancelled."""

    on_submit: Callable[[Generation], None] = lambda generation: None
    generations: list[Generation] = field(default_factory=list)
    ready: bool = True
    metrics: _Metrics = field(default_factory=_Metrics)
    submitted: threading.Event = field(default_factory=threading.Event)

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Generation:
        generation = Generation(request, loop)
        self.generations.append(generation)
        self.on_submit(generation)
        self.submitted.set()
        return generation

    def retry_after(self) -> int:
        return 3

    def close(self) -> None:
        pass

    def wait_submitted(self, timeout: float = 10.0) -> Generation:
        assert self.submitted.wait(timeout), "nothing was submitted"
        return self.generations[-1]


@dataclass
class LiveApp:
    url: str
    engine: FakeEngine



def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` (a precondition or an outcome, not a speed check) until it holds or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
