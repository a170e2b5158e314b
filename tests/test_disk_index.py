"""The disk tier's index in memory, written behind to SQLite; durability by syncfs watermark and
verification after a reboot; a process alone in its cache dir versus processes sharing it.

Real files, real SQLite, real child processes (a crash is a real SIGKILL).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from servefiles.cache import members as members_module
from servefiles.cache.disk import DiskCache
from servefiles.cache.durable import boot_id
from servefiles.cache.locks import FillLock
from servefiles.cache.members import Members
from servefiles.store.types import FileMeta

MiB = 1024 * 1024
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SPAWN = multiprocessing.get_context("forkserver")
SPAWN.set_forkserver_preload([__name__])


def meta_for(key: str, data: bytes, version: int = 1) -> FileMeta:
    return FileMeta(key, version, hashlib.sha256(data).hexdigest(), len(data), "image/png", T0, T0)


def put(cache: DiskCache, key: str, data: bytes, version: int = 1) -> None:
    cache.store(meta_for(key, data, version), data)


def rows(root: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(root / "index.sqlite3")) as conn:
        return list(conn.execute(sql))


def indexed_keys(root: Path) -> set[str]:
    return {str(key) for (key,) in rows(root, "SELECT key FROM entries")}


@contextlib.contextmanager
def opened(root: Path, max_bytes: int = MiB) -> Iterator[DiskCache]:
    cache = DiskCache(root, max_bytes)
    cache.open()
    try:
        yield cache
    finally:
        cache.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# -- child processes (module level: the fork server imports them) ---------------------------


def child_put_then_die(root: str, flushed: dict[str, bytes], pending: dict[str, bytes], discard: list[str]) -> None:
    """Install ``flushed`` and write the batch to SQLite, then install ``pending`` and discard
    ``discard`` without writing, and die as a power cut or kill -9 would leave things."""
    cache = DiskCache(Path(root), MiB)
    cache.open()
    for key, data in flushed.items():
        put(cache, key, data)
    cache.flush()
    for key, data in pending.items():
        put(cache, key, data)
    for key in discard:
        cache.discard(key)
    os.kill(os.getpid(), signal.SIGKILL)


def child_share(root: str, joined: Event, done: Event, result: Connection) -> None:
    """Open the dir beside the parent, then answer what the parent installed meanwhile."""
    cache = DiskCache(Path(root), MiB)
    cache.open()
    joined.set()
    done.wait(30)
    entry = cache.find("from parent")
    result.send((cache.alone(), entry is not None and entry.path.read_bytes() == b"parent bytes"))
    cache.close()


def run_child(target: object, *args: object) -> int | None:
    process = SPAWN.Process(target=target, args=args)
    process.start()
    process.join(30)
    assert not process.is_alive(), "child process hung"
    return process.exitcode


# -- the index in memory, written behind ---------------------------------------------------


def test_a_lookup_reads_memory_and_sqlite_follows_in_batches(root: Path) -> None:
    with opened(root) as cache:
        put(cache, "a", b"alpha")
        assert cache.get("a") is not None
        assert "a" not in indexed_keys(root)  # not written yet: no SQLite write per install
        cache.flush()
        assert indexed_keys(root) == {"a"}
        cache.discard("a")
        assert cache.get("a") is None
        assert indexed_keys(root) == {"a"}
        cache.flush()
        assert indexed_keys(root) == set()


def test_the_background_writer_writes_the_batch_without_being_asked(root: Path) -> None:
    with opened(root) as cache:
        put(cache, "a", b"alpha")
        deadline = time.monotonic() + 10
        while "a" not in indexed_keys(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert indexed_keys(root) == {"a"}


def test_a_restart_sees_what_was_installed_discarded_evicted_and_touched(root: Path) -> None:
    with opened(root, max_bytes=30) as cache:
        for key in "abc":
            put(cache, key, key.encode() * 10)
        cache.touch("a")
        cache.discard("b")
        put(cache, "d", b"d" * 10)
        put(cache, "e", b"e" * 10)  # evicts c, the least recently used
        kept = {key: cache.get(key) for key in "abcde"}
    with opened(root, max_bytes=30) as again:
        assert {key: again.get(key) for key in "abcde"} == kept
        assert [key for key, entry in kept.items() if entry] == ["a", "d", "e"]
        stats = again.stats()
        assert (stats.entries, stats.bytes) == (3, 30)
        put(again, "f", b"f" * 10)  # the LRU order survived: a (touched) is older than d and e
        assert [key for key in "adef" if again.get(key)] == ["d", "e", "f"]


def test_a_crash_before_the_batch_is_written_loses_entries_but_never_serves_a_wrong_byte(root: Path) -> None:
    old = {"kept": b"kept bytes", "discarded": b"discarded bytes"}
    new = {"pending": b"installed, never indexed"}
    assert run_child(child_put_then_die, str(root), old, new, ["discarded"]) == -signal.SIGKILL
    with opened(root) as cache:
        report = cache.open()
        assert cache.get("pending") is None  # lost: its file was never vouched for, and is swept
        assert not cache.content_path(meta_for("pending", new["pending"]).sha256).exists()
        assert cache.get("discarded") is None  # its row outlived its file: dropped at start-up
        entry = cache.get("kept")
        assert entry is not None and entry.path.read_bytes() == old["kept"]
        assert (report.entries, report.removed_unvouched, report.dropped_invalid) == (1, 1, 1)


# -- durability: syncfs watermark, verification after a reboot ------------------------------


def test_a_clean_close_leaves_every_file_durable(root: Path) -> None:
    with opened(root) as cache:
        put(cache, "a", b"alpha")
        cache.flush()
        assert rows(root, "SELECT count(*) FROM files WHERE installed_at > 0") == [(1,)]
    assert rows(root, "SELECT count(*) FROM files WHERE installed_at > 0") == [(0,)]
    assert (root / "boot-id").read_text().strip() == boot_id()


@pytest.mark.parametrize("damage", ["zero-filled", "truncated"])
def test_a_file_torn_by_an_unclean_shutdown_is_never_served(root: Path, damage: str) -> None:
    """The state a power cut leaves: entries indexed, their files renamed but never synced (the
    process died before a syncfs covered them), then a reboot: the boot id has changed."""
    victim, good = b"bytes a power cut may tear" * 100, b"bytes that made it to disk" * 100
    assert run_child(child_put_then_die, str(root), {"victim": victim, "good": good}, {}, []) == -signal.SIGKILL
    assert rows(root, "SELECT count(*) FROM files WHERE installed_at > 0") == [(2,)]
    (root / "boot-id").write_text("the boot before the power cut\n")
    path = root / "objects" / meta_for("victim", victim).sha256[:2] / meta_for("victim", victim).sha256
    path.write_bytes(bytes(len(victim)) if damage == "zero-filled" else victim[:100])
    with opened(root) as cache:
        report = cache.open()
        assert cache.get("victim") is None
        assert not path.exists()
        entry = cache.get("good")
        assert entry is not None and entry.path.read_bytes() == good
        assert report.dropped_invalid == 1
        assert report.verified == 2  # both files written since the last syncfs were checked
    assert rows(root, "SELECT count(*) FROM files WHERE installed_at > 0") == [(0,)]


def test_a_process_crash_without_a_reboot_hashes_nothing(root: Path) -> None:
    """kill -9 loses nothing the kernel has: the same boot id means no verification."""
    assert run_child(child_put_then_die, str(root), {"a": b"alpha"}, {}, []) == -signal.SIGKILL
    with opened(root) as cache:
        assert cache.open().verified == 0
        assert cache.get("a") is not None


# -- alone, or sharing the dir with another process -----------------------------------------


def test_a_process_alone_in_its_dir_takes_no_fill_lock_and_makes_no_lock_file(root: Path) -> None:
    with opened(root) as cache:
        assert cache.alone()
        assert cache.fill_lock("k") is None
        put(cache, "k", b"bytes")
        assert list((root / "locks").iterdir()) == []
        assert [path.name.startswith(f"{os.getpid()}-") for path in (root / "procs").iterdir()] == [True]
    assert list((root / "procs").iterdir()) == []  # unregistered at close


def test_a_newcomer_is_seen_as_soon_as_its_join_returns_though_alone_was_just_answered(tmp_path: Path) -> None:
    """An "alone" answer stands for a moment without a look at procs/ (members.RECHECK_SECONDS);
    a newcomer is still seen by the time its join returns, however recent that answer was.
    Two memberships in one process: flock tells them apart as it tells processes apart."""
    procs = tmp_path / "procs"
    first, newcomer = Members(procs), Members(procs)
    try:
        assert first.join()
        assert first.alone()  # just answered: the next call may reuse it
        assert not newcomer.join()
        assert not first.alone()
    finally:
        newcomer.leave()
        first.leave()


def test_a_newcomer_is_seen_when_its_join_returns_on_a_clock_too_coarse_to_date_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a coarse timestamp clock the newcomer's file may leave procs/' mtime as it was, so only
    its later touch tells; an "alone" answered just before that touch must not outlive its join."""
    procs = tmp_path / "procs"
    first, newcomer = Members(procs), Members(procs)
    answered_during_join: list[bool] = []
    real_sleep = time.sleep

    def coarse_sleep(seconds: float) -> None:
        if not answered_during_join:  # the newcomer's first wait: its file exists, undated
            os.utime(procs, ns=(undated, undated))
            real_sleep(seconds)
            answered_during_join.append(first.alone())  # looks, sees the old mtime: alone
        else:
            real_sleep(seconds)

    try:
        assert first.join()
        assert first.alone()
        undated = os.stat(procs).st_mtime_ns
        monkeypatch.setattr(members_module.time, "sleep", coarse_sleep)
        assert not newcomer.join()
        monkeypatch.undo()
        assert answered_during_join == [True]  # the clock hid the newcomer then, as intended
        assert not first.alone()
    finally:
        newcomer.leave()
        first.leave()


