"""Fault injection for a test's `edge serve` process, at libraries edge does not own.

A test puts this folder on the server's PYTHONPATH, so Python imports this module at start-up, and
sets one or both of these variables (seconds) in the server's environment only:

- EDGE_FAULT_DISCONNECT_CHECK_S: starlette's `Request.is_disconnected` takes this long before it
  looks (an event loop busy elsewhere). It writes `edge-fault: disconnect check` to stderr (the
  server log) each time it starts waiting, so a test can act inside the window.
- EDGE_FAULT_STREAM_START_S: uvicorn's ASGI `send` holds the first message of a text/event-stream
  response (its status line and headers) this long, as a transport whose writes are paused would.

Nothing else changes. With either set, the server log also says which `edge` package the server runs; with neither,
this module does nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys


def _say(text: str) -> None:
    edge = sys.modules.get("edge")
    print(f"edge-fault: {text} (edge from {getattr(edge, '__file__', '?')})", file=sys.stderr, flush=True)


def _slow_disconnect_check(delay: float) -> None:
    from starlette.requests import Request

    original = Request.is_disconnected

    async def is_disconnected(self: Request) -> bool:
        _say("disconnect check")
        await asyncio.sleep(delay)
        return await original(self)

    Request.is_disconnected = is_disconnected


def _slow_stream_start(delay: float) -> None:
    import importlib

    for name in ("uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl"):
        try:
            cycle = importlib.import_module(name).RequestResponseCycle
        except ImportError:  # httptools is optional
            continue
        original = cycle.send

        async def send(self, message, _original=original) -> None:
            if message["type"] == "http.response.start" and any(
                    key.lower() == b"content-type" and value.startswith(b"text/event-stream")
                    for key, value in message.get("headers", [])):
                _say("stream start held")
                await asyncio.sleep(delay)
            await _original(self, message)

        cycle.send = send


def _report_start() -> None:
    from uvicorn.server import Server

    original = Server.startup

    async def startup(self, *args, **kwargs):
        _say("injection loaded")
        return await original(self, *args, **kwargs)

    Server.startup = startup


if os.environ.get("EDGE_FAULT_DISCONNECT_CHECK_S") or os.environ.get("EDGE_FAULT_STREAM_START_S"):
    _report_start()
if os.environ.get("EDGE_FAULT_DISCONNECT_CHECK_S"):
    _slow_disconnect_check(float(os.environ["EDGE_FAULT_DISCONNECT_CHECK_S"]))
if os.environ.get("EDGE_FAULT_STREAM_START_S"):
    _slow_stream_start(float(os.environ["EDGE_FAULT_STREAM_START_S"]))
