"""Prompt-lookup drafts (edge/engine/speculative.py) and the settings that turn them on."""

from __future__ import annotations

import pytest

from edge.engine.speculative import NgramDrafter, SpeculativeConfig
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
    assert not SpeculativeConfig().enabled and Settings().speculative == "off"


def test_the_draft_length_follows_how_well_drafts_were_kept() -> None:
    drafter = NgramDrafter([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2], draft_max=8)
    assert len(drafter.draft(20)) == 8  # capped by draft_max
    drafter.verified(8, 1)  # one kept, the rest rejected: next time at most 2
    assert drafter.draft(20) == [3, 4]
    drafter.verified(2, 2)  # all kept: twice as many
    assert drafter.draft(20) == [3, 4, 5, 6]
    drafter.verified(4, 0)
    assert drafter.draft(20) == [3]
