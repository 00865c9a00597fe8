"""The engine contract the API layer relies on, met by the in-process Engine and the SupervisedEngine.

One failure channel: `submit` raises an EngineRefusal (jobs.py: RequestInvalid, QueueFull,
EngineUnavailable), and a request that fails later ends with a GenerationFailed event whose code maps
to one HTTP status (jobs.FAILURE_STATUS), whichever engine it ran on.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from edge.engine.jobs import Generation, GenerationRequest


class EngineMetrics(Protocol):
    def render(self) -> bytes: ...


class EngineClient(Protocol):
    """What serving a request needs of an engine."""

    @property
    def ready(self) -> bool:
        """True while the engine can take requests: false once its thread or process has died."""
        ...

    @property
    def metrics(self) -> EngineMetrics: ...

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Generation:
        """Queue `request` without blocking on I/O; raises an EngineRefusal when it cannot run."""
        ...

    def retry_after(self) -> int:
        """Seconds a turned-away client should wait."""
        ...

    def close(self) -> None: ...
