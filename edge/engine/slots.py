"""Sequence slots that remember their tokens, so a new request can reuse a cached prefix.

Each slot is one llama sequence with a KV stream of its own (`ctx_size` cells; the cache is not
unified: see engine.py for why). A slot keeps its tokens, and their cells, after its request
ends; a new request reuses the longest prefix of its prompt that a free slot holds, the slot drops
the rest, and only the rest of the prompt is evaluated. As every request fits in one slot's stream
(prompt plus max_tokens <= ctx_size), retained tokens never keep a request waiting: they are
simply overwritten. Only the engine thread uses this class.

Which slot a request runs in matters for every step it shares: with a stream per sequence,
llama.cpp splits a batch into one micro-batch per run of consecutive sequence ids (its
split_equal, as batch.micro_batches counts them), and each micro-batch reads all the weights
again. Measured on a 2-core AMD EPYC, SmolLM2 Q4_1, one token each of sequences 0, 1, 2, 3 took
24-29 ms, of 0, 2, 4, 6 33-39 ms. So a request goes to the free slot that keeps the busy ones in
the fewest runs, and if another free slot holds a longer prefix, that slot's cells are copied
there first (a copy of a stream costs less than evaluating MIN_COPIED_PREFIX tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import llama_cpp

from edge.engine.batch import micro_batches

# A prefix this many tokens longer than the chosen slot's own is copied from the slot that holds it.
# llama.cpp copies a whole stream (ctx_size cells): on a 2-core AMD EPYC, SmolLM2 Q4_1, 2048 cells
# took 11 ms, evaluating 16 prompt tokens 74 ms. Cells cost little to copy against what they cost to
# compute on any model, so the margin only keeps short coincidental prefixes from costing a copy.
MIN_COPIED_PREFIX = 16


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
        """`n` free slots for `prompt`, next to the busy ones, the first holding the longest
        prefix any free slot has (copied there if it is MIN_COPIED_PREFIX longer than its own);
        None if fewer than `n` are free. The other slots are emptied: they get a copy after the prompt."""
        free = [slot for slot in self.slots if not slot.busy]
        if len(free) < n:
            return None
        shared = {slot.seq_id: common_prefix(slot.tokens, prompt) for slot in free}
        # Fewest runs first; among equals the longest prefix, then the slot that has least to lose.
        primary = max(free, key=lambda slot: (-self._new_runs(slot), shared[slot.seq_id], -len(slot.tokens)))
        source = max(free, key=lambda slot: shared[slot.seq_id])
        if shared[source.seq_id] >= shared[primary.seq_id] + MIN_COPIED_PREFIX:
            self.copy(source, primary)
            shared[primary.seq_id] = shared[source.seq_id]
        # The last prompt token is always evaluated: its logits give the first sampled token.
        reused = min(shared[primary.seq_id], len(prompt) - 1)
        self.truncate(primary, reused)
        primary.busy = True
        chosen = [primary]
        for _ in range(n - 1):
            other = max((slot for slot in self.slots if not slot.busy),
                        key=lambda slot: (-self._new_runs(slot), -slot.last_used))
            self.truncate(other, 0)
            other.busy = True
            chosen.append(other)
        return Claim(chosen, reused)

    def _new_runs(self, slot: Slot) -> int:
        """How many more micro-batches a step of one token per busy slot takes with `slot` busy too:
        -1 where it closes a gap, 0 beside a busy slot, 1 apart from them (or with none busy)."""
        busy = [(other.seq_id, 1) for other in self.slots if other.busy]
        return micro_batches(sorted([*busy, (slot.seq_id, 1)])) - micro_batches(busy)

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
