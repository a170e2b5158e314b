"""Disk-tier admission on the long-tail workload, simulated: hit ratio and disk writes per rule.

The real :class:`~servefiles.cache.admission.Admission` sketch and the real disk tier's index
(:class:`~servefiles.cache.memindex.MemIndex`: LRU order, byte budget, eviction) replay a Zipf
request sequence over ``benchmarks.workload``'s data (the same sizes and popularity ranks, from
the same seed), with no files, database or server: what each admission rule does to the hit
ratio and to the number of disk writes, free of timing noise, in a few seconds. Rules:

* ``lru``: every miss written (``cache_min_uses`` 1);
* ``first victim``: asked for twice, and more often than the one entry evicted first (the rule
  before 2026-12-01: the victims list cut to one);
* ``aggregated``: asked for twice, and more often than every entry it would evict together
  (:data:`~servefiles.cache.admission.RIVALS` at most) -- the rule before 2026-12-01's second
  change, which asked for the two sightings even while the tier had room;
* ``room first``: every miss written while the tier has room for it, then ``aggregated`` -- the
  rule servefiles uses (:meth:`~servefiles.cache.admission.Admission.worth_writing`).

Each rule runs twice: with the disk tier's hits counted by the sketch (standalone, accel) and
without (tree mode: nginx answers the hits). The first half of the requests warms the tier;
the figures are the second half's.

    .venv/bin/python -m benchmarks.admission [--requests 400000] [--cache 256MiB]

``--requests 120000`` is about what two 20 s phases of ``benchmarks.workload`` ask for on a
2-core VM (cold, then the warm half the figures are of); ``--cache 4096MiB`` its larger tier.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import functools
import itertools
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from servefiles.cache.admission import RIVALS, Admission
from servefiles.cache.memindex import MemIndex
from servefiles.store.types import FileMeta

from .workload import SEED, generate

WHEN = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
RULES = {"lru": (1, RIVALS, True), "first victim": (2, 1, False), "aggregated": (2, RIVALS, False),
         "room first": (2, RIVALS, True)}
"""Rule name: (``cache_min_uses``, most victims compared, every miss written while the tier has room)."""


def workload_sizes(count: int, seed: int) -> tuple[list[str], dict[str, int]]:
    """``benchmarks.workload``'s keys (most popular first) and sizes: the same data, not written."""
    files, ranked = generate(count, seed)
    return ranked, {key: len(data) for key, data in files}


@dataclass
class Outcome:
    requests: int = 0
    hits: int = 0
    writes: int = 0
    written_bytes: int = 0
    missed_bytes: int = 0


def replay(ranked: Sequence[str], sizes: dict[str, int], s: float, budget: int, requests: int,
           min_uses: int, rivals: int, hits_seen: bool, seed: int, room_first: bool = False) -> Outcome:
    """Replay ``requests`` Zipf(``s``) requests against a disk tier of ``budget`` bytes."""
    cumulative = list(itertools.accumulate(k**-s for k in range(1, len(ranked) + 1)))
    total = cumulative[-1]
    rng = random.Random(seed)
    admission = Admission(min_uses)
    admission.hits_seen = hits_seen
    index = MemIndex()
    index.journaling = False
    metas = {key: FileMeta(key, 1, f"{i:064x}", size, "image/png", WHEN, WHEN) for i, (key, size) in
             enumerate(sizes.items())}
    outcome = Outcome()
    for i in range(requests):
        if i == requests // 2:
            outcome = Outcome()
        key = ranked[min(bisect.bisect_left(cumulative, rng.random() * total), len(ranked) - 1)]
        outcome.requests += 1
        if index.get(key) is not None:
            outcome.hits += 1
            index.touch(key)
            if hits_seen:
                admission.seen(key)
            continue
        outcome.missed_bytes += sizes[key]
        meta = metas[key]
        victims = functools.partial(index.victims, meta, budget, rivals)
        if not rule(admission, key, functools.partial(index.fits, meta, budget), victims, room_first):
            continue
        outcome.writes += 1
        outcome.written_bytes += sizes[key]
        index.install(meta, installed_at=1)
        index.evict(budget, meta)
    return outcome


def rule(admission: Admission, key: str, fits: Callable[[], bool], victims: Callable[[], list[str]],
         room_first: bool) -> bool:
    """Whether the miss of ``key`` is written: :meth:`Admission.worth_writing` (the rule
    ``Runtime.worth_a_disk_write`` applies), or (``room_first`` False) the rule before it, which
    asked for the sightings even while the tier had room."""
    if room_first:
        return admission.worth_writing(key, fits, victims, sighted=False)
    if not admission.admit(key):
        return False
    return admission.prevails(key, ((victim, 0) for victim in victims()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=SEED, help="of the data and ranks: benchmarks.workload's")
    parser.add_argument("--requests", type=int, default=400_000)
    parser.add_argument("--cache", type=lambda v: int(v.removesuffix("MiB")) << 20, default=256 << 20,
                        help="disk tier budget, in MiB (256MiB)")
    args = parser.parse_args(argv)
    ranked, sizes = workload_sizes(args.files, args.seed)
    print(f"{args.files} files, {sum(sizes.values()) / 1e9:.2f} GB; disk tier {args.cache >> 20} MiB; "
          f"{args.requests:,} Zipf requests, figures of the second half")
    print()
    print("| s | hits counted | rule | hit ratio | disk writes per 1,000 requests | KB written per request "
          "| KB missed per request |")
    print("|---|---|---|---:|---:|---:|---:|")
    for s in (1.0, 0.8):
        for hits_seen in (True, False):
            for name, (min_uses, rivals, room_first) in RULES.items():
                if name == "lru" and not hits_seen:
                    continue  # the same as with them: lru counts nothing
                got = replay(ranked, sizes, s, args.cache, args.requests, min_uses, rivals, hits_seen, seed=7,
                             room_first=room_first)
                print(f"| {s:.1f} | {'yes' if hits_seen else 'no (tree)'} | {name} | {got.hits / got.requests:.1%} "
                      f"| {1000 * got.writes / got.requests:.1f} | {got.written_bytes / got.requests / 1e3:.1f} "
                      f"| {got.missed_bytes / got.requests / 1e3:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
