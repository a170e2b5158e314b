"""A real fail-over: the primary crashes (``pg_ctl stop -m immediate``), its hot standby is promoted
(``pg_ctl promote``), and the frontends — separate ``servefiles serve`` processes whose DSN names
both hosts with ``target_session_attrs=read-write`` — go on without a restart.

Each test starts its own pair (tests/pg_pair.py): a fail-over cannot be undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import httpx
import pytest

from .ha_tools import (
    TOKEN,
    Load,
    ThreadedProxy,
    answers_with,
    contents_direct,
    feed_healthy,
    frontend,
    pair_with_database,
    put_direct,
    wait_for,
)
from .servers import Frontend

pytestmark = pytest.mark.postgres

ANSWER_SECONDS = 10.0
"""Every answer while no primary exists: a cached file, or a 503 with Retry-After, within this."""
UPLOAD_SECONDS = 30.0
"""After the promotion, an upload succeeds within this."""
FEED_SECONDS = 2.0
"""A change on the new primary reaches every frontend within this, once its feed follows it."""


def test_frontends_serve_through_a_failover_and_follow_the_promoted_standby(tmp_path: Path) -> None:
    with pair_with_database() as (pair, database), contextlib.ExitStack() as stack:
        both = pair.multi_host_dsn(database)
        promoted = pair.standby.dsn(database)
        cached = {f"cached/{n}.bin": os.urandom(30_000 + n) for n in range(4)}
        cold = {f"cold/{n}.bin": os.urandom(20_000 + n) for n in range(4)}
        for key, data in {**cached, **cold}.items():
            put_direct(both, key, data)
        servers = [_started(stack, frontend(both, tmp_path / f"cache{n}", "--cache-min-uses", "1")) for n in range(2)]
        fleet = [server.base for server in servers]
        for base in fleet:
            for key, data in cached.items():
                assert answers_with(base, key, data) and answers_with(base, key, data)  # now in memory

        load = Load(fleet, {**cached, **cold}).start()
        try:
            pair.primary.stop_immediately()
            # No primary now: the standby refuses read-write sessions. Wait until every frontend
            # has answered an uncached key with 503, then promote.
            for base in fleet:
                wait_for(lambda b=base: load.refused(b, set(cold)), ANSWER_SECONDS, "uncached keys refused")
            pair.promote()
            promoted_at = time.monotonic()

            # Read-your-writes right after the fail-over: the PUT's answer closes the circuit.
            fresh = os.urandom(10_000)
            wait_for(lambda: _uploaded(fleet[0], "after/upload.bin", fresh), UPLOAD_SECONDS, "an upload")
            assert answers_with(fleet[0], "after/upload.bin", fresh), "GET right after the PUT"
            # The store answered that frontend: its uncached keys are served at once.
            for key, data in cold.items():
                assert answers_with(fleet[0], key, data), key
            for base in fleet:
                wait_for(lambda b=base: feed_healthy(b), UPLOAD_SECONDS, "feed follows the new primary")
                for key, data in cold.items():
                    assert answers_with(base, key, data), key
            noticed = time.monotonic() - promoted_at
        finally:
            load.stop()

        changed = os.urandom(30_000)
        key = next(iter(cached))
        put_direct(promoted, key, changed)
        for base in fleet:
            wait_for(lambda b=base: answers_with(b, key, changed), FEED_SECONDS, "a change on the new primary")

        answers = load.answers
        assert answers, "the load ran"
        slow = [a for a in answers if a.seconds >= ANSWER_SECONDS]
        assert not slow, slow[:5]
        wrong = [a for a in answers if a.key in cached and not (a.status == 200 and a.right_bytes)]
        assert not wrong, (wrong[:5], servers[0].output()[-3000:], servers[1].output()[-3000:])
        cold_wrong = [a for a in answers if a.key in cold and not (a.status == 503 and a.retry_after)
                      and not (a.status == 200 and a.right_bytes)]  # fmt: skip
        assert not cold_wrong, cold_wrong[:5]
        for server in servers:  # an outage is a log line or two, never a traceback
            assert "Traceback" not in server.output(), server.output()
        print(f"{len(answers)} answers; every frontend followed the new primary {noticed:.1f} s after promotion")


def test_commits_lost_in_the_failover_are_never_served(tmp_path: Path) -> None:
    """Asynchronous replication: commits the old primary acknowledged (and the frontends cached)
    never reach the standby. After the fail-over every frontend serves what the new primary holds,
    whether it reconnects at once, only after the new primary has taken more writes than were lost
    (its last version already past the frontend's cursor), or after a restart."""
    with pair_with_database() as (pair, database), contextlib.ExitStack() as stack:
        # The live frontend reaches the standby through a proxy held cut until the new primary
        # has taken more writes: otherwise it might reconnect before they happen.
        proxy = ThreadedProxy(pair.standby.port).start()
        stack.callback(proxy.close)
        live_dsn = (f"postgresql://postgres@127.0.0.1:{pair.primary.port},127.0.0.1:{proxy.port}/{database}"
                    "?target_session_attrs=read-write")  # fmt: skip
        both = pair.multi_host_dsn(database)
        promoted = pair.standby.dsn(database)
        keys = [f"k{n}.txt" for n in range(5)]
        original = {key: f"original {key}".encode() for key in keys}
        for key, data in original.items():
            put_direct(both, key, data)
        live = _started(stack, frontend(live_dsn, tmp_path / "live", "--cache-min-uses", "1"))
        restarted = _started(stack, frontend(both, tmp_path / "restarted", "--cache-min-uses", "1"))
        fleet = [live.base, restarted.base]

        asyncio.run(pair.wait_replayed())
        asyncio.run(pair.cut_standby_off())
        lost = {"k0.txt": b"lost k0", "k1.txt": b"lost k1", "new.txt": b"lost new"}
        for key, data in lost.items():
            put_direct(both, key, data)
        for base in fleet:  # the lost versions are cached on every frontend
            for key, data in lost.items():
                wait_for(lambda b=base, k=key, d=data: answers_with(b, k, d), 5, "lost write served")
                assert answers_with(base, key, data)

        restarted.kill()
        proxy.cut()
        pair.primary.stop_immediately()
        pair.promote()
        held = contents_direct(promoted, [*keys, "new.txt"])
        assert held == {**original, "new.txt": None}, "the new primary lacks the lost commits"

        # More writes than were lost, before any frontend reconnects.
        for n in range(40):
            put_direct(promoted, f"more/{n}.txt", b"more")
        put_direct(promoted, "k4.txt", b"k4 on the new primary")
        truth = contents_direct(promoted, [*keys, "new.txt"])
        proxy.restore()
        restarted.start()

        for base in fleet:
            wait_for(lambda b=base: feed_healthy(b), 10, "feed follows the new primary")
            for key, data in truth.items():
                wait_for(lambda b=base, k=key, d=data: answers_with(b, k, d), 10, f"{key} as the new primary holds it")
        for base in fleet:  # and it stays so
            for key, data in truth.items():
                assert answers_with(base, key, data), key
        log = live.output()
        assert "history went back" in log and "Traceback" not in log, log


def _uploaded(base: str, key: str, data: bytes) -> bool:
    with contextlib.suppress(httpx.TransportError):
        response = httpx.put(f"{base}/media/{key}", content=data, headers={"authorization": f"Bearer {TOKEN}"},
                             timeout=ANSWER_SECONDS)  # fmt: skip
        assert response.status_code in (200, 201, 503), response.text
        if response.status_code == 503:
            assert "retry-after" in response.headers
        return response.status_code in (200, 201)
    return False


def _started(stack: contextlib.ExitStack, server: Frontend) -> Frontend:
    """Start ``server``; it is stopped when ``stack`` closes."""
    stack.callback(server.stop)
    return server.start()
