"""A blog on Starlette whose uploaded images are served by servefiles.

Run it from the project root (after `.venv/bin/servefiles put photo.jpg blog/photo.jpg`,
so there is something to show):

    .venv/bin/uvicorn examples.starlette_app.app:app

Then open http://127.0.0.1:8000/ . The home page is Starlette's; everything under
`/media/` is answered by servefiles from its memory and disk caches, filled from the
database. SERVEFILES_DB and SERVEFILES_CACHE_DIR choose the database and the cache dir,
with the same defaults as the `servefiles` command.
"""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from servefiles import FileMeta, ServeFiles, Store, config, open_store

DB_URL = os.environ.get("SERVEFILES_DB") or config.default_db_url()
CACHE_DIR = os.environ.get("SERVEFILES_CACHE_DIR") or None  # None: servefiles' default cache dir
MEDIA = "/media"


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Store]]:
    """The blog's own store, for listing: ServeFiles passes lifespan through, so this runs as usual."""
    async with open_store(DB_URL) as store:
        yield {"store": store}  # request.state.store in every request
    # ServeFiles closes itself (change feed, fills, database) once this shutdown is complete.


def media_url(key: str) -> str:
    """Where servefiles serves ``key``: percent-encoded, so keys with spaces, ``?`` or ``#`` work."""
    return f"{MEDIA}/{quote(key)}"


def list_item(meta: FileMeta) -> str:
    url = html.escape(media_url(meta.key))
    preview = f' <img src="{url}" alt="" height="80">' if meta.content_type.startswith("image/") else ""
    return f'<li><a href="{url}">{html.escape(meta.key)}</a> ({meta.size} bytes){preview}</li>'


async def home(request: Request) -> HTMLResponse:
    store: Store = request.state.store
    items = "".join(list_item(meta) for meta in await store.list(limit=100)) or "<li>nothing uploaded yet</li>"
    return HTMLResponse(f"<!doctype html><title>Uploads</title><h1>Uploaded files</h1><ul>{items}</ul>")


blog = Starlette(routes=[Route("/", home)], lifespan=lifespan)

# /media/* goes to servefiles; everything else, lifespan included, to the blog.
app = ServeFiles(blog, db=DB_URL, prefix=MEDIA, cache_dir=CACHE_DIR)
