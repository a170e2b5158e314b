"""Fixtures of the hostile-input tests: each adapter over each store, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servefiles import ServeFiles, ServeFilesWSGI, open_store

from .corpus import MAX_UPLOAD_BYTES
from .harness import TOKEN, Adapter, AsgiAdapter, Harness, WsgiAdapter


@pytest.fixture(params=["asgi", "wsgi"])
def adapter_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def harness(adapter_name: str, store_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """``ServeFiles`` or ``ServeFilesWSGI`` over the store, with the upload token, the ordinary
    files uploaded through it, and canaries planted next to its cache dir."""
    options = {"cache_dir": tmp_path / "cache", "upload_tokens": [TOKEN], "max_upload_bytes": MAX_UPLOAD_BYTES}
    adapter: Adapter
    if adapter_name == "asgi":
        adapter = AsgiAdapter(ServeFiles(None, db=store_url, **options))  # type: ignore[arg-type]
    else:
        adapter = WsgiAdapter(ServeFilesWSGI(None, db=store_url, **options))  # type: ignore[arg-type]
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
