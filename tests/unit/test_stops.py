import pytest

from edge.engine.stops import StopMatcher


def run(stops, pieces):
    matcher = StopMatcher(tuple(stops))
    released = [matcher.feed(p) for p in pieces]
    return released, matcher.flush(), matcher.stopped


def test_no_stops_releases_everything_at_once():
    released, tail, stopped = run([], ["Hel", "lo"])
    assert released == ["Hel", "lo"] and tail == "" and not stopped


def test_stop_inside_one_piece_cuts_before_it():
    released, tail, stopped = run(["END"], ["abcENDxyz"])
    assert released == ["abc"] and tail == "" and stopped


def test_stop_split_across_pieces_is_never_released():
    released, tail, stopped = run(["\nUser:"], ["Hi", "\nUs", "er", ":", " more"])
    assert "".join(released) == "Hi"
    assert released[1] == ""  # "\nUs" could still become the stop: held back
    assert stopped and tail == ""


def test_false_alarm_is_released_once_it_cannot_become_a_stop():
    released, tail, stopped = run(["STOP"], ["ST", "ar"])
    assert released == ["", "STar"] and not stopped


def test_only_the_possible_prefix_is_held():
    released, _, _ = run(["xyz"], ["abcx"])
    assert released == ["abc"]


def test_held_text_is_flushed_at_the_end():
    released, tail, stopped = run(["STOP"], ["a", "ST"])
    assert released == ["a", ""] and tail == "ST" and not stopped


def test_earliest_of_several_stops_wins():
    released, _, _ = run(["b", "a"], ["xxab"])
    assert released == ["xx"]


def test_nothing_after_a_stop():
    matcher = StopMatcher(("!",))
    assert matcher.feed("hi!") == "hi"
    assert matcher.feed("more") == "" and matcher.flush() == ""


def test_empty_stop_is_rejected():
    with pytest.raises(ValueError):
        StopMatcher(("",))
