"""The disk tier, one rule per test, against real files (and real processes where a rule is about processes)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import multiprocessing
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from servefiles import ServeFiles
from servefiles.cache.disk import TEMP_PREFIX, DiskCache, DiskEntry, StartupReport
from servefiles.cache.fill import Fill, Filler, opened_on_thread
from servefiles.cache.locks import FillLock
from servefiles.cache.verified import (
    FINE_SETTLE_SECONDS,
    FINE_TICK_NS,
    LOCAL_FILE_SYSTEMS,
    SETTLE_SECONDS,
    FileStamp,
    VerifiedContents,
    changes_seen_at_once,
)
from servefiles.cache.writer import DiskWriter
from servefiles.errors import CacheWriteError, StoreUnavailable
from servefiles.localfs import file_system_type
from servefiles.metrics import Metrics
from servefiles.store import open_store
from servefiles.store.types import FileMeta

from .alarms import alarm
from .asgi_servers import asgi_request
from .tools import open_descriptors_of

MiB = 1024 * 1024
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
# Children start from a clean fork server (no SQLite connection or flock inherited from
# pytest) that has this module imported already, so each one starts in milliseconds.
SPAWN = multiprocessing.get_context("forkserver")
SPAWN.set_forkserver_preload([__name__])


def meta_for(key: str, data: bytes, version: int = 1, content_type: str = "image/png") -> FileMeta:
    return FileMeta(
        key, version, hashlib.sha256(data).hexdigest(), len(data), content_type, T0, T0 + timedelta(seconds=version)
    )


def put(cache: DiskCache, key: str, data: bytes, version: int = 1) -> DiskEntry:
    with cache.begin(meta_for(key, data, version)) as writer:
        writer.write(data)
        return writer.commit()


def all_paths(root: Path) -> list[Path]:
    """Everything under ``root``, without following symlinks."""
    found: list[Path] = []
    for top, dirs, files in os.walk(root):
        found += [Path(top, name) for name in dirs + files]
    return found


def temp_files(root: Path) -> list[Path]:
    return [path for path in all_paths(root / "objects") if path.name.startswith(TEMP_PREFIX)]


def reopen(root: Path, max_bytes: int = MiB) -> tuple[DiskCache, StartupReport]:
    cache = DiskCache(root, max_bytes)
    return cache, cache.open()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(root: Path) -> Iterator[DiskCache]:
    disk = DiskCache(root, MiB)
    disk.open()
    yield disk
    disk.close()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts even a blocking open(2)."""
    with alarm(seconds, lambda: TimeoutError(f"still running after {seconds} s")):
        yield


# -- child processes (module level: the spawn context imports them) -----------------------


def child_write_half_then_die(root: str, data: bytes) -> None:
    cache = DiskCache(Path(root), MiB)
    cache.open()
    writer = cache.begin(meta_for("half", data))
    writer.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)


