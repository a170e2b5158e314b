"""The disk tier's index in memory: what a lookup reads, so that a hit never touches SQLite.

A dict key -> :class:`FileMeta`, the content files (sha256 -> size, with how many entries use
each, so shared content counts once), the least-recently-used order of the keys, and the byte
total. Every change made here is also recorded in a :class:`Journal` that a background thread
writes to the SQLite index in batches (journal.py); SQLite is read once, at open.

Pure data, no I/O: the caller (disk.py) holds its lock around every method and does the file
work (rename, unlink) outside it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..store.types import FileMeta

__all__ = ["Journal", "MemIndex"]


@dataclass(slots=True)
class Journal:
    """Changes not yet written to SQLite, the last one per key and per file.

    ``entries``: key -> (meta, last access in ns since the epoch), or None when the entry went.
    ``files``: sha256 -> (size in bytes, ``installed_at``: monotonic ns of its rename, 0 once
    synced), or None when the file went.
    """

    entries: dict[str, tuple[FileMeta, int] | None] = field(default_factory=dict)
    files: dict[str, tuple[int, int] | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.entries or self.files)

    def __len__(self) -> int:
        return len(self.entries) + len(self.files)

    def merge_older(self, older: Journal) -> None:
        """Put back a journal that could not be written: a change recorded since wins."""
        for key, op in older.entries.items():
            self.entries.setdefault(key, op)
        for sha256, change in older.files.items():
            self.files.setdefault(sha256, change)


class MemIndex:
    """Entries, files, LRU order and totals of one cache dir, as this process knows them."""

    __slots__ = ("entries", "files", "journal", "journaling", "order", "refs", "total_bytes")

    def __init__(self) -> None:
        self.entries: dict[str, FileMeta] = {}
        self.files: dict[str, int] = {}
        self.refs: dict[str, int] = {}
        self.order: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.total_bytes = 0
        self.journal = Journal()
        self.journaling = True
        """Whether changes are recorded for SQLite (False once SQLite is written through)."""

    @contextmanager
    def journaled(self) -> Iterator[None]:
        """Record the changes made inside for SQLite even if :attr:`journaling` is off by now.

        For a change a process decided while alone in its dir: another thread may find a newcomer
        (and turn journaling off) between that answer and the change. Unrecorded, the change would
        stay in memory only: an install never indexed, a discarded or damaged entry left in SQLite
        for the other processes. Recorded, the next flush writes it, as it writes what was journaled
        before the newcomer came. Under the caller's lock, as every method here: no other thread
        sees the flag turned on."""
        was = self.journaling
        self.journaling = True
        try:
            yield
        finally:
            self.journaling = was

    # -- loading and reading ---------------------------------------------------------------

    def load(self, meta: FileMeta) -> None:
        """Add an entry read from SQLite (in last-access order: the last loaded is the most recent)."""
        self._put(meta)

    def get(self, key: str) -> FileMeta | None:
        return self.entries.get(key)

    def has_file(self, sha256: str, size: int) -> bool:
        return self.files.get(sha256) == size

    def touch(self, key: str, revision: tuple[int, str] | None = None) -> bool:
        """Make ``key`` the most recently used; False when it is not held (of ``revision``, if given)."""
        if key not in self.order or (revision is not None and self.entries[key].revision != revision):
            return False
        self.order.move_to_end(key)
        return True

    def victims(self, meta: FileMeta, max_bytes: int, limit: int) -> list[str]:
        """The keys :meth:`evict` would take after :meth:`install` of ``meta`` to fit ``max_bytes``,
        least recently used first, at most ``limit`` of them; [] when it fits without one. Counted
        as those two count: ``meta``'s bytes are new only if no entry has that content yet, the
        key's own older entry is replaced (its file freed if nothing else uses it), and an entry
        sharing ``meta``'s content or another's frees nothing."""
        excess = self._excess(meta, max_bytes)
        taken: list[str] = []
        for key, freed in self._eviction_order(meta):
            if excess <= 0 or len(taken) >= limit:
                break
            taken.append(key)
            excess -= freed
        return taken

    def fits(self, meta: FileMeta, max_bytes: int) -> bool:
        """Whether :meth:`install` of ``meta`` keeps the tier within ``max_bytes`` with no eviction
        (counted as :meth:`victims` counts)."""
        return self._excess(meta, max_bytes) <= 0

    def _excess(self, meta: FileMeta, max_bytes: int) -> int:
        """Bytes over ``max_bytes`` once ``meta`` is installed (<= 0: none)."""
        added = 0 if meta.sha256 in self.files else meta.size
        current = self.entries.get(meta.key)
        replaced = 0
        if current is not None and current.sha256 != meta.sha256 and self.refs.get(current.sha256, 1) == 1:
            replaced = current.size
        return self.total_bytes + added - replaced - max_bytes

    # -- changes (each returns what the caller must unlink, and records itself) -------------

    def install(self, meta: FileMeta, installed_at: int | None) -> tuple[list[str], list[str]]:
        """Point ``meta.key`` at its file (``installed_at``: the monotonic ns of the file's rename,
        None when an existing file is shared). Returns (keys removed or replaced, shas to unlink)."""
        removed: list[str] = []
        unlink: list[str] = []
        current = self.entries.get(meta.key)
        if current is not None:
            if current.revision != meta.revision:
                removed.append(meta.key)
            self._remove(meta.key, unlink)
        if installed_at is not None or meta.sha256 not in self.files:
            self._record_file(meta.sha256, (meta.size, installed_at or time.monotonic_ns()))
        self._put(meta)
        if self.journaling:
            self.journal.entries[meta.key] = (meta, time.time_ns())
        if meta.sha256 in unlink:
            unlink.remove(meta.sha256)  # the new version has the same bytes: the file stays
        return removed, unlink

    def discard(self, key: str) -> list[str]:
        """Forget ``key``; the shas to unlink (its file, unless another entry uses it)."""
        unlink: list[str] = []
        if key in self.entries:
            self._remove(key, unlink)
            if self.journaling:
                self.journal.entries[key] = None
        return unlink

    def drop_file(self, sha256: str) -> list[str]:
        """Forget a file and every entry that uses it; the keys that went."""
        keys = [key for key, meta in self.entries.items() if meta.sha256 == sha256]
        for key in keys:
            self.discard(key)
        if sha256 in self.files:
            self._forget_file(sha256)
        return keys

    def evict(self, max_bytes: int, keep: FileMeta) -> tuple[list[str], list[str]]:
        """Least recently used entries out until the files fit ``max_bytes``, never ``keep``
        or its file; (keys evicted, shas to unlink)."""
        evicted: list[str] = []
        unlink: list[str] = []
        while self.total_bytes > max_bytes:
            need, freed, victims = self.total_bytes - max_bytes, 0, []
            for key, frees in self._eviction_order(keep):  # stop once enough is found (no copy of the order)
                victims.append(key)
                freed += frees
                if freed >= need:
                    break
            if not victims:
                break
            for key in victims:
                unlink += self.discard(key)
            evicted += victims
        return evicted, unlink

    def _eviction_order(self, keep: FileMeta) -> Iterator[tuple[str, int]]:
        """(key, bytes its removal frees), least recently used first, never ``keep``'s key or an
        entry sharing its file; a file other entries still use frees nothing. Lazy: a caller stops
        once it has enough, and must not change the order while it iterates."""
        for key in self.order:
            meta = self.entries[key]
            if key == keep.key or meta.sha256 == keep.sha256:
                continue
            yield key, meta.size if self.refs.get(meta.sha256, 1) == 1 else 0

    def take_journal(self) -> Journal:
        journal, self.journal = self.journal, Journal()
        return journal

    # -- internals ---------------------------------------------------------------------------

    def _put(self, meta: FileMeta) -> None:
        self.entries[meta.key] = meta
        self.order[meta.key] = None
        self.order.move_to_end(meta.key)
        if meta.sha256 not in self.files:
            self.files[meta.sha256] = meta.size
            self.total_bytes += meta.size
        self.refs[meta.sha256] = self.refs.get(meta.sha256, 0) + 1

    def _remove(self, key: str, unlink: list[str]) -> None:
        meta = self.entries.pop(key)
        self.order.pop(key, None)
        refs = self.refs.get(meta.sha256, 1) - 1
        if refs > 0:
            self.refs[meta.sha256] = refs
            return
        self.refs.pop(meta.sha256, None)
        if meta.sha256 in self.files:
            self._forget_file(meta.sha256)
            unlink.append(meta.sha256)

    def _record_file(self, sha256: str, change: tuple[int, int]) -> None:
        if self.journaling:
            self.journal.files[sha256] = change

    def _forget_file(self, sha256: str) -> None:
        self.total_bytes -= self.files.pop(sha256)
        self.refs.pop(sha256, None)
        if self.journaling:
            self.journal.files[sha256] = None
