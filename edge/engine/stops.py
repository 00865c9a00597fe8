"""Stop-string matching over a stream of text pieces.

The hold-back rule: after each piece, everything is released except the longest tail of the
pending text that is still a prefix of some stop string, because only that tail could turn into
a stop once more text arrives. When a stop string appears, the text before it is released and
the stop string and everything after it are dropped. So a stop string, or a partial prefix of
one, is never released, and no text that cannot become a stop is held longer than one piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StopMatcher:
    """A pure state machine: `feed` pieces, get back the text that is safe to release."""

    stops: tuple[str, ...]
    _pending: str = field(default="", init=False)
    stopped: bool = field(default=False, init=False)
    matched: str | None = field(default=None, init=False)  # the stop string that ended the text

    def __post_init__(self) -> None:
        if any(not s for s in self.stops):
            raise ValueError("stop strings must not be empty")

    def feed(self, piece: str) -> str:
        """Add `piece`; return the text now safe to release (may be empty)."""
        if self.stopped:
            return ""
        text = self._pending + piece
        found = [(i, s) for s, i in ((s, text.find(s)) for s in self.stops) if i >= 0]
        first_stop = min(i for i, _ in found) if found else -1
        if first_stop >= 0:
            self.stopped = True
            self.matched = next(s for i, s in found if i == first_stop)
            self._pending = ""
            return text[:first_stop]
        held = self._held_tail_length(text)
        self._pending = text[len(text) - held :]
        return text[: len(text) - held]

    def flush(self) -> str:
        """Generation ended without a stop: release whatever was held back."""
        text, self._pending = self._pending, ""
        return "" if self.stopped else text

    def _held_tail_length(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
