"""What one engine step decodes: each running sequence's next token and its drafts, then chunks of
the prompts still being read, all written into the batch in slot order.

Slot order because llama.cpp handles a batch whose sequences' KV streams come out of order, but
slowly: measured on a 2-core AMD EPYC, SmolLM2 Q4_1, one token each of 4 sequences took 27.9 ms in
the order 1, 0, 3, 2 and 21.4 ms in the order 0, 1, 2, 3. Requests that reuse cached slots land in
whichever slot holds their prefix, so admission order is not slot order.
"""

from __future__ import annotations

from edge.engine.batch import BatchWriter
from edge.engine.job import Job, Sequence
from edge.engine.slots import SlotTable
from edge.engine.speculator import Speculator

# What a step samples: the batch index of a token whose logits come first, the sequences that draw
# from them (two for an n=2 prompt just read), and the drafts decoded after it (one sequence only).
Reader = tuple[int, list[Sequence], list[int]]


def fill_step(batch: BatchWriter, active: list[Job], slots: SlotTable, speculator: Speculator | None,
              n_batch: int) -> tuple[list[Reader], int]:
    """Each running sequence's next token and drafts, then prompt chunks in what room is left
    (oldest request first), into `batch` in slot order; the readers, and how many of the batch's
    tokens are running sequences' (the rest: prompt)."""
    decoding = [seq for job in active if job.prefilled for seq in job.live]
    # Drafts share at most half the batch, and only what the running sequences leave free:
    # a prompt being read keeps the rest.
    spare = n_batch // 2 - len(decoding)
    proposed = speculator.propose(decoding, spare) if speculator and decoding else [[]] * len(decoding)
    running = sum(1 + len(drafts) for drafts in proposed)
    room = batch.room - running
    chunks: list[tuple[Job, int]] = []
    for job in active:
        if not job.prefilled and room > 0:
            size = min(room, len(job.request.prompt_tokens) - job.prompt_read)
            chunks.append((job, size))
            room -= size
    # A slot is either decoding or reading its prompt, so each seq_id comes once.
    parts: list[tuple[int, Sequence | Job, list[int] | int]] = [
        (seq.slot.seq_id, seq, drafts) for seq, drafts in zip(decoding, proposed)]
    parts += [(job.sequences[0].slot.seq_id, job, size) for job, size in chunks]
    readers: list[Reader] = []
    for _, owner, extra in sorted(parts, key=lambda part: part[0]):
        if isinstance(owner, Sequence):
            readers.append(_add_next_token(batch, slots, owner, extra))
            continue
        last_index = _add_prompt_chunk(batch, slots, owner, extra)
        if owner.prefilled:
            readers.append((last_index, owner.live, []))
    return readers, running


def _add_next_token(batch: BatchWriter, slots: SlotTable, seq: Sequence, drafts: list[int]) -> Reader:
    """A running sequence's next token into the batch, and after it its drafts."""
    first = batch.add(seq.last_token, seq.position, [seq.slot.seq_id], True)
    for offset, token in enumerate(drafts, 1):
        batch.add(token, seq.position + offset, [seq.slot.seq_id], True)
    for token in (seq.last_token, *drafts):
        slots.record(seq.slot, token)
    seq.position += 1 + len(drafts)
    return first, [seq], drafts


def _add_prompt_chunk(batch: BatchWriter, slots: SlotTable, job: Job, size: int) -> int:
    """The next `size` prompt tokens into the first sequence only (streams cannot share a token)."""
    prompt = job.request.prompt_tokens
    slot = job.sequences[0].slot
    index = -1
    for position in range(job.prompt_read, job.prompt_read + size):
        index = batch.add(prompt[position], position, [slot.seq_id], position == len(prompt) - 1)
        slots.record(slot, prompt[position])
        job.prompt_read = position + 1
    return index
