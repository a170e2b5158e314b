"""Fixtures of the hostile-input tests: each adapter over each store, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servefiles import ServeFiles, ServeFilesWSGI, open_store

from .corpus import MAX_UPLOAD_BYTES
from .harness import BLOG_TOKEN, TOKEN, Adapter, AsgiAdapter, Harness, WsgiAdapter


@pytest.fixture(params=["asgi", "wsgi"])
def adapter_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def harness(adapter_name: str, store_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """``ServeFiles`` or ``ServeFilesWSGI`` over the store, with the upload token (and one scoped
    to ``blog/``), the ordinary files uploaded through it, and canaries planted next to its cache dir."""
    cache_dir, tokens, limit = tmp_path / "cache", [TOKEN, f"{BLOG_TOKEN}:blog"], MAX_UPLOAD_BYTES
    adapter: Adapter
    if adapter_name == "asgi":
        asgi = ServeFiles(None, store_url, cache_dir=cache_dir, upload_tokens=tokens, max_upload_bytes=limit)
        adapter = AsgiAdapter(asgi)
    else:
        wsgi = ServeFilesWSGI(None, store_url, cache_dir=cache_dir, upload_tokens=tokens, max_upload_bytes=limit)
        adapter = WsgiAdapter(wsgi)
    db_file = tmp_path / "files.db" if store_url.startswith("sqlite:") else None
    try:
        async with open_store(store_url) as store:
            harness = Harness(adapter, store, tmp_path, db_file)
            await harness.upload_ordinary_files()
            harness.plant_canaries()
            harness.configure_audit()
            yield harness
    finally:
        await adapter.close()
