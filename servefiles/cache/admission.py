"""Admission to the disk tier: once it is full, a file asked for once is not worth a disk write.

On a long tail most files are asked for once and evicted unread; writing each one costs a temp
file and an index row, and pushes out a file someone may ask for. (While the tier has room, a
write pushes nothing out, and every miss is written: :meth:`Admission.worth_writing`.)
:class:`Admission` remembers how often each key was missed lately, in bounded memory, and admits
a key to the disk tier on its ``min_uses``-th miss within the window — nginx's
``proxy_cache_min_uses``, with TinyLFU's frequency sketch and aging (Einziger, Friedman & Manes,
"TinyLFU: A Highly Efficient Cache Admission Policy", 2017) so that the memory stays fixed
however many keys are asked for. Disk hits are counted too (:meth:`Admission.seen`), so that once the
tier is full a newcomer is compared with what it would evict (:meth:`Admission.prevails`,
TinyLFU's admission rule proper). Files differ in size, so the comparison is with the entries
it would evict *together*: a 2 MiB photo that pushes out a hundred avatars must be asked for
more often than all of them (the "aggregated victims" rule of Einziger, Eytan, Friedman &
Manes, "Lightweight Robust Size Aware Cache Management", ACM TOS 2022). Replayed on
``benchmarks.workload``'s data with a 256 MiB disk tier (``benchmarks.admission``), against the
first victim alone: 88.4 % of requests hit instead of 84.3 % at Zipf s = 1.0 and 79.7 % instead
of 69.7 % at s = 0.8, with a third to a fifth of the disk writes (benchmarks/RESULTS.md, 2026-12-01).

The sketch is a count-min sketch: ``ROWS`` rows of byte counters indexed by slices of
the key's digest (:func:`servefiles.keys.key_digest`); a key's count is the smallest of
its counters, so collisions can only overcount (admit a little early), never keep a
key out. Every ``window`` sightings all counters are halved: what was popular long ago
fades, a key seen once is forgotten within one to two windows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from functools import lru_cache

from ..keys import key_digest

ROWS = 4
"""Counters per key, each in its own row: a false admission needs a collision in every row."""
WIDTH = 1 << 17
"""Counters per row (a power of two): ``ROWS * WIDTH`` bytes in all (512 KiB)."""
WINDOW = 1 << 16
"""Sightings between two halvings: about 65,000 misses, far more keys than one row's load
makes collide often (with 65,536 distinct keys, a row's counter is shared ~40 % of the time,
all four ~2 %)."""
_HALVE = bytes(value >> 1 for value in range(256))
"""``bytearray.translate`` table halving every counter (C speed, no Python loop)."""
RIVALS = 128
"""The most disk-tier entries a newcomer is compared with (:meth:`Admission.prevails`): a large
file that would evict more is compared with the least recent 128, which keeps a refusal's cost
bounded (each is an estimate, ~1-4 µs) where the tail is full of small files nobody asks for.
(The memory tier needs no cap: its files are at most 256 KiB, its victims lazily listed.)"""
SLOT_CACHE_KEYS = 4096
"""Keys whose counter slots are remembered: a disk hit sights its key, and working its slots out
again (a sha256 of the key and four slices) cost 3.8 µs of a sighting's 4 against 1 µs remembered
(issue 18); the hot keys are few, and a forgotten one is only worked out again."""


@lru_cache(maxsize=SLOT_CACHE_KEYS)
def _slots_of(key: str, mask: int) -> tuple[int, ...]:
    """``key``'s counter in each row: four independent 32-bit slices of its sha256 (``lru_cache``
    is thread-safe: its C implementation runs under the GIL)."""
    digest = key_digest(key)
    return tuple(int.from_bytes(digest[4 * row : 4 * row + 4], "little") & mask for row in range(ROWS))


class Admission:
    """``admit(key)`` is True from the ``min_uses``-th sighting of ``key`` within the window.

    ``min_uses`` 1 admits everything (no sketch is kept); at most 255. Memory: ``ROWS *
    width`` bytes, whatever the number of keys. Thread-safe: the WSGI adapter's request threads
    count their disk hits (:meth:`seen`) beside the event loop; a sighting is one short critical
    section, and the aging callbacks (:attr:`on_age`) run after it, outside the lock.
    """

    def __init__(self, min_uses: int = 2, width: int = WIDTH, window: int = WINDOW) -> None:
        if not 1 <= min_uses <= 255:
            raise ValueError(f"min_uses must be between 1 and 255, not {min_uses}")
        if width < 1 or width & (width - 1):
            raise ValueError(f"width must be a power of two, not {width}")
        if window < 1:
            raise ValueError(f"window must be positive, not {window}")
        self.min_uses = min_uses
        self.hits_seen = True
        """Whether every disk hit is counted (:meth:`seen`); see :meth:`prevails`."""
        self.window = window
        self._mask = width - 1
        self._rows = [bytearray(width if min_uses > 1 else 0) for _ in range(ROWS)]
        self._sightings = 0
        self._lock = threading.Lock()
        self.on_age: list[Callable[[], None]] = []
        """Called after each halving: counts kept elsewhere (the memory tier's hits) age alike."""

    @property
    def nbytes(self) -> int:
        """The sketch's memory, in bytes (fixed at construction)."""
        return sum(len(row) for row in self._rows)

    def admit(self, key: str) -> bool:
        """Count one sighting of ``key``; True when it has now been seen ``min_uses`` times."""
        if self.min_uses <= 1:
            return True
        slots = _slots_of(key, self._mask)
        with self._lock:
            counts = [row[slot] for row, slot in zip(self._rows, slots, strict=True)]
            seen = min(counts) + 1
            # Conservative update: raise only the counters at the minimum, so a key that shares
            # some counters with busier keys inflates them less (fewer false admissions).
            if seen <= 255:
                for row, slot, count in zip(self._rows, slots, counts, strict=True):
                    if count < seen:
                        row[slot] = seen
            self._sightings += 1
            aging = self._sightings >= self.window
            if aging:
                self._halve()
        if aging:
            for aged in self.on_age:
                aged()
        return seen >= self.min_uses

    def seen(self, key: str) -> None:
        """Count one request of ``key`` answered from the disk tier: what makes a cached key's
        frequency comparable with a newcomer's (:meth:`prevails`)."""
        if self.min_uses > 1:
            self.admit(key)

    def prevails(self, key: str, rivals: Iterable[tuple[str, int]]) -> bool:
        """Whether ``key`` may take the place of ``rivals``, ``(key, hits the sketch did not
        count)`` each, the entries its admission would evict: only if asked for more often
        lately than all of them together (the aggregated-victims rule: a large newcomer must
        outweigh every small file it pushes out). Where this process cannot see the tier's hits
        (:attr:`hits_seen` False: nginx answers them in tree mode), a rival's count is its misses
        alone, so a tie admits: the tier keeps taking files in as it did on recency alone, never
        freezes. No rivals, or no sketch (``min_uses`` 1): True. Stops as soon as the rivals
        outweigh the newcomer, so a refusal usually costs one or two estimates."""
        if self.min_uses <= 1:
            return True
        wanted = self.estimate(key)
        strict = self.hits_seen
        held = 0
        for rival, hits in rivals:
            held += self.estimate(rival) + hits
            if held > wanted or (strict and held == wanted):
                return False
        return True

    def worth_writing(
        self, key: str, fits: Callable[[], bool], victims: Callable[[], Iterable[str]], *, sighted: bool
    ) -> bool:
        """The disk tier's admission rule for ``key``: True while the tier has room for it
        (``fits()``: the write evicts nothing), else seen ``min_uses`` times lately (this request
        counted now, unless ``sighted`` already: :meth:`admit`, else :meth:`admitted`) and more
        often than what it would evict together (:meth:`prevails`). ``victims()`` lists those keys
        (sketch-uncounted hits 0): it is called only once the sightings are enough, as listing them
        takes the tier's lock for up to :data:`RIVALS` entries; ``fits()`` (one sum under that lock)
        only while they are not.

        Room first, as TinyLFU admits every newcomer until the cache is full (Caffeine's
        W-TinyLFU): a file kept out of a tier with room is fetched from the store again on its
        next request and written then, so holding it back saved nothing. Replayed on the
        long-tail workload (``benchmarks.admission``, 120,000 requests): with a disk tier larger
        than the data, 97.3 % hits instead of 92.0 % at Zipf s = 1.0, with the same writes; with
        256 MiB, 87.5 % instead of 85.3 % (benchmarks/RESULTS.md, 2026-12-01)."""
        counted = self.admitted(key) if sighted else self.admit(key)
        if not counted:
            return fits()
        return self.prevails(key, ((victim, 0) for victim in victims()))

    def admitted(self, key: str) -> bool:
        """Whether ``key`` has been seen ``min_uses`` times, without counting a sighting: for a
        decision taken after the sightings were counted (requests that waited together)."""
        return self.min_uses <= 1 or self.estimate(key) >= self.min_uses

    def estimate(self, key: str) -> int:
        """How many times ``key`` was seen lately, as the sketch counts it (never fewer than true,
        less what aging took); for tests and reports."""
        if self.min_uses <= 1:
            return 0
        slots = _slots_of(key, self._mask)
        with self._lock:
            return min(row[slot] for row, slot in zip(self._rows, slots, strict=True))

    def _halve(self) -> None:
        """Halve every counter (under the lock): popularity fades, bounded memory stays meaningful."""
        self._sightings = 0
        for row in self._rows:
            row[:] = row.translate(_HALVE)
