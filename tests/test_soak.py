"""Soak: N frontends x M clients for a bounded time, random puts, deletes and gets over
Zipf-distributed keys, every body checked against the database version its ETag names.

Short in CI (``SERVEFILES_SOAK_SECONDS``, default 15 s per store); a longer run is the
same test with a larger value, e.g. ``SERVEFILES_SOAK_SECONDS=600 scripts/test tests/test_soak.py``.

The oracle, per key, from what the clients themselves wrote (writes to one key are
serialised by the clients, so "the latest acknowledged write" is well defined):
- a 200/206 body must hash to its ETag, and that ETag must be a version written for
  that key (no corrupt bytes, no bytes from another key);
- a response to a GET that started more than ``STALE_BOUND`` after the key's latest
  acknowledged write (with no write in flight) must be that write: the new bytes, or
  404 after a delete (nothing acknowledged is lost, nothing stale after propagation);
- no 5xx at all (no outage is injected here; test_outage.py and test_faults.py do that);
- each frontend's RSS at the end is within a bound of its RSS after warm-up (flat memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .servers import Frontend

SECONDS = float(os.environ.get("SERVEFILES_SOAK_SECONDS", "15"))
FRONTENDS = int(os.environ.get("SERVEFILES_SOAK_FRONTENDS", "3"))
CLIENTS = int(os.environ.get("SERVEFILES_SOAK_CLIENTS", "12"))
KEYS = 60
ZIPF_S = 1.1
STALE_BOUND = 2.0
"""Seconds after which every frontend must serve a write: far above the feed's measured p99 (tens of ms)."""
TOKEN = "soak-token-0123456789abcdefghij"
AUTH = {"authorization": f"Bearer {TOKEN}"}
RSS_GROWTH_LIMIT_MIB = 40.0


@dataclass
class KeyState:
    written: dict[str, bytes] = field(default_factory=dict)  # etag -> bytes, every version ever acknowledged
    latest: str | None = None  # etag of the latest acknowledged write, None after a delete or before any
    latest_at: float = 0.0
    writing: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)


def rss_mib(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match
    return int(match.group(1)) / 1024


def content(rng: random.Random) -> bytes:
    size = rng.choice([rng.randrange(0, 2_000), rng.randrange(2_000, 60_000), rng.randrange(300_000, 700_000)])
    return rng.randbytes(size)


async def client_loop(seed: int, bases: list[str], state: dict[str, KeyState], tally: Tally, until: float) -> None:
    rng = random.Random(seed)
    keys = list(state)
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(keys))]
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < until:
            key = rng.choices(keys, weights)[0]
            base = rng.choice(bases)
            roll = rng.random()
            if roll < 0.08:
                await write(client, base, key, state[key], content(rng), tally)
            elif roll < 0.10:
                await delete(client, base, key, state[key], tally)
            else:
                await read(client, base, key, state[key], tally, rng)


async def write(client: httpx.AsyncClient, base: str, key: str, ks: KeyState, data: bytes, tally: Tally) -> None:
    async with ks.lock:
        ks.writing = True
        # Known before it is sent: another client may see the new version before this PUT's answer arrives.
        ks.written[f'"{hashlib.sha256(data).hexdigest()}"'] = data
        try:
            response = await client.put(f"{base}/media/{key}", content=data, headers=AUTH)
            tally.counts["put"] += 1
            if response.status_code >= 500:
                tally.server_errors.append(f"PUT {key} -> {response.status_code}")
                return
            assert response.status_code in (200, 201), response.text
            etag = response.headers["etag"]
            if etag != f'"{hashlib.sha256(data).hexdigest()}"':
                tally.mismatches.append(f"PUT {key}: ETag {etag} is not the hash of what was sent")
            ks.latest, ks.latest_at = etag, time.monotonic()
        finally:
            ks.writing = False


async def delete(client: httpx.AsyncClient, base: str, key: str, ks: KeyState, tally: Tally) -> None:
    async with ks.lock:
        ks.writing = True
        try:
            response = await client.delete(f"{base}/media/{key}", headers=AUTH)
            tally.counts["delete"] += 1
            if response.status_code >= 500:
                tally.server_errors.append(f"DELETE {key} -> {response.status_code}")
                return
            assert response.status_code in (204, 404), response.text
            ks.latest, ks.latest_at = None, time.monotonic()
        finally:
            ks.writing = False


