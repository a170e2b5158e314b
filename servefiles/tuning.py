"""Process-wide settings for a process that serves files: the C allocator's and the garbage collector's.

``servefiles serve`` applies both at start (:func:`tune_process`); an application that mounts the
middleware may call :func:`tune_allocator` or :func:`tune_collector` itself.

**The allocator.**
A miss decodes a bytea of up to 1 MiB (asyncpg makes a ``bytes`` of it), and a disk hit of a
file over the memory tier's limit reads it into one. glibc's malloc serves every allocation of
128 KiB or more with an ``mmap`` of its own and unmaps it when freed (its threshold then rises
to the freed size, but the heap's top is trimmed back to the kernel as soon as twice that is
free), so each such object costs a page fault and a zeroed page for every 4 KiB written to it.
Measured with asyncpg on this project's machine (benchmarks/RESULTS.md, 2026-11-30 night):
fetching a 1 MB bytea took 1,773 µs of client CPU with glibc's defaults and 768 µs with the
thresholds below; a 300 KB one 362 µs and 150 µs — a third of the profile was page faults.
:func:`tune_allocator` fixes both thresholds (``mallopt``), so contents up to
:data:`MMAP_THRESHOLD_BYTES` come from the heap and freed memory is reused, not returned, until
more than :data:`TRIM_THRESHOLD_BYTES` of it lies free at the top. That bounds what the process
keeps beyond its live objects. glibc's ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
environment variables, where set, win.

**The collector.** A request allocates a few hundred container objects (coroutines, futures,
header lists), so CPython's collector runs every few requests, and each run of its older
generations traverses everything the process imported and built at start. :func:`tune_collector`
moves what exists at start out of its reach (``gc.freeze``) and lets the youngest generation grow
to :data:`YOUNG_COLLECTION_THRESHOLD` objects. On the miss path (in-process, counted with
callgrind, so free of the machine's noise): 1.17 million instructions per miss before, 1.08
million after.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys

from .defaults import MiB

__all__ = [
    "MMAP_THRESHOLD_BYTES",
    "TRIM_THRESHOLD_BYTES",
    "YOUNG_COLLECTION_THRESHOLD",
    "tune_allocator",
    "tune_collector",
    "tune_process",
]

MMAP_THRESHOLD_BYTES = 4 * MiB
"""Allocations below this come from the heap: every content servefiles makes a bytes object of
(a miss's head of 1 MiB, a whole disk-tier file read for a reply of one message)."""
TRIM_THRESHOLD_BYTES = 4 * MiB
"""Free memory at the heap's top kept for reuse before it is returned to the kernel."""
YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations of container objects (net of frees) between two collections of the youngest
generation (CPython's default: 700). The older generations keep their defaults, so they still run
every 10 and 100 young collections."""

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Set glibc malloc's mmap and trim thresholds (bytes) for this process; True if it took.

    False, changing nothing, where there is no glibc ``mallopt`` (macOS, musl's accepts nothing),
    or where the environment already sets either threshold (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``): the operator's
    word wins. Never raises."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _ENVIRONMENT) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The trim threshold first: setting either one turns glibc's dynamic adjustment off.
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))


def tune_collector(young_threshold: int = YOUNG_COLLECTION_THRESHOLD) -> None:
    """Freeze what the process holds now out of the collector's reach (``gc.freeze``: call it once
    start-up is done) and collect the youngest generation every ``young_threshold`` allocations."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def tune_process() -> bool:
    """:func:`tune_allocator` and :func:`tune_collector`, as ``servefiles serve`` runs them once it
    has built its app; True if the allocator took its settings."""
    tuned = tune_allocator()
    tune_collector()
    return tuned
