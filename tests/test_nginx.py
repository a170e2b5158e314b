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
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from servefiles import FileMeta, ServeFiles, open_store
from servefiles.cache.disk import DiskCache, DiskEntry
from servefiles.cache.fill import INLINE_WRITE_BYTES
from servefiles.http import ByteRange
from servefiles.nginx import ACCEL_LOCATION, TREE_LOCATION
from servefiles.nginx.accel import READ_CHECK_SECONDS, AccelLayer
from servefiles.nginx.tree import PublishedTree
from servefiles.service import CacheSettings, FileService, Reply

from .asgi_servers import http_request, uvicorn_server
from .nginx_server import Nginx, running_nginx, server_block
from .servers import Frontend, free_port
from .tcp_proxy import TcpProxy, with_netloc

TOKEN = "nginx-test-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)
CANARY = b"CANARY-" + os.urandom(16).hex().encode()


def sha_etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def nginx_etag(meta: FileMeta) -> str:
    """What nginx's static module sends: hex mtime (the version's validator second) - hex size."""
    return f'"{int(meta.last_modified.timestamp()):x}-{meta.size:x}"'


@dataclass
class Stack:
    mode: str
    base: str
    frontend: Frontend
    nginx: Nginx
    cache_dir: Path
    publish_dir: Path
    store_url: str

    prefix: str = "/media"

    def published(self, key: str) -> Path:
        return self.publish_dir / self.prefix.strip("/") / key

    async def wait_published(self, key: str) -> None:
        """A miss is published behind its reply, once its fill lands: until it is there."""
        deadline = time.monotonic() + 10
        while not self.published(key).exists():
            assert time.monotonic() < deadline, f"{key} was not published"
            await asyncio.sleep(0.01)

    def bytes_sent(self) -> float:
        return self.frontend.metric("servefiles_bytes_sent_total")

    async def meta(self, key: str) -> FileMeta:
        async with open_store(self.store_url) as store:
            meta = await store.stat(key)
        assert meta is not None
        return meta


@contextlib.contextmanager
def stack(mode: str, store_url: str, tmp_path: Path, prefix: str = "/media", min_uses: int = 1,
          serve_options: tuple[str, ...] = ()) -> Iterator[Stack]:  # fmt: skip
    """``min_uses``: the frontend's ``--cache-min-uses``. 1 here (every miss is written to the disk
    tier, so a tree miss is published): these tests are about nginx's modes; admission in tree
    mode has its own test, with the default 2. ``serve_options``: more of the frontend's options."""
    cache_dir, publish_dir = tmp_path / "cache", tmp_path / "published"
    frontend = Frontend("--db", store_url, "--cache-dir", str(cache_dir), "--nginx", mode, "--publish-dir",
                        str(publish_dir), "--upload-token", TOKEN, "--metrics", "--prefix", prefix,
                        "--cache-min-uses", str(min_uses), *serve_options).start()  # fmt: skip
    try:
        port = free_port()
        block = server_block(mode, frontend.port, port, cache_dir, publish_dir, ("--prefix", prefix))
        with running_nginx(tmp_path / "nginx", block, port) as nginx:
            base = f"http://127.0.0.1:{port}"
            yield Stack(mode, base, frontend, nginx, cache_dir, publish_dir, store_url, prefix)
            assert "[alert]" not in nginx.errors() and "[crit]" not in nginx.errors(), nginx.errors()
    finally:
        frontend.stop()
    assert "Traceback" not in frontend.output(), frontend.output()


@pytest.mark.parametrize("mode", ["accel", "tree"])
async def test_hits_misses_ranges_replace_and_delete(mode: str, store_url: str, tmp_path: Path) -> None:
    with stack(mode, store_url, tmp_path, min_uses=1) as s:  # the first miss fills: the next GET is nginx's
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            put = await client.put("/media/blog/photo.png", content=PNG, headers={**AUTH, "content-type": "image/png"})
            assert put.status_code == 201, put.text
            meta = await s.meta("blog/photo.png")
            etag = sha_etag(PNG) if mode == "accel" else nginx_etag(meta)

            first = await client.get("/media/blog/photo.png")  # a miss: servefiles' (streamed, or nginx sends)
            assert (first.status_code, first.content) == (200, PNG)
            assert first.headers["content-type"] == "image/png"
            assert first.headers["content-length"] == str(len(PNG))
            assert first.headers["etag"] == sha_etag(PNG), "the miss is servefiles' in both modes"
            assert first.headers["last-modified"] == format_datetime(meta.updated_at.replace(microsecond=0), True)
            assert first.headers["x-content-type-options"] == "nosniff"
            assert first.headers["cache-control"] == "no-cache"
            assert "x-accel-redirect" not in first.headers

            if mode == "tree":
                await s.wait_published("blog/photo.png")  # behind the miss's reply
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


