"""The built-in endpoints answer in every state of the service, on both adapters, behind real
servers (uvicorn; wsgiref, what Django's runserver is): not started, starting (the database
does not answer), store unreachable, feed down, shutting down. Health is a liveness check:
always 200 and ``"status": "ok"`` while the process can answer, with the state and what is
wrong in the body; it never waits on the database, and never shows a DSN's password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servefiles import ServeFiles, ServeFilesWSGI, open_store

from .asgi_servers import Message, Receive, Scope, Send, asgi_request, uvicorn_server
from .servers import free_port
from .tcp_proxy import TcpProxy, with_netloc
from .test_feed import until
from .wsgi_servers import wsgiref_serving

PROMPT_SECONDS = 2.0
"""A liveness answer comes at once; the database's connect timeout is 10 s."""
PASSWORD = "hunter2-secret-password"
TOKEN = "health-upload-token-0123456789"
DETAILED = {"authorization": f"Bearer {TOKEN}"}
"""The detailed report is for upload-token holders (and the admin listener); others see status and reason."""


async def inner_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """The app servefiles is mounted in: it owns lifespan (so servefiles starts on first use)."""
    if scope["type"] == "lifespan":
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


def inner_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"inner"]


@contextlib.asynccontextmanager
async def mounted(
    adapter: str, db: str, cache_dir: Path, **options: Any
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """servefiles mounted in an app, behind a real server: (the middleware, a client for it)."""
    options.setdefault("upload_tokens", [TOKEN])
    if adapter == "asgi":
        asgi = ServeFiles(inner_asgi, db=db, cache_dir=cache_dir, metrics=True, **options)
        try:
            async with uvicorn_server(asgi) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
                yield asgi, client
        finally:
            await asgi.aclose()
    else:
        wsgi = ServeFilesWSGI(inner_wsgi, db=db, cache_dir=cache_dir, metrics=True, **options)
        try:
            with wsgiref_serving(wsgi) as base:
                async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                    yield wsgi, client
        finally:
            await asyncio.to_thread(wsgi.close)


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    """GET the health endpoint with an upload token: promptly, 200, JSON, status ok, the detailed
    report; and the metrics endpoint with it."""
    started = time.monotonic()
    response = await client.get("/_servefiles/health", headers=DETAILED, timeout=PROMPT_SECONDS + 3)
    assert time.monotonic() - started < PROMPT_SECONDS, "a liveness check must not wait on the database"
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    report: dict[str, Any] = response.json()
    assert report["status"] == "ok"
    assert PASSWORD not in response.text
    metrics = await client.get("/_servefiles/metrics", timeout=PROMPT_SECONDS + 3)
    assert metrics.status_code == 200 and "servefiles_hits_total" in metrics.text
    return report


ADAPTERS = pytest.mark.parametrize("adapter", ["asgi", "wsgi"])


@ADAPTERS
async def test_health_before_the_first_request_answers_and_starts_the_service(
    adapter: str, store_url: str, tmp_path: Path
) -> None:
    async with mounted(adapter, store_url, tmp_path / "cache") as (_, client):
        first = await health(client)
        assert first["state"] == "not started" and first["store"] == "not connected" and first["disk"] is None

        async def running() -> bool:
            return (await health(client))["state"] == "running"

        await until(running, seconds=20)  # the probe began the start-up, as a first request would
        report = await health(client)
        assert report["store"] == "ok" and report["feed"]["healthy"] is True
        assert report["disk"] == {"entries": 0, "bytes": 0, "max_bytes": 1024**3}


@pytest.fixture
def silent_database() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a database that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@ADAPTERS
async def test_health_while_starting_answers_at_once(adapter: str, silent_database: int, tmp_path: Path) -> None:
    dsn = f"postgresql://app:{PASSWORD}@127.0.0.1:{silent_database}/app"
    async with mounted(adapter, dsn, tmp_path / "cache") as (_, client):
        await health(client)  # begins the start-up, which now waits for the silent database
        await asyncio.sleep(0.2)
        report = await health(client)
        assert report["state"] == "starting" and report["store"] == "not connected"


@ADAPTERS
async def test_health_with_the_store_unreachable_is_200_and_says_why(adapter: str, tmp_path: Path) -> None:
    """The fault as reported: a PostgreSQL DSN whose port has nothing listening was a 500."""
    dsn = f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/app"
    async with mounted(adapter, dsn, tmp_path / "cache") as (_, client):
        assert (await client.get("/media/a.txt")).status_code == 503  # a request tried, and failed
        report = await health(client)
        assert report["state"] == "not started" and report["disk"] is None
        unavailable = "unavailable: cannot connect to PostgreSQL at postgresql://app:***@127.0.0.1:"
        assert report["store"].startswith(unavailable), report
        assert "app@" not in report["store"]  # neither user nor password: host, port and database only


@ADAPTERS
async def test_health_with_the_feed_down_is_200_and_says_so(
    adapter: str, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    async with open_store(pg_url) as store:
        await store.put("a.txt", b"cached")
    proxied = with_netloc(pg_url, f"127.0.0.1:{pg_proxy.port}")
    async with mounted(adapter, proxied, tmp_path / "cache", feed_check_seconds=0.2, cache_min_uses=1) as (_, client):
        assert (await client.get("/media/a.txt")).content == b"cached"  # and on disk: the miss fills
        assert (await health(client))["feed"]["healthy"] is True
        await pg_proxy.cut()

        async def feed_down() -> bool:
            return (await health(client))["feed"]["healthy"] is False

        await until(feed_down, seconds=10)
        report = await health(client)
        assert report["state"] == "running" and report["feed"]["error"]
        assert report["disk"]["entries"] == 1
        await pg_proxy.restore()


async def test_health_while_the_asgi_service_shuts_down_and_after(store_url: str, tmp_path: Path) -> None:
    app = ServeFiles(inner_asgi, db=store_url, cache_dir=tmp_path / "cache", metrics=True)
    try:
        await app.service.start()
        closing = asyncio.create_task(app.aclose())
        await asyncio.sleep(0)  # close() has begun and waits on the feed
        during = await asgi_request(app.admin_app(), "GET", b"/_servefiles/health")  # detailed
        assert during.status == 200
        assert b'"state": "stopping"' in during.body and b'"status": "ok"' in during.body
        await closing
        after = await asgi_request(app, "GET", b"/_servefiles/health")  # anonymous
        assert after.status == 200 and json.loads(after.body) == {"status": "ok", "reason": "stopped"}
        after = await asgi_request(app.admin_app(), "GET", b"/_servefiles/health")
        assert after.status == 200 and b'"state": "stopped"' in after.body and b'"disk": null' in after.body
        assert (await asgi_request(app, "GET", b"/_servefiles/metrics")).status == 200
        await asyncio.sleep(0.2)
        assert app.service.runtime.state == "stopped", "a probe after shutdown must not open the store again"
    finally:
        await app.aclose()


async def test_health_after_the_wsgi_service_closed(store_url: str, tmp_path: Path) -> None:
    async with mounted("wsgi", store_url, tmp_path / "cache") as (wsgi, client):
        assert (await health(client))["state"] in ("not started", "starting", "running")
        await asyncio.to_thread(wsgi.close)  # what runs at exit
        report = await health(client)  # a request after close gets a fresh per-process service
        assert report["state"] in ("not started", "starting", "running")
