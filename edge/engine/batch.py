"""One decode step's batch, filled token by token."""

from __future__ import annotations

import llama_cpp


class BatchWriter:
    """Fills a `llama_batch` from position 0; `add` returns the token's index in the batch."""

    def __init__(self, batch: llama_cpp.llama_batch, capacity: int) -> None:
        self._batch = batch
        self._batch.n_tokens = 0
        self.capacity = capacity
        self.count = 0

    @property
    def room(self) -> int:
        return self.capacity - self.count

    def add(self, token: int, position: int, seq_ids: list[int], wants_logits: bool) -> int:
        index = self.count
        self._batch.token[index] = token
        self._batch.pos[index] = position
        self._batch.n_seq_id[index] = len(seq_ids)
        for slot, seq_id in enumerate(seq_ids):
            self._batch.seq_id[index][slot] = seq_id
        self._batch.logits[index] = wants_logits
        self.count += 1
        self._batch.n_tokens = self.count
        return index
