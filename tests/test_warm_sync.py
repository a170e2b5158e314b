"""`servefiles warm` and `servefiles sync --verify`, run as real processes on a real cache dir."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import httpx

from servefiles import open_store
from servefiles.cache.disk import DiskCache

from .servers import cli, serving


def run(*args: str, env: dict[str, str]) -> str:
    result = cli(*args, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def _put(url: str, files: dict[str, bytes]) -> None:
    async with open_store(url) as store:
        for key, data in files.items():
            await store.put(key, data)


async def _delete(url: str, key: str) -> None:
    async with open_store(url) as store:
        await store.delete(key)


def cached(cache_dir: Path) -> dict[str, str]:
    """key -> sha256 of what the cache dir's index holds."""
    disk = DiskCache(cache_dir, 1 << 30)
    disk.open(sweep=False)
    try:
        keys = disk.keys()
        return {key: entry.meta.sha256 for key in keys if (entry := disk.get(key)) is not None}
    finally:
        disk.close()


def test_warm_prefills_so_first_requests_hit_the_disk(store_url: str, tmp_path: Path) -> None:
    files = {f"blog/{n}.jpg": os.urandom(50_000 + n) for n in range(5)} | {"avatars/a.png": os.urandom(1000)}
    asyncio.run(_put(store_url, files))
    env = {"SERVEFILES_DB": store_url, "SERVEFILES_CACHE_DIR": str(tmp_path / "cache")}
    assert "fetched 5 " in run("warm", "blog/", env=env)
    assert set(cached(tmp_path / "cache")) == {k for k in files if k.startswith("blog/")}
    stats = json.loads(run("stats", "--json", env=env))
    assert stats["entries"] == 5
    assert stats["bytes"] == sum(len(v) for k, v in files.items() if k.startswith("blog/"))
    with serving("--metrics", env=env) as base:
        for key, data in files.items():
            if key.startswith("blog/"):
                assert httpx.get(f"{base}/media/{key}").content == data
        metrics = httpx.get(f"{base}/_servefiles/metrics").text
    assert "servefiles_store_fetches_total 0.0" in metrics


def test_warm_is_incremental(store_url: str, tmp_path: Path) -> None:
    env = {"SERVEFILES_DB": store_url, "SERVEFILES_CACHE_DIR": str(tmp_path / "cache")}
    asyncio.run(_put(store_url, {"a.txt": b"a" * 100, "b.txt": b"b" * 100}))
    assert "fetched 2 " in run("warm", env=env)
    assert "fetched 0 " in run("warm", env=env)
    asyncio.run(_put(store_url, {"a.txt": b"new a" * 100}))
    asyncio.run(_delete(store_url, "b.txt"))
    out = run("warm", env=env)
    assert "fetched 1 " in out and "removed 2" in out  # old a.txt and the deleted b.txt
    assert cached(tmp_path / "cache") == {"a.txt": hashlib.sha256(b"new a" * 100).hexdigest()}


def test_sync_verify_repairs_drift_and_corruption(store_url: str, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    env = {"SERVEFILES_DB": store_url, "SERVEFILES_CACHE_DIR": str(cache_dir)}
    files = {"keep.bin": os.urandom(40_000), "flip.bin": os.urandom(40_000), "gone.bin": os.urandom(40_000)}
    asyncio.run(_put(store_url, files))
    run("warm", env=env)
    flip_name = hashlib.sha256(files["flip.bin"]).hexdigest()
    flip = next(p for p in (cache_dir / "objects").rglob("*") if p.name == flip_name)
    damaged = bytearray(flip.read_bytes())
    damaged[1000] ^= 0xFF  # same size, wrong bytes: only re-hashing finds it
    flip.write_bytes(bytes(damaged))
    asyncio.run(_delete(store_url, "gone.bin"))
    out = run("sync", "--verify", env=env)
    assert "corrupt 1" in out and "fetched 1 " in out
    assert cached(cache_dir) == {k: hashlib.sha256(v).hexdigest() for k, v in files.items() if k != "gone.bin"}
    assert flip.read_bytes() == files["flip.bin"]
    assert "corrupt 0" in run("sync", "--verify", env=env)
