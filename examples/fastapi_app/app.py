"""A FastAPI app whose uploaded files are served by servefiles, mounted with add_middleware.

Run it (after `servefiles put photo.jpg blog/photo.jpg`):

    .venv/bin/uvicorn examples.fastapi_app.app:app

`GET /api/files` lists the files as JSON; `/media/{key}` is served by
servefiles. SERVEFILES_DB and SERVEFILES_CACHE_DIR work as for the CLI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from servefiles import ServeFiles, Store, config, open_store

DB_URL = os.environ.get("SERVEFILES_DB") or config.default_db_url()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Store]]:
    async with open_store(DB_URL) as store:
        yield {"store": store}


app = FastAPI(lifespan=lifespan)
app.add_middleware(ServeFiles, db=DB_URL, prefix="/media", cache_dir=os.environ.get("SERVEFILES_CACHE_DIR") or None)


@app.get("/api/files")
async def list_files(request: Request, prefix: str = "") -> list[dict[str, Any]]:
    store: Store = request.state.store
    return [
        {"key": meta.key, "size": meta.size, "content_type": meta.content_type, "url": f"/media/{meta.key}"}
        for meta in await store.list(prefix, limit=100)
    ]
