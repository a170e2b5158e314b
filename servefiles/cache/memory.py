"""The memory tier: small, hot files as bytes in a byte-bounded LRU.

A hit here touches neither the disk nor a thread: the entry carries the
file's bytes and its precomputed HTTP headers (:class:`PreparedFile`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..http import PreparedFile

ENTRY_OVERHEAD = 512
"""Bytes charged per entry on top of its content: keeps a flood of tiny files bounded too."""


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    file: PreparedFile
    body: bytes


def _cost(entry: MemoryEntry) -> int:
    return len(entry.body) + ENTRY_OVERHEAD


class MemoryTier:
    """Key → :class:`MemoryEntry`, at most ``max_bytes`` in all, least recently used out first.

    An ``OrderedDict`` in recency order rather than a general cache class: a hit, most requests,
    is one C lookup and one C move to the end. The event loop's alone (not thread-safe).
    """

    def __init__(self, max_bytes: int, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.max_bytes = max(max_bytes, 1)
        self.evictions = 0
        """Entries pushed out to make room, since start (a replaced or discarded one is not counted)."""
        self._entries: OrderedDict[str, MemoryEntry] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> MemoryEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def fits(self, size: int) -> bool:
        """Whether a file of ``size`` bytes belongs in this tier at all."""
        return size <= self.max_file_bytes and size + ENTRY_OVERHEAD <= self.max_bytes

    def put(self, key: str, entry: MemoryEntry) -> None:
        if not self.fits(len(entry.body)):
            return
        self.discard(key)
        self._entries[key] = entry
        self._bytes += _cost(entry)
        while self._bytes > self.max_bytes:  # never the new entry: it fits alone
            _, gone = self._entries.popitem(last=False)
            self._bytes -= _cost(gone)
            self.evictions += 1

    def discard(self, key: str) -> None:
        gone = self._entries.pop(key, None)
        if gone is not None:
            self._bytes -= _cost(gone)

    def clear(self) -> None:
        """Drop every entry (the database's history went back: none is vouched for)."""
        self._entries.clear()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