def test_a_second_process_makes_both_share_the_dir_through_sqlite(root: Path) -> None:
    joined, done = SPAWN.Event(), SPAWN.Event()
    receive, send = SPAWN.Pipe(duplex=False)
    with opened(root) as cache:
        put(cache, "before", b"installed while alone")  # in memory only, not written yet
        child = SPAWN.Process(target=child_share, args=(str(root), joined, done, send))
        child.start()
        try:
            assert joined.wait(30)
            assert not cache.alone()  # one stat of procs/ tells
            assert isinstance(cache.fill_lock("k"), FillLock)
            put(cache, "from parent", b"parent bytes")  # written through: the child sees it at once
            assert {"before", "from parent"} <= indexed_keys(root)  # the batch went first
        finally:
            done.set()
            child.join(30)
        assert child.exitcode == 0
        assert receive.recv() == (False, True)
        assert cache.get("before") is not None


def answer_alone_then_let_a_newcomer_be_found(cache: DiskCache) -> None:
    """The next "alone" answer this cache reads is True, and right after it is read another thread
    asks and finds the newcomer (which turns journaling off) before the change it decided is made.

    A stand-in for the thread scheduling that opens this window, which no test can bring about
    on purpose; the newcomer, its registration and the flip are real."""
    real = cache._members.alone
    armed = [True]

    def alone() -> bool:
        if armed:
            armed.clear()
            assert not cache.alone()  # the other thread: looks, sees the newcomer, stops journaling
            return True  # what this thread had read just before
        return real()

    cache._members.alone = alone  # type: ignore[method-assign]


