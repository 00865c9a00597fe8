"""Drafts for speculative decoding, from the sequence's own context (prompt lookup).

A sequence's next tokens often repeat something already in its context: an edit reproduces most
of the text it was given, code repeats its names, a JSON answer its keys. The drafter finds the
latest earlier place where the context's last `n` tokens occurred (longest n first) and proposes
the tokens that followed there. The engine decodes the drafts together with the sequence's next
token, in the same batch, and keeps the longest prefix its own sampling agrees with (engine.py).

The drafts are deterministic, so "sample the target, keep the draft while they agree" is the
rejection-sampling rule itself: a drafted token d survives with probability p(d), and the first
disagreeing sample is drawn from p without d, renormalized. Output is distributed as without
speculation, and at temperature 0 it is the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

SPECULATIVE_MODES = ("off", "ngram")
DRAFT_MAX_RANGE = (1, 64)  # tokens drafted per sequence per step
NGRAM_SIZES = (4, 3, 2)  # lookup lengths, longest first: a longer match predicts better


@dataclass(frozen=True)
class SpeculativeConfig:
    """`mode` off or ngram; up to `draft_max` drafted tokens per sequence per step."""

    mode: str = "off"
    draft_max: int = 16

    def __post_init__(self) -> None:
        if self.mode not in SPECULATIVE_MODES:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE_MODES)}, got {self.mode!r}")
        low, high = DRAFT_MAX_RANGE
        if not low <= self.draft_max <= high:
            raise ValueError(f"draft_max must be in [{low}, {high}], got {self.draft_max}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


class NgramDrafter:
    """Prompt lookup over one sequence's tokens: `extend` as tokens are accepted, `draft` before a
    step, `verified` after it.

    How many tokens it drafts adapts to how well it has been guessing: after a step that kept `k`
    of the drafts and rejected the rest, the next draft has at most k + 1 tokens; after a step that
    kept them all, twice as many, up to `draft_max`. Each rejected draft costs a decoded token, so
    where the context does not predict the answer (open chat) little is wasted.
    """

    def __init__(self, tokens: list[int], draft_max: int = SpeculativeConfig.draft_max) -> None:
        self._draft_max = self._cap = draft_max
        self._tokens: list[int] = []
        # For each lookup length: an n-gram -> the position just after its latest occurrence
        # that is followed by at least one token (so a match always has something to propose).
        self._follows: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in NGRAM_SIZES}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self._tokens)  # the new token's position: it follows the n-grams ending here
            for n, follows in self._follows.items():
                if end >= n:
                    follows[tuple(self._tokens[end - n:end])] = end
            self._tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest
        matching suffix; empty when nothing matches."""
        limit = min(limit, self._cap)
        if limit < 1:
            return []
        tokens = self._tokens
        for n, follows in self._follows.items():
            if len(tokens) < n:
                continue
            start = follows.get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start:start + limit]
        return []

    def verified(self, drafted: int, kept: int) -> None:
        """The last draft's outcome: `kept` of its `drafted` tokens agreed with the sampling."""
        self._cap = min(self._draft_max, 2 * self._cap) if kept == drafted else kept + 1