ASKED = ('servefiles_hits_total{tier="disk"}', 'servefiles_hits_total{tier="memory"}', "servefiles_misses_total")


async def test_tree_hits_are_served_by_nginx_alone(store_url: str, tmp_path: Path) -> None:
    with stack("tree", store_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            await client.put("/media/a/b/c.png", content=PNG, headers={**AUTH, "content-type": "image/png"})
            assert (await client.get("/media/a/b/c.png")).content == PNG  # a miss, published behind it
            await s.wait_published("a/b/c.png")
            meta = await s.meta("a/b/c.png")
            asked = [s.frontend.metric(name) for name in ASKED]
            alone = await client.get("/media/a/b/c.png")
            assert (alone.status_code, alone.content) == (200, PNG)
            assert alone.headers["etag"] == nginx_etag(meta)
            assert alone.headers["content-type"] == "image/png"
            assert alone.headers["x-content-type-options"] == "nosniff"
            assert os.stat(s.published("a/b/c.png")).st_mtime == int(meta.last_modified.timestamp())
            assert [s.frontend.metric(name) for name in ASKED] == asked, "a tree hit never reaches servefiles"
            s.frontend.stop()  # nothing follows the feed now: the tree goes with it
            assert not s.published("a/b/c.png").exists()
            assert (await client.get("/media/a/b/c.png")).status_code == 502, "never a file nobody vouches for"
            s.frontend.start()


async def test_a_tree_left_by_a_stopped_frontend_is_withdrawn_at_start_even_with_the_database_down(
    pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    """What a stop or a crash left behind may be stale (another frontend deleted the key
    meanwhile): a frontend that cannot reach the database must not leave it to nginx."""
    async with open_store(pg_url) as store:
        await store.put("x.png", PNG)
    proxied = with_netloc(pg_url, f"127.0.0.1:{pg_proxy.port}")
    with stack("tree", pg_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            assert (await client.get("/media/x.png")).content == PNG
            await s.wait_published("x.png")
            s.frontend.kill()  # a crash: no shutdown code runs, the tree stays
            assert s.published("x.png").exists()
            async with open_store(pg_url) as store:  # meanwhile, another frontend deletes it
                await store.delete("x.png")
            s.frontend.args = tuple(proxied if arg == pg_url else arg for arg in s.frontend.args)
            await pg_proxy.cut()
            with pytest.raises(RuntimeError, match="cannot connect to PostgreSQL"):
                await asyncio.to_thread(s.frontend.start)  # a one-line error, and no server...
            assert not s.published("x.png").exists()  # ...but first it withdrew the tree
            assert (await client.get("/media/x.png")).status_code == 502
            await pg_proxy.restore()
            await asyncio.to_thread(s.frontend.start)
            assert (await client.get("/media/x.png")).status_code == 404


@pytest.mark.parametrize("mode", ["accel", "tree"])
async def test_uploads_over_a_mebibyte_pass_through_nginx(mode: str, sqlite_url: str, tmp_path: Path) -> None:
    """nginx's own 1 MiB client_max_body_size must not apply in any location a PUT lands in."""
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 1024 * 1024)
    with stack(mode, sqlite_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            for _ in range(2):  # a new key, then a replacement of a published one
                put = await client.put("/media/big.png", content=big, headers=AUTH)
                assert put.status_code in (200, 201), put.text
                assert (await client.get("/media/big.png")).content == big


async def test_a_key_that_is_also_a_folder_in_the_tree_is_served_not_redirected(
    sqlite_url: str, tmp_path: Path
) -> None:
    with stack("tree", sqlite_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            assert (await client.put("/media/avatars/42/thumb.png", content=PNG, headers=AUTH)).status_code == 201
            assert (await client.put("/media/avatars/42", content=b"raw avatar", headers=AUTH)).status_code == 201
            assert (await client.get("/media/avatars/42/thumb.png")).content == PNG
            await s.wait_published("avatars/42/thumb.png")  # so avatars/42 is a directory there
            for _ in range(2):
                response = await client.get("/media/avatars/42")
                assert (response.status_code, response.content) == (200, b"raw avatar")
            missing = await client.get("/media/avatars")  # a directory, and no such key
            assert missing.status_code == 404 and "location" not in missing.headers


@pytest.mark.parametrize("mode", ["accel", "tree"])
async def test_a_root_prefix_serves_every_path(mode: str, sqlite_url: str, tmp_path: Path) -> None:
    with stack(mode, sqlite_url, tmp_path, prefix="/") as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            assert (await client.put("/x.png", content=PNG, headers=AUTH)).status_code == 201
            for _ in range(2):
                response = await client.get("/x.png")
                assert (response.status_code, response.content) == (200, PNG)
            if mode == "tree":
                await s.wait_published("x.png")
                assert s.published("x.png").read_bytes() == PNG


async def test_the_tree_sends_the_type_the_app_sends(sqlite_url: str, tmp_path: Path) -> None:
    """A file whose stored type is not the one nginx finds for its extension stays with the app,
    rather than change type once published; the others (any case) are published."""
    files = {"backup.gz": b"\x1f\x8b" + os.urandom(1000), "UPPER.PNG": PNG, "photo.jpeg": b"\xff\xd8" + os.urandom(900),
             "given.png": PNG[:1000]}  # fmt: skip
    given = {"given.png": "image/x-given"}
    with stack("tree", sqlite_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            for key, data in files.items():
                headers = {**AUTH, "content-type": given[key]} if key in given else AUTH
                assert (await client.put(f"/media/{key}", content=data, headers=headers)).status_code == 201
                types = {(await client.get(f"/media/{key}")).headers["content-type"] for _ in range(3)}
                stored = (await s.meta(key)).content_type
                assert types == {stored}, (key, types, stored)
            assert (await s.meta("backup.gz")).content_type == "application/gzip"
            for key in ("UPPER.PNG", "photo.jpeg", "backup.gz"):  # .gz and .GZ are alike now: nginx types it as stored
                await s.wait_published(key)
            for key in files:  # nginx's now, for the published ones
                assert (await client.get(f"/media/{key}")).headers["content-type"] == (await s.meta(key)).content_type
            assert not s.published("given.png").exists()


async def test_two_versions_of_one_size_in_one_second_never_share_a_validator(sqlite_url: str, tmp_path: Path) -> None:
    """nginx's ETag is "mtime-size" in whole seconds: the store gives each version of a key
    its own second, so a stale If-None-Match gets the new file and a stale If-Range the whole file."""
    with stack("tree", sqlite_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            v1 = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
            v2 = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
            await client.put("/media/p.png", content=v1, headers=AUTH)
            assert (await client.get("/media/p.png")).content == v1  # the miss, published behind it
            await s.wait_published("p.png")
            first = await client.get("/media/p.png")  # nginx's, from the tree
            old = await s.meta("p.png")
            await client.put("/media/p.png", content=v2, headers=AUTH)  # same size, at once
            new = await s.meta("p.png")
            assert (first.content, first.headers["etag"]) == (v1, nginx_etag(old))  # the tree's validator
            assert int(new.last_modified.timestamp()) > int(old.last_modified.timestamp())
            stale = {"if-none-match": first.headers["etag"]}
            again = await client.get("/media/p.png", headers=stale)
            assert (again.status_code, again.content) == (200, v2)
            assert again.headers["etag"] != first.headers["etag"]
            resume = {"range": "bytes=100-", "if-range": first.headers["etag"]}
            resumed = await client.get("/media/p.png", headers=resume)
            assert (resumed.status_code, resumed.content) == (200, v2), "never v2's bytes for a v1 download"


def assert_not_from_the_future(response: httpx.Response) -> None:
    """RFC 9110 §8.8.2.1: no Last-Modified later than the response's own Date."""
    modified = parsedate_to_datetime(response.headers["last-modified"])
    date = parsedate_to_datetime(response.headers["date"])
    assert modified <= date, (response.request.url, response.headers)


@pytest.mark.parametrize("mode", ["accel", "tree"])
async def test_a_burst_of_versions_never_dates_a_response_in_the_future_nor_shares_a_validator(
    mode: str, store_url: str, tmp_path: Path
) -> None:
    """Six versions of one size within about a second, each asked for at once: every response,
    whoever sends it (servefiles through accel, or nginx from the tree), has Last-Modified <=
    Date, and no ETag or Last-Modified a client holds brings back a 304 or a spliced range of
    another version. Once the clock has passed the pushed seconds, the tree serves the last
    version with nginx's own "mtime-size" ETag, which no earlier version had."""
    with stack(mode, store_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            versions: list[bytes] = []
            seen: list[httpx.Response] = []
            for _ in range(6):
                data = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
                put = await client.put("/media/burst.png", content=data, headers=AUTH)
                assert put.status_code in (200, 201), put.text
                versions.append(data)
                for _ in range(2):
                    got = await client.get("/media/burst.png")
                    assert (got.status_code, got.content) == (200, data)
                    assert_not_from_the_future(got)
                    seen.append(got)
            meta = await s.meta("burst.png")
            assert meta.last_modified.timestamp() > time.time() + 2, "the burst pushed the validator ahead"
            await asyncio.sleep(meta.last_modified.timestamp() + 1.1 - time.time())  # the pushed second is over
            last = await client.get("/media/burst.png")
            assert (last.status_code, last.content) == (200, versions[-1])
            assert_not_from_the_future(last)
            if mode == "tree":
                assert last.headers["etag"] == nginx_etag(meta), "published now, with its own second"
                hit = await client.get("/media/burst.png")
                assert (hit.headers["etag"], hit.content) == (nginx_etag(meta), versions[-1])
                assert_not_from_the_future(hit)
            etags: dict[str, bytes] = {}
            for response in [*seen, last]:
                assert etags.setdefault(response.headers["etag"], response.content) == response.content
            for response in seen:
                if response.content == versions[-1]:
                    continue
                for stale in ({"if-none-match": response.headers["etag"]},
                              {"if-modified-since": response.headers["last-modified"]}):  # fmt: skip
                    again = await client.get("/media/burst.png", headers=stale)
                    assert (again.status_code, again.content) == (200, versions[-1]), stale
                    assert_not_from_the_future(again)
                resume = {"range": "bytes=100-", "if-range": response.headers["etag"]}
                resumed = await client.get("/media/burst.png", headers=resume)
                assert (resumed.status_code, resumed.content) == (200, versions[-1]), "never a spliced resume"


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


async def test_an_accel_miss_is_streamed_at_once_not_after_the_whole_fill(
    pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    """Without a tree, a miss (and any HEAD or range) takes the ordinary path, which streams
    as it writes through: nothing waits for the whole file to be cached, nor risks nginx's
    proxy_read_timeout. The database is slowed for real, through a delaying proxy."""
    movie = os.urandom(4 * 1024 * 1024)
    async with open_store(pg_url) as store:
        await store.put("movie.mp4", movie)
    app = ServeFiles(None, db=with_netloc(pg_url, f"127.0.0.1:{pg_proxy.port}"), cache_dir=tmp_path / "c",
                     nginx="accel")  # fmt: skip
    async with uvicorn_server(app) as base, httpx.AsyncClient(base_url=base, timeout=60) as client:
        assert (await client.get("/media/none.mp4")).status_code == 404  # started, feed caught up
        pg_proxy.delay = 0.02  # every piece the database sends now waits 20 ms
        try:
            for method, headers in (("HEAD", {}), ("GET", {"range": "bytes=0-99"}), ("GET", {})):
                started = time.monotonic()
                async with client.stream(method, "/media/movie.mp4", headers=headers) as response:
                    answered = time.monotonic() - started
                    body = await response.aread()
                whole = time.monotonic() - started
                assert "x-accel-redirect" not in response.headers, (method, headers)
                expected = movie[:100] if headers else b"" if method == "HEAD" else movie
                assert body == expected, (method, headers, len(body))
                if not headers and method == "GET":
                    assert answered < whole / 3, f"first byte after {answered:.2f} s of {whole:.2f} s"
                else:
                    assert answered < 1.0, f"{method} {headers} waited {answered:.2f} s"
        finally:
            pg_proxy.delay = 0


async def read_reply(reply: Reply) -> bytes:
    """The bytes an adapter would send for ``reply`` (its body closed after)."""
    out = bytearray()
    try:
        for segment in reply.response.body:
            if isinstance(segment, ByteRange):
                assert reply.body is not None
                async for chunk in reply.body.chunks(segment):
                    out += chunk
            else:
                out += segment
    finally:
        if reply.body is not None:
            reply.body.close()
    return bytes(out)


@contextlib.asynccontextmanager
async def tree_behind_a_proxy(
    pg_url: str, pg_proxy: TcpProxy, tmp_path: Path, files: dict[str, bytes], cached: bool
) -> AsyncIterator[tuple[FileService, AccelLayer, PublishedTree]]:
    """A started file service whose database is reached through ``pg_proxy`` (to cut it), with
    an accel layer over a published tree; ``files`` stored, and with ``cached`` on disk already
    (not published: a request publishes them before it redirects)."""
    async with open_store(pg_url) as store:
        for key, data in files.items():
            await store.put(key, data)
    tree = PublishedTree(tmp_path / "published", "/media")
    service = FileService(
        with_netloc(pg_url, f"127.0.0.1:{pg_proxy.port}"), tmp_path / "cache", settings=CacheSettings(cache_min_uses=1)
    )
    accel = AccelLayer(service, ACCEL_LOCATION, tree)
    await service.start()
    try:
        assert service.feed is not None and service.feed.healthy
        for key in files if cached else ():
            meta = await service.revalidate(key)
            assert meta is not None and service.runtime.filler is not None
            assert await service.runtime.filler.fill(meta)
        yield service, accel, tree
    finally:
        await service.close()


BIG_PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(INLINE_WRITE_BYTES + 1)


def hold_publishes(tree: PublishedTree) -> tuple[threading.Event, threading.Event]:
    """Hold every publish in its thread at the start: (publishing, resume)."""
    publishing, resume = threading.Event(), threading.Event()
    publish = tree.publish_entry

    def held(disk: DiskCache, entry: DiskEntry) -> bool:
        publishing.set()
        resume.wait(10)
        return publish(disk, entry)

    tree.publish_entry = held  # type: ignore[method-assign]
    return publishing, resume


@pytest.mark.parametrize("cached", [False, True])
async def test_a_large_publish_on_a_thread_overlapping_a_feed_outage_is_withdrawn(
    cached: bool, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    """A file too large to publish on the event loop (over INLINE_WRITE_BYTES: it is published
    on a thread). The outage is real (the database's proxy is cut); the publish is held in its
    thread at the one point where the race is, since no real timing hits that window every time.
    Both publishes: behind a miss's reply (``cached`` False) and before a disk hit's redirect."""
    async with tree_behind_a_proxy(pg_url, pg_proxy, tmp_path, {"x.png": BIG_PNG}, cached) as (service, accel, tree):
        assert service.feed is not None
        publishing, resume = hold_publishes(tree)
        try:
            request = asyncio.create_task(accel.serve("GET", "x.png", {}))
            assert await asyncio.to_thread(publishing.wait, 10)
            await pg_proxy.cut()
            deadline = time.monotonic() + 15
            while service.feed.healthy:
                assert time.monotonic() < deadline, "the feed did not notice the outage"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # the outage's clear() has run on an empty tree
            resume.set()
            reply = await request
            await accel.settle()
            assert not tree.path("x.png").exists(), "published during an outage: nginx would serve it unchecked"
            location = dict(reply.response.headers).get(b"x-accel-redirect", b"")
            assert not location.startswith(TREE_LOCATION.encode())
            if not cached:
                assert await read_reply(reply) == BIG_PNG
        finally:
            resume.set()  # never leave the held thread waiting


@pytest.mark.parametrize("cached", [False, True])
async def test_a_publish_before_a_feed_outage_is_withdrawn_and_none_is_made_during_it(
    cached: bool, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    """The outage is real (the database's proxy is cut). A publish is one step on the event loop,
    so it cannot overlap the feed noticing an outage: one made before is in the tree the outage
    clears, and none is made while the feed is down, not even for a file on disk (its request is
    answered without the tree). Both publishes: behind a miss's reply (``cached`` False) and
    before a disk hit's redirect (``cached`` True)."""
    files = {"x.png": PNG, "y.png": PNG + b"y"}
    async with tree_behind_a_proxy(pg_url, pg_proxy, tmp_path, files, cached) as (service, accel, tree):
        assert service.feed is not None
        first = await accel.serve("GET", "x.png", {})
        if not cached:
            assert await read_reply(first) == PNG
        await accel.settle()
        assert tree.path("x.png").read_bytes() == PNG, "published while the feed was up"
        await pg_proxy.cut()
        deadline = time.monotonic() + 15
        while service.feed.healthy or tree.path("x.png").exists():
            assert time.monotonic() < deadline, "the outage was not noticed, or the tree not withdrawn"
            await asyncio.sleep(0.02)
        if cached:
            during = await accel.serve("GET", "y.png", {})
            location = dict(during.response.headers).get(b"x-accel-redirect", b"")
            assert not location.startswith(TREE_LOCATION.encode()), "nginx would serve it unchecked"
            await read_reply(during)  # answered without the tree (its body closed)
        await accel.settle()
        await asyncio.sleep(0.2)
        assert not tree.path("y.png").exists() and not tree.path("x.png").exists()


async def test_a_tree_miss_is_answered_before_it_is_published(sqlite_url: str, tmp_path: Path) -> None:
    """The miss's reply is servefiles' own, whole, while its publish is still to come (it waits
    in a task behind the reply, which the loop has not run yet); once the publish lands the next
    request is a redirect into the tree, a disk hit."""
    async with open_store(sqlite_url) as store:
        await store.put("x.png", PNG)
    tree = PublishedTree(tmp_path / "published", "/media")
    service = FileService(sqlite_url, tmp_path / "cache", settings=CacheSettings(cache_min_uses=1))  # misses fill
    accel = AccelLayer(service, ACCEL_LOCATION, tree)
    await service.start()
    try:
        reply = await accel.serve("GET", "x.png", {})
        assert "x.png" in accel._behind, "a publish waits behind the reply"
        headers = dict(reply.response.headers)
        assert (reply.response.status, reply.source) == (200, "miss")
        assert b"x-accel-redirect" not in headers and headers[b"etag"] == sha_etag(PNG).encode()
        assert await read_reply(reply) == PNG, "sent in full while the publish waits"
        assert not tree.path("x.png").exists()
        await accel.settle()
        assert tree.path("x.png").read_bytes() == PNG
        again = await accel.serve("GET", "x.png", {})
        assert again.source == "disk"
        assert dict(again.response.headers)[b"x-accel-redirect"] == f"{TREE_LOCATION}x.png".encode()
        head = await accel.serve("HEAD", "y.png", {})  # no such key: nothing to publish
        assert head.response.status == 404 and not accel._behind
    finally:
        await service.close()


async def test_the_request_after_a_tree_miss_is_nginx_s_alone(sqlite_url: str, tmp_path: Path) -> None:
    """Through a real nginx: the miss is servefiles' (its ETag), the next request nginx's from
    the tree (its ETag) without reaching servefiles; a HEAD of an uncached file fetches nothing."""
    with stack("tree", sqlite_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            for key in ("a.png", "b.png"):
                assert (await client.put(f"/media/{key}", content=PNG, headers=AUTH)).status_code == 201
            first = await client.get("/media/a.png")
            assert (first.status_code, first.content, first.headers["etag"]) == (200, PNG, sha_etag(PNG))
            await s.wait_published("a.png")
            asked = [s.frontend.metric(name) for name in (*ASKED, "servefiles_store_fetches_total")]
            second = await client.get("/media/a.png")
            assert (second.status_code, second.content) == (200, PNG)
            assert second.headers["etag"] == nginx_etag(await s.meta("a.png"))
            assert [s.frontend.metric(name) for name in (*ASKED, "servefiles_store_fetches_total")] == asked
            head = await client.head("/media/b.png")
            assert head.status_code == 200 and head.headers["content-length"] == str(len(PNG))
            assert s.frontend.metric("servefiles_store_fetches_total") == asked[-1], "a HEAD needs no bytes"
            assert not s.published("b.png").exists()


SMALL_PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(10_000)
"""Fetched whole with its metadata in one query: answered from those bytes, kept in the memory tier."""


@pytest.mark.parametrize("content", [PNG, SMALL_PNG], ids=["streamed", "small, fetched whole"])
async def test_a_one_off_tree_miss_is_neither_cached_nor_published_in_a_full_tier_until_asked_again(
    content: bytes, sqlite_url: str, tmp_path: Path
) -> None:
    """Admission in tree mode (the default ``--cache-min-uses 2``), once the disk tier is full:
    a file asked for once is answered from the store and written nowhere on disk; asked again, it
    is written to the disk tier and published, and from then on nginx answers it alone. For a
    small file the second request is a memory hit (the first kept its bytes): it must still reach
    the tree, or a popular small file would go through Python for ever."""
    resident = PNG[:8] + os.urandom(len(PNG) - 8)
    with stack("tree", sqlite_url, tmp_path, min_uses=2, serve_options=("--cache-size", str(len(resident)))) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            assert (await client.put("/media/resident.png", content=resident, headers=AUTH)).status_code == 201
            assert (await client.get("/media/resident.png")).content == resident
            await s.wait_published("resident.png")  # asked for once, while the tier had room: taken in
            assert (await client.put("/media/once.png", content=content, headers=AUTH)).status_code == 201
            first = await client.get("/media/once.png")
            assert (first.status_code, first.content, first.headers["etag"]) == (200, content, sha_etag(content))
            await asyncio.sleep(0.5)  # what a publish behind the reply would have needed
            assert not s.published("once.png").exists()
            assert not any((s.cache_dir / "objects").rglob(hashlib.sha256(content).hexdigest()))
            second = await client.get("/media/once.png")
            assert (second.status_code, second.content) == (200, content)
            await s.wait_published("once.png")
            assert s.published("once.png").read_bytes() == content
            assert not s.published("resident.png").exists(), "evicted for it, and withdrawn"
            asked = [s.frontend.metric(name) for name in ASKED]
            third = await client.get("/media/once.png")
            assert (third.status_code, third.content) == (200, content)
            assert third.headers["etag"] == nginx_etag(await s.meta("once.png"))
            assert [s.frontend.metric(name) for name in ASKED] == asked, "nginx answered it alone"


async def test_files_nginx_serves_keep_their_disk_place_while_unread_ones_are_evicted(
    sqlite_url: str, tmp_path: Path
) -> None:
    """nginx answers published files without servefiles hearing of it; the tree's access times
    tell it (PublishedTree.read_since_checked). A cache with room for two files: ``hot`` came in
    first and is read only through nginx, ``cold`` came in after it and is never read again, so a
    third file evicts ``cold``. Without the access times ``hot`` would be the least recently used."""
    with stack("tree", sqlite_url, tmp_path, serve_options=("--cache-size", str(2 * len(PNG) + 100_000))) as s:
        contents = {key: PNG[:8] + os.urandom(len(PNG) - 8) for key in ("hot.png", "cold.png", "third.png")}
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            for key, content in contents.items():
                assert (await client.put(f"/media/{key}", content=content, headers=AUTH)).status_code == 201
            for key in ("hot.png", "cold.png"):
                assert (await client.get(f"/media/{key}")).content == contents[key]
                await s.wait_published(key)
            asked = s.frontend.metric("servefiles_store_fetches_total")
            hot_etag = nginx_etag(await s.meta("hot.png"))
            for _ in range(3):
                hit = await client.get("/media/hot.png")
                assert (hit.content, hit.headers["etag"]) == (contents["hot.png"], hot_etag), "nginx's alone"
            assert s.frontend.metric("servefiles_store_fetches_total") == asked
            await asyncio.sleep(READ_CHECK_SECONDS + 1.5)  # the next look at the tree
            assert (await client.get("/media/third.png")).content == contents["third.png"]
            await s.wait_published("third.png")
            deadline = time.monotonic() + 10
            while s.published("cold.png").exists():
                assert time.monotonic() < deadline, "cold.png was never evicted"
                await asyncio.sleep(0.05)
            assert s.published("hot.png").exists(), "the file nginx kept sending was evicted"
            again = await client.get("/media/hot.png")
            assert (again.content, again.headers["etag"]) == (contents["hot.png"], hot_etag)
            assert s.frontend.metric("servefiles_store_fetches_total") == asked + 1  # third.png alone


def test_reads_of_published_files_are_noticed_once_per_look_and_never_change_a_validator(tmp_path: Path) -> None:
    """PublishedTree.read_since_checked on a real filesystem (relatime, Linux's default): a read
    of a published file shows at the next look, and only then; a path holding another version,
    or nothing, shows nothing; no file's mtime (nginx's Last-Modified and ETag) ever moves."""
    written = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    content = tmp_path / "content"
    content.write_bytes(PNG)

    def meta(key: str, second: int = 0) -> FileMeta:
        when = written + timedelta(seconds=second)
        return FileMeta(key, 1 + second, hashlib.sha256(PNG).hexdigest(), len(PNG), "image/png", when, when)

    tree = PublishedTree(tmp_path / "published", "/media")
    read, unread, other = meta("a/read.png"), meta("unread.png"), meta("other.png")
    for published in (read, unread, other):
        assert tree.publish(published, content)
    mtimes = {key: tree.path(key).stat().st_mtime_ns for key in ("a/read.png", "unread.png", "other.png")}
    assert tree.read_since_checked([read, unread, other]) == [], "publishing is no read"
    assert tree.path("a/read.png").read_bytes() == PNG
    assert tree.path("other.png").read_bytes() == PNG
    newer = meta("other.png", second=5)  # the tree holds another version of other.png than this
    never = meta("never/published.png")
    assert tree.read_since_checked([read, unread, newer, never]) == ["a/read.png"]
    assert tree.read_since_checked([read, unread]) == [], "each read shows once"
    assert tree.path("a/read.png").read_bytes() == PNG
    assert tree.read_since_checked([read, unread]) == ["a/read.png"], "and the next read shows again"
    assert {key: tree.path(key).stat().st_mtime_ns for key in mtimes} == mtimes


def test_the_tree_follows_the_disk_tier_and_publishes_only_its_current_entry(tmp_path: Path) -> None:
    """Without nginx: the tree hears of every removal of an entry (replaced, discarded),
    never publishes an entry the disk tier no longer holds, and sweeps what it cannot vouch for."""
    disk = DiskCache(tmp_path / "cache", 10 * 1024 * 1024)
    tree = PublishedTree(tmp_path / "published", "/media")
    tree.follow(disk)
    disk.open()
    written = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def install(version: int, data: bytes) -> DiskEntry:
        meta = FileMeta("x.png", version, hashlib.sha256(data).hexdigest(), len(data), "image/png",
                        written, written + timedelta(seconds=version))  # fmt: skip
        with disk.begin(meta) as writer:
            writer.write(data)
            return writer.commit()

    first = install(1, PNG)
    assert tree.publish_entry(disk, first) and tree.path("x.png").read_bytes() == PNG
    second = install(2, PNG[::-1])
    assert not tree.path("x.png").exists(), "a replaced version is withdrawn"
    assert not tree.publish_entry(disk, first), "an entry no longer current is never published"
    assert tree.publish_entry(disk, second) and tree.path("x.png").read_bytes() == PNG[::-1]
    disk.discard("x.png")
    assert not tree.path("x.png").exists()
    stray = tree.path("gone.png")
    stray.write_bytes(PNG)
    assert tree.sweep(disk.get) == 1 and not stray.exists()
    disk.close()


def test_the_tree_notices_a_directory_another_process_removed_and_never_follows_a_link(tmp_path: Path) -> None:
    """The tree keeps its directories open: one removed meanwhile (another worker withdrew its
    last file) is opened afresh, so a withdrawal reaches a file published in the new one, and a
    symlink put in its place is never followed."""
    written = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    content = tmp_path / "content"
    content.write_bytes(PNG)

    def meta(key: str) -> FileMeta:
        return FileMeta(key, 1, hashlib.sha256(PNG).hexdigest(), len(PNG), "image/png", written, written)

    tree, other = PublishedTree(tmp_path / "published", "/media"), PublishedTree(tmp_path / "published", "/media")
    assert tree.publish(meta("d/a.png"), content) and tree.path("d/a.png").read_bytes() == PNG
    other.withdraw("d/a.png")  # another process: its last file gone, so the directory too
    assert not tree.path("d").exists()
    assert other.publish(meta("d/b.png"), content)  # ...and a new d/ with another file
    tree.withdraw("d/b.png")
    assert not tree.path("d/b.png").exists(), "withdrawn from the new directory, not the removed one"
    assert tree.publish(meta("d/c.png"), content) and tree.path("d/c.png").exists()
    other.withdraw("d/c.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    tree.path("d").symlink_to(outside)
    assert not tree.publish(meta("d/e.png"), content)
    tree.withdraw("d/e.png")
    assert list(outside.iterdir()) == [], "nothing made or removed through the link"


@pytest.mark.parametrize("mode", ["accel", "tree"])
async def test_empty_files_ranges_and_304s_through_nginx(mode: str, sqlite_url: str, tmp_path: Path) -> None:
    """What servefiles answers alone holds behind nginx too: a suffix range of an empty file
    is ignored (200, empty), ``bytes=0-`` is 416 ``bytes */0``, and a 304 carries nosniff."""
    with stack(mode, sqlite_url, tmp_path) as s:
        async with httpx.AsyncClient(base_url=s.base, timeout=30) as client:
            for key, data in (("empty.png", b""), ("photo.png", PNG)):
                put = await client.put(f"/media/{key}", content=data, headers={**AUTH, "content-type": "image/png"})
                assert put.status_code == 201, put.text
            for _ in range(2):  # a miss, then a hit (in tree mode nginx's own)
                for value in ("bytes=-1", "bytes=-500", "bytes=-1,0-"):
                    response = await client.get("/media/empty.png", headers={"range": value})
                    assert (response.status_code, response.content) == (200, b""), (value, response.headers)
                    assert "content-range" not in response.headers
                for value in ("bytes=0-", "bytes=-0"):
                    response = await client.get("/media/empty.png", headers={"range": value})
                    assert response.status_code == 416, value
                    assert response.headers["content-range"] == "bytes */0"
                full = await client.get("/media/photo.png")
                assert (full.status_code, full.content) == (200, PNG)
                again = await client.get("/media/photo.png", headers={"if-none-match": full.headers["etag"]})
                if again.status_code == 200 and mode == "tree":
                    # The miss came from servefiles (its ETag is the content hash); the tree published
                    # the file behind it and nginx now answers with its own: one full 200 of the same
                    # bytes, then 304s again.
                    assert again.content == PNG and again.headers["etag"] != full.headers["etag"]
                    again = await client.get("/media/photo.png", headers={"if-none-match": again.headers["etag"]})
                assert again.status_code == 304
                assert again.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("size", [50_000, 600_000], ids=["small", "large"])
async def test_accel_never_redirects_to_a_cache_file_damaged_in_place(
    sqlite_url: str, tmp_path: Path, size: int
) -> None:
    """nginx sends what X-Accel-Redirect names without servefiles reading a byte of it. A file is
    checked before a redirect to it as a disk hit's is (hashed the first time this process sends
    that file: read whole when small enough for the memory tier, in blocks on a thread when not): a
    damaged one is dropped and the file service answers with the store's bytes, never nginx with
    the damaged ones."""
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(size)
    async with open_store(sqlite_url) as store:
        meta = await store.put("x.png", data)
    service = FileService(sqlite_url, tmp_path / "cache", settings=CacheSettings(cache_min_uses=1))
    accel = AccelLayer(service, ACCEL_LOCATION)
    await service.start()
    try:
        assert service.memory.fits(meta.size) == (size < 100_000) and service.runtime.filler is not None
        assert await service.runtime.filler.fill(meta)
        content_file = service.disk.content_path(meta.sha256)
        with content_file.open("r+b") as file:  # same size, same file, other bytes
            file.seek(1000)
            file.write(b"X" * 10)
        reply = await accel.serve("GET", "x.png", {})
        assert b"x-accel-redirect" not in dict(reply.response.headers), "nginx would send the damaged file"
        assert await read_reply(reply) == data
        deadline = time.monotonic() + 5  # the refetched copy is written to disk behind its reply
        while not content_file.exists() or hashlib.sha256(content_file.read_bytes()).hexdigest() != meta.sha256:
            assert time.monotonic() < deadline, "the damaged file was not replaced by a good one"
            await asyncio.sleep(0.02)
        reply = await accel.serve("GET", "x.png", {})
        assert b"x-accel-redirect" in dict(reply.response.headers), "a good copy is sent by nginx again"
    finally:
        await service.close()
