"""Start-up of the disk tier (nginx ``proxy_cache``'s "cache loader"): make the dirs, open the
index, then validate it against the disk and sweep, one ``objects/xx`` shard (one short
transaction) at a time.

What goes: temp files of dead writers (a live writer holds its temp file's flock), lock
files of dead fillers, and anything the index does not vouch for — that last only when no
other process uses the dir (members.py): one that does may have installed files it has not
written to the index yet (its index is written behind, journal.py). After a reboot, files no
``syncfs`` was known to cover are verified first (durable.py). Hostile contents (a
symlink, FIFO, socket or directory where a content file, a lock file or a directory
should be; a file where a directory should be; an unreadable directory) are looked at with
``lstat``, never followed, removed, and logged one line per kind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from ..localfs import ensure_dir, remove_any
from . import locks
from .durable import boot_id, read_boot_id, write_boot_id
from .index import Index, Transaction
from .journal import MARK_ONE_SYNCED, unsynced_files
from .layout import SHARD_NAMES, SHARDS, TEMP_PREFIX, CacheDir, is_good_file, is_sha256, kind_of, scandir_own
from .members import Members

__all__ = ["StartupReport", "load"]

logger = logging.getLogger("servefiles")

Changing = Callable[[], AbstractContextManager[Transaction]]
"""Opens a write transaction of the index whose removals the cache's listeners hear of."""


@dataclass(frozen=True, slots=True)
class StartupReport:
    """What :meth:`DiskCache.open` found and did (logged by the caller)."""

    entries: int
    bytes: int
    removed_temp: int
    removed_unvouched: int
    dropped_invalid: int
    seconds: float
    verified: int = 0
    """Files checked at open (size, then sha256) because the machine restarted before a syncfs covered them."""


@dataclass(slots=True)
class _SweepCounts:
    removed_temp: int = 0
    removed_unvouched: int = 0
    dropped_invalid: int = 0
    verified: int = 0
    hostile: Counter[str] = field(default_factory=Counter)
    """What stood where something else belongs, by kind (one log line each)."""


def load(
    cache_dir: CacheDir, index: Index, changing: Changing, sweep: bool = True, members: Members | None = None
) -> StartupReport:
    """Create the dirs, open (or rebuild) the index, and, with ``sweep``, join ``members``, verify
    what a reboot may have torn, validate and sweep.

    ``sweep=False`` only opens the index, for a read-only look at a dir others may be
    using. The index is closed again if anything after its opening fails.
    """
    started = time.monotonic()
    counts = _SweepCounts()
    os.makedirs(cache_dir.root, exist_ok=True)  # the root is the user's to choose: a symlink is followed
    for directory in (cache_dir.objects, cache_dir.locks, cache_dir.procs):
        replaced = ensure_dir(directory)
        if replaced:
            counts.hostile[f"{replaced} where the {directory.name}/ directory belongs"] += 1
    alone = False
    with locks.exclusive(cache_dir.open_lock):
        index.open(check=sweep)
        try:
            if sweep and members is not None:
                alone = members.join()
            if sweep:
                _verify_after_reboot(cache_dir, changing, counts)
        except BaseException:
            index.close()
            raise
    counts.hostile.update(index.removed)
    try:
        if sweep:
            _sweep_objects(cache_dir, changing, counts, alone)
            _sweep_locks(cache_dir, counts)
        entries, total = index.totals()
    except BaseException:
        index.close()
        raise
    for what, number in sorted(counts.hostile.items()):
        logger.warning("disk cache %s: removed %d %s", cache_dir.root, number, what)
    return StartupReport(
        entries=entries,
        bytes=total,
        removed_temp=counts.removed_temp,
        removed_unvouched=counts.removed_unvouched,
        dropped_invalid=counts.dropped_invalid,
        seconds=time.monotonic() - started,
        verified=counts.verified,
    )


