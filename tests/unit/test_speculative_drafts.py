"""Prompt-lookup drafts (edge/engine/speculative.py) and the settings that turn them on."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.engine.batch import micro_batches
from edge.engine.metrics import EngineMetrics
from edge.engine.speculative import NgramDrafter, SpeculativeConfig, StepCost, afford
from edge.engine.speculator import Speculator
from edge.settings import Settings


def test_drafts_follow_the_latest_earlier_occurrence_of_the_longest_suffix() -> None:
    drafter = NgramDrafter([1, 2, 3, 9, 9, 7, 2, 3, 4, 5, 6, 8, 2, 3])
    assert drafter.draft(3) == [4, 5, 6]  # "2 3" last occurred before 4 5 6, not before 9 9
    drafter.extend([4])
    assert drafter.draft(2) == [5, 6]
    assert drafter.draft(0) == []


def test_a_longer_match_wins_over_a_later_shorter_one() -> None:
    drafter = NgramDrafter([5, 1, 2, 3, 40, 41, 8, 2, 3, 50, 5, 1, 2, 3])
    assert drafter.draft(2) == [40, 41]  # "5 1 2 3" matched, though "2 3" occurred later


def test_no_match_no_draft_and_the_end_is_never_its_own_match() -> None:
    assert NgramDrafter([1, 2, 3, 4]).draft(4) == []
    assert NgramDrafter([]).draft(4) == []
    assert NgramDrafter([7, 7]).draft(3) == []  # the unigram 7 is too short to look up; nothing else matches
    assert NgramDrafter([7, 7, 7]).draft(3) == [7]  # "7 7" occurred at 0, followed by the last 7


@pytest.mark.parametrize(("mode", "draft_max"), [("eagle", 4), ("ngram", 0), ("ngram", 65)])
def test_bad_speculative_settings_are_refused(mode: str, draft_max: int) -> None:
    with pytest.raises(ValueError):
        SpeculativeConfig(mode, draft_max)
    with pytest.raises(ValueError):
        Settings(speculative=mode, draft_max=draft_max)


def test_speculation_is_off_by_default() -> None:
    assert not SpeculativeConfig().enabled and Settings().speculative_config.mode == "off"


def test_the_draft_length_follows_how_well_drafts_were_kept() -> None:
    drafts = SpeculativeConfig("ngram", 8).sequence_drafts([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2])
    assert drafts.cap == 8  # draft_max
    drafts.verified(8, 1)  # one kept, the rest rejected: next time at most 2
    assert drafts.cap == 2 and drafts.lookup.draft(drafts.cap) == [3, 4]
    drafts.verified(2, 2)  # all kept: twice as many
    assert drafts.cap == 4
    drafts.verified(4, 0)
    assert drafts.cap == 1


def test_the_keep_rate_follows_outcomes_and_recovers_while_undrafted() -> None:
    drafts = SpeculativeConfig("ngram").sequence_drafts([])
    assert drafts.keep_rate == 0.75  # hopeful before any draft
    for _ in range(10):
        drafts.verified(4, 0)
    low = drafts.keep_rate
    assert low < 0.1
    for _ in range(20):
        drafts.undrafted()
    assert drafts.keep_rate > low + 0.3  # tried again before long
    for _ in range(10):
        drafts.verified(8, 8)
    assert drafts.keep_rate > 0.9


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "draft"}, "needs --draft-model"),
    ({"mode": "ngram", "draft_model": Path("x.gguf")}, "--speculative draft, not ngram"),
    ({"mode": "ngram", "policy": "sometimes"}, "draft policy"),
])
def test_contradictory_draft_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpeculativeConfig(**kwargs)


def test_a_draft_model_alone_means_draft_mode() -> None:
    assert Settings(draft_model="small.gguf").speculative_config.mode == "draft"
    assert Settings(speculative="ngram").speculative_config.draft_model is None


def test_the_step_cost_is_unknown_until_steps_of_different_sizes_are_seen() -> None:
    cost = StepCost()
    for _ in range(10):
        cost.observe(4, 1, 0.030)
    assert cost.estimate() is None  # all alike: the per-token cost cannot be told from the fixed one
    for tokens in (1, 2, 8, 16) * 5:
        cost.observe(tokens, 1, 0.002 + 0.007 * tokens)
    fixed, per_token = cost.estimate()
    assert per_token == pytest.approx(0.007, rel=0.15) and fixed == pytest.approx(0.002, abs=0.004)


def test_the_step_cost_tells_a_micro_batch_from_a_token() -> None:
    cost = StepCost()
    for tokens, batches in ((4, 1), (9, 2), (4, 4), (20, 1), (12, 3)) * 6:
        cost.observe(tokens, batches, 0.006 * batches + 0.0035 * tokens)
    per_batch, per_token = cost.estimate()
    assert per_batch == pytest.approx(0.006, rel=0.01) and per_token == pytest.approx(0.0035, rel=0.01)


@pytest.mark.parametrize("layout, expected", [
    ([(0, 1), (1, 1), (2, 1), (3, 1)], 1),  # one run, one token each
    ([(0, 1), (2, 1), (4, 1), (6, 1)], 4),  # no two ids consecutive: four runs
    ([(0, 1), (1, 6), (2, 1), (3, 1)], 2),  # one token of each, then the drafts alone
    ([(0, 4), (1, 6), (2, 1), (3, 1)], 3),  # 1 of each; 3 more of 0 and 1; 2 more of 1
    ([(0, 6), (1, 6), (2, 6), (3, 6)], 1),  # drafts of one length everywhere: one micro-batch
    ([(5, 17)], 1),
])
def test_micro_batches_follow_llama_cpps_equal_split(layout: list[tuple[int, int]], expected: int) -> None:
    assert micro_batches(layout) == expected


def test_drafts_that_split_the_step_are_dropped_when_the_split_costs_more_than_they_yield() -> None:
    # About a 2-core AMD EPYC with SmolLM2 Q4_0: 6 ms a micro-batch, 3.6 ms a token. One sequence of
    # four with good odds: its drafts alone pay per token, but they are a micro-batch of their own.
    cost = (0.006, 0.0036)
    assert afford([3, 0, 0, 0], [0.8, 0.5, 0.5, 0.5], cost, seq_ids=[0, 1, 2, 3]) == [0, 0, 0, 0]
    # All four with excellent odds draft alike: one micro-batch, and the drafts pay.
    assert all(afford([8] * 4, [0.99] * 4, cost, seq_ids=[0, 1, 2, 3]))
    # Alone, the same sequence's drafts pay: a step of one sequence is one micro-batch however long.
    assert afford([3], [0.8], cost)[0] > 0


def test_drafts_are_afforded_only_while_they_raise_the_expected_throughput() -> None:
    assert afford([5, 0, 3], [0.9, 0.9, 0.1], None) == [5, 0, 3]  # no estimate yet: everything
    # A small CPU (about what a 2-core AMD EPYC measured with SmolLM2: 7 ms a step, 4.6 ms a token):
    # one sequence with good odds drafts several, one with poor odds one, four with poor odds none.
    small_cpu = (0.007, 0.0046)
    assert afford([8], [0.95], small_cpu)[0] >= 4
    assert afford([8], [0.6], small_cpu) == [1]
    assert afford([8, 8, 8, 8], [0.6] * 4, small_cpu) == [0, 0, 0, 0]
    # Memory-bound (a GPU: the fixed cost dominates): drafts are nearly free, so even poor odds pay.
    assert afford([4, 4], [0.5, 0.5], (0.020, 0.0002)) == [4, 4]
    # Better odds are served first, and a sequence's grant is always a prefix of its drafts.
    granted = afford([6, 6], [0.97, 0.7], (0.004, 0.004))
    assert granted[0] > granted[1]
    # The draft model's own cost per token counts against its drafts.
    assert sum(afford([8], [0.8], (0.004, 0.001), draft_seconds=0.02)) == 0


def _sequence(prompt: list[int], seq_id: int) -> SimpleNamespace:
    """The fields of an engine Sequence that Speculator.propose reads."""
    drafts = SpeculativeConfig("ngram", 8).sequence_drafts(prompt)
    return SimpleNamespace(drafts=drafts, generated=0, job=SimpleNamespace(request=SimpleNamespace(max_tokens=100)),
                           slot=SimpleNamespace(seq_id=seq_id))


def test_only_a_sequence_left_wholly_undrafted_drifts_back_towards_hope() -> None:
    speculator = Speculator(SpeculativeConfig("ngram", 8), EngineMetrics())
    for tokens in (1, 2, 4, 8) * 10:  # 10 ms a micro-batch, 2 ms a token
        speculator.observe([(0, tokens)], 0.010 + 0.002 * tokens)
    repeating = [1, 2, 3, 4, 5, 6, 7, 8, 9] * 3
    partly, wholly = _sequence(repeating, 0), _sequence(repeating, 1)
    for _ in range(4):
        partly.drafts.verified(8, 7)  # good odds (better than hope's), but not good enough for all eight
        wholly.drafts.verified(4, 0)  # poor odds: no draft pays
    partly_rate, wholly_rate = partly.drafts.keep_rate, wholly.drafts.keep_rate
    proposed = speculator.propose([partly, wholly], 16)
    assert 0 < len(proposed[0]) < 8 and proposed[1] == []
    assert partly.drafts.keep_rate == partly_rate  # its verification will tell
    assert wholly.drafts.keep_rate > wholly_rate
