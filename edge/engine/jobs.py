"""What flows between the API layer and the engine thread: requests in, events out.

A `Generation` is the handle a request holder keeps: the engine thread publishes events into it
and the request's event loop reads them. Nothing here touches llama.cpp.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from edge.engine.sampling import SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    """Tokens in, up to `n` independent continuations out."""

    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    grammar: str | None = None
    logprobs: int | None = None  # None: none; else each token's logprob and this many alternatives
    # False: the consumer reads only the whole answer, so its text is handed over when it ends (see Generation).
    stream: bool = True

    def kv_cells(self) -> int:
        """KV cells each of its sequences can occupy: the prompt and a full continuation."""
        return len(self.prompt_tokens) + self.max_tokens


# The one failure channel between the engines and the API: every refusal and failure has a code,
# and each code one HTTP status, whichever engine (in-process or in a child process) reports it.
FAILURE_STATUS = {
    "invalid_request": 400,    # the request can never run here (prompt empty, n > slots, too long)
    "queue_full": 429,         # --max-queue requests already wait
    "queue_timeout": 503,      # waited longer than --queue-timeout for a slot
    "engine_unavailable": 503,  # the engine (or its process) is down or restarting
    "shutting_down": 503,      # the server is stopping
    "decode_failed": 500,      # llama.cpp refused a decode step
}


class EngineRefusal(Exception):
    """The engine will not run a request; `code` (a FAILURE_STATUS key) says why."""

    code = "invalid_request"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return FAILURE_STATUS[self.code]


class RequestInvalid(EngineRefusal, ValueError):
    """The request can never run on this engine (empty prompt, n beyond the slots, too many KV cells)."""

    code = "invalid_request"


class QueueFull(EngineRefusal):
    """The server has as many requests waiting as it accepts; retry after `retry_after` seconds."""

    code = "queue_full"


class EngineUnavailable(EngineRefusal):
    """The engine is down or (re)starting; retry after `retry_after` seconds."""

    code = "engine_unavailable"


class ShuttingDown(EngineRefusal):
    """The server is stopping: it takes no new requests."""

    code = "shutting_down"


def refusal_for(code: str, message: str, retry_after: int | None = None) -> EngineRefusal:
    """The typed refusal for a failure code that crossed a process boundary as text."""
    kinds = {kind.code: kind for kind in (RequestInvalid, QueueFull, EngineUnavailable, ShuttingDown)}
    refusal = kinds.get(code, EngineRefusal)(message, retry_after)
    refusal.code = code if code in FAILURE_STATUS else "engine_unavailable"
    return refusal


@dataclass(frozen=True)
class Started:
    """The request left the queue and holds its slots; `reused` prompt tokens came from the cache."""

    reused: int


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability under the model, and the `top` most likely tokens
    at its position, most likely first (token ids: the API layer spells them)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """New text of choice `index`, already cut at stop strings and held back where needed, and the
    log probabilities of the tokens it completes (only when the request asked for them)."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ChoiceFinished:
    """Choice `index` is complete: `reason` is "stop" or "length"; `stop` is the stop string that
    ended it (None for the end-of-sequence token or the length): Anthropic's API reports it."""

    index: int
    reason: str
    completion_tokens: int
    stop: str | None = None


@dataclass(frozen=True)
class GenerationFailed:
    """The engine could not finish the request; `message` says why, `code` (a FAILURE_STATUS key)
    names the cause."""

    message: str
    code: str = "decode_failed"


@dataclass(frozen=True)
class GenerationDone:
    """Last event of every generation, whatever happened before it."""

    prompt_tokens: int


Event = Started | TextDelta | ChoiceFinished | GenerationFailed | GenerationDone


class GenerationHandle(Protocol):
    """What the engine needs of whoever waits for a request's events."""

    request: GenerationRequest

    @property
    def cancelled(self) -> bool: ...

    def publish(self, event: Event) -> None: ...


class Cancellable:
    """A request's cancellation flag: set from any thread, read by the engine at each step."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the engine to stop working on this request at its next step."""
        self._cancelled.set()


class Generation(Cancellable):
    """The consumer side of one request: an async stream of events, and a way to cancel.

    A request that is not streamed (`request.stream` False) has its text and finished choices held
    on the engine's side until its last event: its event loop is then woken once, not once a step.
    The event loop's thread competes with llama.cpp's for the cores while a step decodes; measured
    on a 2-core AMD EPYC, a non-streamed 512-token request took 75 ms of its CPU woken each step,
    10 ms woken at the end."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(request)
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._first: Event | None = None  # read by `started`, handed out again by `events`
        self._held: list[Event] = []  # the producing thread's only: a whole answer's events not handed over yet

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def publish(self, event: Event) -> None:
        """Called from the one thread that produces this request's events (the engine process's
        relay, with --rpc); a whole answer is held as through the Outbox (see outgoing)."""
        events = self.outgoing(event)
        if not events:
            return
        try:
            self._loop.call_soon_threadsafe(_deliver_all, [(self, events)])
        except RuntimeError:  # the request's event loop is gone: nobody is listening
            self._cancelled.set()

    def deliver(self, event: Event) -> None:
        """Called on the request's event loop."""
        self._events.put_nowait(event)

    def outgoing(self, event: Event) -> list[Event]:
        """Called from the thread that produces the events: the events to hand over now that `event` is out (none
        while a whole answer is still being written; then all of them, in order)."""
        if not self.request.stream and isinstance(event, (TextDelta, ChoiceFinished)):
            self._held.append(event)
            return []
        events, self._held = [*self._held, event], []
        return events

    async def started(self) -> GenerationFailed | None:
        """Wait until the request leaves the queue; the failure that ended it there, if any."""
        if self._first is None:
            self._first = await self._events.get()
        return self._first if isinstance(self._first, GenerationFailed) else None

    async def events(self) -> AsyncIterator[Event]:
        """Every event after `Started`, up to and including `GenerationDone`."""
        while True:
            if self._first is not None:
                event, self._first = self._first, None
            else:
                event = await self._events.get()
            if not isinstance(event, Started):
                yield event
            if isinstance(event, GenerationDone):
                return


class Outbox:
    """The events of one engine step, handed over together when it ends: each event loop is woken
    once a step (one call_soon_threadsafe, one write to its self-pipe, one GIL hand-off), not once
    per token of every sequence. Everything the engine publishes goes through it, so each
    request's events keep their order."""

    def __init__(self) -> None:
        self._held: list[tuple[GenerationHandle, Event]] = []

    def put(self, handle: GenerationHandle, event: Event) -> None:
        self._held.append((handle, event))

    def flush(self) -> None:
        held, self._held = self._held, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Generation, list[Event]]]] = {}
        for handle, event in held:
            if isinstance(handle, Generation):
                events = handle.outgoing(event)
                if events:
                    by_loop.setdefault(handle.loop, []).append((handle, events))
            else:  # another kind of handle (the engine process's pipe) delivers its own way
                handle.publish(event)
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, batch)
            except RuntimeError:  # that event loop is gone: nobody is listening
                for generation, _ in batch:
                    generation.cancel()


def _deliver_all(batch: list[tuple[Generation, list[Event]]]) -> None:
    for generation, events in batch:
        for event in events:
            generation.deliver(event)
