"""Sequence slots that remember their tokens, so a new request can reuse a cached prefix.

The KV cache is unified: every slot's cells live in one pool of `capacity` cells, and a cell
tagged with several sequence ids is stored once. A slot keeps its tokens (and their cells) after
its request ends; the next request goes to the free slot whose tokens share the longest prefix
with its prompt, and only the rest of the prompt is evaluated.

Budget: running requests reserve `prompt + n * max_tokens` cells each; a free slot holds
`len(tokens)` cells. Cells shared between slots are counted once per slot, so the sum is an
upper bound of what the cache really holds and a request admitted within it can always decode.
When a request does not fit, retained prefixes of other free slots are evicted, least recently
used first. Only the engine thread uses this class.
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
    """How many leading tokens the two lists share."""
    length = 0
    for a, b in zip(left, right):
        if a != b:
            break
        length += 1
    return length


class SlotTable:
    def __init__(self, memory: llama_cpp.llama_memory_t, parallel: int, capacity: int) -> None:
        self._memory = memory
        self.capacity = capacity
        self.slots = [Slot(seq_id) for seq_id in range(parallel)]
        self._clock = 0

    @property
    def busy(self) -> int:
        return sum(slot.busy for slot in self.slots)

    def claim(self, prompt: list[int], n: int, cells: int, reserved: int) -> Claim | None:
        """Slots for a request that needs `cells`, with `reserved` held by running requests.

        None when there are not `n` free slots or, after evicting other free slots' retained
        tokens, still not enough cells: the request waits.
        """
        free = [slot for slot in self.slots if not slot.busy]
        if len(free) < n:
            return None
        # Longest shared prefix first; among equals, the slot with the least to lose.
        primary = max(free, key=lambda slot: (common_prefix(slot.tokens, prompt), -len(slot.tokens)))
        # The last prompt token is always evaluated: its logits give the first sampled token.
        reused = min(common_prefix(primary.tokens, prompt), len(prompt) - 1)
        others = sorted((slot for slot in free if slot is not primary), key=lambda slot: slot.last_used)[: n - 1]
        chosen = [primary, *others]
        bystanders = sorted((slot for slot in free if slot not in chosen), key=lambda slot: slot.last_used)
        retained = sum(len(slot.tokens) for slot in bystanders)
        while bystanders and reserved + retained + cells > self.capacity:
            victim = bystanders.pop(0)
            retained -= len(victim.tokens)
            self._forget(victim, 0)
        if reserved + retained + cells > self.capacity:
            return None
        self._forget(primary, reused)
        for slot in others:
            self._forget(slot, 0)
            # With a unified cache this only tags the cells with one more sequence id: no copy.
            llama_cpp.llama_memory_seq_cp(self._memory, primary.seq_id, slot.seq_id, 0, reused)
            slot.tokens = list(primary.tokens)
        for slot in chosen:
            slot.busy = True
        return Claim(chosen, reused)

    def record(self, slots: list[Slot], token: int) -> None:
        """`token` went into the batch for these slots, at the position after their last."""
        for slot in slots:
            slot.tokens.append(token)

    def release(self, slots: list[Slot], keep: bool) -> None:
        """The request is over; its slots keep their tokens for reuse unless `keep` is False."""
        self._clock += 1
        for slot in slots:
            if not keep:
                self._forget(slot, 0)
            slot.busy = False
            slot.last_used = self._clock

    def _forget(self, slot: Slot, keep: int) -> None:
        """Drop the slot's cells from position `keep` on."""
        if len(slot.tokens) > keep or keep == 0:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1)
        del slot.tokens[keep:]
