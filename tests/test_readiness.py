"""Readiness (``GET /_servefiles/ready``): the rule, one clause per test, then its transitions with
PostgreSQL cut off and back for real (a TCP proxy that is cut refuses and kills connections, as a
stopped server does), on both adapters behind real servers (uvicorn; wsgiref).

Anonymous callers see the status and a short reason; upload-token holders and the admin
listener see the detailed report.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest

from servefiles import ServeFiles, open_store
from servefiles.levels import FeedLevels, Levels, TierLevels
from servefiles.probes import readiness

from .asgi_servers import asgi_request
from .tcp_proxy import TcpProxy, with_netloc
from .test_feed import until
from .test_health import ADAPTERS, DETAILED, PASSWORD, inner_asgi, mounted

FEED = FeedLevels(connected=True, caught_up_once=True, cursor=7, lag_versions=0, lag_seconds=0.0,
                  last_change_age_seconds=3.0, error=None)  # fmt: skip
READY = Levels(
    state="running", store_answered=True, store_error=None, breaker_open=False, memory=TierLevels(0, 0, 100),
    disk_open=True, disk=TierLevels(0, 0, 1000), disk_error=None, fills_in_flight=0, feed_enabled=True, feed=FEED,
    freshness_seconds=1.0,
)  # fmt: skip
FEED_DOWN = dataclasses.replace(FEED, connected=False, lag_seconds=5.0, error="connection lost")


def verdict(**changes: Any) -> tuple[bool, str]:
    found = readiness(dataclasses.replace(READY, **changes))
    return found.ready, found.reason


# -- the rule ---------------------------------------------------------------------------------


def test_ready_when_running_with_the_feed_caught_up() -> None:
    assert verdict() == (True, "ready")


@pytest.mark.parametrize("state", ["stopping", "stopped"])
def test_not_ready_while_shutting_down(state: str) -> None:
    assert verdict(state=state) == (False, "shutting down")


def test_not_ready_until_the_store_has_answered() -> None:
    assert verdict(state="starting", store_answered=False, disk_open=False, feed=None) == (
        False, "starting: waiting for the store")  # fmt: skip
    assert verdict(state="not started", store_answered=False, store_error="cannot connect", disk_open=False,
                   feed=None) == (False, "store unavailable")  # fmt: skip


def test_not_ready_until_the_disk_index_is_open() -> None:
    assert verdict(state="starting", disk_open=False, disk=None, feed=None) == (
        False, "starting: disk cache index not open")  # fmt: skip


def test_not_ready_until_the_feed_has_caught_up_once() -> None:
    assert verdict(feed=None) == (False, "starting: change feed catching up")
    behind = dataclasses.replace(FEED, connected=False, caught_up_once=False, lag_seconds=0.5)
    assert verdict(feed=behind) == (False, "starting: change feed catching up")


def test_ready_with_the_feed_down_while_the_store_answers_queries() -> None:
    assert verdict(feed=FEED_DOWN) == (True, "ready: change feed down, revalidating")


def test_ready_with_the_breaker_open_while_the_feed_is_down_within_the_freshness_window() -> None:
    assert verdict(feed=dataclasses.replace(FEED_DOWN, lag_seconds=0.5), breaker_open=True)[0] is True


def test_not_ready_with_the_feed_down_beyond_the_freshness_window_and_the_breaker_open() -> None:
    assert verdict(feed=FEED_DOWN, breaker_open=True) == (False, "store unreachable: change feed down and circuit open")


def test_without_a_feed_the_breaker_alone_decides() -> None:
    assert verdict(feed_enabled=False, feed=None) == (True, "ready")
    assert verdict(feed_enabled=False, feed=None, breaker_open=True)[0] is False


# -- transitions, for real --------------------------------------------------------------------


async def ready(client: httpx.AsyncClient, detailed: bool = False) -> tuple[int, dict[str, Any]]:
    """GET the readiness endpoint: (status, report). Anonymous: status and reason only."""
    response = await client.get("/_servefiles/ready", headers=DETAILED if detailed else None, timeout=10)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert PASSWORD not in response.text
    report: dict[str, Any] = response.json()
    if not detailed:
        assert set(report) == {"status", "reason"}, report
    assert report["status"] == ("ready" if response.status_code == 200 else "not ready"), report
    assert response.status_code in (200, 503)
    return response.status_code, report


async def until_ready(client: httpx.AsyncClient, status: int, seconds: float = 30) -> dict[str, Any]:
    """Poll the readiness endpoint until it answers ``status``; the anonymous report then."""

    async def answered() -> bool:
        return (await ready(client))[0] == status

    await until(answered, seconds=seconds)
    return (await ready(client))[1]


@ADAPTERS
async def test_not_ready_while_the_database_is_down_at_start_then_ready_once_it_is_up(
    adapter: str, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    await pg_proxy.cut()
    proxied = with_netloc(pg_url, f"127.0.0.1:{pg_proxy.port}")
    async with mounted(adapter, proxied, tmp_path / "cache", feed_check_seconds=0.2) as (_, client):
        status, report = await ready(client)  # the probe begins the start-up, as a first request would
        assert status == 503 and report["reason"] in ("starting: waiting for the store", "store unavailable")
        report = await until_ready(client, 503)
        status, detailed = await ready(client, detailed=True)
        assert status == 503 and detailed["state"] in ("not started", "starting")
        assert (await client.get("/_servefiles/health")).status_code == 200  # alive all the same

        await pg_proxy.restore()
        assert await until_ready(client, 200) == {"status": "ready", "reason": "ready"}
        status, detailed = await ready(client, detailed=True)
        assert status == 200 and detailed["state"] == "running" and detailed["store"] == "ok"
        assert detailed["feed"]["healthy"] is True and detailed["feed"]["lag_versions"] == 0
        assert detailed["disk"]["max_bytes"] == 1024**3 and detailed["breaker_open"] is False
        scrape = (await client.get("/_servefiles/metrics")).text
        assert 'servefiles_store_errors_total{kind="connect"}' in scrape
        assert "servefiles_ready 1.0" in scrape


@ADAPTERS
async def test_not_ready_while_the_database_is_out_of_reach_and_ready_again_once_it_is_back(
    adapter: str, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    async with open_store(pg_url) as store:
        await store.put("cached.txt", b"cached")
        for n in range(4):
            await store.put(f"cold-{n}.txt", b"never asked for before the outage")
    proxied = with_netloc(pg_url, f"127.0.0.1:{pg_proxy.port}")
    options = {"feed_check_seconds": 0.2, "freshness_seconds": 0.2}
    async with mounted(adapter, proxied, tmp_path / "cache", **options) as (_, client):
        assert await until_ready(client, 200) == {"status": "ready", "reason": "ready"}
        assert (await client.get("/media/cached.txt")).content == b"cached"

        await pg_proxy.cut()

        async def feed_down() -> bool:
            return (await ready(client, detailed=True))[1]["feed"]["healthy"] is False

        await until(feed_down, seconds=15)
        # The feed is down but the breaker is closed: still ready (nothing has failed a query yet).
        assert (await ready(client)) == (200, {"status": "ready", "reason": "ready: change feed down, revalidating"})
        for n in range(4):  # queries fail: the circuit opens
            assert (await client.get(f"/media/cold-{n}.txt")).status_code == 503
        report = await until_ready(client, 503, seconds=5)
        assert report == {"status": "not ready", "reason": "store unreachable: change feed down and circuit open"}
        await asyncio.sleep(0.3)  # past the freshness of the copy's own last validation
        stale = await client.get("/media/cached.txt")  # unready, yet still serving its copies
        assert stale.status_code == 200 and stale.headers["x-servefiles-stale"] == "store-unavailable"
        status, detailed = await ready(client, detailed=True)
        assert status == 503 and detailed["breaker_open"] is True and detailed["feed"]["lag_seconds"] > 0.2
        scrape = (await client.get("/_servefiles/metrics")).text
        assert "servefiles_breaker_open 1.0" in scrape and "servefiles_feed_connected 0.0" in scrape
        assert "servefiles_ready 0.0" in scrape

        await pg_proxy.restore()  # the feed reconnects; the store's answer closes the circuit
        assert await until_ready(client, 200) == {"status": "ready", "reason": "ready"}
        assert (await client.get("/media/cold-0.txt")).status_code == 200


async def test_not_ready_while_shutting_down_and_after(store_url: str, tmp_path: Path) -> None:
    app = ServeFiles(inner_asgi, db=store_url, cache_dir=tmp_path / "cache")
    try:
        await app.service.start()
        assert (await asgi_request(app, "GET", b"/_servefiles/ready")).status == 200
        closing = asyncio.create_task(app.aclose())
        await asyncio.sleep(0)  # close() has begun
        during = await asgi_request(app, "GET", b"/_servefiles/ready")
        assert during.status == 503 and b'"reason": "shutting down"' in during.body
        await closing
        after = await asgi_request(app.admin_app(), "GET", b"/_servefiles/ready")
        assert after.status == 503 and b'"state": "stopped"' in after.body
    finally:
        await app.aclose()
