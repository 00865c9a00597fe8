"""A request inside the engine: its prompt cursor, its sequences (slot, sampler chain, detokenizer,
stop matcher) and its timings. Owned by the engine thread alone."""

from __future__ import annotations

import random
import time

from edge.engine.jobs import GenerationHandle, TokenLogprob
from edge.engine.llama_model import LlamaModel
from edge.engine.sampling import SamplerChain
from edge.engine.slots import Slot
from edge.engine.speculative import SequenceDrafts, SpeculativeConfig
from edge.engine.stops import StopMatcher
from edge.engine.utf8 import GrammarUtf8Decoder


class Sequence:
    """One continuation: its slot, sampler chain, detokenizer and stop matcher."""

    def __init__(self, job: Job, index: int, sampler: SamplerChain, drafts: SequenceDrafts | None) -> None:
        self.job = job
        self.index = index
        self.sampler = sampler
        self.drafts = drafts  # None: no speculation
        self.slot: Slot | None = None
        self.position = 0
        self.last_token = -1
        self.generated = 0
        self.done = False
        self.matcher = StopMatcher(job.request.stop)
        # Tokens may end inside a multi-byte character: decode bytes incrementally, and read odd
        # sequences as the grammar does, so that constrained output stays what it validated.
        self.decoder = GrammarUtf8Decoder()
        self.pending_logprobs: list[TokenLogprob] = []  # of tokens whose text is not released yet

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        taken, self.pending_logprobs = tuple(self.pending_logprobs), []
        return taken


class Job:
    """A request inside the engine: its prompt cursor, its sequences and its timings."""

    def __init__(self, generation: GenerationHandle, model: LlamaModel,
                 speculative: SpeculativeConfig = SpeculativeConfig()) -> None:
        self.generation = generation
        self.request = generation.request
        self.prompt_read = 0
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self.outcome: str | None = None  # "timeout" or "failed" when set; else decided at the end
        self.drafted = 0  # speculative tokens decoded for this request, and those its sampling kept
        self.draft_accepted = 0
        base_seed = self.request.seed if self.request.seed is not None else random.getrandbits(31)
        self.sequences: list[Sequence] = []
        try:
            for index in range(self.request.n):
                chain = SamplerChain(model, self.request.sampling, base_seed + index, self.request.grammar)
                self.sequences.append(Sequence(self, index, chain, speculative.sequence_drafts(self.request.prompt_tokens)))
        except Exception:
            self.close_samplers()
            raise

    @property
    def prefilled(self) -> bool:
        return self.prompt_read == len(self.request.prompt_tokens)

    @property
    def live(self) -> list[Sequence]:
        return [seq for seq in self.sequences if not seq.done]

    @property
    def slots(self) -> list[Slot]:
        return [seq.slot for seq in self.sequences if seq.slot is not None]

    def close_samplers(self) -> None:
        for seq in self.sequences:
            seq.sampler.close()