def child_write_slowly(root: str, data: bytes, halfway: Event, finish: Event) -> None:
    cache = DiskCache(Path(root), MiB)
    cache.open()
    writer = cache.begin(meta_for("slow", data))
    writer.write(data[: len(data) // 2])
    halfway.set()
    finish.wait(30)
    writer.write(data[len(data) // 2 :])
    writer.commit()
    cache.close()


def child_hold_fill_lock(root: str, key: str, held: Event) -> None:
    cache = DiskCache(Path(root), MiB)
    cache.open()
    assert cache.lock(key).try_acquire()
    held.set()
    time.sleep(60)  # until the parent kills us


def child_try_fill_lock(root: str, key: str, result: Connection) -> None:
    cache = DiskCache(Path(root), MiB)
    cache.open()
    result.send(cache.lock(key).try_acquire())


def child_write_past_file_size_limit(root: str, result: Connection) -> None:
    import resource

    cache = DiskCache(Path(root), 8 * MiB)
    cache.open()
    data = os.urandom(2 * MiB)
    writer = cache.begin(meta_for("big", data))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the kernel answers EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    outcome: dict[str, object] = {"error": None}
    try:
        for start in range(0, len(data), 64 * 1024):
            writer.write(data[start : start + 64 * 1024])
    except CacheWriteError as exc:
        cause = exc.__cause__
        outcome = {"error": type(exc).__name__, "errno": cause.errno if isinstance(cause, OSError) else None}
    outcome["temp_exists"] = os.path.exists(writer.path)
    outcome["entry"] = cache.get("big") is not None
    result.send(outcome)


def child_begin_without_free_fds(root: str, result: Connection) -> None:
    import resource

    cache = DiskCache(Path(root), MiB)
    cache.open()
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    with contextlib.suppress(OSError):
        while True:  # fill the gaps below the limit
            os.open(os.devnull, os.O_RDONLY)
    outcome: dict[str, object] = {"error": None}
    try:
        cache.begin(meta_for("k", b"abc"))
    except CacheWriteError as exc:
        cause = exc.__cause__
        outcome = {"error": type(exc).__name__, "errno": cause.errno if isinstance(cause, OSError) else None}
    result.send(outcome)


def child_commit_many(root: str, worker: int, max_bytes: int) -> None:
    cache = DiskCache(Path(root), max_bytes)
    cache.open()
    for n in range(25):
        data = f"shared {n % 5}".encode() * 40 if n % 2 else f"worker {worker} file {n}".encode() * 40
        with contextlib.suppress(CacheWriteError):  # another worker cached a newer version
            put(cache, f"k{n % 10}", data, version=worker * 100 + n)
        if n % 3 == 0:
            cache.touch(f"k{(n + 1) % 10}")
        if n % 7 == 0:
            cache.discard(f"k{(n + 2) % 10}")
    cache.close()


def run_child(target: Callable[..., object], *args: object, timeout: float = 30) -> int | None:
    process = SPAWN.Process(target=target, args=args)
    process.start()
    process.join(timeout)
    assert not process.is_alive(), "child process hung"
    return process.exitcode


# -- publish -------------------------------------------------------------------------------


def test_commit_installs_a_file_named_by_content_hash_never_by_key(cache: DiskCache, root: Path) -> None:
    data = b"PNG bytes"
    entry = put(cache, "avatars/alice.png", data)
    sha = hashlib.sha256(data).hexdigest()
    assert entry.path == root.absolute() / "objects" / sha[:2] / sha
    assert entry.path.read_bytes() == data
    assert cache.get("avatars/alice.png") == entry
    assert not any("alice" in str(path) or "avatars" in str(path) for path in all_paths(root))


@pytest.mark.parametrize("squatter", ["gone", "file", "symlink"])
def test_a_shard_removed_or_taken_while_running_is_made_again_by_the_next_write(
    cache: DiskCache, root: Path, tmp_path: Path, squatter: str
) -> None:
    """Every write looks at its shard: one found gone, or something else in its place, is made
    again, and a link there is never written through (checking once per process would miss it)."""
    first = put(cache, "a.png", b"first")
    shard = first.path.parent
    data = next(
        f"same shard {n}".encode()
        for n in range(100_000)
        if hashlib.sha256(f"same shard {n}".encode()).hexdigest()[:2] == shard.name
    )
    shutil.rmtree(shard)
    outside = tmp_path / "outside"
    outside.mkdir()
    if squatter == "file":
        shard.write_bytes(b"not a directory")
    elif squatter == "symlink":
        shard.symlink_to(outside, target_is_directory=True)
    entry = put(cache, "b.png", data)
    assert entry.path.parent == shard and stat.S_ISDIR(os.lstat(shard).st_mode)
    assert entry.path.read_bytes() == data
    assert list(outside.iterdir()) == []


def test_a_directory_squatting_on_a_content_name_is_replaced_by_the_file(cache: DiskCache, root: Path) -> None:
    data = b"bytes whose name a directory took"
    sha = hashlib.sha256(data).hexdigest()
    squatter = root / "objects" / sha[:2] / sha
    (squatter / "inside").mkdir(parents=True)
    entry = put(cache, "k.png", data)
    assert entry.path == squatter.absolute() and entry.path.read_bytes() == data


def test_a_file_being_written_is_invisible_until_commit(cache: DiskCache) -> None:
    data = b"0123456789" * 1000
    writer = cache.begin(meta_for("k", data))
    writer.write(data[:5000])
    final = cache.content_path(meta_for("k", data).sha256)
    temp = Path(writer.path)
    assert temp.parent == final.parent  # same directory: the rename is atomic
    assert temp.name.startswith(TEMP_PREFIX)
    assert not final.exists()
    assert cache.get("k") is None
    assert temp.read_bytes() == data[:5000]  # a reader may follow the writer
    writer.write(data[5000:])
    writer.commit()
    assert final.read_bytes() == data
    assert not os.path.exists(writer.path)


@pytest.mark.parametrize(
    "written",
    [b"same size, other bytes!", b"short", b"same size, right bytes!" + b"too long"],
    ids=["wrong-hash", "too-short", "too-long"],
)
def test_commit_fails_and_leaves_nothing_when_bytes_do_not_match_meta(
    cache: DiskCache, root: Path, written: bytes
) -> None:
    meta = meta_for("k", b"same size, right bytes!")
    writer = cache.begin(meta)
    with pytest.raises(CacheWriteError):
        writer.write(written)
        writer.commit()
    assert cache.get("k") is None
    assert temp_files(root) == []
    assert not cache.content_path(meta.sha256).exists()
    assert cache.stats().entries == 0


def test_abort_removes_the_temp_file_and_is_idempotent(cache: DiskCache) -> None:
    writer = cache.begin(meta_for("k", b"abc"))
    writer.write(b"ab")
    writer.abort()
    writer.abort()
    assert not os.path.exists(writer.path)
    with pytest.raises(CacheWriteError):
        writer.write(b"c")


def test_begin_refuses_a_file_larger_than_the_whole_cache(root: Path) -> None:
    small = DiskCache(root, max_bytes=10)
    small.open()
    with pytest.raises(CacheWriteError):
        small.begin(meta_for("k", b"x" * 11))
    small.close()


def test_begin_raises_cache_write_error_when_the_process_is_out_of_file_descriptors(root: Path) -> None:
    """No temp file can be created: EMFILE from open(2), a real OSError for any user (a read-only
    shard directory would stand in for EROFS, but root ignores directory permissions, and CI runs
    as root)."""
    receive, send = SPAWN.Pipe(duplex=False)
    assert run_child(child_begin_without_free_fds, str(root), send) == 0
    assert receive.recv() == {"error": "CacheWriteError", "errno": errno.EMFILE}
    assert temp_files(root) == []


def test_write_failing_with_a_real_oserror_raises_cache_write_error_and_leaves_no_temp(root: Path) -> None:
    """RLIMIT_FSIZE makes write(2) fail with EFBIG, a real OSError from the kernel.

    It stands in for ENOSPC, which needs a small filesystem (a tmpfs is root-only):
    the writer's path through the error is the same.
    """
    receive, send = SPAWN.Pipe(duplex=False)
    assert run_child(child_write_past_file_size_limit, str(root), send) == 0
    outcome = receive.recv()
    assert outcome == {"error": "CacheWriteError", "errno": errno.EFBIG, "temp_exists": False, "entry": False}
    assert temp_files(root) == []


def test_a_newer_version_replaces_the_older_and_its_file(cache: DiskCache) -> None:
    old = put(cache, "k", b"version one", version=1)
    new = put(cache, "k", b"version two", version=2)
    assert cache.get("k") == new
    assert not old.path.exists()
    assert cache.stats().entries == 1
    assert cache.stats().bytes == len(b"version two")


def test_an_older_version_never_replaces_a_newer_one(cache: DiskCache, root: Path) -> None:
    new = put(cache, "k", b"version two", version=2)
    with pytest.raises(CacheWriteError):
        put(cache, "k", b"version one", version=1)
    assert cache.get("k") == new
    assert temp_files(root) == []
    assert not cache.content_path(meta_for("k", b"version one").sha256).exists()


# -- the index -----------------------------------------------------------------------------


def test_the_index_survives_close_and_reopen(cache: DiskCache, root: Path) -> None:
    entry = put(cache, "docs/report.pdf", b"%PDF-1.7 ...", version=42)
    cache.close()
    again, report = reopen(root)
    assert again.get("docs/report.pdf") == entry
    assert again.get("docs/report.pdf").meta.updated_at.tzinfo is not None  # type: ignore[union-attr]
    assert (report.entries, report.bytes) == (1, len(b"%PDF-1.7 ..."))
    assert (report.removed_temp, report.removed_unvouched, report.dropped_invalid) == (0, 0, 0)
    again.close()


def test_open_is_idempotent(cache: DiskCache) -> None:
    put(cache, "k", b"abc")
    assert cache.open() is cache.open()
    assert cache.get("k") is not None


def test_a_corrupt_index_is_rebuilt_empty_and_its_files_swept(cache: DiskCache, root: Path) -> None:
    entry = put(cache, "k", b"abc")
    cache.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'index.sqlite3'}{suffix}").unlink(missing_ok=True)
    (root / "index.sqlite3").write_bytes(b"this is not a database" * 100)
    again, report = reopen(root)
    assert report.entries == 0
    assert report.removed_unvouched == 1
    assert not entry.path.exists()
    put(again, "k", b"abc")  # and it works again
    again.close()


def test_a_busy_index_is_not_mistaken_for_a_corrupt_one(cache: DiskCache, root: Path) -> None:
    put(cache, "k", b"abc")
    blocker = sqlite3.connect(root / "index.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    second = DiskCache(root, MiB)
    second._index.busy_timeout = 0.2
    try:
        with pytest.raises(sqlite3.OperationalError):
            second.open()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert cache.get("k") is not None  # nothing was rebuilt


def test_a_tampered_index_row_never_becomes_a_path(cache: DiskCache, root: Path) -> None:
    conn = sqlite3.connect(root / "index.sqlite3", isolation_level=None)
    conn.execute("PRAGMA ignore_check_constraints = ON")  # the schema's CHECKs would refuse it
    conn.execute("INSERT INTO files (sha256, size) VALUES ('../../../../etc/passwd', 3)")
    conn.execute("INSERT INTO entries VALUES ('k', 1, '../../../../etc/passwd', 'text/plain', 0, 0, 0, 0)")
    conn.close()
    assert cache.get("k") is None
    cache.close()
    again, _ = reopen(root)  # the in-memory index is loaded from these rows: the row is skipped
    assert again.get("k") is None and again.find("k") is None
    again.close()


def test_open_without_sweep_only_reads(cache: DiskCache, root: Path) -> None:
    entry = put(cache, "k", b"abc")
    dead = entry.path.parent / f"{TEMP_PREFIX}dead"
    dead.write_bytes(b"x")
    cache.flush()  # a look reads the index on disk, written behind (at most FLUSH_SECONDS late)
    look = DiskCache(root, max_bytes=0)
    report = look.open(sweep=False)
    look.close()
    assert (report.entries, report.bytes, report.removed_temp) == (1, 3, 0)
    assert dead.exists()


# -- load: validate and sweep at start-up --------------------------------------------------


def test_startup_sweep_removes_temp_files_and_files_nobody_vouches_for(cache: DiskCache, root: Path) -> None:
    kept = put(cache, "kept", b"kept")
    cache.close()
    outside = root.parent / "outside.txt"
    outside.write_bytes(b"not yours")
    shard = kept.path.parent
    junk_sha = hashlib.sha256(b"junk").hexdigest()
    junk_shard = root / "objects" / junk_sha[:2]
    junk_shard.mkdir(exist_ok=True)
    (junk_shard / junk_sha).write_bytes(b"junk")  # a well-named file the index never heard of
    (shard / f"{TEMP_PREFIX}12345-dead").write_bytes(b"half a fi")  # a dead writer's temp file
    (shard / f"{TEMP_PREFIX}link").symlink_to(outside)
    (shard / ("a" * 64)).symlink_to(outside)  # an unvouched symlink: removed, target untouched
    os.mkfifo(shard / "fifo")
    (shard / "directory").mkdir()
    (shard / "directory" / "inner").write_bytes(b"x")
    (root / "objects" / "README").write_bytes(b"stray")
    (root / "objects" / "zz").mkdir()
    (root / "objects" / "ff").symlink_to(root.parent)  # a shard that is a link: never walked into

    with deadline(10):
        again, report = reopen(root)
    assert report.removed_temp == 2
    assert report.removed_unvouched == 7
    assert report.dropped_invalid == 0
    assert again.get("kept") == kept
    left = [path for path in all_paths(root / "objects") if not stat.S_ISDIR(path.lstat().st_mode)]
    assert left == [kept.path]
    assert not os.path.lexists(root / "objects" / "ff") or (root / "objects" / "ff").is_dir()
    assert outside.read_bytes() == b"not yours"
    again.close()


@pytest.mark.parametrize("damage", ["truncated", "grown", "symlink", "fifo", "directory", "missing"])
def test_startup_drops_entries_whose_file_is_damaged(cache: DiskCache, root: Path, damage: str) -> None:
    kept = put(cache, "kept", b"good file")
    entry = put(cache, "victim", b"victim's bytes")
    cache.close()
    outside = root.parent / "outside.txt"
    outside.write_bytes(b"victim's bytes")  # the right size: the link must still not be followed
    entry.path.unlink()
    if damage == "truncated":
        entry.path.write_bytes(b"victim")
    elif damage == "grown":
        entry.path.write_bytes(b"victim's bytes and more")
    elif damage == "symlink":
        entry.path.symlink_to(outside)
    elif damage == "fifo":
        os.mkfifo(entry.path)
    elif damage == "directory":
        entry.path.mkdir()
    with deadline(10):
        again, report = reopen(root)
    assert report.dropped_invalid == 1
    assert (report.entries, report.bytes) == (1, len(b"good file"))
    assert again.get("victim") is None
    assert again.get("kept") == kept
    assert not os.path.lexists(entry.path)
    assert outside.read_bytes() == b"victim's bytes"
    again.close()


def test_startup_keeps_the_temp_file_of_a_live_writer_in_another_process(root: Path) -> None:
    data = b"written by a live process " * 100
    halfway, finish = SPAWN.Event(), SPAWN.Event()
    writer = SPAWN.Process(target=child_write_slowly, args=(str(root), data, halfway, finish))
    writer.start()
    try:
        assert halfway.wait(30)
        cache, report = reopen(root)
        assert report.removed_temp == 0
        assert len(temp_files(root)) == 1
    finally:
        finish.set()
        writer.join(30)
    assert writer.exitcode == 0
    assert cache.get("slow") is None  # installed by another process after this one loaded: not known yet
    entry = cache.find("slow")  # a miss asks the index on disk
    assert entry is not None and entry.path.read_bytes() == data
    cache.close()


def test_kill_9_in_the_middle_of_a_write_leaves_no_entry_and_the_next_open_sweeps_it(root: Path) -> None:
    DiskCache(root, MiB).open()
    assert run_child(child_write_half_then_die, str(root), b"x" * 10_000) == -signal.SIGKILL
    assert len(temp_files(root)) == 1
    cache, report = reopen(root)
    assert cache.get("half") is None
    assert report.removed_temp == 1
    assert report.entries == 0
    assert temp_files(root) == []
    cache.close()


def test_startup_of_many_entries_is_fast(cache: DiskCache, root: Path) -> None:
    """A smoke check of the batched loader; benchmarks/disk_startup.py measures 10^5."""
    for n in range(300):
        put(cache, f"k{n}", f"file {n}".encode())
    cache.close()
    again, report = reopen(root)
    assert report.entries == 300
    assert report.seconds < 2
    again.close()


# -- the hit path: hostile files are a miss ------------------------------------------------


def test_open_entry_returns_a_blocking_fd_of_the_content(cache: DiskCache) -> None:
    entry = put(cache, "k", b"content")
    fd = cache.open_entry(entry)
    assert fd is not None
    try:
        assert os.get_blocking(fd)
        assert os.pread(fd, 100, 0) == b"content"
    finally:
        os.close(fd)


@pytest.mark.parametrize("damage", ["symlink", "fifo", "directory", "truncated", "grown", "missing"])
def test_open_entry_refuses_what_is_not_the_indexed_file_and_forgets_it(
    cache: DiskCache, root: Path, damage: str
) -> None:
    entry = put(cache, "k", b"twelve bytes")
    outside = root.parent / "outside.txt"
    outside.write_bytes(b"twelve bytes")  # right size, so only O_NOFOLLOW stops it
    entry.path.unlink()
    if damage == "symlink":
        entry.path.symlink_to(outside)
    elif damage == "fifo":
        os.mkfifo(entry.path)
    elif damage == "directory":
        entry.path.mkdir()
    elif damage == "truncated":
        entry.path.write_bytes(b"twelve")
    elif damage == "grown":
        entry.path.write_bytes(b"twelve bytes and more")
    with deadline(5):  # a FIFO opened without O_NONBLOCK would hang here
        assert cache.open_entry(entry) is None
    assert cache.get("k") is None
    assert not os.path.lexists(entry.path)
    assert outside.read_bytes() == b"twelve bytes"
    assert cache.stats().entries == 0


def test_a_damaged_shared_file_drops_every_entry_that_uses_it(cache: DiskCache) -> None:
    first = put(cache, "a", b"same bytes")
    put(cache, "b", b"same bytes")
    first.path.unlink()
    first.path.write_bytes(b"same")
    assert cache.open_entry(first) is None
    assert cache.get("a") is None and cache.get("b") is None


@pytest.mark.parametrize("sharing", [False, True], ids=["alone", "sharing the dir"])
def test_an_install_never_shares_a_file_of_its_bytes_damaged_in_place(root: Path, sharing: bool) -> None:
    """A key installed with content already on disk under another key shares that file only if
    hashing it agrees: a file damaged in place (same size, other bytes) is replaced by the bytes
    just written and hashed, never adopted unseen (then served, or published for nginx, as good)."""
    data = os.urandom(300_000)
    with contextlib.ExitStack() as stack:
        cache = stack.enter_context(contextlib.closing(DiskCache(root, MiB)))
        cache.open()
        if sharing:  # a second process in the dir: installs go through SQLite (writer.install)
            other = stack.enter_context(contextlib.closing(DiskCache(root, MiB)))
            other.open()
        first = put(cache, "a", data)
        with first.path.open("r+b") as file:
            file.seek(5000)
            file.write(b"X" * 10)
        assert cache.alone() != sharing
        put(cache, "b", data)
        assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.meta.sha256


def test_open_entry_keeps_a_good_copy_installed_after_the_failed_open(cache: DiskCache) -> None:
    entry = put(cache, "k", b"content")
    entry.path.unlink()
    stale = DiskEntry(entry.meta, entry.path)
    put(cache, "k", b"content", version=2)  # another writer put it back meanwhile
    fd = cache.open_entry(stale)
    assert fd is not None
    os.close(fd)
    assert cache.get("k") is not None


# -- evict ---------------------------------------------------------------------------------


def test_lru_eviction_keeps_bytes_within_budget_and_evicts_least_recently_touched_first(root: Path) -> None:
    cache = DiskCache(root, max_bytes=30)
    cache.open()
    for key in "abc":
        put(cache, key, key.encode() * 10)
    cache.touch("a")
    put(cache, "d", b"d" * 10)
    assert [key for key in "abcd" if cache.get(key)] == ["a", "c", "d"]
    put(cache, "e", b"e" * 10)
    assert [key for key in "abcde" if cache.get(key)] == ["a", "d", "e"]
    stats = cache.stats()
    assert stats.bytes == 30 <= stats.max_bytes
    assert stats.evictions == cache.evictions == 2
    assert not cache.content_path(meta_for("b", b"b" * 10).sha256).exists()
    cache.close()


def test_touches_are_persisted_and_order_eviction_after_reopen(root: Path) -> None:
    cache = DiskCache(root, max_bytes=30)
    cache.open()
    for key in "abc":
        put(cache, key, key.encode() * 10)
    cache.touch("a")
    cache.touch("b")
    cache.close()
    again, _ = reopen(root, max_bytes=30)
    put(again, "d", b"d" * 10)
    assert [key for key in "abcd" if again.get(key)] == ["a", "b", "d"]
    again.close()


def test_the_entry_just_committed_is_never_evicted(root: Path) -> None:
    cache = DiskCache(root, max_bytes=30)
    cache.open()
    put(cache, "old", b"o" * 25)
    put(cache, "new", b"n" * 20)
    assert cache.get("new") is not None
    assert cache.get("old") is None
    assert cache.stats().bytes == 20
    cache.close()


def test_shared_content_counts_once_against_the_budget(root: Path) -> None:
    cache = DiskCache(root, max_bytes=20)
    cache.open()
    for key in "abc":
        put(cache, key, b"s" * 15)
    assert all(cache.get(key) for key in "abc")
    assert (cache.stats().entries, cache.stats().bytes, cache.evictions) == (3, 15, 0)
    cache.close()


# -- removal listeners and holding (what nginx's published tree follows) -------------------


def test_removal_listeners_hear_each_replaced_discarded_or_evicted_key_after_it_commits(root: Path) -> None:
    cache = DiskCache(root, max_bytes=30)
    heard: list[tuple[str, DiskEntry | None]] = []
    cache.on_removed(lambda key: heard.append((key, cache.get(key))))
    cache.open()
    put(cache, "a", b"a" * 10)
    put(cache, "b", b"b" * 10)
    put(cache, "a", b"A" * 10, version=2)
    put(cache, "a", b"A" * 10, version=2)  # the same version again: nothing removed
    assert [(key, entry and entry.meta.version) for key, entry in heard] == [("a", 2)]  # heard after the commit
    cache.discard("b")
    put(cache, "c", b"c" * 10)
    put(cache, "d", b"d" * 10)
    put(cache, "e", b"e" * 10)  # evicts the least recently used: a
    assert [key for key, _ in heard] == ["a", "b", "a"]
    cache.close()


def test_a_failing_removal_listener_does_not_fail_the_change(cache: DiskCache) -> None:
    def fail(key: str) -> None:
        raise RuntimeError(key)

    heard: list[str] = []
    cache.on_removed(fail)
    cache.on_removed(heard.append)
    put(cache, "a", b"a")
    cache.discard("a")
    assert cache.get("a") is None and heard == ["a"]


def test_holding_says_whether_an_entry_is_still_current_and_keeps_it_so(cache: DiskCache, root: Path) -> None:
    old = put(cache, "a", b"old")
    with cache.holding(old) as current:
        assert current
        other = DiskCache(root, MiB)
        other._index.busy_timeout = 0.2
        other.open(sweep=False)
        with pytest.raises(CacheWriteError):  # another process cannot change the cache meanwhile
            put(other, "a", b"new", version=2)
        other.close()
    put(cache, "a", b"new", version=2)
    with cache.holding(old) as current:
        assert not current


# -- discard -------------------------------------------------------------------------------


def test_discard_keeps_a_file_another_key_still_uses(cache: DiskCache) -> None:
    first = put(cache, "a", b"same bytes")
    second = put(cache, "b", b"same bytes")
    assert first.path == second.path
    cache.discard("a")
    assert cache.get("a") is None
    fd = cache.open_entry(second)
    assert fd is not None
    os.close(fd)
    cache.discard("b")
    assert not second.path.exists()
    assert (cache.stats().entries, cache.stats().bytes) == (0, 0)
    cache.discard("never cached")


# -- fill locks ----------------------------------------------------------------------------


def test_fill_lock_excludes_a_second_process(cache: DiskCache, root: Path) -> None:
    lock = cache.lock("k")
    assert lock.try_acquire()
    receive, send = SPAWN.Pipe(duplex=False)
    assert run_child(child_try_fill_lock, str(root), "k", send) == 0
    assert receive.recv() is False
    lock.release()
    assert run_child(child_try_fill_lock, str(root), "k", send) == 0
    assert receive.recv() is True


def test_fill_lock_is_released_when_its_holder_is_killed(cache: DiskCache, root: Path) -> None:
    held = SPAWN.Event()
    holder = SPAWN.Process(target=child_hold_fill_lock, args=(str(root), "k", held))
    holder.start()
    try:
        assert held.wait(30)
        assert not cache.lock("k").try_acquire()
        assert cache.lock("other key").try_acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.join(30)
    assert holder.exitcode == -signal.SIGKILL
    lock = cache.lock("k")
    assert lock.try_acquire()
    lock.release()


def test_fill_lock_files_are_named_by_hash_and_removed_on_release(cache: DiskCache, root: Path) -> None:
    lock = cache.lock("../../etc/passwd")
    with lock:
        assert lock.held
        assert lock.path.parent == root.absolute() / "locks"
        assert "passwd" not in lock.path.name
    assert not lock.path.exists()


def test_fill_lock_as_a_context_manager_excludes_threads(cache: DiskCache) -> None:
    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside, overlaps
        for _ in range(40):
            with cache.lock("k"):
                with guard:
                    inside += 1
                    overlaps += inside > 1
                time.sleep(0.0002)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert overlaps == 0


# -- many writers at once ------------------------------------------------------------------


def test_concurrent_processes_keep_the_index_and_the_files_consistent(root: Path) -> None:
    DiskCache(root, 4000).open()
    workers = [SPAWN.Process(target=child_commit_many, args=(str(root), n, 4000)) for n in range(1, 4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert_consistent(root, max_bytes=4000)


def test_concurrent_threads_keep_the_index_and_the_files_consistent(root: Path) -> None:
    cache = DiskCache(root, max_bytes=3000)
    cache.open()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(30):
                key = f"k{(n + i) % 8}"
                with contextlib.suppress(CacheWriteError):  # a newer version from another thread won
                    put(cache, key, f"{i % 4} shared".encode() * 30, version=n * 100 + i)
                cache.touch(f"k{i % 8}")
                entry = cache.get(f"k{(i + 3) % 8}")
                if entry is not None and (fd := cache.open_entry(entry)) is not None:
                    os.close(fd)
                if i % 5 == 0:
                    cache.discard(f"k{(n * i) % 8}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    cache.close()
    assert_consistent(root, max_bytes=3000)


def assert_consistent(root: Path, max_bytes: int) -> None:
    """A fresh start-up finds nothing to repair, and every entry's file is whole."""
    cache, report = reopen(root, max_bytes)
    assert (report.removed_temp, report.removed_unvouched, report.dropped_invalid) == (0, 0, 0)
    assert report.bytes <= max_bytes
    files = [path for path in all_paths(root / "objects") if stat.S_ISREG(path.lstat().st_mode)]
    assert sum(path.stat().st_size for path in files) == report.bytes
    for n in range(10):
        entry = cache.get(f"k{n}")
        if entry is not None:
            assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.meta.sha256
    cache.close()


def test_the_index_keeps_a_versions_validator_second_apart_from_updated_at(root: Path) -> None:
    """A burst of writes pushes a version's validator second (Last-Modified, the tree's mtime)
    ahead of its true ``updated_at``: the index keeps both, across a restart."""
    data = b"pushed ahead"
    meta = dataclasses.replace(meta_for("k", data), last_modified=datetime(2024, 5, 1, 12, 0, 9, tzinfo=UTC))
    cache = DiskCache(root, MiB)
    cache.open()
    with cache.begin(meta) as writer:
        writer.write(data)
        writer.commit()
    cache.close()
    cache, _ = reopen(root)
    try:
        entry = cache.get("k")
        assert entry is not None and entry.meta == meta
    finally:
        cache.close()


def test_an_index_of_schema_1_is_migrated_keeping_its_entries(root: Path) -> None:
    """Schema 1 had no ``last_modified``: the entries stay (no refetch of the whole cache after an
    upgrade), with the validator second taken from ``updated_at`` as the stores take theirs."""
    cache = DiskCache(root, MiB)
    cache.open()
    entry = put(cache, "k", b"kept", version=3)
    cache.close()
    with contextlib.closing(sqlite3.connect(root / "index.sqlite3", isolation_level=None)) as conn:
        conn.execute("ALTER TABLE entries DROP COLUMN last_modified")
        conn.execute("PRAGMA user_version = 1")
    cache, _ = reopen(root)
    try:
        found = cache.get("k")
        assert found is not None and found.meta == entry.meta
        assert found.meta.last_modified == entry.meta.updated_at.replace(microsecond=0)
        assert found.path.read_bytes() == b"kept"
    finally:
        cache.close()


# -- bytes read whole: checked against their sha256 once per file (verified.py) -------------------


def damage_in_place(path: Path) -> None:
    """Other bytes, same size, same file (inode)."""
    with path.open("r+b") as file:
        file.write(b"X" * 10)


def read_whole(cache: DiskCache, entry: DiskEntry) -> bytes | None:
    opened = cache.open_stamped(entry)
    assert opened is not None, "the file is there, of its indexed size"
    return cache.read_whole(entry, *opened)


def test_read_whole_returns_an_intact_file_and_remembers_it_once_settled(cache: DiskCache) -> None:
    data = os.urandom(5000)
    entry = put(cache, "a.png", data)
    cache.verified.settle_seconds = 0.1
    time.sleep(0.15)
    assert read_whole(cache, entry) == data
    assert entry.meta.sha256 in cache.verified
    assert read_whole(cache, entry) == data  # remembered: not hashed again, the same bytes


def test_a_file_read_within_the_settle_time_of_its_last_change_is_hashed_but_not_remembered(
    cache: DiskCache,
) -> None:
    """A file's ctime moves by whole ticks of the file system's clock: read within a tick of its
    last change, it could change again with the same ctime, so its mark could vouch for other bytes."""
    data = os.urandom(5000)
    cache.verified.local = False  # the 2 s settle time here: a loaded machine may well take 0.1 s to read
    entry = put(cache, "a.png", data)  # just renamed into place: its ctime is now
    assert read_whole(cache, entry) == data
    assert entry.meta.sha256 not in cache.verified


def test_the_settle_time_is_short_only_on_a_file_system_seen_to_keep_fine_timestamps() -> None:
    """A ctime off every 10 ms boundary proves the file system's granularity finer than that (it
    divides every timestamp it records): then only the kernel clock's tick (at most 10 ms) stands
    between two changes, and a file read 0.1 s after its last change is marked. On a file system
    of 10 ms, 1 s or 2 s timestamps every ctime is on a boundary, and the coarse time holds."""
    sha = "a" * 64
    coarse, fine, remote = VerifiedContents(local=True), VerifiedContents(local=True), VerifiedContents()
    on_boundary = 1_764_590_000 * 10**9 + 30 * FINE_TICK_NS  # 10 ms granularity (or 1 s, 2 s)
    off_boundary = on_boundary + 4_519_914  # nanosecond granularity
    for verified, changed in ((coarse, on_boundary), (fine, off_boundary), (remote, off_boundary)):
        read_at = changed / 1e9 + 0.5
        assert verified.found(sha, changed << 64 | 7, sha, read_at)
    assert not coarse.fine and coarse.settle_time() == SETTLE_SECONDS and sha not in coarse
    assert not remote.fine and remote.settle_time() == SETTLE_SECONDS and sha not in remote, \
        "a network file system's ctimes come from its server's clock: never the short time"  # fmt: skip
    assert fine.fine and fine.settle_time() == FINE_SETTLE_SECONDS and fine.vouches(sha, off_boundary << 64 | 7)
    assert not fine.found(sha, off_boundary << 64 | 8, "b" * 64, off_boundary / 1e9 + 0.5), "a mismatch is one"
    recent = off_boundary + 50_000_000  # read 50 ms after its change: within even the short time
    assert fine.found("c" * 64, recent << 64 | 9, "c" * 64, recent / 1e9 + 0.05) and "c" * 64 not in fine


def every_change_moved_the_ctime(directory: Path, rounds: int = 500) -> bool:
    """Whether ``rounds`` writes in a row to a file of ``directory``, each followed by an ``fstat``,
    all left different ctimes: what the cache's probe claims when it says yes, checked without its
    timing rule (a loaded machine may make the probe say no; never this say no where it said yes)."""
    path = directory / "probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        stamps = []
        for _ in range(rounds):
            os.write(fd, b"x")
            stamps.append(os.fstat(fd).st_ctime_ns)
        return len(set(stamps)) == rounds
    finally:
        os.close(fd)
        path.unlink()


def test_on_this_file_system_a_file_settled_for_the_settle_time_it_shows_is_remembered(cache: DiskCache) -> None:
    """The real file system under the test: its type and its own files' ctimes decide the settle
    time (none where every change moves the ctime; else 0.1 s where timestamps are finer than
    10 ms, as on most ext4, xfs, btrfs and tmpfs; else 2 s), and a file read once that time has
    passed since its last change is remembered, not hashed on every read."""
    data = os.urandom(5000)
    entry = put(cache, "a.png", data)
    local = file_system_type(entry.path) in LOCAL_FILE_SYSTEMS
    assert cache.verified.local is local
    if cache.verified.changes_seen:
        assert local and every_change_moved_the_ctime(cache.root)
    fine_here = local and os.stat(entry.path).st_ctime_ns % FINE_TICK_NS != 0
    if cache.verified.changes_seen:
        assert cache.verified.settle_time() == 0.0
        assert entry.meta.sha256 in cache.verified, "written and hashed here: marked as installed"
    else:
        assert read_whole(cache, entry) == data
        assert cache.verified.fine is fine_here
        time.sleep(cache.verified.settle_time() + 0.05)
    hashed = cache.verified.hashed
    assert read_whole(cache, entry) == data
    assert entry.meta.sha256 in cache.verified
    assert read_whole(cache, entry) == data
    assert cache.verified.hashed <= hashed + 1


def test_a_file_written_here_is_hashed_once_and_a_change_right_after_is_caught(cache: DiskCache) -> None:
    """A file this process writes is hashed as it is written. Where every change moves the ctime
    (multigrain timestamps) it is marked as installed, so its first read hashes nothing; else its
    first read hashes it. Either way, bytes changed in place at once — within the same tick of a
    coarse clock — are caught, not served: the mark holds the stamp taken after the rename."""
    data = os.urandom(5000)
    entry = put(cache, "a.png", data)
    hashed = cache.verified.hashed
    assert read_whole(cache, entry) == data
    assert cache.verified.hashed == hashed + (0 if cache.verified.changes_seen else 1)
    damage_in_place(entry.path)
    assert read_whole(cache, entry) is None, "damaged right after it was written: refetched, not served"
    assert cache.get("a.png") is None


def test_a_streamed_file_is_marked_as_installed_only_if_nothing_else_changed_its_temp_file(
    cache: DiskCache,
) -> None:
    """A file written in several steps (a streamed fill, its temp file open for as long as its
    store read) is marked as installed, where every change moves the ctime, when the ctime before
    each later write was the one the writer's own last write left."""
    data = os.urandom(300_000)
    meta = meta_for("v.bin", data)
    writer = cache.begin(meta)
    for start in range(0, len(data), 100_000):
        writer.write(data[start : start + 100_000])
    entry = writer.commit()
    assert (meta.sha256 in cache.verified) is cache.verified.changes_seen
    hashed = cache.verified.hashed
    opened = cache.open_stamped(entry)
    assert opened is not None
    assert cache.check_open(entry, *opened)
    os.close(opened[0])
    assert cache.verified.hashed == hashed + (0 if cache.verified.changes_seen else 1)


@pytest.mark.parametrize("when", ["between-writes", "before-commit"])
def test_a_streamed_file_changed_before_its_rename_is_hashed_when_first_read(cache: DiskCache, when: str) -> None:
    """What a writer hashes is what it wrote, not what the temp file holds: bytes another writer
    changed in the temp file between two of its writes move the ctime away from the one its own
    write left (or, before the commit, the one its last write left), so the file is not marked as
    installed, and they are caught on the first read, not served."""
    data = os.urandom(300_000)
    meta = meta_for("v.bin", data)
    writer = cache.begin(meta)
    writer.write(data[:100_000])
    if when == "between-writes":
        with open(writer.path, "r+b") as other:  # another writer of the temp file
            other.write(b"X" * 1000)
    writer.write(data[100_000:])
    if when == "before-commit":  # a streamed fill's commit may wait for a thread
        with open(writer.path, "r+b") as other:
            other.write(b"X" * 1000)
    entry = writer.commit()
    assert meta.sha256 not in cache.verified
    hashed = cache.verified.hashed
    opened = cache.open_stamped(entry)
    assert opened is not None
    assert not cache.check_open(entry, *opened), "damaged in its temp file: refetched, not served"
    os.close(opened[0])
    assert cache.verified.hashed == hashed + 1
    assert cache.get("v.bin") is None


def test_the_probe_says_no_when_each_of_its_rounds_could_have_seen_a_new_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coarse clock moves by ticks of about 1 ms or more: rounds that take that long (a
    synchronous mount on a slow device) would each see a new tick and every stamp would differ. The
    probe wants every step well under the shortest tick (HZ 1000, a tick a little under 1 ms
    under NTP's adjustment: 999,848 ns is also refused). Such a device cannot be had here: ``fstat`` is replaced by a
    fake that reports a ctime moving by 4 ms a round (and, to show the fake is what decides, by
    1 µs a round)."""
    fd = os.open(tmp_path / "probe", os.O_RDWR | os.O_CREAT, 0o600)
    real_fstat = os.fstat
    try:
        for step, expected in ((4_000_000, False), (999_848, False), (1_000, True)):
            clock = iter(range(1_764_590_000 * 10**9, 1_764_600_000 * 10**9, step))

            def fstat(descriptor: int, ticks: Iterator[int] = clock) -> os.stat_result:
                return os.stat_result(tuple(real_fstat(descriptor))[:10], {"st_ctime_ns": next(ticks)})

            monkeypatch.setattr(os, "fstat", fstat)
            assert changes_seen_at_once(fd) is expected, step
    finally:
        monkeypatch.undo()
        os.close(fd)


@pytest.fixture
def second_timestamps(tmp_path: Path) -> Iterator[Path]:
    """A real ext4 with 128-byte inodes (timestamps in whole seconds, no multigrain) on a loop
    device, mounted for the test. Needs root, as on CI."""
    image, mount = tmp_path / "ext4-128.img", tmp_path / "ext4-128"
    mount.mkdir()
    with image.open("wb") as file:
        file.truncate(16 * MiB)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", str(image)], capture_output=True)
    mounted = made.returncode == 0 and subprocess.run(["mount", "-o", "loop", str(image), str(mount)],
                                                      capture_output=True).returncode == 0  # fmt: skip
    if not mounted:
        pytest.skip("cannot make and mount an ext4 image here (needs root and mkfs.ext4)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_on_a_file_system_of_whole_second_timestamps_a_fresh_write_is_not_marked(second_timestamps: Path) -> None:
    """There a change within the same second leaves the ctime as it was: the probe says so, a file
    just written is not marked, and its first read hashes it (and does not mark it either: it
    changed less than the settle time ago)."""
    cache = DiskCache(second_timestamps / "cache", MiB)
    cache.open()
    try:
        assert cache.verified.local and not cache.verified.changes_seen
        assert cache.verified.settle_time() == SETTLE_SECONDS
        data = os.urandom(5000)
        entry = put(cache, "a.png", data)
        assert entry.meta.sha256 not in cache.verified
        assert read_whole(cache, entry) == data
        assert cache.verified.hashed == 1 and entry.meta.sha256 not in cache.verified
    finally:
        cache.close()


def test_where_every_change_is_seen_a_hash_is_remembered_at_once_and_a_write_is_marked() -> None:
    sha = "a" * 64
    seen, unseen, remote = VerifiedContents(local=True), VerifiedContents(local=True), VerifiedContents()
    seen.changes_seen = remote.changes_seen = True
    changed = 1_764_590_000 * 10**9 + 4_519_914
    for verified in (seen, unseen, remote):
        assert verified.found(sha, changed << 64 | 7, sha, changed / 1e9 + 0.001)  # read 1 ms after the change
    assert seen.settle_time() == 0.0 and seen.vouches(sha, changed << 64 | 7)
    assert sha not in unseen and sha not in remote, "a tick's settle time still applies to them"
    assert remote.settle_time() == SETTLE_SECONDS, "a network file system's ctimes are its server's"
    assert seen.wrote("b" * 64, changed << 64 | 8) and seen.vouches("b" * 64, changed << 64 | 8)
    assert not seen.vouches("b" * 64, (changed + 1) << 64 | 8), "a later change is another stamp"
    assert not unseen.wrote("b" * 64, changed << 64 | 8) and "b" * 64 not in unseen
    assert not remote.wrote("b" * 64, changed << 64 | 8) and "b" * 64 not in remote
    assert seen.hashed == 1, "a write marked is no hash"


def test_a_remembered_file_changed_in_place_is_hashed_again_and_dropped_with_every_entry_that_shares_it(
    cache: DiskCache,
) -> None:
    data = os.urandom(5000)
    first, second = put(cache, "a.png", data), put(cache, "b.png", data)
    assert first.path == second.path, "one content file for both keys"
    cache.verified.settle_seconds = 0.1
    time.sleep(0.15)
    assert read_whole(cache, first) == data
    assert first.meta.sha256 in cache.verified
    damage_in_place(first.path)
    assert read_whole(cache, second) is None, "the mark vouched for the file as it was, not as it is"
    assert cache.get("a.png") is None and cache.get("b.png") is None
    assert not first.path.exists()
    assert first.meta.sha256 not in cache.verified


def test_a_file_replaced_by_another_of_the_same_content_is_hashed_again(cache: DiskCache) -> None:
    """A mark names one file (inode and ctime), not a content: a copy put in its place (a restore,
    another process) is read as unknown, and a damaged one is caught even though the content's
    name was verified before."""
    data = os.urandom(5000)
    entry = put(cache, "a.png", data)
    cache.verified.settle_seconds = 0.1
    time.sleep(0.15)
    assert read_whole(cache, entry) == data and entry.meta.sha256 in cache.verified
    replacement = entry.path.with_name(TEMP_PREFIX + "replacement")
    replacement.write_bytes(b"Y" * len(data))
    os.replace(replacement, entry.path)
    assert read_whole(cache, entry) is None
    assert cache.get("a.png") is None


def test_a_small_entry_adopted_for_a_cancelled_fill_leaves_no_descriptor_open(
    cache: DiskCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill that finds its file installed by another process reads a small one whole on a thread
    (Filler._adopt). Cancelled while that thread opens it (a shutdown: Filler.close), the thread
    runs on: what it opened must be closed, not left to the cancelled caller (it was, when the
    open and the read were two hops: the descriptor of the first was lost)."""
    data = os.urandom(5000)
    entry = put(cache, "a.png", data)
    started, release = threading.Event(), threading.Event()
    real_open = cache.open_stamped

    def held_open(entry: DiskEntry, **options: bool) -> tuple[int, FileStamp] | None:
        started.set()
        release.wait(5)  # holds the thread inside the open until the caller is cancelled
        return real_open(entry, **options)

    monkeypatch.setattr(cache, "open_stamped", held_open)

    async def cancel_while_it_opens() -> None:
        async with open_store(f"sqlite:///{tmp_path / 'files.db'}") as store:
            filler = Filler(store, cache, None, Metrics(), wait_seconds=5)
            task = asyncio.ensure_future(filler._adopt(Fill(entry.meta, None, small=True), entry))
            await asyncio.to_thread(started.wait, 5)
            task.cancel()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):  # the thread finishes on its own (it may not have opened the file yet:
                if not open_descriptors_of(entry.path):  # the check that counts is the one below, after
                    break  # asyncio.run, which waits for the loop's threads)
                await asyncio.sleep(0.02)

    asyncio.run(cancel_while_it_opens())
    assert started.is_set()
    assert open_descriptors_of(entry.path) == [], "the descriptor opened for the cancelled fill was left open"


def test_a_fill_cancelled_while_it_takes_its_lock_lets_the_lock_go(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sharing the dir with another process, a fill takes the key's fill lock on a thread. Cancelled
    meanwhile (a shutdown), the thread runs on and takes it: the lock must be let go then, not held
    until this process exits (every later fill of the key, here or elsewhere, would wait for it)."""
    started, release, taken = threading.Event(), threading.Event(), threading.Event()
    real_try_acquire = FillLock.try_acquire

    def held_try_acquire(lock: FillLock) -> bool:
        started.set()
        release.wait(5)  # holds the thread inside the take until the fill is cancelled
        try:
            return real_try_acquire(lock)
        finally:
            taken.set()

    async def cancel_while_it_locks(cache: DiskCache) -> None:
        async with open_store(f"sqlite:///{tmp_path / 'files.db'}") as store:
            filler = Filler(store, cache, None, Metrics(), wait_seconds=5)
            filler.start(meta_for("k", b"content"))
            await asyncio.to_thread(started.wait, 5)
            await filler.close(grace_seconds=0)  # cancels the fill's task
            release.set()
            assert await asyncio.to_thread(taken.wait, 5)  # the thread has taken the lock (or failed to)

    with contextlib.ExitStack() as stack:
        cache = stack.enter_context(contextlib.closing(DiskCache(root, MiB)))
        cache.open()
        other = stack.enter_context(contextlib.closing(DiskCache(root, MiB)))  # a second user of the dir
        other.open()
        assert not cache.alone()
        monkeypatch.setattr(FillLock, "try_acquire", held_try_acquire)
        asyncio.run(cancel_while_it_locks(cache))
        lock = cache.lock("k")
        assert real_try_acquire(lock), "the fill lock taken for the cancelled fill is still held"
        lock.release()
    assert started.is_set()


@dataclasses.dataclass
class HeldDiskOpen:
    """The disk tier's open, held on its thread: ``started`` once a thread is in it, ``release`` to
    let it go on; ``opens`` counts the calls."""

    started: threading.Event
    release: threading.Event
    opens: list[int]


@pytest.fixture
def held_disk_open(monkeypatch: pytest.MonkeyPatch) -> HeldDiskOpen:
    """Every :meth:`DiskCache.open` waits (up to 5 s) for ``release`` before it opens: a slow start-up
    (a large dir's index), for a close or a request to meet it."""
    held = HeldDiskOpen(threading.Event(), threading.Event(), [])
    real_open = DiskCache.open

    def held_open(cache: DiskCache, sweep: bool = True) -> StartupReport:
        held.opens.append(1)
        held.started.set()
        held.release.wait(5)
        return real_open(cache, sweep)

    monkeypatch.setattr(DiskCache, "open", held_open)
    return held


def test_a_service_closed_while_its_disk_tier_opens_leaves_the_tier_closed(
    root: Path, tmp_path: Path, held_disk_open: HeldDiskOpen
) -> None:
    """The disk tier opens on a thread at start-up (a large dir's index takes a while). A close
    meanwhile (a deploy that stops a frontend as it starts) cancels the start-up, but not the thread:
    the close must wait for that open and then close the tier, not close first and leave the tier
    opened afterwards (its index writer running, its membership of the dir held)."""
    started, release = held_disk_open.started, held_disk_open.release

    async def close_while_it_opens() -> DiskCache:
        app = ServeFiles(None, db=f"sqlite:///{tmp_path / 'files.db'}", cache_dir=root)
        starting = asyncio.ensure_future(app.service.start())
        await asyncio.to_thread(started.wait, 5)
        closing = asyncio.ensure_future(app.aclose())
        await asyncio.sleep(0.1)  # the close has cancelled the start-up and reached the disk tier
        release.set()
        await closing
        with pytest.raises(StoreUnavailable):  # its start-up was cancelled by the close: "closing"
            await starting
        return app.service.runtime.disk

    disk = asyncio.run(close_while_it_opens())
    assert started.is_set()
    assert not disk.is_open, "the disk tier opened after the service was closed"


def test_a_start_asked_for_while_the_service_closes_is_refused(
    root: Path, tmp_path: Path, held_disk_open: HeldDiskOpen
) -> None:
    """While a close waits for the disk tier's open, a request must not start the service again:
    that start would open the tier a second time, after the close, and leave it open. It gets a 503
    (the service is closing), the tier is opened once, and closed at the end."""
    started, release, opens = held_disk_open.started, held_disk_open.release, held_disk_open.opens

    async def ask_while_it_closes() -> tuple[int, ServeFiles]:
        app = ServeFiles(None, db=f"sqlite:///{tmp_path / 'files.db'}", cache_dir=root)
        starting = asyncio.ensure_future(app.service.start())
        await asyncio.to_thread(started.wait, 5)
        closing = asyncio.ensure_future(app.aclose())
        await asyncio.sleep(0.1)  # the close now waits for the open
        asked = await asgi_request(app, "GET", b"/media/a.png")
        release.set()
        await closing
        with pytest.raises(StoreUnavailable):  # its start-up was cancelled by the close: "closing"
            await starting
        return asked.status, app

    status, app = asyncio.run(ask_while_it_closes())
    assert status == 503
    assert len(opens) == 1, "the service was started again during its close"
    assert not app.service.runtime.disk.is_open
    assert app.service.runtime.state == "stopped"


def test_a_request_waiting_for_the_start_up_when_a_close_begins_gets_a_503(
    root: Path, tmp_path: Path, held_disk_open: HeldDiskOpen
) -> None:
    """The first request starts the service and waits for it; a close meanwhile cancels the
    start-up. That request is answered 503 (the service is closing), not dropped with the
    cancellation that was meant for the start-up."""
    started, release = held_disk_open.started, held_disk_open.release

    async def close_while_it_waits() -> int:
        app = ServeFiles(None, db=f"sqlite:///{tmp_path / 'files.db'}", cache_dir=root)
        asked = asyncio.ensure_future(asgi_request(app, "GET", b"/media/a.png"))  # starts the service
        await asyncio.to_thread(started.wait, 5)
        closing = asyncio.ensure_future(app.aclose())
        await asyncio.sleep(0.1)
        release.set()
        await closing
        return (await asked).status

    assert asyncio.run(close_while_it_waits()) == 503


def test_a_close_that_fails_part_way_still_closes_the_disk_tier_and_may_start_again(tmp_path: Path) -> None:
    """A close cut short (an after-close hook that raises) ends "stopped" with the disk tier closed:
    left "stopping", every later start would be refused (a 503 for good)."""

    def failing_hook() -> None:
        raise OSError("the hook failed")

    async def close_then_start() -> ServeFiles:
        app = ServeFiles(None, db=f"sqlite:///{tmp_path / 'files.db'}", cache_dir=tmp_path / "cache")
        await app.service.start()
        app.service.runtime.hooks.after_close.append(failing_hook)
        with pytest.raises(OSError, match="the hook failed"):
            await app.service.runtime.close()
        assert app.service.runtime.state == "stopped"
        assert not app.service.runtime.disk.is_open
        app.service.runtime.hooks.after_close.remove(failing_hook)
        await app.service.start()  # starts again
        assert app.service.runtime.running
        await app.aclose()
        return app

    app = asyncio.run(close_then_start())
    assert app.service.runtime.state == "stopped"


def test_a_fill_cancelled_while_a_thread_commits_its_file_aborts_it_only_after(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sharing the dir, a fill's writes and commit run on a thread. A close that cancels the fill
    meanwhile must let that step end before the fill aborts its writer: an abort beside a running
    commit closed the writer's descriptor under it (the commit then closed it again, maybe someone
    else's by then)."""
    data = os.urandom(300_000)
    events: list[str] = []
    started, release = threading.Event(), threading.Event()
    real_commit, real_abort = DiskWriter.commit, DiskWriter.abort

    def held_commit(writer: DiskWriter) -> DiskEntry:
        events.append("commit begins")
        started.set()
        release.wait(5)
        try:
            return real_commit(writer)
        finally:
            events.append("commit ends")

    def recorded_abort(writer: DiskWriter) -> None:
        events.append("abort")
        real_abort(writer)

    async def cancel_while_it_commits(cache: DiskCache) -> None:
        async with open_store(f"sqlite:///{tmp_path / 'files.db'}") as store:
            await store.put("k", data)
            meta = await store.stat("k")
            assert meta is not None
            filler = Filler(store, cache, None, Metrics(), wait_seconds=5)
            filler.start(meta)
            await asyncio.to_thread(started.wait, 5)
            closing = asyncio.ensure_future(filler.close(grace_seconds=0))  # cancels the fill
            await asyncio.sleep(0.1)
            release.set()
            await closing

    with contextlib.ExitStack() as stack:
        cache = stack.enter_context(contextlib.closing(DiskCache(root, MiB)))
        cache.open()
        other = stack.enter_context(contextlib.closing(DiskCache(root, MiB)))  # a second user of the dir
        other.open()
        monkeypatch.setattr(DiskWriter, "commit", held_commit)
        monkeypatch.setattr(DiskWriter, "abort", recorded_abort)
        asyncio.run(cancel_while_it_commits(cache))
    assert events[:2] == ["commit begins", "commit ends"], events


def test_a_descriptor_taken_for_a_caller_cancelled_as_its_loop_ends_is_still_closed(root: Path) -> None:
    """``asyncio.run`` cancels whatever is pending as it ends, the work a cancelled caller left on a
    thread included: what that thread opens afterwards must still be closed (the loop will not run
    a callback for it again)."""
    path = root / "file"
    root.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"bytes")
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_open() -> int:
        started.set()
        release.wait(5)
        try:
            return os.open(path, os.O_RDONLY)
        finally:
            finished.set()

    async def leave_while_it_opens() -> None:
        caller = asyncio.ensure_future(opened_on_thread(slow_open))
        await asyncio.to_thread(started.wait, 5)
        threading.Timer(0.2, release.set).start()  # the thread ends after the loop has begun to end
        assert not caller.done()  # still waiting as the loop ends: asyncio.run cancels it

    asyncio.run(leave_while_it_opens())
    assert finished.wait(5)
    for _ in range(50):  # the thread closes it itself, just after
        if not open_descriptors_of(path):
            break
        time.sleep(0.02)
    assert open_descriptors_of(path) == [], "the descriptor opened for the cancelled caller was left open"


def test_a_descriptor_opened_on_a_thread_for_a_cancelled_caller_is_closed_not_lost(root: Path) -> None:
    """A large file is opened and hashed on a thread (DiskCache.open_checked); a request cancelled
    meanwhile leaves the thread running. The descriptor it then opens is closed, not leaked."""
    path = root / "file"
    root.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"bytes")
    opened: list[int] = []
    started, finished = threading.Event(), threading.Event()

    def slow_open() -> int:
        started.set()
        time.sleep(0.2)  # stands in for the hash of a large file
        opened.append(os.open(path, os.O_RDONLY))
        finished.set()
        return opened[0]

    async def cancel_while_it_runs() -> None:
        task = asyncio.ensure_future(opened_on_thread(slow_open))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(finished.wait, 5)
        await asyncio.sleep(0.05)  # the done-callback runs on the loop

    asyncio.run(cancel_while_it_runs())
    assert len(opened) == 1
    assert open_descriptors_of(path) == [], "the descriptor opened for the cancelled caller was left open"
