"""Admission to the disk tier (servefiles.cache.admission): a frequency sketch in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator

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


def test_a_newcomer_prevails_only_over_a_victim_asked_for_less_often() -> None:
    admission = Admission(min_uses=2)
    for _ in range(5):
        admission.seen("popular.jpg")
    for _ in range(2):
        admission.admit("newcomer.jpg")
    assert not admission.prevails("newcomer.jpg", [("popular.jpg", 0)])
    assert admission.prevails("newcomer.jpg", []), "no eviction needed: room is free"
    admission.seen("tied.jpg")
    admission.seen("tied.jpg")
    assert not admission.prevails("newcomer.jpg", [("tied.jpg", 0)]), "only a newcomer asked for more often"
    admission.hits_seen = False  # tree mode: nginx answers the hits, a victim's count is its misses
    assert admission.prevails("newcomer.jpg", [("tied.jpg", 0)]), "ties admit then: the tier never freezes"
    admission.hits_seen = True
    for _ in range(4):  # 6 sightings in all, against the popular file's 5
        admission.admit("newcomer.jpg")
    assert admission.prevails("newcomer.jpg", [("popular.jpg", 0)])
    assert not admission.prevails("newcomer.jpg", [("popular.jpg", 1)]), "hits the sketch did not count add up"
    assert Admission(min_uses=1).prevails("x", [("y", 9)]), "min_uses 1 admits everything"


def test_a_newcomer_must_outweigh_every_entry_it_would_evict_together() -> None:
    """The aggregated-victims rule: a large file that would push out several small ones is
    admitted only when asked for more often than all of them together, not than the first."""
    admission = Admission(min_uses=2)
    for key, count in (("avatar-1.jpg", 2), ("avatar-2.jpg", 2), ("avatar-3.jpg", 2), ("photo.jpg", 5)):
        for _ in range(count):
            admission.seen(key)
    avatars = [("avatar-1.jpg", 0), ("avatar-2.jpg", 0), ("avatar-3.jpg", 0)]
    assert admission.prevails("photo.jpg", avatars[:1]), "5 against one avatar's 2"
    assert admission.prevails("photo.jpg", avatars[:2]), "5 against 4"
    assert not admission.prevails("photo.jpg", avatars), "5 against the three avatars' 6"
    admission.hits_seen = False
    assert not admission.prevails("photo.jpg", avatars), "outweighed, not tied: refused in tree mode too"
    admission.hits_seen = True
    admission.seen("photo.jpg")
    admission.seen("photo.jpg")
    assert admission.prevails("photo.jpg", avatars), "7 against 6"


def test_a_refusal_stops_at_the_first_rivals_that_outweigh_the_newcomer() -> None:
    admission = Admission(min_uses=2)
    for _ in range(3):
        admission.seen("popular.jpg")
    admission.seen("newcomer.jpg")
    looked: list[str] = []

    def rivals() -> Iterator[tuple[str, int]]:
        for key in ("popular.jpg", "never-looked-at-1.jpg", "never-looked-at-2.jpg"):
            looked.append(key)
            yield key, 0

    assert not admission.prevails("newcomer.jpg", rivals())
    assert looked == ["popular.jpg"]


def test_worth_writing_lists_the_victims_only_once_the_sightings_suffice() -> None:
    """The disk tier's rule in one place (Runtime.worth_a_disk_write and benchmarks.admission):
    a full tier is asked whether the write fits, and for the victims (a listing under the tier's
    lock) only once the sightings are enough."""
    admission = Admission(min_uses=2)
    asked: list[str] = []

    def fits() -> bool:
        asked.append("fits")
        return False

    def victims() -> list[str]:
        asked.append("victims")
        return ["rival"]

    assert not admission.worth_writing("new", fits, victims, sighted=False)  # first sighting: too few
    assert asked == ["fits"]
    assert admission.worth_writing("new", fits, victims, sighted=False)  # second: outweighs an unseen rival
    assert asked == ["fits", "victims"]
    for _ in range(3):
        admission.admit("rival")
    assert not admission.worth_writing("new", fits, victims, sighted=True)  # counted already: not again
    assert admission.estimate("new") == 2


@pytest.mark.parametrize("min_uses", [2, 3, 255])
def test_a_tier_with_room_takes_a_file_on_its_first_sighting(min_uses: int) -> None:
    """While the write evicts nothing, the sightings are not waited for (TinyLFU admits freely
    until the cache is full): keeping the file out would only fetch it from the store again on
    its next request. The sighting is counted all the same, for when the tier is full."""
    admission = Admission(min_uses=min_uses)
    assert admission.worth_writing("new", lambda: True, lambda: [], sighted=False)
    assert admission.estimate("new") == 1
    assert not admission.worth_writing("other", lambda: False, lambda: ["rival"], sighted=False)