async def read(client: httpx.AsyncClient, base: str, key: str, ks: KeyState, tally: Tally, rng: random.Random) -> None:
    started = time.monotonic()
    before = (ks.latest, ks.latest_at, ks.writing)
    ranged = rng.random() < 0.15
    headers = {"range": "bytes=100-4099"} if ranged else {}
    response = await client.get(f"{base}/media/{key}", headers=headers)
    tally.counts["get"] += 1
    tally.counts[f"get {response.status_code}"] += 1
    if response.status_code >= 500:
        tally.server_errors.append(f"GET {key} on {base} -> {response.status_code}")
        return
    settled = not before[2] and not ks.writing and (ks.latest, ks.latest_at) == before[:2]
    if response.status_code in (200, 206):
        etag = response.headers["etag"]
        written = ks.written.get(etag)
        if written is None:
            tally.mismatches.append(f"GET {key}: ETag {etag} was never written for this key")
            return
        expected = written[100:4100] if response.status_code == 206 else written
        if response.content != expected:
            tally.mismatches.append(f"GET {key} {headers}: body does not match the version its ETag names")
        if settled and before[0] != etag and started - before[1] > STALE_BOUND:
            tally.stale.append(f"GET {key} on {base}: {etag}, {started - before[1]:.1f} s after {before[0]} was acked")
    elif response.status_code == 404:
        if settled and before[0] is not None and started - before[1] > STALE_BOUND:
            tally.stale.append(f"GET {key} on {base}: 404, {started - before[1]:.1f} s after {before[0]} was acked")
    elif response.status_code != 416:  # a range past the end of a small version
        tally.mismatches.append(f"GET {key}: unexpected {response.status_code}")


def _append(path: Path, line: str) -> None:
    with contextlib.suppress(OSError), path.open("a") as out:
        out.write(line)


@pytest.mark.timeout(300 + 2 * SECONDS)  # the suite-wide per-test limit (pyproject.toml), plus the soak's own length
async def test_soak(store_url: str, tmp_path: Path) -> None:
    frontends = [
        Frontend("--db", store_url, "--cache-dir", str(tmp_path / f"cache-{n}"), "--upload-token", TOKEN,
                 "--cache-size", "8MiB", "--memory-size", "2MiB")
        for n in range(FRONTENDS)
    ]
    for frontend in frontends:
        frontend.start()
    try:
        bases = [frontend.base for frontend in frontends]
        state = {f"soak/k{n:03d}.bin": KeyState() for n in range(KEYS)}
        tally = Tally()
        warm_up = max(2.0, SECONDS / 5)
        await asyncio.gather(*(client_loop(1000 + n, bases, state, tally, time.monotonic() + warm_up)
                               for n in range(CLIENTS)))  # fmt: skip
        rss_start = [rss_mib(f.proc.pid) for f in frontends if f.proc is not None]
        await asyncio.gather(*(client_loop(n, bases, state, tally, time.monotonic() + SECONDS) for n in range(CLIENTS)))
        rss_end = [rss_mib(f.proc.pid) for f in frontends if f.proc is not None]
        # Settled: every frontend serves every key's latest acknowledged state.
        await asyncio.sleep(STALE_BOUND)
        async with httpx.AsyncClient(timeout=60) as client:
            for key, ks in state.items():
                for base in bases:
                    response = await client.get(f"{base}/media/{key}")
                    expected = 404 if ks.latest is None else 200
                    if response.status_code != expected or (ks.latest and response.headers["etag"] != ks.latest):
                        tally.stale.append(f"after settling, {key} on {base}: {response.status_code}")
    finally:
        for frontend in frontends:
            frontend.stop()
    summary = (f"{sum(tally.counts[k] for k in ('get', 'put', 'delete'))} requests ({dict(tally.counts)}), "
               f"mismatches {len(tally.mismatches)}, stale {len(tally.stale)}, 5xx {len(tally.server_errors)}, "
               f"RSS MiB start {[round(r) for r in rss_start]} end {[round(r) for r in rss_end]}")  # fmt: skip
    print(summary)
    report = os.environ.get("SERVEFILES_SOAK_REPORT")
    if report:  # the figures, for a closing note or a long run's log
        await asyncio.to_thread(_append, Path(report), f"{store_url.split(':')[0]}: {summary}\n")
    assert tally.counts["put"] > 10 and tally.counts["get"] > 100, summary
    assert not tally.mismatches, tally.mismatches[:10]
    assert not tally.stale, tally.stale[:10]
    logs = "\n".join(line for f in frontends for line in f.output().splitlines() if "WARN" in line or "ERROR" in line)
    assert not tally.server_errors, (tally.server_errors[:10], logs[-3000:])
    for start, end in zip(rss_start, rss_end, strict=True):
        assert end - start < RSS_GROWTH_LIMIT_MIB, (rss_start, rss_end)
    for frontend in frontends:
        assert "Traceback" not in frontend.output(), frontend.output()