@pytest.mark.parametrize("change", ["install", "discard", "drop damaged"])
def test_a_change_decided_alone_reaches_sqlite_though_a_newcomer_came_before_it_was_made(
    root: Path, change: str
) -> None:
    """Found in review: a change made after another thread saw the newcomer was kept in memory only
    (never journaled, and not written through either), so SQLite never learnt of it."""
    data = b"bytes of k"
    with opened(root) as cache:
        if change != "install":
            put(cache, "k", data)
            cache.flush()
            assert indexed_keys(root) == {"k"}
        with opened(root) as newcomer:
            answer_alone_then_let_a_newcomer_be_found(cache)
            if change == "install":
                put(cache, "k", data)
            elif change == "discard":
                cache.discard("k")
            else:
                entry = cache.get("k")
                assert entry is not None
                entry.path.write_bytes(b"X" * len(data))  # same size, other bytes
                cache.drop_damaged(meta_for("k", data))
            assert not cache.alone()
            cache.flush()
            assert indexed_keys(root) == ({"k"} if change == "install" else set())  # what the newcomer reads
            assert newcomer.is_open


def test_a_newcomer_leaves_files_it_does_not_know_to_the_process_that_installed_them(root: Path) -> None:
    """The newcomer's start-up sweep must not remove what a live process installed but has not
    written to the index yet; a killed member's registration is no company."""
    with opened(root) as cache:
        put(cache, "unwritten", b"not in SQLite yet")
        entry = cache.get("unwritten")
        assert entry is not None
        with opened(root) as newcomer:
            assert not newcomer.alone()
            assert entry.path.exists()
        fd = cache.open_entry(entry)
        assert fd is not None
        os.close(fd)
    stale = root / "procs" / "99999-dead"
    stale.write_bytes(b"")  # a killed process's file: nobody holds its flock
    with opened(root) as alone:
        assert alone.alone()
        assert not stale.exists()
