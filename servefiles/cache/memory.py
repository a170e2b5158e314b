"""The memory tier: small, hot files as bytes in a byte-bounded LRU, with TinyLFU admission.

A hit here touches neither the disk nor a thread: the entry carries the
file's bytes and its precomputed HTTP headers (:class:`PreparedFile`).

The tier is far smaller than the disk tier, so on a long tail plain recency thrashes it: on
the issue-15 workload (Zipf s = 1.0, 16 MiB) a third of all requests copied a file in (a
read, a sha256, evictions) and only 45 % were memory hits. :meth:`MemoryTier.offer` lets a
file in only when the frequency sketch ranks it above every entry it would push out
(TinyLFU's rule, as for the disk tier): simulated on that workload, promotions fall to about
1 % of requests and memory hits rise to 54 %. The sketch does not see memory hits (counting
them would put a sha256 of the key on the fastest path), so each entry counts its own,
halved whenever the sketch ages.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from ..http import PreparedFile
from .admission import Admission

HITS_CAP = 15
"""The most memory hits an entry counts (Caffeine's TinyLFU counters are 4 bits too): a file
that was hot and went cold cannot refuse newcomers for more than a few agings of the sketch."""
ENTRY_OVERHEAD = 512
"""Bytes charged per entry on top of its content: keeps a flood of tiny files bounded too."""


@dataclass(slots=True)
class MemoryEntry:
    file: PreparedFile
    body: bytes
    hits: int = 0
    """Requests answered from this entry lately (halved as the sketch ages): its frequency
    beyond what :class:`Admission` counted before it came in."""


def _cost(entry: MemoryEntry) -> int:
    return len(entry.body) + ENTRY_OVERHEAD


class MemoryTier:
    """Key → :class:`MemoryEntry`, at most ``max_bytes`` in all, least recently used out first.

    An ``OrderedDict`` in recency order rather than a general cache class: a hit, most requests,
    is one C lookup and one C move to the end. Shared by the event loop and the WSGI adapter's
    request threads (which answer hits themselves): every method holds the tier's lock, so a
    discard the change feed makes is seen by the next lookup on any thread.
    """

    def __init__(self, max_bytes: int, max_file_bytes: int, admission: Admission | None = None) -> None:
        self.max_file_bytes = max_file_bytes
        self.max_bytes = max(max_bytes, 1)
        self.evictions = 0
        """Entries pushed out to make room, since start (a replaced or discarded one is not counted)."""
        self.refusals = 0
        """Offers turned down because what they would evict was asked for as often (:meth:`offer`)."""
        self._entries: OrderedDict[str, MemoryEntry] = OrderedDict()
        self._bytes = 0
        self._admission = admission
        self._lock = threading.Lock()
        """Held by every method; inside it, at most the admission sketch's own lock is taken."""
        if admission is not None:
            admission.on_age.append(self._age)

    def get(self, key: str) -> MemoryEntry | None:
        """``key``'s entry, counted as a hit (None: not held)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                if entry.hits < HITS_CAP:
                    entry.hits += 1
            return entry

    def peek(self, key: str) -> MemoryEntry | None:
        """``key``'s entry without counting a hit or touching the recency order (for bookkeeping)."""
        with self._lock:
            return self._entries.get(key)

    def offer(self, key: str, entry: MemoryEntry) -> bool:
        """Keep ``entry`` if it fits without evicting anything, or if the admission sketch ranks
        ``key`` above the entries it would evict together (their own hits added:
        :attr:`MemoryEntry.hits`; :meth:`Admission.prevails`);
        without a sketch, always (plain LRU). True when kept. Every copy into the tier but a
        test's goes through here; :meth:`put` keeps unconditionally."""
        if not self.fits(len(entry.body)):
            return False
        with self._lock:
            if self._admission is not None and not self._admission.prevails(key, self._victims(key, _cost(entry))):
                self.refusals += 1
                return False
            self._put(key, entry)
        return True

    def fits(self, size: int) -> bool:
        """Whether a file of ``size`` bytes belongs in this tier at all."""
        return size <= self.max_file_bytes and size + ENTRY_OVERHEAD <= self.max_bytes

    def put(self, key: str, entry: MemoryEntry) -> None:
        if not self.fits(len(entry.body)):
            return
        with self._lock:
            self._put(key, entry)

    def _put(self, key: str, entry: MemoryEntry) -> None:
        self._discard(key)
        self._entries[key] = entry
        self._bytes += _cost(entry)
        while self._bytes > self.max_bytes:  # never the new entry: it fits alone
            _, gone = self._entries.popitem(last=False)
            self._bytes -= _cost(gone)
            self.evictions += 1

    def _victims(self, key: str, cost: int) -> Iterator[tuple[str, int]]:
        """The entries (key, own hits) that keeping ``cost`` bytes for ``key`` would evict, least
        recently used first; lazily, so a refusal usually looks at one."""
        held = self._entries.get(key)
        excess = self._bytes + cost - (_cost(held) if held is not None else 0) - self.max_bytes
        for other, entry in self._entries.items():
            if excess <= 0:
                return
            if other != key:
                excess -= _cost(entry)
                yield other, entry.hits

    def _age(self) -> None:
        """Halve every entry's hits, as the sketch halves its counters (popularity fades)."""
        with self._lock:
            for entry in self._entries.values():
                entry.hits >>= 1

    def discard(self, key: str) -> None:
        with self._lock:
            self._discard(key)

    def _discard(self, key: str) -> None:
        gone = self._entries.pop(key, None)
        if gone is not None:
            self._bytes -= _cost(gone)

    def clear(self) -> None:
        """Drop every entry (the database's history went back: none is vouched for)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
