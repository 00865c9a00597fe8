"""One decode step's batch, filled token by token, and how llama.cpp splits it to decode it."""

from __future__ import annotations

import logging
import time

import llama_cpp

from edge.engine.llama_model import ModelLoadError

log = logging.getLogger("edge.engine")
SELF_TEST_TOKENS = 64


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
        if self.count >= self.capacity:
            # llama_batch_init allocated exactly `capacity` entries: writing past them corrupts memory.
            raise IndexError(f"the batch is full ({self.capacity} tokens)")
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


def micro_batches(layout: list[tuple[int, int]]) -> int:
    """How many micro-batches llama.cpp decodes a step in, given each sequence's (id, tokens) in
    the batch's order (slot order) and a KV stream per sequence: each takes the same number of
    tokens, the fewest any of them has left, from a run of consecutive sequence ids that still have
    tokens, starting with the first that does (llama_batch_allocr::split_equal, sequential)."""
    ids = [seq_id for seq_id, _ in layout]
    left = [tokens for _, tokens in layout]
    count = 0
    while any(left):
        first = next(index for index, tokens in enumerate(left) if tokens)
        last = first
        while last + 1 < len(left) and left[last + 1] and ids[last + 1] == ids[last] + 1:
            last += 1
        taken = min(left[first:last + 1])
        left[first:last + 1] = [tokens - taken for tokens in left[first:last + 1]]
        count += 1
    return count


def filler_tokens(vocab_size: int, count: int) -> list[int]:
    """`count` valid token ids, not control tokens for the usual vocabularies (which start with them)."""
    start = min(vocab_size - 1, 300)
    return [start + i % max(1, vocab_size - start) for i in range(count)]


def decode_prompt(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch, capacity: int,
                  tokens: list[int], seq_id: int = 0, start: int = 0) -> int:
    """Decode `tokens` as one batch (logits for the last only) at positions start...; llama_decode's status."""
    writer = BatchWriter(batch, capacity)
    for offset, token in enumerate(tokens):
        writer.add(token, start + offset, [seq_id], offset == len(tokens) - 1)
    return llama_cpp.llama_decode(ctx, batch)


def self_test(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch, capacity: int, vocab_size: int) -> None:
    """Decode one batch of up to SELF_TEST_TOKENS through the loaded kernels, then forget it;
    ModelLoadError if llama.cpp cannot.

    Batched matrix products take other kernels than one-token steps (where AMX kernels fault,
    only the batched ones do), so a broken path shows at start, not at a user's first prompt.
    """
    started = time.monotonic()
    count = min(SELF_TEST_TOKENS, capacity)
    status = decode_prompt(ctx, batch, capacity, filler_tokens(vocab_size, count))
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, -1, -1)
    if status != 0:
        raise ModelLoadError(f"start-up self-test: llama.cpp could not decode a {count}-token batch (status {status})")
    log.info("start-up self-test: a %d-token batch decoded in %.0f ms", count, (time.monotonic() - started) * 1000)
