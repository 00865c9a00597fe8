"""Speculative decoding: what a sequence drafts, how many drafts a step affords, and the settings.

A sequence's next tokens can often be guessed cheaply: an edit reproduces most of the text it was
given (prompt lookup, NgramDrafter), or a small model of the same vocabulary predicts them
(edge/engine/draft_model.py). The engine decodes the drafts together with the sequence's next
token, in the same batch, and keeps the longest prefix its own sampling agrees with (engine.py).

The drafts are deterministic (a lookup, or the draft model's most likely token), so "sample the
target, keep the draft while they agree" is the rejection-sampling rule itself: a drafted token d
survives with probability p(d), and the first disagreeing sample is drawn from p without d,
renormalized. Output is distributed as without speculation, and at temperature 0 it is the same
tokens.

A drafted token costs a decoded token whether it is kept or not, and more where it makes llama.cpp
split the step: with a KV stream per sequence it decodes a batch as micro-batches that take the
same number of tokens from each of a run of consecutive sequences (its split_equal), so one
sequence's drafts beside others' single tokens are a micro-batch of their own, which reads all
the weights again. StepCost learns what a micro-batch and a token cost on this machine, and
`afford` drafts only the tokens expected to raise the step's throughput: on a small CPU whose
cores several streams already keep busy, little or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.engine.batch import micro_batches

SPECULATIVE_MODES = ("off", "ngram", "draft")
DRAFT_POLICIES = ("auto", "always")  # auto: only drafts the step cost model expects to pay
DRAFT_MAX_RANGE = (1, 64)  # tokens drafted per sequence per step
NGRAM_SIZES = (4, 3, 2)  # lookup lengths, longest first: a longer match predicts better
# How sure the draft model must be of a token to propose it (its probability), as llama.cpp's default.
DRAFT_P_MIN = 0.75


@dataclass(frozen=True)
class SpeculativeConfig:
    """`mode` off, ngram or draft (then `draft_model` is the GGUF that drafts); up to `draft_max`
    drafted tokens per sequence per step; `policy` auto trims drafts that would not pay."""

    mode: str = "off"
    draft_max: int = 16
    draft_model: Path | None = None
    policy: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in SPECULATIVE_MODES:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE_MODES)}, got {self.mode!r}")
        if self.policy not in DRAFT_POLICIES:
            raise ValueError(f"draft policy must be one of {', '.join(DRAFT_POLICIES)}, got {self.policy!r}")
        low, high = DRAFT_MAX_RANGE
        if not low <= self.draft_max <= high:
            raise ValueError(f"draft_max must be in [{low}, {high}], got {self.draft_max}")
        if (self.mode == "draft") != (self.draft_model is not None):
            raise ValueError("--speculative draft needs --draft-model PATH" if self.mode == "draft" else
                             f"--draft-model drafts with --speculative draft, not {self.mode}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def sequence_drafts(self, prompt: list[int]) -> SequenceDrafts | None:
        """A new sequence's draft state; None without speculation."""
        if not self.enabled:
            return None
        return SequenceDrafts(self.draft_max, NgramDrafter(prompt) if self.mode == "ngram" else None)


class NgramDrafter:
    """Prompt lookup over one sequence's tokens: `extend` as tokens are accepted, `draft` before a step."""

    def __init__(self, tokens: list[int]) -> None:
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


class SequenceDrafts:
    """One sequence's speculation: its lookup (ngram mode), how long its next draft may be, and how
    often its drafted tokens were kept.

    The length adapts: after a step that kept `k` of the drafts and rejected the rest, the next draft
    has at most k + 1 tokens; after a step that kept them all, twice as many, up to `draft_max`.
    `keep_rate` estimates the chance that a drafted token is kept given the one before it was: kept
    tokens are successes, a rejection one failure, in exponentially fading counts that start hopeful
    (HOPE: 3 kept to 1 rejected). A sequence the cost model leaves undrafted drifts back towards
    hope, so that it is tried again where hope would be tried.
    """

    FADE = 0.8  # weight of the earlier counts at each verified draft
    RETURN = 0.9  # weight of the earlier counts, against hope's, at each step spent undrafted
    HOPE = (3.0, 1.0)

    def __init__(self, draft_max: int, lookup: NgramDrafter | None) -> None:
        self.lookup = lookup
        self._draft_max = self.cap = draft_max
        self._kept, self._rejected = self.HOPE

    @property
    def keep_rate(self) -> float:
        return self._kept / (self._kept + self._rejected)

    def accepted(self, token: int) -> None:
        if self.lookup is not None:
            self.lookup.extend([token])

    def verified(self, drafted: int, kept: int) -> None:
        """The last draft's outcome: `kept` of its `drafted` tokens agreed with the sampling."""
        self.cap = min(self._draft_max, 2 * self.cap) if kept == drafted else kept + 1
        self._kept = self.FADE * self._kept + kept
        self._rejected = self.FADE * self._rejected + (kept < drafted)

    def undrafted(self) -> None:
        kept, rejected = self.HOPE
        self._kept = self.RETURN * self._kept + (1 - self.RETURN) * kept
        self._rejected = self.RETURN * self._rejected + (1 - self.RETURN) * rejected


