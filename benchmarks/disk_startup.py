"""Start-up time of the disk tier with 10^5 entries: how long ``DiskCache.open()`` takes.

The claim under test: the start-up loader (validate the index against the disk,
sweep temp and unvouched files, one shard per transaction) handles 10^5
entries in a few seconds at most.

The cache dir is built directly (tiny content files written, rows inserted in
one index transaction), because publishing 10^5 files through ``commit()``
would measure 10^5 fsyncs instead. A few hundred temp files of "dead writers",
unvouched files and damaged entries are added so the sweep has work to do.
Then ``open()`` runs twice in fresh ``DiskCache`` objects: a first start that
repairs, and a second, clean one (the usual restart).

    .venv/bin/python -m benchmarks.disk_startup [--entries 100000] [--dir PATH]

Exit status 0 when both starts found what they should; the time is reported, not enforced.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from servefiles.cache.disk import TEMP_PREFIX, DiskCache
from servefiles.cache.index import Index
from servefiles.store.types import FileMeta

JUNK = 300
"""Of each kind: dead temp files, unvouched files, truncated entries."""


def build(root: Path, entries: int) -> None:
    """A cache dir with ``entries`` indexed tiny files, plus junk for the sweep."""
    creating = DiskCache(root, max_bytes=1 << 40)
    creating.open()  # creates the dirs and the schema
    creating.close()  # and leaves: a member still registered would make the measured opens share the dir
    index = Index(root / "index.sqlite3")
    index.open(check=False)
    now = datetime.now(UTC)
    objects = root / "objects"
    with index.transaction() as txn:
        for n in range(entries):
            data = f"file number {n}\n".encode()
            sha = hashlib.sha256(data).hexdigest()
            shard = objects / sha[:2]
            shard.mkdir(exist_ok=True)
            (shard / sha).write_bytes(data)
            txn.add_file(sha, len(data), 0)  # 0: synced (a start-up after a clean stop)
            txn.put_entry(FileMeta(f"uploads/{n}.txt", n + 1, sha, len(data), "text/plain", now, now), time.time_ns())
    index.close()
    for n in range(JUNK):
        data = f"junk {n}".encode()
        sha = hashlib.sha256(data).hexdigest()
        (objects / sha[:2]).mkdir(exist_ok=True)
        (objects / sha[:2] / sha).write_bytes(data)
        (objects / sha[:2] / f"{TEMP_PREFIX}999999-{n}").write_bytes(b"half")
        victim = hashlib.sha256(f"file number {n}\n".encode()).hexdigest()
        (objects / victim[:2] / victim).write_bytes(b"trunc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, help="where to build the cache dir (default: a temp dir, removed after)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="servefiles-disk-startup-"))
    root = base / "cache"
    try:
        started = time.monotonic()
        build(root, args.entries)
        print(f"built {args.entries} entries (+{JUNK} of each kind of junk) in {time.monotonic() - started:.1f} s")
        ok = True
        for label, expect_repairs in (("first open (repairs)", True), ("second open (clean)", False)):
            cache = DiskCache(root, max_bytes=1 << 40)
            report = cache.open()
            start = time.perf_counter()
            for n in range(0, args.entries, max(1, args.entries // 10_000)):
                cache.get(f"uploads/{n}.txt")
            lookups = min(args.entries, 10_000)
            get_us = (time.perf_counter() - start) / lookups * 1e6
            cache.close()
            print(
                f"{label:<22} {report.seconds:6.2f} s   entries={report.entries} bytes={report.bytes} "
                f"removed_temp={report.removed_temp} removed_unvouched={report.removed_unvouched} "
                f"dropped_invalid={report.dropped_invalid}   get() {get_us:.1f} us"
            )
            expected = (JUNK, JUNK, JUNK) if expect_repairs else (0, 0, 0)
            found = (report.removed_temp, report.removed_unvouched, report.dropped_invalid)
            if found != expected or report.entries != args.entries - JUNK:
                print(f"  unexpected: {found} != {expected} or entries != {args.entries - JUNK}", file=sys.stderr)
                ok = False
        return 0 if ok else 1
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
