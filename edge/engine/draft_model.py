"""A small model that drafts for the served one (--speculative draft --draft-model PATH).

It has a llama context of its own, a KV stream per slot like the target's (seq_id for seq_id), and
remembers which tokens each stream's cells hold. Before a step, each drafting sequence's stream
catches up with the sequence (prompt plus kept tokens plus the token about to be decoded; cells
past what they share are dropped, so rejected drafts and a new request's other prompt go), then the
model drafts its most likely next token, again and again, one batched decode per round for all
sequences, until the sequence's allowance, an end-of-generation token, or a token it is less
than DRAFT_P_MIN sure of. Greedy drafts are deterministic, which the engine's verification needs
(speculative.py). Only the engine thread uses this class.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from edge.engine.batch import BatchWriter, self_test
from edge.engine.config import EngineConfig, context_params
from edge.engine.llama_model import LlamaModel, LoadOptions, ModelLoadError
from edge.engine.slots import common_prefix
from edge.engine.speculative import DRAFT_P_MIN

log = logging.getLogger("edge.engine")


def check_vocabulary(target: LlamaModel, draft: LlamaModel) -> None:
    """ModelLoadError unless `draft` has the target's tokens, id for id: its drafts are token ids."""
    name, target_name = draft.path.name, target.path.name
    if draft.n_vocab != target.n_vocab:
        raise ModelLoadError(f"the draft model {name} has {draft.n_vocab} tokens and {target_name} {target.n_vocab}: "
                             "a draft model must have the served model's vocabulary")
    for token in range(target.n_vocab):
        if draft.token_text(token) != target.token_text(token):
            raise ModelLoadError(f"the draft model {name} does not share {target_name}'s vocabulary: token {token} is "
                                 f"{draft.token_text(token)!r} there and {target.token_text(token)!r} here")
    if (draft.bos_id, draft.eos_id) != (target.bos_id, target.eos_id):
        raise ModelLoadError(f"the draft model {name} has other BOS/EOS tokens than {target_name}")


def draft_load_options(target: LoadOptions) -> LoadOptions:
    """Where the draft model's weights go: all on the GPU where the target offloads to one (over
    --rpc it stays here: a draft round trip per token would cost more than it saves), else the CPU
    with plain kernels (always safe; the kernel probe judged the target's tensor types, not these)."""
    on_gpu = target.n_gpu_layers != 0 and not target.devices
    return LoadOptions(n_gpu_layers=-1 if on_gpu else 0, load_mode=target.load_mode)


@dataclass
class DraftRequest:
    """One sequence's part in a round of drafting: its stream, what it holds next, what it may draft."""

    seq_id: int
    context: list[int]  # tokens whose cells the stream must hold, the last one's logits drafting next
    limit: int
    drafts: list[int] = field(default_factory=list)
    index: int = -1  # in the batch just decoded: where this sequence's logits are


class _DecodeFailed(Exception):
    """llama.cpp could not decode a draft batch: this step drafts nothing."""


class DraftModel:
    """The draft model's weights and context; `propose` drafts for several sequences at once."""

    def __init__(self, model: LlamaModel, target: LlamaModel, config: EngineConfig) -> None:
        check_vocabulary(target, model)
        self.model = model
        self._config = config
        self._ctx = llama_cpp.llama_init_from_model(model.ptr, context_params(config))
        if not self._ctx:
            raise ModelLoadError("llama.cpp could not create the draft model's context (out of memory?)")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, config.parallel)
        self._held: list[list[int]] = [[] for _ in range(config.parallel)]  # tokens in each stream's cells
        self.seconds_per_draft = 0.0  # recent mean cost of a drafted token, for the step cost model

    def self_test(self) -> None:
        """The start-up self-test of the draft model's kernels (batch.self_test), on the engine thread."""
        self_test(self._ctx, self._batch, min(self._config.n_batch, self._config.ctx_size), self.model.n_vocab)

    def propose(self, requests: list[DraftRequest]) -> list[list[int]]:
        """Greedy drafts for each request, up to its limit; all empty if llama.cpp fails to decode."""
        started = time.perf_counter()
        working = [request for request in requests if request.limit > 0]
        try:
            writer = self._catch_up(working)
            while working:
                writer = self._decode(writer)
                working = [request for request in working if self._take(request)]
                for request in working:  # the draft just taken is decoded to draft the one after it
                    held = self._held[request.seq_id]
                    request.index = writer.add(request.drafts[-1], len(held), [request.seq_id], True)
                    held.append(request.drafts[-1])
        except _DecodeFailed:
            for request in requests:
                request.drafts.clear()
        drafted = sum(len(request.drafts) for request in requests)
        if drafted:
            seconds = (time.perf_counter() - started) / drafted
            self.seconds_per_draft = 0.8 * self.seconds_per_draft + 0.2 * seconds if self.seconds_per_draft else seconds
        return [request.drafts for request in requests]

    def _catch_up(self, working: list[DraftRequest]) -> BatchWriter:
        """Drop each stream's cells past what it shares with its context, then decode the rest of the
        contexts, full batches on the way; the returned batch holds every context's last token, whose
        logits draft first."""
        writer = BatchWriter(self._batch, self._config.n_batch)
        for request in working:
            held = self._held[request.seq_id]
            keep = min(common_prefix(held, request.context), len(request.context) - 1)
            llama_cpp.llama_memory_seq_rm(self._memory, request.seq_id, keep, -1)
            del held[keep:]
            for position in range(keep, len(request.context) - 1):
                if not writer.room:
                    writer = self._decode(writer)
                writer.add(request.context[position], position, [request.seq_id], False)
                held.append(request.context[position])
        if writer.room < len(working):  # the last tokens go into one batch: their logits must outlive it
            writer = self._decode(writer)
        for request in working:
            held = self._held[request.seq_id]
            request.index = writer.add(request.context[-1], len(held), [request.seq_id], True)
            held.append(request.context[-1])
        return writer

    def _decode(self, writer: BatchWriter) -> BatchWriter:
        """Decode the batch; an empty writer for the next one. _DecodeFailed if llama.cpp fails."""
        status = llama_cpp.llama_decode(self._ctx, self._batch) if writer.count else 0
        if status != 0:  # the streams' content is uncertain now: forget it all, drafting starts afresh
            log.warning("the draft model's decode failed with status %d; no drafts this step", status)
            for seq_id, held in enumerate(self._held):
                llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
                held.clear()
            raise _DecodeFailed
        return BatchWriter(self._batch, self._config.n_batch)

    def _take(self, request: DraftRequest) -> bool:
        """Draft the most likely token at the request's logits if the model is sure enough of it;
        True if the request drafts on (requests come here with room for one more draft)."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, request.index)
        logits = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), (self.model.n_vocab,))
        token = int(logits.argmax())
        probability = 1.0 / float(np.exp(logits - logits[token]).sum())
        if probability < DRAFT_P_MIN or self.model.is_eog(token):
            return False
        request.drafts.append(token)
        return len(request.drafts) < request.limit

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        self.model.close()
