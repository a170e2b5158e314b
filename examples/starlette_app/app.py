"""A blog on Starlette whose uploaded images are served by servefiles.

Run it (after `servefiles put photo.jpg blog/photo.jpg`, so there is something to show):

    .venv/bin/uvicorn examples.starlette_app.app:app

The home page lists the files; `/media/{key}` is answered by servefiles from
its memory and disk caches, filled from the database. SERVEFILES_DB and
SERVEFILES_CACHE_DIR choose the database and the cache dir, as for the CLI.
"""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from servefiles import ServeFiles, Store, config, open_store

DB_URL = os.environ.get("SERVEFILES_DB") or config.default_db_url()
IMAGE_TYPES = ("image/",)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Store]]:
    """The app's own store, for listing; ServeFiles keeps its own for serving."""
    async with open_store(DB_URL) as store:
        yield {"store": store}


async def home(request: Request) -> HTMLResponse:
    store: Store = request.state.store
    items = []
    for meta in await store.list(limit=100):
        url = f"/media/{html.escape(meta.key)}"
        preview = f'<img src="{url}" width="120">' if meta.content_type.startswith(IMAGE_TYPES) else ""
        items.append(f'<li><a href="{url}">{html.escape(meta.key)}</a> ({meta.size} bytes) {preview}</li>')
    return HTMLResponse(f"<h1>Uploaded files</h1><ul>{''.join(items) or '<li>none yet</li>'}</ul>")


blog = Starlette(routes=[Route("/", home)], lifespan=lifespan)
app = ServeFiles(blog, db=DB_URL, prefix="/media", cache_dir=os.environ.get("SERVEFILES_CACHE_DIR") or None)
