"""A blog on Flask whose uploaded images are served by servefiles' WSGI middleware.

Run it from the project root (after `.venv/bin/servefiles put photo.jpg blog/photo.jpg`,
so there is something to show):

    .venv/bin/gunicorn examples.flask_app.app:app

Then open http://127.0.0.1:8000/ . The home page is Flask's; everything under `/media/`
is answered by servefiles (memory and disk caches, filled from the database; disk hits go
out with sendfile under gunicorn). SERVEFILES_DB and SERVEFILES_CACHE_DIR choose the
database and the cache dir, with the same defaults as the `servefiles` command.
"""

from __future__ import annotations

import html
import os

from flask import Flask

from servefiles import FileMeta, ServeFilesWSGI, config

DB_URL = os.environ.get("SERVEFILES_DB") or config.default_db_url()
CACHE_DIR = os.environ.get("SERVEFILES_CACHE_DIR") or None  # None: servefiles' default cache dir

app = Flask(__name__)
# /media/* goes to servefiles; everything else to Flask. One event loop per worker process,
# started on its first request, so gunicorn's --preload and fork are safe.
files = ServeFilesWSGI(app.wsgi_app, db=DB_URL, prefix="/media", cache_dir=CACHE_DIR)
app.wsgi_app = files  # type: ignore[method-assign]


def list_item(meta: FileMeta) -> str:
    url = html.escape(files.url(meta.key))
    preview = f' <img src="{url}" alt="" height="80">' if meta.content_type.startswith("image/") else ""
    return f'<li><a href="{url}">{html.escape(meta.key)}</a> ({meta.size} bytes){preview}</li>'


@app.get("/")
def home() -> str:
    """The uploads, listed with servefiles' sync Python API (``files.list``)."""
    items = "".join(list_item(meta) for meta in files.list(limit=100)) or "<li>nothing uploaded yet</li>"
    return f"<!doctype html><title>Uploads</title><h1>Uploaded files</h1><ul>{items}</ul>"
