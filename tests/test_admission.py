"""Admission to the disk tier (servefiles.cache.admission): a frequency sketch in bounded memory."""

from __future__ import annotations

import pytest

from servefiles.cache.admission import ROWS, Admission


def test_a_key_is_admitted_on_its_second_sighting() -> None:
    admission = Admission(min_uses=2)
    assert not admission.admit("a.jpg")
    assert admission.admit("a.jpg")
    assert admission.admit("a.jpg")
    assert not admission.admit("b.jpg")  # each key counts for itself


def test_min_uses_1_admits_everything_and_keeps_no_sketch() -> None:
    admission = Admission(min_uses=1)
    assert all(admission.admit(f"k{i}") for i in range(100))
    assert admission.nbytes == 0


def test_min_uses_3_admits_on_the_third_sighting() -> None:
    admission = Admission(min_uses=3)
    assert [admission.admit("k") for _ in range(4)] == [False, False, True, True]


def test_memory_stays_bounded_however_many_keys_are_seen() -> None:
    admission = Admission(min_uses=2, width=1024, window=1_000_000)
    before = admission.nbytes
    assert before == ROWS * 1024
    for i in range(50_000):
        admission.admit(f"key-{i}")
    assert admission.nbytes == before


def test_few_keys_seen_once_are_admitted_by_collision() -> None:
    """Collisions can only overcount; with a load well under the width they rarely do."""
    admission = Admission(min_uses=2)
    for i in range(20_000):
        admission.admit(f"first-{i}")
    false_admissions = sum(admission.admit(f"other-{i}") for i in range(20_000))
    assert false_admissions < 200  # under 1 %


def test_counts_age_so_a_key_seen_once_long_ago_is_forgotten() -> None:
    admission = Admission(min_uses=2, window=100)
    assert not admission.admit("old.jpg")
    for i in range(200):  # two windows of other keys: its count halved to zero
        admission.admit(f"filler-{i}")
    assert admission.estimate("old.jpg") == 0
    assert not admission.admit("old.jpg")  # a first sighting again


def test_a_popular_key_survives_aging() -> None:
    admission = Admission(min_uses=2, window=100)
    for _ in range(20):
        admission.admit("hot.jpg")
    for i in range(100):
        admission.admit(f"filler-{i}")
    assert admission.estimate("hot.jpg") >= 2
    assert admission.admit("hot.jpg")


def test_counters_saturate_instead_of_wrapping() -> None:
    admission = Admission(min_uses=2, window=10_000)
    for _ in range(1000):
        assert admission.admit("k") or admission.estimate("k") == 1
    assert admission.estimate("k") == 255


@pytest.mark.parametrize("kwargs", [{"min_uses": 0}, {"min_uses": 256}, {"width": 1000}, {"window": 0}])
def test_bad_parameters_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Admission(**kwargs)


def test_a_newcomer_outranks_only_a_victim_asked_for_less_often() -> None:
    admission = Admission(min_uses=2)
    for _ in range(5):
        admission.seen("popular.jpg")
    for _ in range(2):
        admission.admit("newcomer.jpg")
    assert not admission.outranks("newcomer.jpg", "popular.jpg")
    assert admission.outranks("newcomer.jpg", None), "no eviction needed: room is free"
    admission.seen("tied.jpg")
    admission.seen("tied.jpg")
    assert not admission.outranks("newcomer.jpg", "tied.jpg"), "only a newcomer asked for more often"
    admission.hits_seen = False  # tree mode: nginx answers the hits, a victim's count is its misses
    assert admission.outranks("newcomer.jpg", "tied.jpg"), "ties admit then: the tier never freezes"
    admission.hits_seen = True
    for _ in range(4):  # 6 sightings in all, against the popular file's 5
        admission.admit("newcomer.jpg")
    assert admission.outranks("newcomer.jpg", "popular.jpg")
    assert Admission(min_uses=1).outranks("x", "y"), "min_uses 1 admits everything"
