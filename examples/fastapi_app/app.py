"""A FastAPI app whose uploaded files are served by servefiles, added with ``add_middleware``.

Run it from the project root (after `.venv/bin/servefiles put photo.jpg blog/photo.jpg`,
so there is something to list):

    .venv/bin/uvicorn examples.fastapi_app.app:app

`GET /api/files` (optionally `?prefix=blog/`) lists the files as JSON, each with the URL
servefiles answers it at: http://127.0.0.1:8000/media/blog/photo.jpg . SERVEFILES_DB and
SERVEFILES_CACHE_DIR choose the database and the cache dir, with the same defaults as the
`servefiles` command.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from urllib.parse import quote

from fastapi import FastAPI, Request
from pydantic import BaseModel

from servefiles import ServeFiles, Store, config, open_store

DB_URL = os.environ.get("SERVEFILES_DB") or config.default_db_url()
CACHE_DIR = os.environ.get("SERVEFILES_CACHE_DIR") or None  # None: servefiles' default cache dir
MEDIA = "/media"


class FileInfo(BaseModel):
    key: str
    size: int
    content_type: str
    sha256: str
    url: str


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Store]]:
    """The API's own store, for listing: ServeFiles passes lifespan through, so this runs as usual."""
    async with open_store(DB_URL) as store:
        yield {"store": store}  # request.state.store in every request


app = FastAPI(title="servefiles example", lifespan=lifespan)
# Starlette builds the middleware as ServeFiles(<the app>, db=…, …): /media/* goes to
# servefiles, everything else to the routes below. It lives as long as the process.
app.add_middleware(ServeFiles, db=DB_URL, prefix=MEDIA, cache_dir=CACHE_DIR)


@app.get("/api/files")
async def list_files(request: Request, prefix: str = "") -> list[FileInfo]:
    store: Store = request.state.store
    return [
        FileInfo(
            key=meta.key,
            size=meta.size,
            content_type=meta.content_type,
            sha256=meta.sha256,
            url=f"{MEDIA}/{quote(meta.key)}",
        )
        for meta in await store.list(prefix, limit=100)
    ]
