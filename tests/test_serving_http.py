"""HTTP conformance of the serving core, through real HTTP and in-process.

Every test runs on both stores (SQLite, PostgreSQL) and two transports: httpx's
ASGI transport calling :class:`ServeFiles` in-process, and a real uvicorn server
on a loopback port running the same kind of app (lifespan on). Expectations are
computed from the uploaded bytes (hashlib, slicing) and the store's metadata,
never from the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from servefiles import FileMeta, ServeFiles, Store

from .asgi_servers import (
    ASGIApp,
    Message,
    RawResponse,
    Receive,
    Scope,
    Send,
    asgi_lifespan,
    asgi_request,
    http_request,
    uvicorn_server,
)

SMALL_SIZE = 5_000
"""Fits the memory tier (at most 256 KiB per file)."""
DISK_SIZE = 300_000
"""Over the memory tier's per-file limit: a disk-tier file."""
LARGE_SIZE = 2_100_000
"""More than 2 MiB: a disk-tier file of many 64 KiB reads and 256 KiB pieces."""
BOUNDARY_256K = 256 * 1024
"""A range across this offset spans two 256 KiB pieces of the file."""
SERVER_ADDED = frozenset({"date", "server"})
"""Headers uvicorn adds to every response; the ASGI transport adds none."""
OCTET_STREAM = "application/octet-stream"
PAST = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)

SSL_CONTEXT = ssl.create_default_context()
"""Built once: httpx would build one (loading every CA certificate) for each client, even for plain HTTP."""


# -- the two transports ---------------------------------------------------------------------