def _verify_after_reboot(cache_dir: CacheDir, changing: Changing, counts: _SweepCounts) -> None:
    """After a boot other than the last open's, hash every file no syncfs is known to have made
    durable: a good one is marked durable, a torn, truncated or zero-filled one goes with its
    entries. Runs under the open lock: every process using the dir opened in this boot."""
    boot = boot_id()
    if boot and read_boot_id(cache_dir.boot_file) == boot:
        return
    with changing() as txn:
        suspects = unsynced_files(txn)
    for sha256, size in suspects:
        good = is_sha256(sha256) and is_good_file(cache_dir.content_path(sha256), size, sha256)
        counts.verified += 1
        with changing() as txn:
            if good:
                txn.run(MARK_ONE_SYNCED, [(sha256,)])
            else:
                counts.dropped_invalid += txn.drop_file(sha256)
                counts.hostile["content file written before an unclean shutdown and damaged by it"] += 1
                if is_sha256(sha256):
                    remove_any(cache_dir.content_path(sha256))
    if boot:
        write_boot_id(cache_dir.boot_file, boot)


def _sweep_objects(cache_dir: CacheDir, changing: Changing, counts: _SweepCounts, alone: bool) -> None:
    """Validate the index against ``objects/`` and sweep it, a shard per transaction; files the
    index does not know go only when ``alone`` (no other process may be about to index them)."""
    with os.scandir(cache_dir.objects) as it:
        strays = [e for e in it if e.name not in SHARD_NAMES or not e.is_dir(follow_symlinks=False)]
    for stray in strays:
        if stray.name in SHARD_NAMES:
            counts.hostile[f"{kind_of(stray)} where a shard directory belongs"] += 1
        remove_any(stray.path)
        counts.removed_unvouched += 1
    for shard in SHARDS:
        with changing() as txn:
            _load_shard(cache_dir, txn, shard, counts, alone)
    with changing() as txn:
        txn.recount()


def _load_shard(cache_dir: CacheDir, txn: Transaction, shard: str, counts: _SweepCounts, alone: bool) -> None:
    """One batch: the files of ``objects/<shard>`` against the index rows for that prefix.

    Runs under the write lock, so no file is installed into the shard meanwhile.
    A file is vouched for when its row exists, some entry uses it, and the
    disk has a regular file of the row's size under its name.
    """
    directory = cache_dir.shard_path(shard)
    on_disk: dict[str, int] = {}
    squatters: dict[str, str] = {}
    try:
        it = scandir_own(directory)
    except FileNotFoundError:
        it = None
    except OSError:  # unreadable even after chmod: nothing in it can be vouched for
        counts.hostile["unreadable shard directory"] += 1
        with contextlib.suppress(OSError):
            remove_any(directory)
        it = None
    if it is not None:
        with it:
            for item in it:
                name = item.name
                if name.startswith(TEMP_PREFIX):
                    if not item.is_file(follow_symlinks=False):
                        remove_any(item.path)
                        counts.removed_temp += 1
                    elif locks.remove_if_unlocked(item.path):
                        counts.removed_temp += 1
                elif name.startswith(shard) and is_sha256(name) and item.is_file(follow_symlinks=False):
                    on_disk[name] = item.stat(follow_symlinks=False).st_size
                else:
                    if name.startswith(shard) and is_sha256(name):
                        squatters[name] = kind_of(item)
                    remove_any(item.path)
                    counts.removed_unvouched += 1
    files, used = txn.shard(shard)
    for sha256, size in files.items():
        actual = on_disk.pop(sha256, None)
        if actual != size or sha256 not in used:
            counts.dropped_invalid += txn.drop_file(sha256)
            if sha256 in squatters:
                counts.hostile[f"{squatters[sha256]} where a content file belongs"] += 1
            elif actual is not None and sha256 in used:
                counts.hostile["content file of the wrong size"] += 1
            if actual is not None:
                remove_any(f"{directory}/{sha256}")
    for sha256 in on_disk if alone else ():
        remove_any(f"{directory}/{sha256}")
        counts.removed_unvouched += 1


def _sweep_locks(cache_dir: CacheDir, counts: _SweepCounts) -> None:
    """Lock files left by killed fillers (live ones are locked and stay)."""
    with scandir_own(cache_dir.locks) as it:
        items = [(e.path, e.is_file(follow_symlinks=False), kind_of(e)) for e in it]
    for path, regular, what in items:
        if regular:
            locks.remove_if_unlocked(path)
        else:
            counts.hostile[f"{what} where a lock file belongs"] += 1
            remove_any(path)
