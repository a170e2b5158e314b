"""servefiles.tuning: contents pass through bytes objects without a page fault per 4 KiB; the
collector leaves what the process built at start alone.

Each case runs in a fresh interpreter: the thresholds are process-wide and cannot be unset."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The pattern of a busy server: contents of 128 KiB to 1 MiB made and freed, a few alive at once.
CHURN = """
import random, resource, sys
from servefiles.tuning import tune_allocator
print(tune_allocator() if sys.argv[1] == "tuned" else "untouched")
rng = random.Random(1)
live = []
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(400):
    live.append(b"x" * rng.randrange(128 << 10, 1 << 20))
    if len(live) > 3:
        live.pop(rng.randrange(len(live)))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc's mallopt"
)


def _churn(mode: str, **environment: str) -> tuple[str, int]:
    # A fixed environment, not the caller's: its size moves where the stack and heap begin, and
    # with them the faults counted (a tuned run took 1,253 faults alone and 3,091 inside the full
    # suite, whose workers carry more variables). No MALLOC_* nor GLIBC_TUNABLES but those given.
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], env={**env, **environment}, capture_output=True, text=True, check=True
    )
    took, faults = done.stdout.split()
    return took, int(faults)


@glibc_only
def test_tuned_allocator_reuses_freed_contents_instead_of_faulting_them_in_again() -> None:
    # Each mode's fewest faults of three runs: whatever else the machine does can only add faults.
    runs = {mode: [_churn(mode) for _ in range(3)] for mode in ("default", "tuned")}
    assert {took for took, _ in runs["default"]} == {"untouched"} and {took for took, _ in runs["tuned"]} == {"True"}
    faults_by_default = min(faults for _, faults in runs["default"])
    faults_tuned = min(faults for _, faults in runs["tuned"])
    # 400 contents of 576 KiB on average write about 57,600 pages; glibc's defaults fault
    # in most of them again, the tuned heap only the few MiB it grows to once.
    assert faults_by_default > 5_000
    assert faults_tuned * 4 < faults_by_default


@glibc_only
@pytest.mark.parametrize(
    "environment",
    [
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
    ],
)
def test_the_operators_malloc_settings_are_left_alone(environment: dict[str, str]) -> None:
    took, _ = _churn("tuned", **environment)
    assert took == "False"


def test_tuned_collector_leaves_start_up_objects_alone_and_still_collects_cycles() -> None:
    script = """
import gc, weakref
from servefiles.tuning import YOUNG_COLLECTION_THRESHOLD, tune_collector
class Node: pass
tune_collector()
assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()  # the interpreter and servefiles' modules
assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
kept = [[] for _ in range(2 * YOUNG_COLLECTION_THRESHOLD)]  # allocations alone bring a young collection
assert gone() is None
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
