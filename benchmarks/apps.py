"""The contenders of ``benchmarks.compare`` and ``benchmarks.workload``, as importable apps
configured from the environment.

``BENCH_DB`` (store URL), ``BENCH_CACHE`` (cache dir), ``BENCH_MEMORY`` (memory-tier
bytes; 0 makes every hit a disk hit), ``BENCH_STATIC`` (a directory holding the same files
as plain files, for the static-file peers); ``BENCH_BYTEA_DB`` and ``BENCH_BYTEA_TABLE``
(a PostgreSQL URL and a ``(key text primary key, data bytea)`` table, for ``bytea_direct``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from servefiles import ServeFiles, ServeFilesWSGI, Store
from servefiles.store import connect

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

DB = os.environ.get("BENCH_DB", "")
CACHE = os.environ.get("BENCH_CACHE", "")
MEMORY = int(os.environ.get("BENCH_MEMORY", str(64 * 1024 * 1024)))
STATIC = Path(os.environ.get("BENCH_STATIC", "."))

# servefiles: the ASGI middleware standalone (uvicorn, granian) and the WSGI one (gunicorn).
servefiles_asgi = ServeFiles(None, db=DB, cache_dir=CACHE, memory_bytes=MEMORY) if DB else None
servefiles_wsgi = ServeFilesWSGI(None, db=DB, cache_dir=CACHE, memory_bytes=MEMORY) if DB else None


class DbDirect:
    """"Serve it straight from the database": servefiles' own store, a stat and a read per request."""

    def __init__(self) -> None:
        self.store: Store | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.store = await connect(DB)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.store is not None:
                        await self.store.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self.store is not None
        key = scope["path"].removeprefix("/media/")
        meta = await self.store.stat(key)
        if meta is None:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(b"content-type", meta.content_type.encode()), (b"content-length", str(meta.size).encode()),
                   (b"etag", f'"{meta.sha256}"'.encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in self.store.read(key, version=meta.version):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


db_direct = DbDirect()


async def _lifespan(receive: Receive, send: Send) -> None:
    """A bare app's lifespan: every event completed, nothing started."""
    message = await receive()
    await send({"type": message["type"] + ".complete"})
    if message["type"] == "lifespan.startup":
        message = await receive()
        await send({"type": message["type"] + ".complete"})


class BareDict:
    """The ceiling for a Python ASGI app: bytes from a dict, nothing else."""

    def __init__(self) -> None:
        self.files = {
            f"/media/{path.relative_to(STATIC / 'static').as_posix()}": path.read_bytes()
            for path in (STATIC / "static").rglob("*") if path.is_file()
        } if (STATIC / "static").is_dir() else {}  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _lifespan(receive, send)
            return
        body = self.files.get(scope["path"])
        if body is None:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


bare_dict = BareDict()


def _starlette_static() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    return Starlette(routes=[Mount("/static", StaticFiles(directory=STATIC / "static"))])


def _whitenoise() -> Any:
    from whitenoise import WhiteNoise  # type: ignore[import-untyped]  # no stubs, no py.typed

    def not_found(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("404 Not Found", [("Content-Length", "0")])
        return []

    return WhiteNoise(not_found, root=str(STATIC / "static"), prefix="static/")


starlette_static = _starlette_static() if (STATIC / "static").is_dir() else None
whitenoise_app = _whitenoise() if (STATIC / "static").is_dir() else None


BYTEA_TYPES = {"png": b"image/png", "jpg": b"image/jpeg"}


class ByteaDirect:
    """"Serve it straight from the database" as an application would write it without
    servefiles: one asyncpg ``SELECT data`` from a plain ``bytea`` table per request."""

    def __init__(self) -> None:
        self.pool: Any = None
        self.query = f'SELECT data FROM "{os.environ.get("BENCH_BYTEA_TABLE", "files")}" WHERE key = $1'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            import asyncpg

            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.pool = await asyncpg.create_pool(os.environ["BENCH_BYTEA_DB"], min_size=10, max_size=10)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self.pool.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        key = scope["path"].removeprefix("/media/")
        data = await self.pool.fetchval(self.query, key)
        if data is None:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        content_type = BYTEA_TYPES.get(key.rpartition(".")[2], b"application/octet-stream")
        headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


bytea_direct = ByteaDirect()


def bare_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The ceiling for a Python WSGI app under the same server: bytes from a dict, nothing else."""
    body = _BARE_FILES.get(environ.get("PATH_INFO", ""))
    if body is None:
        start_response("404 Not Found", [("Content-Length", "0")])
        return []
    start_response("200 OK", [("Content-Type", "image/png"), ("Content-Length", str(len(body)))])
    return [body]


_BARE_FILES = bare_dict.files


class FixedAccel:
    """The limit of nginx's accel mode: a bare ASGI app answering every request with the response
    head in ``BENCH_ACCEL_HEADERS`` (a JSON object: path -> list of [name, value], servefiles'
    own reply to that path, ``X-Accel-Redirect`` included), so nginx sends the same file with
    the same headers and Python does nothing but answer."""

    def __init__(self) -> None:
        import json

        found = json.loads(os.environ.get("BENCH_ACCEL_HEADERS", "{}"))
        self.heads = {
            path: [(name.encode("latin-1"), value.encode("latin-1")) for name, value in head]
            for path, head in found.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _lifespan(receive, send)
            return
        head = self.heads.get(scope["path"])
        if head is None:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": b""})


fixed_accel = FixedAccel()