class StepCost:
    """What a decode step costs on this machine, as `per_batch * micro_batches + per_token * tokens`
    seconds, fitted by least squares over recent steps (exponentially fading, so it follows the load).

    Only steps that decoded no prompt are observed: a prompt chunk's cost grows with its context.
    Until steps of different shapes have been seen, nothing is known and `estimate` is None.
    """

    FADE = 0.98  # about the last 50 steps count

    def __init__(self) -> None:
        # Fading sums of batches², batches·tokens, tokens², batches·seconds, tokens·seconds, and the weight.
        self._sums = [0.0] * 6

    def observe(self, tokens: int, batch_count: int, seconds: float) -> None:
        terms = (batch_count * batch_count, batch_count * tokens, tokens * tokens,
                 batch_count * seconds, tokens * seconds, 1.0)
        self._sums = [self.FADE * total + term for total, term in zip(self._sums, terms)]

    def estimate(self) -> tuple[float, float] | None:
        """(seconds per micro-batch, seconds per token), or None while the observed steps were all alike."""
        bb, bt, tt, bs, ts, weight = self._sums
        if weight < 4:
            return None
        determinant = bb * tt - bt * bt
        # With one micro-batch a step this is the variance of the token counts (times weight²).
        if determinant < 0.25 * weight * weight:
            return None
        per_batch = (bs * tt - ts * bt) / determinant
        per_token = (ts * bb - bs * bt) / determinant
        if per_token < 0:  # noise: the steps' sizes explain nothing; all of it is the batches' cost
            return bs / bb, 0.0
        if per_batch < 0:
            return 0.0, ts / tt
        return per_batch, per_token


def afford(wanted: list[int], keep_rates: list[float], cost: tuple[float, float] | None,
           draft_seconds: float = 0.0, seq_ids: list[int] | None = None) -> list[int]:
    """How many of each sequence's `wanted` drafts to decode this step (the sequences' ids
    `seq_ids`, in any order; None: consecutive ids).

    A step decodes one token per sequence; each drafted token adds `per_token` seconds (plus
    `draft_seconds`, the draft model's cost of proposing it) and yields an expected `rate ** j`
    tokens (the j-th draft is kept only if the ones before it were). Drafts are taken best first
    while they raise the expected tokens per second: one of expected yield g pays iff
    g * step_seconds > its_seconds * expected_tokens. The micro-batches the drafts split the step
    into are counted after: if they make the plan slower than drafting nothing, nothing is drafted.
    With no estimate yet, all are taken.
    """
    if cost is None:
        return list(wanted)
    per_batch, per_token = cost
    extra = per_token + draft_seconds
    ids = seq_ids if seq_ids is not None else list(range(len(wanted)))
    base = float(len(wanted))
    undrafted_split = micro_batches(sorted((seq_id, 1) for seq_id in ids))
    undrafted_seconds = per_batch * undrafted_split + per_token * base
    expected, seconds = base, undrafted_seconds
    offers = sorted(((rate ** j, index) for index, (count, rate) in enumerate(zip(wanted, keep_rates))
                     for j in range(1, count + 1)), reverse=True)
    granted = [0] * len(wanted)
    # Each grant raises expected / seconds, so the bar only rises: the first offer below it ends the search.
    for gain, index in offers:
        if gain * seconds <= extra * expected:
            break
        granted[index] += 1
        seconds += extra
        expected += gain
    if any(granted):
        split = micro_batches(sorted((seq_id, 1 + grant) for seq_id, grant in zip(ids, granted)))
        seconds += per_batch * (split - undrafted_split)
        if expected * undrafted_seconds <= base * seconds:
            return [0] * len(wanted)
    return granted
