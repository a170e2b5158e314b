"""HTTP conformance of the serving core, on both stores and both adapters over three
transports: the ASGI adapter in-process (httpx's ASGI transport) and under a real uvicorn
(``servefiles serve``), and the WSGI adapter under a real gunicorn.

Expectations are computed from the uploaded bytes, never from the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from servefiles import FileMeta, ServeFiles, open_store

from .servers import running, running_wsgi

SMALL = os.urandom(5_000)
LARGE = os.urandom(1_200_000)
TEXT = "héllo wörld\n".encode()
SERVER_ADDED = frozenset({"date", "server", "connection"})
"""What uvicorn and gunicorn add to every response (gunicorn: Connection: keep-alive)."""
ClientMaker = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]

# ServeFiles keyword -> `servefiles serve` flag, so one test configures both transports alike.
FLAGS = {"active_content": "--active-content", "freshness_seconds": "--freshness", "metrics": "--metrics",
         "upload_tokens": "--upload-token", "max_upload_bytes": "--max-upload-size"}  # fmt: skip


@pytest.fixture(params=["asgi", "uvicorn", "gunicorn"])
def make_client(request: pytest.FixtureRequest, store_url: str, tmp_path: Path) -> ClientMaker:
    transport = request.param

    @contextlib.asynccontextmanager
    async def make(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
        cache_dir = tmp_path / f"cache-{time.monotonic_ns()}"
        if transport == "asgi":
            app = ServeFiles(None, db=store_url, cache_dir=cache_dir, **options)
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
                    yield client
            finally:
                await app.aclose()
            return
        if transport == "gunicorn":
            with running_wsgi({"db": store_url, "cache_dir": str(cache_dir), **options}) as frontend:
                async with httpx.AsyncClient(base_url=frontend.base) as client:
                    yield client
            return
        args = ["--db", store_url, "--cache-dir", str(cache_dir)]
        for name, value in options.items():
            for item in value if isinstance(value, list) else [value]:
                args += [FLAGS[name]] if item is True else [FLAGS[name], str(item)]
        with running(*args) as frontend:
            async with httpx.AsyncClient(base_url=frontend.base) as client:
                yield client

    return make


@pytest.fixture
async def files(store_url: str) -> dict[str, FileMeta]:
    async with open_store(store_url) as store:
        return {
            "small.bin": await store.put("small.bin", SMALL),
            "large.bin": await store.put("large.bin", LARGE),
            "notes.txt": await store.put("notes.txt", TEXT),
            "page.html": await store.put("dir/page.html", b"<script>alert(1)</script>"),
            "drawing.svg": await store.put('dir/dr"aw ïng.svg', b"<svg onload=alert(1)/>"),
            "empty.bin": await store.put("empty.bin", b""),
        }


def etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


async def test_get_returns_the_exact_bytes_on_miss_and_on_hit(make_client: ClientMaker, files: object) -> None:
    async with make_client() as client:
        for path, data in (("/media/small.bin", SMALL), ("/media/large.bin", LARGE), ("/media/empty.bin", b"")):
            first, second = await client.get(path), await client.get(path)
            assert first.status_code == second.status_code == 200
            assert first.content == second.content == data
            assert first.headers["content-length"] == str(len(data))


async def test_head_has_the_get_headers_and_no_body(make_client: ClientMaker, files: object) -> None:
    async with make_client() as client:
        get, head = await client.get("/media/large.bin"), await client.head("/media/large.bin")
        assert head.status_code == 200 and head.content == b""
        drop = SERVER_ADDED
        assert {k: v for k, v in head.headers.items() if k not in drop} == {
            k: v for k, v in get.headers.items() if k not in drop
        }


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_get_405_with_allow(make_client: ClientMaker, files: object, method: str) -> None:
    async with make_client() as client:
        response = await client.request(method, "/media/small.bin")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"


async def test_representation_headers(make_client: ClientMaker, files: dict[str, FileMeta]) -> None:
    async with make_client() as client:
        response = await client.get("/media/notes.txt")
    assert response.headers["etag"] == etag(TEXT)
    modified = parsedate_to_datetime(response.headers["last-modified"])
    assert modified == files["notes.txt"].updated_at.replace(microsecond=0)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["accept-ranges"] == "bytes"


async def test_active_content_is_an_attachment_by_default(make_client: ClientMaker, files: object) -> None:
    async with make_client() as client:
        html = await client.get("/media/dir/page.html")
        svg = await client.get("/media/dir/dr%22aw%20%C3%AFng.svg")
    assert html.headers["content-disposition"].startswith("attachment;")
    assert 'filename="page.html"' in html.headers["content-disposition"]
    disposition = svg.headers["content-disposition"]
    assert "filename*=UTF-8''dr%22aw%20%C3%AFng.svg" in disposition
    assert '"dr"aw' not in disposition and "\r" not in disposition and "\n" not in disposition
    assert "content-security-policy" not in html.headers


async def test_active_content_can_be_sandboxed_instead(make_client: ClientMaker, files: object) -> None:
    async with make_client(active_content="sandbox") as client:
        html = await client.get("/media/dir/page.html")
    assert html.headers["content-security-policy"] == "sandbox"
    assert "content-disposition" not in html.headers


async def test_if_none_match_gives_304_with_exactly_the_listed_headers(make_client: ClientMaker, files: object) -> None:
    async with make_client() as client:
        tag = etag(SMALL)
        for value in (tag, f'"nope", {tag}', f"W/{tag}", "*"):
            response = await client.get("/media/small.bin", headers={"If-None-Match": value})
            assert response.status_code == 304, value
            assert response.content == b""
            assert set(response.headers) - SERVER_ADDED == {"etag", "cache-control", "x-content-type-options"}
            assert response.headers["x-content-type-options"] == "nosniff"
        assert (await client.get("/media/small.bin", headers={"If-None-Match": '"other"'})).status_code == 200


async def test_if_match_and_if_unmodified_since(make_client: ClientMaker, files: object) -> None:
    past = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)
    async with make_client() as client:
        assert (await client.get("/media/small.bin", headers={"If-Match": '"other"'})).status_code == 412
        assert (await client.get("/media/small.bin", headers={"If-Match": f"W/{etag(SMALL)}"})).status_code == 412
        assert (await client.get("/media/small.bin", headers={"If-Match": "*"})).status_code == 200
        assert (await client.get("/media/small.bin", headers={"If-Unmodified-Since": past})).status_code == 412


async def test_if_modified_since_and_its_precedence(make_client: ClientMaker, files: dict[str, FileMeta]) -> None:
    later = format_datetime(files["small.bin"].updated_at + timedelta(days=1), usegmt=True)
    async with make_client() as client:
        assert (await client.get("/media/small.bin", headers={"If-Modified-Since": later})).status_code == 304
        both = {"If-Modified-Since": later, "If-None-Match": '"other"'}
        assert (await client.get("/media/small.bin", headers=both)).status_code == 200  # IMS ignored


async def test_if_range(make_client: ClientMaker, files: object) -> None:
    async with make_client() as client:
        matching = await client.get("/media/large.bin", headers={"Range": "bytes=0-9", "If-Range": etag(LARGE)})
        other = await client.get("/media/large.bin", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert matching.status_code == 206 and matching.content == LARGE[:10]
    assert other.status_code == 200 and other.content == LARGE


async def test_preconditions_on_a_missing_key_are_a_404(make_client: ClientMaker, files: object) -> None:
    async with make_client() as client:
        for header in ({"If-Match": "*"}, {"If-None-Match": "*"}, {"Range": "bytes=0-1"}):
            assert (await client.get("/media/absent.bin", headers=header)).status_code == 404


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-99", 0, 100), ("bytes=-100", -100, None), ("bytes=1000000-", 1_000_000, None),
     ("bytes=1199990-99999999", 1_199_990, None), ("BYTES=5-5", 5, 6)],
)  # fmt: skip
async def test_single_ranges_cold_and_warm(
    make_client: ClientMaker, files: object, header: str, start: int, end: int | None
) -> None:
    expected = LARGE[start:end]
    async with make_client() as client:
        cold = await client.get("/media/large.bin", headers={"Range": header})  # never requested before
        warm = await client.get("/media/large.bin", headers={"Range": header})
        full = await client.get("/media/large.bin")
    for response in (cold, warm):
        assert response.status_code == 206
        assert response.content == expected
        first = start if start >= 0 else len(LARGE) + start
        assert response.headers["content-range"] == f"bytes {first}-{first + len(expected) - 1}/{len(LARGE)}"
    assert full.content == LARGE


async def test_several_ranges_come_as_multipart_byteranges(make_client: ClientMaker, files: object) -> None:
    async with make_client() as client:
        response = await client.get("/media/large.bin", headers={"Range": "bytes=0-9, 500000-500009, -5"})
    assert response.status_code == 206
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=")[1].encode()
    parts = response.content.split(b"--" + boundary)[1:-1]
    assert len(response.content) == int(response.headers["content-length"])
    expected = [(0, 10), (500_000, 500_010), (len(LARGE) - 5, len(LARGE))]
    assert len(parts) == len(expected)
    for part, (start, end) in zip(parts, expected, strict=True):
        head, body = part.split(b"\r\n\r\n", 1)
        assert f"Content-Range: bytes {start}-{end - 1}/{len(LARGE)}".encode() in head
        assert body[:-2] == LARGE[start:end]


async def test_unsatisfiable_ranges_get_416(make_client: ClientMaker, files: object) -> None:
    async with make_client() as client:
        response = await client.get("/media/small.bin", headers={"Range": "bytes=999999-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(SMALL)}"


async def test_a_suffix_range_of_an_empty_file_is_ignored_and_int_ranges_are_416(
    make_client: ClientMaker, files: object
) -> None:
    """RFC 9110 §14.1.1: "bytes=-N" (N > 0) is satisfiable on an empty file but no Content-Range
    can name its bytes, so Range is ignored; "bytes=0-" has no byte to start at: 416 bytes */0."""
    async with make_client() as client:
        for value in ("bytes=-1", "bytes=-500", "bytes=-1,0-"):
            for _ in range(2):  # cold, then warm
                response = await client.get("/media/empty.bin", headers={"Range": value})
                assert response.status_code == 200, value
                assert response.content == b"" and response.headers["content-length"] == "0"
                assert "content-range" not in response.headers
        for value in ("bytes=0-", "bytes=-0"):
            response = await client.get("/media/empty.bin", headers={"Range": value})
            assert response.status_code == 416, value
            assert response.headers["content-range"] == "bytes */0"


@pytest.mark.parametrize(
    "header",
    [b"bytes=abc", b"bytes=5-1", b"items=0-1", "bytes=\u0660-\u0665".encode(), b"bytes=1_0-2_0", b"bytes"],
)
async def test_malformed_ranges_are_ignored(make_client: ClientMaker, files: object, header: bytes) -> None:
    async with make_client() as client:
        response = await client.get("/media/small.bin", headers={"Range": header})
    assert response.status_code == 200 and response.content == SMALL


async def test_range_is_ignored_on_head_and_thousands_of_ranges_are_answered_fast(
    make_client: ClientMaker, files: object
) -> None:
    async with make_client() as client:
        head = await client.head("/media/small.bin", headers={"Range": "bytes=0-9"})
        assert head.status_code == 200 and head.headers["content-length"] == str(len(SMALL))
        # 2,000 ranges in 8 KB: within `servefiles serve`'s 8 KiB field line (see test_request_limits).
        many = "bytes=" + ",".join("0-0" for _ in range(2_000))
        started = time.monotonic()
        response = await client.get("/media/small.bin", headers={"Range": many})
        assert time.monotonic() - started < 2
        assert response.status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/media/absent.jpg", "/media/../x", "/media/a//b", "/media/%2e%2e/etc/passwd", "/media/a%00b",
     "/media/a%5cb", "/media/" + "x" * 2000, "/media/%ff", "/media/dir/", "/media/%c0%ae%c0%ae/x"],
)  # fmt: skip
async def test_missing_and_rejected_keys_get_one_identical_404(
    make_client: ClientMaker, files: object, path: str
) -> None:
    async with make_client() as client:
        reference = await client.get("/media/absent-reference.jpg")
        response = await client.get(path)
    assert reference.status_code == 404
    if path == "/media/../x":
        assert response.status_code == 404  # the client normalises it to /x: outside the prefix
        return
    assert response.status_code == 404
    assert response.content == reference.content
    assert response.headers.get("content-type") == reference.headers.get("content-type")


async def test_a_replaced_file_is_served_new(make_client: ClientMaker, files: object, store_url: str) -> None:
    async with make_client(freshness_seconds=0.2) as client:
        assert (await client.get("/media/small.bin")).content == SMALL
        new = os.urandom(5_000)
        async with open_store(store_url) as store:
            await store.put("small.bin", new)
        deadline = time.monotonic() + 3
        while True:
            response = await client.get("/media/small.bin")
            assert response.headers["etag"] == etag(response.content)  # old or new, never a mix
            if response.content == new:
                break
            assert time.monotonic() < deadline, "the replaced file was not served in time"
            await asyncio.sleep(0.01)  # in-process, a memory hit never yields: let the feed run


async def test_health_and_metrics(make_client: ClientMaker, files: object) -> None:
    async with make_client() as client:
        health = await client.get("/_servefiles/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert (await client.get("/_servefiles/metrics")).status_code == 404  # off by default
    async with make_client(metrics=True) as client:
        await client.get("/media/small.bin")
        await client.get("/media/small.bin")
        text = (await client.get("/_servefiles/metrics")).text
    for name in ('servefiles_hits_total{tier="memory"} 1.0', "servefiles_misses_total 1.0",
                 "servefiles_store_fetches_total 1.0", "servefiles_cache_write_failures_total 0.0",
                 'servefiles_evictions_total{tier="disk"}', "servefiles_bytes_sent_total"):  # fmt: skip
        assert name in text, name


async def test_every_status_servefiles_answers_carries_nosniff(make_client: ClientMaker, files: object) -> None:
    """X-Content-Type-Options: nosniff on every response: files, 304, errors, health, metrics
    and each reply of the write API (503 is pinned where the store is down: test_outage)."""
    tag, token = etag(SMALL), "nosniff-token-0123456789abcdef"
    auth, narrow = {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {token}x"}
    requests: list[tuple[int, str, str, dict[str, str], bytes | None]] = [
        (200, "GET", "/media/small.bin", {}, None),
        (200, "HEAD", "/media/small.bin", {}, None),
        (206, "GET", "/media/small.bin", {"Range": "bytes=0-9"}, None),
        (206, "GET", "/media/small.bin", {"Range": "bytes=0-9,20-29"}, None),
        (304, "GET", "/media/small.bin", {"If-None-Match": tag}, None),
        (304, "HEAD", "/media/small.bin", {"If-None-Match": tag}, None),
        (412, "GET", "/media/small.bin", {"If-Match": '"other"'}, None),
        (416, "GET", "/media/small.bin", {"Range": "bytes=999999-"}, None),
        (404, "GET", "/media/absent.bin", {}, None),
        (404, "GET", "/elsewhere", {}, None),
        (405, "POST", "/media/small.bin", {}, None),
        (200, "GET", "/_servefiles/health", {}, None),
        (200, "GET", "/_servefiles/metrics", {}, None),
        (201, "PUT", "/media/up/new.bin", auth, b"new"),
        (200, "PUT", "/media/up/new.bin", auth, b"newer"),
        (412, "PUT", "/media/up/new.bin", {**auth, "If-None-Match": "*"}, b"x"),
        (413, "PUT", "/media/up/big.bin", auth, b"x" * 2000),
        (415, "PUT", "/media/up/gz.bin", {**auth, "Content-Encoding": "gzip"}, b"x"),
        (400, "PUT", "/media/up/ranged.bin", {**auth, "Content-Range": "bytes 0-0/2"}, b"x"),
        (401, "PUT", "/media/up/x.bin", {}, b"x"),
        (401, "PUT", "/media/up/x.bin", {"Authorization": "Bearer wrong"}, b"x"),
        (403, "PUT", "/media/other/x.bin", narrow, b"x"),
        (200, "GET", "/media/", auth, None),
        (204, "DELETE", "/media/up/new.bin", auth, None),
        (404, "DELETE", "/media/up/new.bin", auth, None),
    ]
    options = {"metrics": True, "upload_tokens": [token, f"{token}x:up"], "max_upload_bytes": 1000}
    async with make_client(**options) as client:
        for status, method, path, headers, body in requests:
            response = await client.request(method, path, headers=headers, content=body)
            assert response.status_code == status, (method, path, headers, response.text)
            assert response.headers.get("x-content-type-options") == "nosniff", (status, method, path)


async def test_head_of_a_missing_or_rejected_key_is_a_404_without_a_body(
    make_client: ClientMaker, files: object
) -> None:
    async with make_client() as client:
        for path in ("/media/absent.bin", "/media/a//b", "/media/%ff"):
            response = await client.head(path)
            assert response.status_code == 404
            assert response.content == b""


async def test_requests_outside_the_prefix_and_lifespan_reach_the_wrapped_app(store_url: str, tmp_path: Path) -> None:
    seen: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"] + ":" + scope.get("path", ""))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"inner"})

    app = ServeFiles(inner, db=store_url, cache_dir=tmp_path / "cache")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        assert (await client.get("/other")).content == b"inner"
        assert (await client.get("/mediafile")).content == b"inner"
        assert (await client.get("/media/absent")).status_code == 404
    await app.aclose()
    assert seen == ["http:/other", "http:/mediafile"]