@dataclass
class Served:
    """One ServeFiles app behind one transport, and a client for it."""

    transport: str
    app: ServeFiles
    client: httpx.AsyncClient
    send_raw: Callable[[str, bytes, list[tuple[bytes, bytes]]], Awaitable[RawResponse]]

    async def raw(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> RawResponse:
        """A request whose target goes out byte for byte (no client-side normalisation of ``..`` or ``//``)."""
        return await self.send_raw(method, target, headers or [])


MakeClient = Callable[..., contextlib.AbstractAsyncContextManager[Served]]


@pytest.fixture(params=["asgi", "uvicorn"])
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_client(transport: str, store_url: str, tmp_path: Path) -> MakeClient:
    """``async with make_client(inner_app, cache_dir=..., **ServeFiles options) as served``."""

    @contextlib.asynccontextmanager
    async def make(
        inner: ASGIApp | None = None, cache_dir: Path | None = None, **options: Any
    ) -> AsyncIterator[Served]:
        app = ServeFiles(inner, db=store_url, prefix="/media", cache_dir=cache_dir or tmp_path / "cache", **options)
        try:
            if transport == "asgi":
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:

                    async def in_process(method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> RawResponse:
                        return await asgi_request(app, method, target, headers)

                    yield Served(transport, app, client, in_process)
            else:
                async with uvicorn_server(app) as base, httpx.AsyncClient(base_url=base, verify=SSL_CONTEXT) as client:

                    async def over_tcp(method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> RawResponse:
                        return await http_request(base, method, target, headers)

                    yield Served(transport, app, client, over_tcp)
        finally:
            await app.aclose()

    return make


@pytest.fixture
async def served(make_client: MakeClient) -> AsyncIterator[Served]:
    async with make_client() as running:
        yield running


@pytest.fixture
def client(served: Served) -> httpx.AsyncClient:
    """A client of ``ServeFiles(None, db=store_url, prefix="/media", cache_dir=tmp_path / "cache")``."""
    return served.client


# -- expectations, computed independently ---------------------------------------------------


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest() + '"'


def last_modified(meta: FileMeta) -> datetime:
    """The store's updated_at (UTC) truncated to the second."""
    updated = meta.updated_at if meta.updated_at.tzinfo is not None else meta.updated_at.replace(tzinfo=UTC)
    return updated.astimezone(UTC).replace(microsecond=0)


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def headers_of(response: httpx.Response, transport: str) -> dict[str, str]:
    """The response's headers, each sent once, without the ones uvicorn adds (which it must add)."""
    names = [name for name, _ in response.headers.multi_items()]
    assert len(names) == len(set(names)), f"a header was sent twice: {names}"
    if transport == "uvicorn":
        assert set(names) >= SERVER_ADDED, names
        return {name: value for name, value in response.headers.multi_items() if name not in SERVER_ADDED}
    return dict(response.headers.multi_items())


def without_date(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.multi_items() if name != "date"}


def full_headers(data: bytes, content_type: str, meta: FileMeta) -> dict[str, str]:
    """Exactly the headers of a 200 for these bytes."""
    return {
        "content-type": content_type,
        "content-length": str(len(data)),
        "etag": etag_of(data),
        "last-modified": http_date(last_modified(meta)),
        "cache-control": "no-cache",
        "accept-ranges": "bytes",
        "x-content-type-options": "nosniff",
    }


def assert_full(response: httpx.Response, data: bytes) -> None:
    assert response.status_code == 200, response.status_code
    assert response.headers["content-length"] == str(len(data))
    assert "content-range" not in response.headers
    assert response.content == data


def assert_part(response: httpx.Response, data: bytes, start: int, stop: int) -> None:
    """A 206 carrying exactly ``data[start:stop]``."""
    assert response.status_code == 206, (response.status_code, response.headers)
    assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{len(data)}"
    assert response.headers["content-length"] == str(stop - start)
    assert response.headers["etag"] == etag_of(data)
    assert response.content == data[start:stop]


def single_ranges(size: int) -> list[tuple[str, int, int]]:
    """(Range header, first byte, end) for the single-range forms, for a file of ``size`` bytes."""
    cases = [
        ("bytes=0-99", 0, 100),
        ("bytes=-100", size - 100, size),
        ("bytes=100-", 100, size),
        (f"bytes=100-{size * 1000}", 100, size),  # an end past the file is clamped
        (f"bytes={size - 1}-{size - 1}", size - 1, size),
        (f"bytes=-{size * 2}", 0, size),  # a suffix longer than the file is the whole file
    ]
    if size > BOUNDARY_256K + 100:
        cases.append((f"bytes={BOUNDARY_256K - 100}-{BOUNDARY_256K + 99}", BOUNDARY_256K - 100, BOUNDARY_256K + 100))
    return cases


def parse_byteranges(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/byteranges body (RFC 2046 §5.1.1) into (part headers, part content)."""
    match = re.fullmatch(r'multipart/byteranges;[ \t]*boundary=(?:"([^"]+)"|([^\s;]+))', content_type)
    assert match, content_type
    boundary = (match.group(1) or match.group(2)).encode("ascii")
    # The CRLF before a delimiter belongs to the delimiter; the first may open the body.
    pieces = re.split(rb"(?:\A|\r\n)--" + re.escape(boundary), body)
    assert pieces[0] == b"", f"preamble {pieces[0][:80]!r}"
    assert pieces[-1] in (b"--", b"--\r\n"), f"no close delimiter: {pieces[-1][:80]!r}"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n"), piece[:80]
        head, separator, content = piece[2:].partition(b"\r\n\r\n")
        assert separator, piece[:200]
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            assert colon, line
            headers[name.decode("ascii").strip().lower()] = value.decode("ascii").strip()
        parts.append((headers, content))
    return parts


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*"'
_PARAMETER = re.compile(rf";[ \t]*({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED})[ \t]*")
_EXT_VALUE = re.compile(r"UTF-8'[A-Za-z0-9-]*'((?:[A-Za-z0-9!#$&+.^_`|~-]|%[0-9A-Fa-f]{2})*)", re.IGNORECASE)


def parse_disposition(value: str) -> tuple[str, dict[str, str]]:
    """Parse a Content-Disposition value strictly (RFC 6266): its type and unquoted parameters."""
    match = re.match(rf"({_TOKEN})[ \t]*", value)
    assert match, value
    kind, position, parameters = match.group(1).lower(), match.end(), {}
    while position < len(value):
        match = _PARAMETER.match(value, position)
        assert match, f"malformed Content-Disposition at {position}: {value!r}"
        name, raw = match.group(1).lower(), match.group(2)
        assert name not in parameters, f"{name} twice: {value!r}"
        parameters[name] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        position = match.end()
    return kind, parameters


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition: ``name{labels}`` -> value; every sample line must parse."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})?) (\S+)', line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[match.group(1)] = float(match.group(2))
    return samples


@dataclass
class InnerApp:
    """A tiny ASGI app: 200 "inner" for every HTTP request; records lifespan messages and paths."""

    lifespan: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message: Message = await receive()
                self.lifespan.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            self.paths.append(scope["path"])
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"inner"})


# -- methods and bodies ---------------------------------------------------------------------


async def test_get_returns_the_exact_bytes_on_miss_and_on_hit(store: Store, client: httpx.AsyncClient) -> None:
    files = {"small.bin": os.urandom(SMALL_SIZE), "large.bin": os.urandom(LARGE_SIZE), "empty.bin": b""}
    for key, data in files.items():
        await store.put(key, data)
    for key, data in files.items():
        miss = await client.get(f"/media/{key}")
        hit = await client.get(f"/media/{key}")
        again = await client.get(f"/media/{key}")
        for response in (miss, hit, again):
            assert_full(response, data)
            assert response.headers["etag"] == etag_of(data)
        assert without_date(miss) == without_date(hit) == without_date(again)


async def test_head_returns_the_get_headers_and_no_body(store: Store, served: Served) -> None:
    files = {"small.bin": os.urandom(SMALL_SIZE), "large.bin": os.urandom(DISK_SIZE)}
    metas = {key: await store.put(key, data) for key, data in files.items()}
    for key, data in files.items():
        cold_head = await served.client.head(f"/media/{key}")  # before anything is cached
        get = await served.client.get(f"/media/{key}")
        warm_head = await served.client.head(f"/media/{key}")
        expected = full_headers(data, OCTET_STREAM, metas[key])
        assert headers_of(get, served.transport) == expected
        assert get.content == data
        for head in (cold_head, warm_head):
            assert head.status_code == 200
            assert headers_of(head, served.transport) == expected
            assert head.content == b""


async def test_other_methods_get_405_with_allow_get_head(store: Store, client: httpx.AsyncClient) -> None:
    data = os.urandom(SMALL_SIZE)
    await store.put("small.bin", data)
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        response = await client.request(method, "/media/small.bin", content=b"x" if method != "OPTIONS" else None)
        assert response.status_code == 405, method
        assert response.headers["allow"] == "GET, HEAD", method
        assert response.headers["x-content-type-options"] == "nosniff"
        assert data not in response.content
    assert_full(await client.get("/media/small.bin"), data)  # nothing was changed or deleted


# -- representation headers -----------------------------------------------------------------


async def test_representation_headers(store: Store, served: Served) -> None:
    # key -> (bytes, content type given at upload (None: guessed), Content-Type expected on the wire)
    files: dict[str, tuple[bytes, str | None, str]] = {
        "data/blob.bin": (os.urandom(SMALL_SIZE), None, OCTET_STREAM),
        "pics/photo.png": (os.urandom(SMALL_SIZE), "image/png", "image/png"),
        "notes.txt": ("héllo wörld\n".encode(), None, "text/plain; charset=utf-8"),
        "docs/readme.md": (b"# title\n", "text/markdown", "text/markdown; charset=utf-8"),
        "table.csv": (
            "a;b\n\xe9;1\n".encode("latin-1"),
            "text/csv; charset=iso-8859-1",
            "text/csv; charset=iso-8859-1",
        ),
        "big.bin": (os.urandom(DISK_SIZE), None, OCTET_STREAM),
    }
    for key, (data, content_type, wire_type) in files.items():
        meta = await store.put(key, data, content_type)
        stat = await store.stat(key)
        assert stat is not None and stat.updated_at == meta.updated_at
        response = await served.client.get(f"/media/{key}")
        assert response.status_code == 200
        assert response.content == data
        assert headers_of(response, served.transport) == full_headers(data, wire_type, meta), key
        assert response.headers["etag"] == '"' + hashlib.sha256(data).hexdigest() + '"'
        modified = response.headers["last-modified"]
        assert IMF_FIXDATE.fullmatch(modified), modified
        assert parsedate_to_datetime(modified) == last_modified(stat)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["accept-ranges"] == "bytes"


# -- active content ---------------------------------------------------------------------------

ACTIVE_FILES = {
    "docs/page.html": b"<script>alert(document.cookie)</script>",
    "img/drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
    "feeds/data.xml": b'<?xml version="1.0"?><x:script xmlns:x="http://www.w3.org/1999/xhtml">alert(1)</x:script>',
    "js/app.js": b"alert(1)",
    "docs/résumé ☃.html": b"<h1>cv</h1>",
    'img/say "hi".svg': b"<svg/>",
    "docs/a;b=c, d.xml": b"<a/>",
}


async def test_active_types_are_attachments_named_after_the_last_segment(store: Store, served: Served) -> None:
    for key, data in ACTIVE_FILES.items():
        await store.put(key, data)
    await store.put("pics/photo.png", os.urandom(100), "image/png")
    for key, data in ACTIVE_FILES.items():
        name = key.rsplit("/", 1)[-1]
        full = await served.client.get("/media/" + key)
        part = await served.client.get("/media/" + key, headers={"Range": "bytes=0-3"})
        assert_full(full, data)
        assert_part(part, data, 0, 4)
        for response in (full, part):
            assert "content-security-policy" not in response.headers
            value = response.headers["content-disposition"]
            assert value.isascii() and "\r" not in value and "\n" not in value, value
            kind, parameters = parse_disposition(value)
            assert kind == "attachment", value
            assert set(parameters) == {"filename", "filename*"}, value
            encoded = _EXT_VALUE.fullmatch(parameters["filename*"])
            assert encoded, value
            assert unquote(encoded.group(1), errors="strict") == name, value
            fallback = parameters["filename"]
            assert all(" " <= char <= "~" for char in fallback), value
            if name.isascii() and '"' not in name:
                assert fallback == name, value
            else:
                assert fallback.endswith(name.rsplit(".", 1)[-1]) and "/" not in fallback, value
    png = await served.client.get("/media/pics/photo.png")
    assert "content-disposition" not in png.headers and "content-security-policy" not in png.headers


async def test_active_types_are_sandboxed_when_asked(store: Store, make_client: MakeClient) -> None:
    for key, data in ACTIVE_FILES.items():
        await store.put(key, data)
    await store.put("pics/photo.png", os.urandom(100), "image/png")
    async with make_client(active_content="sandbox") as served:
        for key, data in ACTIVE_FILES.items():
            response = await served.client.get("/media/" + key)
            assert_full(response, data)
            assert response.headers["content-security-policy"] == "sandbox", key
            assert "content-disposition" not in response.headers, key
        png = await served.client.get("/media/pics/photo.png")
        assert "content-disposition" not in png.headers and "content-security-policy" not in png.headers


# -- preconditions ------------------------------------------------------------------------------


async def upload_small_and_large(store: Store) -> dict[str, tuple[bytes, FileMeta]]:
    """A memory-tier file and a disk-tier one, neither requested yet."""
    files = {"small.bin": os.urandom(SMALL_SIZE), "large.bin": os.urandom(DISK_SIZE)}
    return {key: (data, await store.put(key, data)) for key, data in files.items()}


async def test_if_none_match_with_the_etag_is_304_with_only_etag_cache_control_and_nosniff(
    store: Store, served: Served
) -> None:
    for key, (data, _meta) in (await upload_small_and_large(store)).items():
        tag = etag_of(data)
        matching = (tag, f'"nope", {tag}', f'"a","b" , W/{tag}', f"W/{tag}", "*")
        for method in ("GET", "HEAD"):
            for value in matching:
                response = await served.client.request(method, f"/media/{key}", headers={"If-None-Match": value})
                assert response.status_code == 304, (method, value)
                assert response.content == b""
                assert headers_of(response, served.transport) == {
                    "etag": tag,
                    "cache-control": "no-cache",
                    "x-content-type-options": "nosniff",
                }
        other = '"' + hashlib.sha256(data + b"x").hexdigest() + '"'
        assert_full(await served.client.get(f"/media/{key}", headers={"If-None-Match": other}), data)


async def test_if_match_mismatch_is_412_and_star_is_200(store: Store, client: httpx.AsyncClient) -> None:
    for key, (data, _meta) in (await upload_small_and_large(store)).items():
        tag = etag_of(data)
        for value in ('"nope"', f"W/{tag}", '"a", "b"'):
            response = await client.get(f"/media/{key}", headers={"If-Match": value})
            assert response.status_code == 412, value
            assert data not in response.content
        for value in ("*", tag, f'"nope", {tag}'):
            assert_full(await client.get(f"/media/{key}", headers={"If-Match": value}), data)


async def test_if_unmodified_since_in_the_past_is_412(store: Store, client: httpx.AsyncClient) -> None:
    for key, (data, meta) in (await upload_small_and_large(store)).items():
        modified = last_modified(meta)
        for value in (PAST, http_date(modified - timedelta(seconds=1))):
            response = await client.get(f"/media/{key}", headers={"If-Unmodified-Since": value})
            assert response.status_code == 412, value
            assert data not in response.content
        for value in (http_date(modified), http_date(modified + timedelta(days=1))):
            assert_full(await client.get(f"/media/{key}", headers={"If-Unmodified-Since": value}), data)
        # If-Match takes precedence: If-Unmodified-Since is then not evaluated (RFC 9110 §13.2.2).
        both = {"If-Match": "*", "If-Unmodified-Since": PAST}
        assert_full(await client.get(f"/media/{key}", headers=both), data)


async def test_if_modified_since_future_or_equal_is_304_unless_if_none_match_is_present(
    store: Store, served: Served
) -> None:
    for key, (data, meta) in (await upload_small_and_large(store)).items():
        modified = last_modified(meta)
        for value in (http_date(modified), http_date(modified + timedelta(days=1))):
            response = await served.client.get(f"/media/{key}", headers={"If-Modified-Since": value})
            assert response.status_code == 304, value
            assert response.content == b""
            assert headers_of(response, served.transport) == {
                "etag": etag_of(data),
                "cache-control": "no-cache",
                "x-content-type-options": "nosniff",
            }
        for value in (http_date(modified - timedelta(seconds=1)), PAST, "not a date"):
            assert_full(await served.client.get(f"/media/{key}", headers={"If-Modified-Since": value}), data)
        ignored = {"If-None-Match": '"nope"', "If-Modified-Since": http_date(modified + timedelta(days=1))}
        assert_full(await served.client.get(f"/media/{key}", headers=ignored), data)


async def test_if_range_with_the_etag_is_206_and_with_another_is_200_full(
    store: Store, client: httpx.AsyncClient
) -> None:
    # The large file is cold: the first request is the conditional range.
    for key, (data, _meta) in reversed((await upload_small_and_large(store)).items()):
        tag = etag_of(data)
        assert_part(await client.get(f"/media/{key}", headers={"Range": "bytes=10-19", "If-Range": tag}), data, 10, 20)
        for value in ('"nope"', f"W/{tag}"):
            headers = {"Range": "bytes=10-19", "If-Range": value}
            assert_full(await client.get(f"/media/{key}", headers=headers), data)


async def test_preconditions_on_a_missing_key_are_404(store: Store, client: httpx.AsyncClient) -> None:
    await store.put("present.bin", b"here")
    plain = await client.get("/media/absent.bin")
    assert plain.status_code == 404
    future = http_date(datetime.now(UTC) + timedelta(days=1))
    for headers in (
        {"If-Match": "*"},
        {"If-Match": '"nope"'},
        {"If-None-Match": "*"},
        {"If-None-Match": '"nope"'},
        {"If-Modified-Since": future},
        {"If-Unmodified-Since": PAST},
        {"Range": "bytes=0-1"},
        {"Range": "bytes=0-1", "If-Range": '"nope"'},
    ):
        response = await client.get("/media/absent.bin", headers=headers)
        assert response.status_code == 404, headers
        assert response.content == plain.content, headers


# -- ranges -------------------------------------------------------------------------------------


async def test_single_ranges_on_a_memory_tier_file(store: Store, client: httpx.AsyncClient) -> None:
    data = os.urandom(SMALL_SIZE)
    await store.put("small.bin", data)
    assert_full(await client.get("/media/small.bin"), data)  # now in the memory tier
    for header, start, stop in single_ranges(len(data)):
        response = await client.get("/media/small.bin", headers={"Range": header})
        assert_part(response, data, start, stop)
        assert response.headers["content-type"] == OCTET_STREAM


async def test_single_ranges_on_a_cold_large_file(store: Store, client: httpx.AsyncClient) -> None:
    for number, (header, start, stop) in enumerate(single_ranges(LARGE_SIZE)):
        key = f"cold-{number}.bin"  # a file nobody has requested yet: the range is answered from the store
        data = os.urandom(LARGE_SIZE)
        await store.put(key, data)
        assert_part(await client.get(f"/media/{key}", headers={"Range": header}), data, start, stop)
        assert_full(await client.get(f"/media/{key}"), data)
        assert_part(await client.get(f"/media/{key}", headers={"Range": header}), data, start, stop)


async def test_several_ranges_are_multipart_byteranges(store: Store, client: httpx.AsyncClient) -> None:
    small, large = os.urandom(SMALL_SIZE), os.urandom(LARGE_SIZE)
    await store.put("small.bin", small)
    await store.put("large.bin", large)
    assert_full(await client.get("/media/small.bin"), small)  # warm; the large file stays cold
    cases = [
        ("small.bin", small, [(0, 10), (100, 200), (SMALL_SIZE - 50, SMALL_SIZE)]),
        (
            "large.bin",
            large,
            [(0, 10), (BOUNDARY_256K - 5, BOUNDARY_256K + 5), (1_000_000, 1_000_100), (LARGE_SIZE - 50, LARGE_SIZE)],
        ),
    ]
    for key, data, ranges in cases:
        specs = [f"{start}-{stop - 1}" for start, stop in ranges[:-1]] + [f"-{ranges[-1][1] - ranges[-1][0]}"]
        response = await client.get(f"/media/{key}", headers={"Range": "bytes=" + ", ".join(specs)})
        assert response.status_code == 206
        assert "content-range" not in response.headers
        assert response.headers["content-length"] == str(len(response.content))
        assert response.headers["etag"] == etag_of(data)
        parts = parse_byteranges(response.headers["content-type"], response.content)
        assert len(parts) == len(ranges)
        for (part_headers, content), (start, stop) in zip(parts, ranges, strict=True):
            assert part_headers == {
                "content-type": OCTET_STREAM,
                "content-range": f"bytes {start}-{stop - 1}/{len(data)}",
            }
            assert content == data[start:stop]
        assert_full(await client.get(f"/media/{key}"), data)


async def test_unsatisfiable_range_is_416_with_the_size(store: Store, client: httpx.AsyncClient) -> None:
    for key, (data, _meta) in reversed((await upload_small_and_large(store)).items()):
        size = len(data)
        for header in (f"bytes={size}-", f"bytes={size + 1}-{size + 100}", f"bytes={size}-{size}, {size * 2}-"):
            response = await client.get(f"/media/{key}", headers={"Range": header})
            assert response.status_code == 416, header
            assert response.headers["content-range"] == f"bytes */{size}"
            assert response.content != data and data[:100] not in response.content
        assert_full(await client.get(f"/media/{key}"), data)


async def test_malformed_ranges_are_ignored(store: Store, client: httpx.AsyncClient) -> None:
    for key, (data, _meta) in reversed((await upload_small_and_large(store)).items()):
        for header in (b"bytes=abc", b"bytes=5-1", b"items=0-1", "bytes=\u0660-\u0665".encode(), b"bytes=1-2-3"):
            # Sent as bytes: the Arabic-Indic digits go out UTF-8 encoded, as a client would send them.
            response = await client.get(f"/media/{key}", headers={b"Range": header})
            assert_full(response, data)


async def test_range_is_ignored_on_head(store: Store, served: Served) -> None:
    for key, (data, meta) in (await upload_small_and_large(store)).items():
        for header in ("bytes=0-99", "bytes=0-9, 20-29", f"bytes={len(data)}-"):
            response = await served.client.head(f"/media/{key}", headers={"Range": header})
            assert response.status_code == 200, header
            assert headers_of(response, served.transport) == full_headers(data, OCTET_STREAM, meta)
            assert response.content == b""


async def test_ten_thousand_ranges_are_answered_quickly(store: Store, client: httpx.AsyncClient) -> None:
    data = os.urandom(SMALL_SIZE)
    await store.put("small.bin", data)
    header = "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(10_000))
    response = await client.get("/media/small.bin", headers={"Range": header}, timeout=5.0)
    assert response.status_code == 200


def app_headers(response: RawResponse) -> dict[str, str]:
    """A raw response's headers, each sent once, without those a server adds: Date, Server, and
    Connection (uvicorn answers the raw request's "Connection: close" in kind)."""
    names = [name for name, _ in response.headers]
    assert len(names) == len(set(names)), f"a header was sent twice: {names}"
    return {name: value for name, value in response.headers if name not in {*SERVER_ADDED, "connection"}}


# -- keys ---------------------------------------------------------------------------------------

REJECTED_TARGETS = [
    b"/media/../x",
    b"/media/a//b",
    b"/media/%2e%2e/etc/passwd",
    b"/media/a%00b",
    b"/media/a%5cb",
    b"/media/" + b"k" * 2000,
    b"/media/%ff",
    b"/media/a/./b",
    b"/media/a/b/",
    b"/media/%2Fetc/passwd",
    b"/media/",
]


async def test_missing_and_rejected_keys_get_the_same_404(store: Store, served: Served) -> None:
    # Files that a lenient key gate would wrongly reach from the rejected targets.
    for key in ("x", "a/b", "etc/passwd"):
        await store.put(key, b"must not be served")
    assert (await served.client.get("/media/a/b")).content == b"must not be served"
    reference = await served.client.get("/media/absent.bin")
    assert reference.status_code == 404
    expected = headers_of(reference, served.transport)
    for target in [b"/media/absent.bin", b"/media/dir/absent/deeper.txt", *REJECTED_TARGETS]:
        response = await served.raw("GET", target)
        assert response.status == 404, (target[:60], response.status, response.body[:200])
        assert response.body == reference.content, target[:60]
        assert app_headers(response) == expected, target[:60]


async def test_head_of_a_missing_or_rejected_key_is_the_404_without_a_body(store: Store, served: Served) -> None:
    await store.put("a/b", b"must not be served")
    reference = await served.client.get("/media/absent.bin")
    assert reference.status_code == 404
    expected = headers_of(reference, served.transport)
    for target in [b"/media/absent.bin", b"/media/a//b", b"/media/%2e%2e/etc/passwd", b"/media/%ff"]:
        response = await served.raw("HEAD", target)
        assert response.status == 404, (target, response.status)
        assert app_headers(response) == expected, target
        assert response.body == b"", f"HEAD {target!r} got a body: {response.body[:100]!r}"


# -- the wrapped app ----------------------------------------------------------------------------


async def test_requests_outside_the_prefix_and_lifespan_reach_the_wrapped_app(
    store: Store, make_client: MakeClient, transport: str
) -> None:
    data = os.urandom(SMALL_SIZE)
    await store.put("x", data)
    inner = InnerApp()
    async with make_client(inner) as served, contextlib.AsyncExitStack() as stack:
        if transport == "asgi":  # uvicorn ran the lifespan startup already; here a server's part is ours
            await stack.enter_async_context(asgi_lifespan(served.app))
        assert inner.lifespan == ["lifespan.startup"]
        for path in ("/other", "/", "/mediax/y", "/media"):
            response = await served.client.get(path)
            assert response.status_code == 200, path
            assert response.content == b"inner", path
        assert_full(await served.client.get("/media/x"), data)
        missing = await served.client.get("/media/absent")
        assert missing.status_code == 404 and missing.content != b"inner"
        assert inner.paths == ["/other", "/", "/mediax/y", "/media"]
    assert inner.lifespan == ["lifespan.startup", "lifespan.shutdown"]


# -- freshness ----------------------------------------------------------------------------------


async def get_consistent(client: httpx.AsyncClient, path: str, versions: dict[str, bytes]) -> bytes | None:
    """GET ``path``: a body that is exactly the version its ETag names (or an aborted, visibly short prefix of it)."""
    try:
        response = await client.get(path)
    except httpx.TransportError:
        return None  # the server cut the connection: the client cannot take it for a whole file
    assert response.status_code == 200, response.status_code
    data = versions[response.headers["etag"]]
    assert response.headers["content-length"] == str(len(data))
    if len(response.content) != len(data):
        assert data.startswith(response.content), "a short body that is not a prefix of its version"
        return None
    assert response.content == data, "the body is not the version its ETag names"
    return response.content


@pytest.mark.parametrize("feed", [True, False], ids=["feed", "no-feed"])
@pytest.mark.parametrize("size", [SMALL_SIZE, DISK_SIZE], ids=["memory", "disk"])
async def test_a_replaced_file_is_served_new_within_the_freshness_interval(
    store: Store, make_client: MakeClient, size: int, feed: bool
) -> None:
    old, new = os.urandom(size), os.urandom(size)
    versions = {etag_of(old): old, etag_of(new): new}
    await store.put("doc.bin", old)
    async with make_client(freshness_seconds=0.2, feed=feed) as served:
        client = served.client
        assert_full(await client.get("/media/doc.bin"), old)  # cached now
        assert_full(await client.get("/media/doc.bin"), old)
        stop = asyncio.Event()

        async def keep_reading() -> None:
            while not stop.is_set():
                await get_consistent(client, "/media/doc.bin", versions)
                await asyncio.sleep(0.01)

        readers = [asyncio.create_task(keep_reading()) for _ in range(3)]
        try:
            await store.put("doc.bin", new)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*readers)
        response = await client.get("/media/doc.bin")
        assert response.headers["etag"] == etag_of(new)
        assert_full(response, new)


@pytest.mark.parametrize("size", [SMALL_SIZE, DISK_SIZE], ids=["memory", "disk"])
async def test_a_deleted_file_is_404_after_the_freshness_interval(
    store: Store, make_client: MakeClient, size: int
) -> None:
    data = os.urandom(size)
    await store.put("doc.bin", data)
    async with make_client(freshness_seconds=0.2) as served:
        reference = await served.client.get("/media/absent.bin")
        assert_full(await served.client.get("/media/doc.bin"), data)
        assert_full(await served.client.get("/media/doc.bin"), data)
        assert await store.delete("doc.bin")
        await asyncio.sleep(0.3)
        response = await served.client.get("/media/doc.bin")
        assert response.status_code == 404
        assert response.content == reference.content


# -- health and metrics -------------------------------------------------------------------------


async def test_health_is_200_json_with_status_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/_servefiles/health")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/json"
    assert json.loads(response.content)["status"] == "ok"


async def test_metrics_are_not_served_unless_enabled(make_client: MakeClient) -> None:
    async with make_client() as served:
        reference = await served.client.get("/media/absent.bin")
        response = await served.client.get("/_servefiles/metrics")
        assert response.status_code == 404
        assert response.content == reference.content
    inner = InnerApp()
    async with make_client(inner) as served:
        response = await served.client.get("/_servefiles/metrics")
        assert response.status_code == 200 and response.content == b"inner"
        assert inner.paths == ["/_servefiles/metrics"]


METRIC_SAMPLES = (
    'servefiles_hits_total{tier="memory"}',
    'servefiles_hits_total{tier="disk"}',
    "servefiles_misses_total",
    "servefiles_store_fetches_total",
    "servefiles_bytes_sent_total",
    "servefiles_cache_write_failures_total",
)


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/_servefiles/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = parse_metrics(response.text)
    for name in METRIC_SAMPLES:
        assert name in samples, f"{name} missing from {sorted(samples)}"
    assert any(name.startswith("servefiles_evictions_total") for name in samples), sorted(samples)
    return {name: samples[name] for name in METRIC_SAMPLES}


def counters(memory_hits: int, disk_hits: int, misses: int, fetches: int, sent: int) -> dict[str, float]:
    return dict(zip(METRIC_SAMPLES, map(float, (memory_hits, disk_hits, misses, fetches, sent, 0)), strict=True))


async def test_metrics_are_prometheus_text_and_count_misses_and_hits(
    store: Store, make_client: MakeClient, tmp_path: Path
) -> None:
    small, large = os.urandom(SMALL_SIZE), os.urandom(LARGE_SIZE)
    await store.put("small.bin", small)
    await store.put("large.bin", large)
    cache_dir = tmp_path / "shared-cache"
    # cache_min_uses=1: the first miss writes the large file to disk, for the fresh instance's disk hit.
    async with make_client(cache_dir=cache_dir, metrics=True, cache_min_uses=1) as served:
        assert await scrape(served.client) == counters(0, 0, 0, 0, 0)
        assert_full(await served.client.get("/media/small.bin"), small)  # miss
        assert await scrape(served.client) == counters(0, 0, 1, 1, SMALL_SIZE)
        assert_full(await served.client.get("/media/small.bin"), small)  # memory hit
        assert await scrape(served.client) == counters(1, 0, 1, 1, 2 * SMALL_SIZE)
        assert_full(await served.client.get("/media/large.bin"), large)  # miss
        assert await scrape(served.client) == counters(1, 0, 2, 2, 2 * SMALL_SIZE + LARGE_SIZE)
    async with make_client(cache_dir=cache_dir, metrics=True) as served:  # a fresh instance, the same cache dir
        assert await scrape(served.client) == counters(0, 0, 0, 0, 0)
        assert_full(await served.client.get("/media/large.bin"), large)  # disk hit
        assert await scrape(served.client) == counters(0, 1, 0, 0, LARGE_SIZE)
