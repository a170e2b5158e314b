"""Where servefiles keeps things when nobody says: one answer for every command.

``servefiles put x.jpg`` and then ``servefiles serve`` must meet in the same
database, so the defaults live here, once. ``SERVEFILES_DATA_DIR`` moves the
whole default home (the embedded database and the cache) somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "servefiles"


def data_dir() -> Path:
    """``$SERVEFILES_DATA_DIR``, else the user's data directory for servefiles."""
    configured = os.environ.get("SERVEFILES_DATA_DIR")
    return Path(configured) if configured else Path(platformdirs.user_data_dir(APP_NAME))


def default_db_url() -> str:
    """The embedded SQLite database in :func:`data_dir` (created on first use)."""
    return f"sqlite:///{(data_dir() / 'files.db').absolute()}"


def default_cache_dir() -> Path:
    """The local cache: under ``$SERVEFILES_DATA_DIR`` when set, else the user cache dir."""
    if os.environ.get("SERVEFILES_DATA_DIR"):
        return data_dir() / "cache"
    return Path(platformdirs.user_cache_dir(APP_NAME))


def default_publish_dir() -> Path:
    """The tree nginx serves published files from (``--nginx tree``): next to the cache."""
    return default_cache_dir().parent / f"{APP_NAME}-published" if not os.environ.get("SERVEFILES_DATA_DIR") \
        else data_dir() / "published"
