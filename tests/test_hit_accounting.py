"""Hits and misses, counted for real in every mode: ``servefiles serve`` (uvicorn), ServeFilesWSGI
under gunicorn, and behind a real nginx in ``accel`` and ``tree`` modes.

The rule (README, metric HELP texts): each request for an existing file that reaches servefiles
is counted exactly once, as a hit of the tier whose copy answered it (whatever the status: 200,
206, 304, HEAD) or as a miss when no tier held it; a miss's content comes from one store fetch
(a HEAD or 304 of an uncached file needs the metadata only). A 404 is neither. In tree mode
nginx answers published files alone: those requests never reach servefiles. A miss is published
behind its reply, so its ETag is servefiles' and later ones nginx's.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from servefiles import open_store

from .servers import Frontend, running, running_wsgi
from .test_nginx import stack

FILES = {
    "small.png": b"\x89PNG\r\n\x1a\n" + os.urandom(10_000),  # the memory tier's
    "large.png": b"\x89PNG\r\n\x1a\n" + os.urandom(600_000),  # the disk tier's
    "notes.txt": b"notes " * 3_000,  # text: never published in nginx's tree
    "big.txt": b"a long text " * 50_000,
}
COLD = "cold.png"


def counters(frontend: Frontend) -> dict[str, float]:
    return {
        "memory": frontend.metric('servefiles_hits_total{tier="memory"}'),
        "disk": frontend.metric('servefiles_hits_total{tier="disk"}'),
        "misses": frontend.metric("servefiles_misses_total"),
        "fetches": frontend.metric("servefiles_store_fetches_total"),
    }


async def put_files(store_url: str) -> None:
    async with open_store(store_url) as store:
        for key, data in {**FILES, COLD: FILES["large.png"][::-1]}.items():
            await store.put(key, data)


async def check_accounting(
    base: str, frontend: Frontend, published: Callable[[str], Awaitable[None]] | None = None, prefix: str = "/media"
) -> None:
    """``published``: nginx serves a published (.png) file itself once a request has filled it;
    ``published(key)`` returns once the tree holds it."""
    assert counters(frontend) == {"memory": 0, "disk": 0, "misses": 0, "fetches": 0}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        etags = {}
        for key, data in FILES.items():  # a cold run: every request a miss, every miss one fetch
            response = await client.get(f"{prefix}/{key}")
            assert (response.status_code, response.content) == (200, data)
            etags[key] = response.headers["etag"]
        assert (await client.get(f"{prefix}/absent.png")).status_code == 404  # neither a hit nor a miss
        assert counters(frontend) == {"memory": 0, "disk": 0, "misses": len(FILES), "fetches": len(FILES)}

        for key in FILES:
            if published is not None and key.endswith(".png"):
                await published(key)  # behind the miss's reply: from now on nginx's, with its ETag
        answered = 0
        for key, data in FILES.items():  # warm: hits only, of whichever tier answered
            warm = await client.get(f"{prefix}/{key}")
            assert warm.content == data
            etags[key] = warm.headers["etag"]
            assert (await client.get(f"{prefix}/{key}", headers={"if-none-match": etags[key]})).status_code == 304
            assert (await client.head(f"{prefix}/{key}")).status_code == 200
            answered += 0 if published is not None and key.endswith(".png") else 3
        after = counters(frontend)
        assert after["memory"] + after["disk"] == answered, after
        assert (after["misses"], after["fetches"]) == (len(FILES), len(FILES)), after

        head = await client.head(f"{prefix}/{COLD}")  # no tier holds it: a miss, whatever the method
        assert head.status_code == 200 and head.headers["content-length"] == str(len(FILES["large.png"]))
        last = counters(frontend)
        assert last["memory"] + last["disk"] == answered and last["misses"] == len(FILES) + 1, last
        assert last["fetches"] == len(FILES), last  # a HEAD needs the metadata only, in every mode


async def test_standalone_counts_each_request_once(sqlite_url: str, tmp_path: Path) -> None:
    await put_files(sqlite_url)
    # Every miss admitted to the disk tier: the warm run is all hits (admission has its own tests).
    args = ("--db", sqlite_url, "--cache-dir", str(tmp_path / "cache"), "--metrics", "--cache-min-uses", "1")
    with running(*args) as frontend:
        await check_accounting(frontend.base, frontend)


async def test_wsgi_counts_each_request_once(sqlite_url: str, tmp_path: Path) -> None:
    await put_files(sqlite_url)
    options = {"db": sqlite_url, "cache_dir": str(tmp_path / "cache"), "metrics": True, "cache_min_uses": 1}
    with running_wsgi(options) as frontend:
        await check_accounting(frontend.base, frontend)


@pytest.mark.parametrize("mode", ["accel", "tree"])
async def test_nginx_modes_count_each_request_once(mode: str, sqlite_url: str, tmp_path: Path) -> None:
    """The fault as reported: in tree mode every fill was counted as a disk hit, and misses stayed 0."""
    await put_files(sqlite_url)
    with stack(mode, sqlite_url, tmp_path, min_uses=1) as s:  # the warm run is all hits
        await check_accounting(s.base, s.frontend, s.wait_published if mode == "tree" else None)
