"""One owner of each request's life: admission, the queue, generation, delivery, and one cancel.

Every request ends one of three ways: it completes, it fails in OpenAI's error shape (in a stream:
an error event, then `[DONE]`), or its client leaves and it is cancelled. `RequestLife.close` is the
single place that cancels the generation, and every path reaches it: the handler's `finally` for a
whole response, the streaming response's own `finally` for a stream (which runs even if the body
was never iterated). A disconnect is noticed by racing the work against the client's
`http.disconnect` message (vLLM's `with_cancellation` does the same), not by polling.

CPU-heavy preparation (template rendering, tokenizing, building the grammar and its sampler) runs
in a worker thread, so the event loop keeps streaming other requests while a huge one is prepared.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from edge.api.serving import Prepared, ServingLayer
from edge.engine.jobs import Generation

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but it is what happened


class RequestLife:
    """One request's generation, from the moment the engine accepts it to its cancellation."""

    def __init__(self, layer: ServingLayer, prepared: Prepared) -> None:
        self.layer = layer
        self.prepared = prepared
        self._generation: Generation | None = None
        self._closed = False
        self._lock = threading.Lock()  # submit runs in a worker thread; close on the event loop

    async def admit(self) -> Generation:
        """Submit (in a worker thread: the sampler and its grammar are built there) and wait until
        the request leaves the queue; an EdgeError for a refusal, a full queue or a queue timeout."""
        loop = asyncio.get_running_loop()
        generation = await asyncio.to_thread(self._submit, loop)
        await self.layer.wait_started(generation)
        return generation

    def _submit(self, loop: asyncio.AbstractEventLoop) -> Generation:
        generation = self.layer.submit(self.prepared, loop)
        with self._lock:
            self._generation = generation
            closed = self._closed
        if closed:  # the client left while this thread was submitting
            generation.cancel()
        return generation

    def close(self) -> None:
        """Cancel the generation (a no-op once it has finished): frees its slot within one step."""
        with self._lock:
            self._closed = True
            generation = self._generation
        if generation is not None:
            generation.cancel()


async def disconnected(request: Request) -> None:
    """Returns when the client has gone (the server reads nothing more of the request body)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T | Response:
    """The result of `work`, or a 499 response if the client disconnects first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return Response(status_code=CLIENT_CLOSED)
    finally:
        watcher.cancel()
        if not task.done():  # the handler itself was cancelled (server shutting down)
            task.cancel()


class OwnedStream(StreamingResponse):
    """A streaming response that tells its owner when it is over, however it ends: finished, failed,
    or cut because the client left (even before the first chunk was produced)."""

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
