"""Shutting down on SIGTERM or Ctrl-C without cutting any request short.

uvicorn alone stops accepting, waits up to its graceful timeout, then cancels every request still
running: a stream ends without `[DONE]`, a whole request gets a plain-text 500. And after a clean
shutdown it raises the signal again, so the process dies by SIGTERM (status -15) instead of exiting.

Here the engine ends what is left itself, `grace_s` after the signal (--shutdown-timeout): each
running or queued request then fails the documented way (a 503 `shutting_down`, or for a stream an
error event then `[DONE]`), and uvicorn's own cut comes `FLUSH_S` later, once those last bytes are
out. The re-raised signal lands on this server's handler again, a no-op by then, so `run` returns
and the process exits 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

# Seconds between the engine ending the last requests and uvicorn cancelling whatever still runs:
# enough to write an error event and [DONE] to every open stream.
FLUSH_S = 2.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose requests get `grace_s` seconds after a stop signal, then are ended by
    `end_requests` (which must be safe to call from another thread, and again later)."""

    def __init__(self, config: uvicorn.Config, grace_s: float, end_requests: Callable[[], None]) -> None:
        config.timeout_graceful_shutdown = grace_s + FLUSH_S
        super().__init__(config)
        self._grace_s = grace_s
        self._end_requests = end_requests
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        with self._timer_lock:
            if self._timer is None:
                self._timer = threading.Timer(self._grace_s, self._end_requests)
                self._timer.daemon = True
                self._timer.start()

    def serve_until_stopped(self) -> None:
        """`run`, with this server's handler in place before and after uvicorn's own: a signal during
        start-up still stops it, and the one uvicorn raises again after shutdown is absorbed."""
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            self.run()
        finally:
            with self._timer_lock:
                if self._timer is not None:
                    self._timer.cancel()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
