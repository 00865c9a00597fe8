"""The engine's side of speculative decoding: each step's drafts, and what verification kept.

The engine asks `propose` for the drafts of the running sequences before it fills a batch, and
tells `verified` what the sampling kept of each sequence's drafts after the decode (it removes
the rejected drafts' cells itself). Drafts come from the sequence's own context (ngram) or from
a draft model; how many a step decodes is speculative.afford's call, on the step costs that
`observe` collects (policy auto), or every draft the sequences' adaptive lengths allow (always).
Only the engine thread uses this class.
"""

from __future__ import annotations

import logging

from edge.engine.batch import micro_batches
from edge.engine.config import EngineConfig
from edge.engine.draft_model import DraftModel, DraftRequest, draft_load_options
from edge.engine.job import Sequence
from edge.engine.llama_model import LlamaModel, ModelLoadError
from edge.engine.metrics import EngineMetrics
from edge.engine.speculative import SpeculativeConfig, StepCost, afford

log = logging.getLogger("edge.engine")


class Speculator:
    """Drafts for a step's sequences and learns what a drafted token costs here."""

    def __init__(self, config: SpeculativeConfig, metrics: EngineMetrics, draft_model: DraftModel | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._draft_model = draft_model
        self._cost = StepCost()

    @classmethod
    def start(cls, config: EngineConfig, target: LlamaModel, metrics: EngineMetrics) -> Speculator | None:
        """The speculator `config` asks for (its draft model loaded and checked), or None for none."""
        speculative = config.speculative
        if not speculative.enabled:
            return None
        if speculative.mode == "ngram":
            return cls(speculative, metrics)
        if not speculative.draft_model.is_file():
            raise ModelLoadError(f"draft model file not found: {speculative.draft_model}")
        model = LlamaModel(speculative.draft_model, draft_load_options(target.options))
        try:
            draft_model = DraftModel(model, target, config)
        except BaseException:
            model.close()
            raise
        log.info("drafting with %s (%d tokens, policy %s)", speculative.draft_model, model.n_vocab, speculative.policy)
        return cls(speculative, metrics, draft_model)

    def self_test(self) -> None:
        if self._draft_model is not None:
            self._draft_model.self_test()

    def propose(self, decoding: list[Sequence], spare: int) -> list[list[int]]:
        """Drafts for each of `decoding` (empty lists for none), together at most `spare` tokens,
        none past a sequence's max_tokens."""
        rooms: list[int] = []  # drafts each sequence may have: its lookup's, or the draft model's allowance
        lookups: list[list[int]] = []
        for seq in decoding:
            room = max(0, min(spare, seq.drafts.cap, seq.job.request.max_tokens - seq.generated - 1))
            if self._draft_model is None:
                lookups.append(seq.drafts.lookup.draft(room))
                room = len(lookups[-1])
            rooms.append(room)
            spare -= room
        granted = afford(rooms, [seq.drafts.keep_rate for seq in decoding], self._step_cost(),
                         self._draft_model.seconds_per_draft if self._draft_model else 0.0,
                         [seq.slot.seq_id for seq in decoding])
        for seq, room, grant in zip(decoding, rooms, granted):
            if room and not grant:  # a partial grant is verified, and that moves the keep rate itself
                seq.drafts.undrafted()
        if self._draft_model is None:
            return [lookup[:grant] for lookup, grant in zip(lookups, granted)]
        return self._draft_model.propose([DraftRequest(seq.slot.seq_id, [*seq.slot.tokens, seq.last_token], grant)
                                          for seq, grant in zip(decoding, granted)])

    def _step_cost(self) -> tuple[float, float] | None:
        return self._cost.estimate() if self._config.policy == "auto" else None

    def observe(self, layout: list[tuple[int, int]], seconds: float) -> None:
        """A decode of running sequences' tokens only (no prompt), (seq_id, tokens) each in the
        batch's order, took `seconds`."""
        self._cost.observe(sum(tokens for _, tokens in layout), micro_batches(layout), seconds)

    def verified(self, seq: Sequence, drafted: int, kept: int) -> None:
        """The sampling kept `kept` of the `drafted` tokens it verified for `seq`."""
        seq.drafts.verified(drafted, kept)
        seq.job.drafted += drafted
        seq.job.draft_accepted += kept
        self._metrics.drafted_tokens.inc(drafted)
        self._metrics.accepted_tokens.inc(kept)

    def close(self) -> None:
        if self._draft_model is not None:
            self._draft_model.close()
