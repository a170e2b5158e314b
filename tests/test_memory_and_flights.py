"""The memory tier's LRU (servefiles.cache.memory) and the revalidation single-flight
(servefiles.metaview.Flights): pure in-process structures, tested directly."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from servefiles.cache.admission import Admission
from servefiles.cache.memindex import MemIndex
from servefiles.cache.memory import ENTRY_OVERHEAD, MemoryEntry, MemoryTier
from servefiles.http import HttpPolicy, PreparedFile
from servefiles.metaview import Flights
from servefiles.store.types import FileMeta

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def entry(key: str, size: int) -> MemoryEntry:
    data = key.encode()[:1] * size
    meta = FileMeta(key, 1, hashlib.sha256(data).hexdigest(), size, "image/png", WHEN, WHEN)
    return MemoryEntry(PreparedFile(meta, HttpPolicy()), data)


def test_the_memory_tier_keeps_its_byte_budget_and_evicts_the_least_recently_used() -> None:
    cost = 1000 + ENTRY_OVERHEAD
    tier = MemoryTier(max_bytes=3 * cost, max_file_bytes=1000)
    for key in ("a", "b", "c"):
        tier.put(key, entry(key, 1000))
    assert (len(tier), tier.bytes, tier.evictions) == (3, 3 * cost, 0)
    assert tier.get("a") is not None  # a is now the most recently used: b goes first
    tier.put("d", entry("d", 1000))
    assert tier.get("b") is None and all(tier.get(key) is not None for key in "acd")
    assert (tier.bytes, tier.evictions) == (3 * cost, 1)
    tier.put("a", entry("a", 10))  # a replacement is no eviction, and frees what it replaced
    assert (tier.bytes, tier.evictions, len(tier)) == (2 * cost + 10 + ENTRY_OVERHEAD, 1, 3)
    tier.discard("c")
    tier.discard("nothing")
    assert (tier.bytes, len(tier)) == (cost + 10 + ENTRY_OVERHEAD, 2)


def test_a_file_over_the_tiers_limits_is_not_kept_and_evicts_nothing() -> None:
    tier = MemoryTier(max_bytes=2000, max_file_bytes=1000)
    tier.put("a", entry("a", 900))
    tier.put("big", entry("b", 1001))  # over max_file_bytes
    assert tier.get("big") is None and tier.get("a") is not None and tier.evictions == 0
    small_budget = MemoryTier(max_bytes=1000, max_file_bytes=1000)
    small_budget.put("x", entry("x", 1000 - ENTRY_OVERHEAD + 1))  # over the budget with its overhead
    assert len(small_budget) == 0 and small_budget.bytes == 0


def test_a_full_memory_tier_keeps_the_files_asked_for_more_often_than_a_newcomer() -> None:
    cost = 1000 + ENTRY_OVERHEAD
    admission = Admission(min_uses=2)
    tier = MemoryTier(max_bytes=2 * cost, max_file_bytes=1000, admission=admission)
    assert tier.offer("a", entry("a", 1000)) and tier.offer("b", entry("b", 1000))  # room: no contest
    for _ in range(3):
        assert tier.get("a") is not None and tier.get("b") is not None  # memory hits, unseen by the sketch
    admission.seen("once")
    assert not tier.offer("once", entry("o", 1000)), "a file asked for once pushed out one asked for 4 times"
    assert tier.get("once") is None and tier.refusals == 1 and tier.evictions == 0
    for _ in range(5):
        admission.seen("rising")  # 5: more than the least recently used entry, "a" (3 hits)
    assert tier.offer("rising", entry("r", 1000))
    assert tier.get("rising") is not None and tier.evictions == 1
    assert tier.get("a") is None and tier.get("b") is not None, "not the least recently used one evicted"


def test_a_memory_tier_lets_newcomers_in_once_its_entries_hits_have_aged() -> None:
    cost = 1000 + ENTRY_OVERHEAD
    admission = Admission(min_uses=2, window=4)
    tier = MemoryTier(max_bytes=cost, max_file_bytes=1000, admission=admission)
    tier.offer("old", entry("o", 1000))
    for _ in range(8):
        tier.get("old")
    admission.seen("new")
    admission.seen("new")
    assert not tier.offer("new", entry("n", 1000))  # 2 against 8
    for _ in range(6):  # two agings (every 4 sightings): the entry's 8 hits halve with the sketch, to 2
        admission.seen("unrelated")
    for _ in range(3):
        admission.seen("new")  # 3 within this window
    assert tier.offer("new", entry("n", 1000)), "a tier whose hits never age freezes on yesterday's files"


def test_without_an_admission_sketch_the_memory_tier_is_plain_lru() -> None:
    cost = 1000 + ENTRY_OVERHEAD
    tier = MemoryTier(max_bytes=cost, max_file_bytes=1000, admission=Admission(min_uses=1))
    tier.offer("a", entry("a", 1000))
    for _ in range(5):
        tier.get("a")
    assert tier.offer("b", entry("b", 1000)) and tier.get("a") is None


class GatedQuery:
    """A query that waits for :attr:`gate`, counts its runs, and fails on the runs in ``failing``."""

    def __init__(self, failing: frozenset[int] = frozenset()) -> None:
        self.gate = asyncio.Event()
        self.runs = 0
        self.failing = failing

    async def __call__(self) -> str:
        self.runs += 1
        run = self.runs
        await self.gate.wait()
        if run in self.failing:
            raise ConnectionError("database gone")
        return "meta"

    async def run_together(self, flights: Flights, callers: int) -> list[object]:
        """``callers`` requests of one key at once, the gate opened once all are waiting."""
        tasks = [asyncio.create_task(flights.run("k", self)) for _ in range(callers)]
        await asyncio.sleep(0.01)
        self.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_query_runs_for_many_callers_and_each_gets_its_result() -> None:
    flights, query = Flights(), GatedQuery()
    assert await query.run_together(flights, 5) == ["meta"] * 5 and query.runs == 1
    assert not flights.running


async def test_a_leader_cancelled_leaves_its_waiters_to_run_the_query_themselves() -> None:
    """The first caller runs the query in its own task: when that request is cancelled (its
    client left), a waiter runs it again rather than sharing the cancellation."""
    flights, runs = Flights(), 0
    started, gate = asyncio.Event(), asyncio.Event()

    async def query() -> int:
        nonlocal runs
        runs += 1
        started.set()
        await gate.wait()
        return runs

    leader = asyncio.create_task(flights.run("k", query))
    await started.wait()
    waiters = [asyncio.create_task(flights.run("k", query)) for _ in range(3)]
    await asyncio.sleep(0.01)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    await asyncio.sleep(0.01)  # a waiter has taken the query over; the others wait for it
    assert runs == 2
    gate.set()
    assert await asyncio.gather(*waiters) == [2, 2, 2], "one of them ran it again, once, for all"
    assert not flights.running


async def test_a_failed_query_fails_every_caller_of_that_flight_and_the_next_asks_again() -> None:
    flights, query = Flights(), GatedQuery(failing=frozenset({1}))
    results = await query.run_together(flights, 3)
    assert all(isinstance(result, ConnectionError) for result in results) and query.runs == 1
    assert await flights.run("k", query) == "meta" and query.runs == 2


def test_the_disk_tiers_victims_are_what_an_install_would_evict() -> None:
    index = MemIndex()
    for key in ("a", "b", "c"):
        index.install(entry(key, 100).file.meta, installed_at=1)
    assert index.total_bytes == 300

    def victims(key: str, size: int, limit: int = 10, data: str | None = None) -> list[str]:
        meta = entry(data or key, size).file.meta
        return index.victims(replace(meta, key=key, version=2), max_bytes=350, limit=limit)

    assert victims("d", 50) == [], "room enough: nothing to evict"
    assert victims("d", 100) == ["a"]
    assert victims("d", 200) == ["a", "b"], "as many as make room"
    assert victims("d", 300, limit=2) == ["a", "b"], "never more than the limit"
    assert victims("a", 100, data="x") == [], "a key's own older entry is replaced: its bytes are freed"
    assert victims("a", 200, data="x") == ["b"], "and never evicted"
    assert victims("d", 100, data="c") == [], "content already on disk takes no more room"
    for key, size, data in (("d", 100, None), ("a", 200, "x"), ("d", 200, None)):
        meta = replace(entry(data or key, size).file.meta, key=key, version=2)
        copy = MemIndex()
        for held in ("a", "b", "c"):
            copy.install(entry(held, 100).file.meta, installed_at=1)
        predicted = copy.victims(meta, max_bytes=350, limit=10)
        copy.install(meta, installed_at=2)
        evicted, _unlink = copy.evict(350, meta)
        assert evicted == predicted, f"victims of {key} ({size} bytes) are not what evict() takes"
    index.touch("a")
    assert victims("d", 200) == ["b", "c"]
    assert not index.touch("a", (99, "0" * 64)), "another revision: not touched"


@pytest.mark.parametrize(("key", "size", "data", "fits"), [
    ("d", 50, None, True), ("d", 51, None, False), ("a", 150, "x", True), ("a", 151, "x", False),
    ("d", 100, "c", True), ("d", 400, None, False),
])  # fmt: skip
def test_the_disk_tier_has_room_exactly_when_an_install_would_evict_nothing(
    key: str, size: int, data: str | None, fits: bool
) -> None:
    """``fits`` (admission's "room first") agrees with :meth:`MemIndex.evict` at the boundary,
    counting as it does: a key's own older bytes freed, content already on disk free; and a file
    larger than the whole tier never fits, though there may be nothing left to evict for it."""
    index = MemIndex()
    for held in ("a", "b", "c"):
        index.install(entry(held, 100).file.meta, installed_at=1)
    meta = replace(entry(data or key, size).file.meta, key=key, version=2)
    assert index.fits(meta, max_bytes=350) is fits
    index.install(meta, installed_at=2)
    evicted, _unlink = index.evict(350, meta)
    assert (evicted == []) is fits
    empty = MemIndex()
    assert not empty.fits(replace(meta, size=351), max_bytes=350)
