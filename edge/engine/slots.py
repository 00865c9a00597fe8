"""Sequence slots that remember their tokens, so a new request can reuse a cached prefix.

Each slot is one llama sequence with a KV stream of its own (`ctx_size` cells; the cache is not
unified: see engine.py for why). A slot keeps its tokens, and their cells, after its request
ends; the next request goes to the free slot whose tokens share the longest prefix with its
prompt, the slot drops the rest, and only the rest of the prompt is evaluated. As every request
fits in one slot's stream (prompt plus max_tokens <= ctx_size), retained tokens never keep a
request waiting: they are simply overwritten. Only the engine thread uses this class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import llama_cpp


@dataclass
class Slot:
    """One sequence id and the tokens its KV cells hold, by position."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    last_used: int = 0


@dataclass(frozen=True)
class Claim:
    """Slots given to a request; the first `reused` prompt tokens are already in their cache."""

    slots: list[Slot]
    reused: int


def common_prefix(left: list[int], right: list[int]) -> int:
    """How many leading tokens the two lists share. A bisection over slice comparisons: they run in
    C, where a loop over an 8k-token context in Python would cost a step's worth of time."""
    low, high = 0, min(len(left), len(right))  # left[:low] == right[:low]; past high they cannot agree
    if left[:high] == right[:high]:
        return high
    while high - low > 1:  # invariant: the first difference lies in [low, high)
        middle = (low + high) // 2
        if left[low:middle] == right[low:middle]:
            low = middle
        else:
            high = middle
    return low


class SlotTable:
    def __init__(self, memory: llama_cpp.llama_memory_t, parallel: int) -> None:
        self._memory = memory
        self.slots = [Slot(seq_id) for seq_id in range(parallel)]
        self._clock = 0

    @property
    def busy(self) -> int:
        return sum(slot.busy for slot in self.slots)

    def claim(self, prompt: list[int], n: int) -> Claim | None:
        """`n` free slots for `prompt`, the first holding its longest cached prefix; None if
        fewer than `n` are free. The other slots are emptied: they get a copy after the prompt."""
        free = [slot for slot in self.slots if not slot.busy]
        if len(free) < n:
            return None
        # Longest shared prefix first; among equals, the slot that has least to lose.
        primary = max(free, key=lambda slot: (common_prefix(slot.tokens, prompt), -len(slot.tokens)))
        # The last prompt token is always evaluated: its logits give the first sampled token.
        reused = min(common_prefix(primary.tokens, prompt), len(prompt) - 1)
        others = sorted((slot for slot in free if slot is not primary), key=lambda slot: slot.last_used)[: n - 1]
        self.truncate(primary, reused)
        for slot in others:
            self.truncate(slot, 0)
        chosen = [primary, *others]
        for slot in chosen:
            slot.busy = True
        return Claim(chosen, reused)

    def copy(self, source: Slot, target: Slot) -> None:
        """Give `target` the cells of `source`. Streams differ, so llama.cpp copies the whole
        buffer (it accepts nothing less), at the start of the next decode."""
        llama_cpp.llama_memory_seq_cp(self._memory, source.seq_id, target.seq_id, -1, -1)
        target.tokens = list(source.tokens)

    def record(self, slot: Slot, token: int) -> None:
        """`token` went into the batch for this slot, at the position after its last."""
        slot.tokens.append(token)

    def release(self, slots: list[Slot], keep: bool) -> None:
        """The request is over; its slots keep their tokens for reuse unless `keep` is False."""
        self._clock += 1
        for slot in slots:
            if not keep:
                self.truncate(slot, 0)
            slot.busy = False
            slot.last_used = self._clock

    def truncate(self, slot: Slot, keep: int) -> None:
        """Drop the slot's cells from position `keep` on (a reused prefix's rest, rejected drafts)."""
        if len(slot.tokens) > keep or keep == 0:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1)
        del slot.tokens[keep:]
