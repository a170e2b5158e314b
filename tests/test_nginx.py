"""nginx in front of servefiles, for real: ``servefiles serve --nginx MODE`` behind a real
nginx running the block ``servefiles nginx-config --mode MODE`` prints, on both stores.

Expected values come from the bytes sent and from the database (hashlib, the store's
``updated_at``), never from the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from servefiles import FileMeta, open_store

from .asgi_servers import http_request
from .nginx_server import Nginx, running_nginx, server_block
from .servers import Frontend, free_port

TOKEN = "nginx-test-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)
CANARY = b"CANARY-" + os.urandom(16).hex().encode()


def sha_etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def nginx_etag(meta: FileMeta) -> str:
    """What nginx's static module sends: hex mtime (the database's updated_at, whole seconds) - hex size."""
    return f'"{int(meta.updated_at.timestamp()):x}-{meta.size:x}"'


@dataclass
class Stack:
    mode: str
    base: str
    frontend: Frontend
    nginx: Nginx
    cache_dir: Path
    publish_dir: Path
    store_url: str

    def published(self, key: str) -> Path:
        return self.publish_dir / "media" / key

    def bytes_sent(self) -> float:
        return self.frontend.metric("servefiles_bytes_sent_total")

    async def meta(self, key: str) -> FileMeta:
        async with open_store(self.store_url) as store:
            meta = await store.stat(key)
        assert meta is not None
        return meta


@contextlib.contextmanager
def stack(mode: str, store_url: str, tmp_path: Path) -> Iterator[Stack]:
    cache_dir, publish_dir = tmp_path / "cache", tmp_path / "published"
    frontend = Frontend("--db", store_url, "--cache-dir", str(cache_dir), "--nginx", mode, "--publish-dir",
                        str(publish_dir), "--upload-token", TOKEN, "--metrics").start()  # fmt: skip
    try:
        port = free_port()
        block = server_block(mode, frontend.port, port, cache_dir, publish_dir)
        with running_nginx(tmp_path / "nginx", block, port) as nginx:
            yield Stack(mode, f"http://127.0.0.1:{port}", frontend, nginx, cache_dir, publish_dir, store_url)
            assert "[alert]" not in nginx.errors() and "[crit]" not in nginx.errors(), nginx.errors()
    finally:
        frontend.stop()
    assert "Traceback" not in frontend.output(), frontend.output()


@pytest.mark.parametrize("mode", ["accel", "tree"])
async def test_hits_misses_ranges_replace_and_delete(mode: str, store_url: str, tmp_path: Path) -> None:
    with stack(mode, store_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            put = await client.put("/media/blog/photo.png", content=PNG, headers={**AUTH, "content-type": "image/png"})
            assert put.status_code == 201, put.text
            meta = await s.meta("blog/photo.png")
            etag = sha_etag(PNG) if mode == "accel" else nginx_etag(meta)

            first = await client.get("/media/blog/photo.png")  # a miss: servefiles fills, nginx sends
            assert (first.status_code, first.content) == (200, PNG)
            assert first.headers["content-type"] == "image/png"
            assert first.headers["content-length"] == str(len(PNG))
            assert first.headers["etag"] == etag
            assert first.headers["last-modified"] == format_datetime(meta.updated_at.replace(microsecond=0), True)
            assert first.headers["x-content-type-options"] == "nosniff"
            assert first.headers["cache-control"] == "no-cache"
            assert "x-accel-redirect" not in first.headers

            sent = s.bytes_sent()
            hit = await client.get("/media/blog/photo.png")
            assert (hit.status_code, hit.content, hit.headers["etag"]) == (200, PNG, etag)
            assert s.bytes_sent() == sent, "a hit's bytes come from nginx, not from servefiles"
            if mode == "tree":
                assert s.published("blog/photo.png").read_bytes() == PNG

            not_modified = await client.get("/media/blog/photo.png", headers={"if-none-match": etag})
            assert not_modified.status_code == 304 and not_modified.content == b""
            part = await client.get("/media/blog/photo.png", headers={"range": "bytes=10-19"})
            assert (part.status_code, part.content) == (206, PNG[10:20])
            assert part.headers["content-range"] == f"bytes 10-19/{len(PNG)}"
            parts = await client.get("/media/blog/photo.png", headers={"range": "bytes=0-1,100-101"})
            assert parts.status_code == 206 and parts.headers["content-type"].startswith("multipart/byteranges")
            assert PNG[0:2] in parts.content and PNG[100:102] in parts.content
            stale_range = await client.get("/media/blog/photo.png", headers={"range": "bytes=0-9", "if-range": '"x"'})
            assert (stale_range.status_code, stale_range.content) == (200, PNG)

            new = b"\x89PNG\r\n\x1a\n" + os.urandom(200_000)
            assert (await client.put("/media/blog/photo.png", content=new, headers=AUTH)).status_code == 200
            replaced = await client.get("/media/blog/photo.png")  # read-your-writes through nginx
            assert (replaced.status_code, replaced.content) == (200, new)
            assert replaced.headers["etag"] != etag

            assert (await client.delete("/media/blog/photo.png", headers=AUTH)).status_code == 204
            assert (await client.get("/media/blog/photo.png")).status_code == 404
            assert not s.published("blog/photo.png").exists()


async def test_tree_hits_are_served_by_nginx_alone(store_url: str, tmp_path: Path) -> None:
    with stack("tree", store_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            await client.put("/media/a/b/c.png", content=PNG, headers={**AUTH, "content-type": "image/png"})
            assert (await client.get("/media/a/b/c.png")).content == PNG  # published now
            meta = await s.meta("a/b/c.png")
            s.frontend.stop()  # servefiles is gone; nginx still has the tree
            alone = await client.get("/media/a/b/c.png")
            assert (alone.status_code, alone.content) == (200, PNG)
            assert alone.headers["etag"] == nginx_etag(meta)
            assert alone.headers["content-type"] == "image/png"
            assert alone.headers["x-content-type-options"] == "nosniff"
            assert os.stat(s.published("a/b/c.png")).st_mtime == int(meta.updated_at.timestamp())
            s.frontend.start()


async def test_tree_never_publishes_text_or_active_content(store_url: str, tmp_path: Path) -> None:
    with stack("tree", store_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            files = {
                "page.html": (b"<script>alert(1)</script>", "text/html"),
                "pic.svg": (b"<svg onload=alert(1)/>", "image/svg+xml"),
                "notes.txt": ("héllo".encode(), "text/plain"),
                "fake.png": (b"<html>not a png</html>", "text/html"),  # the type does not match the extension
            }
            for key, (data, content_type) in files.items():
                put = await client.put(f"/media/{key}", content=data, headers={**AUTH, "content-type": content_type})
                assert put.status_code == 201
            for key, (data, _) in files.items():
                for _ in range(2):
                    response = await client.get(f"/media/{key}")
                    assert (response.status_code, response.content) == (200, data)
                    assert response.headers["etag"] == sha_etag(data), "servefiles' headers, via accel"
                assert not s.published(key).exists(), key
            assert (await client.get("/media/page.html")).headers["content-disposition"].startswith("attachment")
            assert (await client.get("/media/fake.png")).headers["content-type"] == "text/html; charset=utf-8"
            assert (await client.get("/media/notes.txt")).headers["content-type"] == "text/plain; charset=utf-8"


TRAVERSALS = [
    b"/media/../canary.txt", b"/media/%2e%2e/canary.txt", b"/media/..%2fcanary.txt", b"/media/%2e%2e%2fcanary.txt",
    b"/media/a/../../canary.txt", b"/media/%252e%252e/canary.txt", b"/media/..\\canary.txt",
    b"/media/%c0%ae%c0%ae/canary.txt", b"/media/%00", b"/media//canary.txt", b"/_servefiles_accel/../canary.txt",
    b"/_servefiles_tree/../canary.txt", b"/_servefiles_accel/", b"/_servefiles_tree/ok.png", b"/canary.txt",
    b"/media/../published/media/ok.png", b"/media/../../../../etc/passwd",
]  # fmt: skip


@pytest.mark.parametrize("mode", ["accel", "tree"])
async def test_traversal_attempts_never_leave_the_cache(mode: str, sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "canary.txt").write_bytes(CANARY)
    (tmp_path / "published").mkdir()
    (tmp_path / "published" / "canary.txt").write_bytes(CANARY)
    with stack(mode, sqlite_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            await client.put("/media/ok.png", content=PNG, headers={**AUTH, "content-type": "image/png"})
            assert (await client.get("/media/ok.png")).content == PNG
        for target in TRAVERSALS:
            response = await http_request(s.base, "GET", target)
            assert response.status in (400, 403, 404), (target, response.status)
            assert CANARY not in response.body and b"root:" not in response.body, target
            assert PNG[:64] not in response.body or target.endswith(b"/ok.png") is False, target
        assert (await asyncio.to_thread(Path(s.publish_dir / "canary.txt").read_bytes)) == CANARY


async def test_the_nginx_config_command_names_the_locations(tmp_path: Path) -> None:
    block = server_block("tree", 8000, 8080, tmp_path / "c", tmp_path / "p")
    assert f"root {tmp_path / 'p'};" in block and f"alias {tmp_path / 'c' / 'objects'}/;" in block
    assert "image/png png;" in block and "text/html" not in block and "image/svg+xml" not in block
    assert "open_file_cache" not in block.replace("# no open_file_cache", "")
    started = time.monotonic()
    accel = server_block("accel", 8000, 8080, tmp_path / "c", tmp_path / "p")
    assert "try_files" not in accel and "internal;" in accel and time.monotonic() - started < 30
