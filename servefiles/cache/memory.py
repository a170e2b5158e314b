"""The memory tier: small, hot files as bytes in a byte-bounded LRU.

A hit here touches neither the disk nor a thread: the entry carries the
file's bytes and its precomputed HTTP headers (:class:`PreparedFile`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import LRUCache

from ..http import PreparedFile

ENTRY_OVERHEAD = 512
"""Bytes charged per entry on top of its content: keeps a flood of tiny files bounded too."""


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    file: PreparedFile
    body: bytes


def _cost(entry: MemoryEntry) -> int:
    return len(entry.body) + ENTRY_OVERHEAD


class _CountingLRU(LRUCache[str, MemoryEntry]):
    """cachetools evicts through ``popitem``: counting there counts every eviction."""

    evictions = 0

    def popitem(self) -> tuple[str, MemoryEntry]:
        item = super().popitem()
        self.evictions += 1
        return item


class MemoryTier:
    """Key → :class:`MemoryEntry`, at most ``max_bytes`` in all, least recently used out first."""

    def __init__(self, max_bytes: int, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self._lru = _CountingLRU(maxsize=max(max_bytes, 1), getsizeof=_cost)

    @property
    def evictions(self) -> int:
        return self._lru.evictions

    def get(self, key: str) -> MemoryEntry | None:
        return self._lru.get(key)

    def fits(self, size: int) -> bool:
        """Whether a file of ``size`` bytes belongs in this tier at all."""
        return size <= self.max_file_bytes and size + ENTRY_OVERHEAD <= self._lru.maxsize

    def put(self, key: str, entry: MemoryEntry) -> None:
        if self.fits(len(entry.body)):
            self._lru[key] = entry

    def discard(self, key: str) -> None:
        self._lru.pop(key, None)

    @property
    def bytes(self) -> int:
        return int(self._lru.currsize)

    def __len__(self) -> int:
        return len(self._lru)
