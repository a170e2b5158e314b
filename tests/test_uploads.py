"""The HTTP write API: PUT, DELETE and the listing, over real HTTP (uvicorn on a loopback
port) against both stores. Expected values come from the bytes sent (hashlib) and from
the store read directly, never from the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from servefiles import ServeFiles, open_store

from .asgi_servers import http_request, uvicorn_server
from .db_tables import assert_only_live_chunks, storage
from .servers import running_wsgi

ADMIN = "admin-token-0123456789abcdef"
ROTATED_IN = "next-token-fedcba9876543210"
BLOG_ONLY = "blog-token-0123456789abcdef"
LIMIT = 1_000_000
PROPAGATION_SECONDS = 5.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def etag(data: bytes) -> str:
    return f'"{sha(data)}"'


def auth(token: str = ADMIN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def payload(size: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


@pytest.fixture(params=["asgi", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    """The ASGI adapter under uvicorn, or the WSGI adapter under gunicorn."""
    name: str = request.param
    return name


@contextlib.asynccontextmanager
async def running(adapter: str, store_url: str, cache_dir: Path, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """servefiles with upload tokens behind a real server, and a client for it."""
    options.setdefault("upload_tokens", [ADMIN, ROTATED_IN, f"{BLOG_ONLY}:blog"])
    options.setdefault("max_upload_bytes", LIMIT)
    if adapter == "wsgi":
        with running_wsgi({"db": store_url, "cache_dir": str(cache_dir), **options}) as frontend:
            async with httpx.AsyncClient(base_url=frontend.base, timeout=30) as client:
                yield client
        return
    app = ServeFiles(None, db=store_url, cache_dir=cache_dir, **options)
    async with uvicorn_server(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def client(adapter: str, store_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running(adapter, store_url, tmp_path / "cache") as client:
        yield client


async def stored(store_url: str, key: str) -> bytes | None:
    """The key's bytes as the database holds them, read with a store of the test's own."""
    async with open_store(store_url) as store:
        if await store.stat(key) is None:
            return None
        return b"".join([chunk async for chunk in store.read(key)])


# -- PUT ---------------------------------------------------------------------------------------


async def test_put_creates_with_201_location_and_the_content_hash_as_etag(
    client: httpx.AsyncClient, store_url: str
) -> None:
    data = payload(5000)
    response = await client.put("/media/blog/a.png", content=data, headers={**auth(), "content-type": "image/png"})
    assert response.status_code == 201
    assert response.headers["etag"] == etag(data)
    assert response.headers["location"] == "/media/blog/a.png"
    body = response.json()
    assert (body["key"], body["size"], body["content_type"]) == ("blog/a.png", 5000, "image/png")
    assert await stored(store_url, "blog/a.png") == data
    served = await client.get("/media/blog/a.png")
    assert (served.status_code, served.content, served.headers["etag"]) == (200, data, etag(data))
    assert served.headers["content-type"] == "image/png"


async def test_put_replacing_answers_200_and_the_writer_serves_the_new_version_at_once(
    client: httpx.AsyncClient,
) -> None:
    old, new = payload(3000, 1), payload(400_000, 2)  # a memory-tier file, then a disk-tier one
    assert (await client.put("/media/post.bin", content=old, headers=auth())).status_code == 201
    assert (await client.get("/media/post.bin")).content == old  # now cached on this frontend
    response = await client.put("/media/post.bin", content=new, headers=auth())
    assert (response.status_code, response.headers["etag"]) == (200, etag(new))
    served = await client.get("/media/post.bin")  # no wait: read-your-writes
    assert (served.content, served.headers["etag"]) == (new, etag(new))


async def test_put_without_content_type_guesses_from_the_key(client: httpx.AsyncClient, store_url: str) -> None:
    # curl --data-binary sends application/x-www-form-urlencoded when told nothing: not a file type
    headers = {**auth(), "content-type": "application/x-www-form-urlencoded"}
    assert (await client.put("/media/doc.pdf", content=b"%PDF-1.4", headers=headers)).status_code == 201
    async with open_store(store_url) as store:
        meta = await store.stat("doc.pdf")
    assert meta is not None and meta.content_type == "application/pdf"


async def test_put_of_a_form_or_an_encoded_body_is_refused(client: httpx.AsyncClient, store_url: str) -> None:
    form_type = {"content-type": "multipart/form-data; boundary=x"}
    form = await client.put("/media/f.bin", content=b"--x\r\n", headers={**auth(), **form_type})
    gzip = await client.put("/media/g.bin", content=b"\x1f\x8b", headers={**auth(), "content-encoding": "gzip"})
    assert (form.status_code, gzip.status_code) == (415, 415)
    assert form.json()["error"] == "form_upload" and gzip.json()["error"] == "content_encoding"
    assert await stored(store_url, "f.bin") is None and await stored(store_url, "g.bin") is None


async def test_put_with_an_invalid_content_type_is_400_and_stores_nothing(
    client: httpx.AsyncClient, store_url: str
) -> None:
    response = await client.put("/media/x.bin", content=b"x", headers={**auth(), "content-type": "image"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_content_type"
    assert await stored(store_url, "x.bin") is None


@pytest.mark.parametrize(
    "target",
    [
        b"/media/a/../b.png",
        b"/media/a/%2e%2e/b.png",
        b"/media/a//b.png",
        b"/media/a%00b",
        b"/media/%2e%2e%2fetc",
        b"/media/a%5cb",
    ],
)
async def test_put_with_a_bad_key_is_400_json_and_writes_nothing(
    client: httpx.AsyncClient, store_url: str, tmp_path: Path, target: bytes
) -> None:
    files_before = sorted((tmp_path / "cache").rglob("*"))
    base = str(client.base_url).rstrip("/")
    response = await http_request(base, "PUT", target, [(b"authorization", f"Bearer {ADMIN}".encode()),
                                                      (b"content-length", b"0")])  # fmt: skip
    assert response.status == 400
    assert response.header("content-type") == "application/json"
    assert b'"error":"invalid_key"' in response.body
    async with open_store(store_url) as store:
        assert await store.list() == [] and await store.last_version() == 0
    await assert_only_live_chunks(store_url)
    assert sorted((tmp_path / "cache").rglob("*")) == files_before, "nothing new in the cache dir"


async def test_put_with_content_range_is_400_and_stores_nothing(client: httpx.AsyncClient, store_url: str) -> None:
    headers = {**auth(), "content-range": "bytes 0-3/10"}
    response = await client.put("/media/part.bin", content=b"abcd", headers=headers)
    assert response.status_code == 400 and response.json()["error"] == "partial_put"
    assert await stored(store_url, "part.bin") is None


# -- the size limit ------------------------------------------------------------------------------


async def test_content_length_over_the_limit_is_413_before_any_body_is_read(
    client: httpx.AsyncClient, store_url: str
) -> None:
    """The request head alone is sent: the answer must come without the body ever arriving."""
    host, port = client.base_url.host, client.base_url.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"PUT /media/huge.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
            f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert await stored(store_url, "huge.bin") is None


async def test_a_chunked_body_is_cut_off_past_the_limit_and_nothing_is_stored(
    client: httpx.AsyncClient, store_url: str
) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        nonlocal sent
        for _ in range(40):
            sent += 64 * 1024
            yield b"z" * (64 * 1024)

    with contextlib.suppress(httpx.TransportError):  # the server may close before reading it all
        response = await client.put("/media/chunked.bin", content=body(), headers=auth())
        assert response.status_code == 413 and response.json()["error"] == "too_large"
    assert await stored(store_url, "chunked.bin") is None
    await assert_only_live_chunks(store_url)
    exactly = await client.put("/media/exact.bin", content=b"e" * LIMIT, headers=auth())
    assert exactly.status_code == 201, "a body of exactly the limit is accepted"


async def test_a_client_that_goes_away_mid_upload_leaves_nothing(client: httpx.AsyncClient, store_url: str) -> None:
    _reader, writer = await asyncio.open_connection(client.base_url.host, client.base_url.port)
    writer.write(
        f"PUT /media/cut.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
        f"Content-Length: {LIMIT}\r\n\r\n".encode()
        + b"c" * 300_000
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    deadline = time.monotonic() + 10
    while (found := await storage(store_url)).chunks or found.staged_uploads:
        assert time.monotonic() < deadline, f"staged chunks left behind: {found}"
        await asyncio.sleep(0.05)
    assert await stored(store_url, "cut.bin") is None


# -- conditional writes ----------------------------------------------------------------------------


async def test_if_match_replaces_only_that_version(client: httpx.AsyncClient, store_url: str) -> None:
    v1, v2, v3 = b"one", b"two", b"three"
    await client.put("/media/c.txt", content=v1, headers=auth())
    ok = await client.put("/media/c.txt", content=v2, headers={**auth(), "if-match": etag(v1)})
    assert (ok.status_code, ok.headers["etag"]) == (200, etag(v2))
    stale = await client.put("/media/c.txt", content=v3, headers={**auth(), "if-match": etag(v1)})
    assert stale.status_code == 412 and stale.json()["error"] == "precondition_failed"
    assert await stored(store_url, "c.txt") == v2
    missing = await client.put("/media/none.txt", content=v3, headers={**auth(), "if-match": "*"})
    assert missing.status_code == 412 and await stored(store_url, "none.txt") is None


async def test_if_none_match_star_creates_only(client: httpx.AsyncClient, store_url: str) -> None:
    create = {**auth(), "if-none-match": "*"}
    assert (await client.put("/media/once.txt", content=b"first", headers=create)).status_code == 201
    again = await client.put("/media/once.txt", content=b"second", headers=create)
    assert again.status_code == 412
    assert await stored(store_url, "once.txt") == b"first"


async def test_concurrent_create_only_puts_have_exactly_one_winner(client: httpx.AsyncClient, store_url: str) -> None:
    bodies = [payload(300_000, n) for n in range(8)]
    responses = await asyncio.gather(
        *(client.put("/media/race.bin", content=body, headers={**auth(), "if-none-match": "*"}) for body in bodies)
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [412] * 7
    winner = next(body for body, response in zip(bodies, responses, strict=True) if response.status_code == 201)
    assert await stored(store_url, "race.bin") == winner
    await assert_only_live_chunks(store_url)


async def test_delete_with_a_stale_if_match_is_412_and_keeps_the_file(
    client: httpx.AsyncClient, store_url: str
) -> None:
    await client.put("/media/d.txt", content=b"now", headers=auth())
    response = await client.delete("/media/d.txt", headers={**auth(), "if-match": etag(b"before")})
    assert response.status_code == 412 and await stored(store_url, "d.txt") == b"now"
    assert (await client.delete("/media/d.txt", headers={**auth(), "if-match": etag(b"now")})).status_code == 204


async def test_if_unmodified_since_guards_put_and_delete(client: httpx.AsyncClient, store_url: str) -> None:
    """RFC 9110 §13.1.4: a write is refused with 412 when the file changed after the date."""
    created = await client.put("/media/dated.txt", content=b"one", headers=auth())
    last_modified = parsedate_to_datetime((await client.get("/media/dated.txt")).headers["last-modified"])
    before = format_datetime(last_modified - timedelta(days=1), usegmt=True)
    stale = {**auth(), "if-unmodified-since": before}
    assert (await client.put("/media/dated.txt", content=b"two", headers=stale)).status_code == 412
    assert (await client.delete("/media/dated.txt", headers=stale)).status_code == 412
    assert await stored(store_url, "dated.txt") == b"one"
    with_if_match = {**stale, "if-match": created.headers["etag"]}  # If-Match wins: the date is ignored
    assert (await client.put("/media/dated.txt", content=b"two", headers=with_if_match)).status_code == 200
    current = (await client.get("/media/dated.txt")).headers["last-modified"]
    same_second = {**auth(), "if-unmodified-since": current}  # "earlier or equal" holds
    assert (await client.put("/media/dated.txt", content=b"three", headers=same_second)).status_code == 200
    future = {**auth(), "if-unmodified-since": format_datetime(last_modified + timedelta(days=1), usegmt=True)}
    assert (await client.put("/media/dated.txt", content=b"four", headers=future)).status_code == 200
    assert await stored(store_url, "dated.txt") == b"four"
    assert (await client.delete("/media/dated.txt", headers=future)).status_code == 204
    assert await stored(store_url, "dated.txt") is None


async def test_delete_of_a_missing_key_is_404_whatever_the_conditions(client: httpx.AsyncClient) -> None:
    """RFC 9110 §13.2.1: preconditions are not evaluated when the request would fail without them."""
    old_date = "Mon, 01 Jan 2001 00:00:00 GMT"
    for conditions in ({"if-match": etag(b"x")}, {"if-match": "*"}, {"if-unmodified-since": old_date}):
        response = await client.delete("/media/never.txt", headers={**auth(), **conditions})
        assert response.status_code == 404 and response.json()["error"] == "not_found"


async def test_a_non_ascii_prefix_gets_percent_encoded_urls(adapter: str, store_url: str, tmp_path: Path) -> None:
    """Header values are ASCII: Location, ``url`` and Link percent-encode the prefix as well as the key."""
    async with running(adapter, store_url, tmp_path / "cache", prefix="/médias") as client:
        for n in range(2):
            created = await client.put(f"/médias/é{n}.txt", content=b"hi", headers=auth())
            assert created.status_code == 201, created.text
            assert created.headers["location"] == f"/m%C3%A9dias/%C3%A9{n}.txt"
            assert created.json()["url"] == created.headers["location"]
        served = await client.get(created.headers["location"])
        assert (served.status_code, served.content) == (200, b"hi")
        page = await client.get("/médias/?limit=1", headers=auth())
        assert page.headers["link"].startswith("</m%C3%A9dias/?prefix=")
    assert await stored(store_url, "é1.txt") == b"hi"


# -- DELETE ------------------------------------------------------------------------------------------


async def test_delete_answers_204_then_404_and_the_writer_stops_serving_at_once(
    client: httpx.AsyncClient, store_url: str
) -> None:
    await client.put("/media/gone.txt", content=b"bye", headers=auth())
    assert (await client.get("/media/gone.txt")).status_code == 200  # cached here now
    response = await client.delete("/media/gone.txt", headers=auth())
    assert (response.status_code, response.content) == (204, b"")
    assert (await client.get("/media/gone.txt")).status_code == 404
    assert await stored(store_url, "gone.txt") is None
    again = await client.delete("/media/gone.txt", headers=auth())
    assert again.status_code == 404 and again.json()["error"] == "not_found"


# -- authentication ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="servefiles"'),
        ({"authorization": "Basic YWRtaW46YWRtaW4="}, 'Bearer realm="servefiles"'),
        ({"authorization": "Bearer wrong-token-0123456789abcdef"}, 'Bearer realm="servefiles", error="invalid_token"'),
        ({"authorization": f"Bearer {ADMIN[:-1]}"}, 'Bearer realm="servefiles", error="invalid_token"'),
        ({"authorization": f"Bearer {ADMIN}x"}, 'Bearer realm="servefiles", error="invalid_token"'),
    ],
)
async def test_a_missing_or_wrong_token_is_401_and_changes_nothing(
    client: httpx.AsyncClient, store_url: str, headers: dict[str, str], challenge: str
) -> None:
    await client.put("/media/keep.txt", content=b"keep", headers=auth())
    for response in (
        await client.put("/media/keep.txt", content=b"evil", headers=headers),
        await client.put("/media/new.txt", content=b"evil", headers=headers),
        await client.delete("/media/keep.txt", headers=headers),
        await client.get("/media/", headers=headers),
    ):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == challenge
        assert response.headers["cache-control"] == "no-store"
    assert await stored(store_url, "keep.txt") == b"keep" and await stored(store_url, "new.txt") is None


async def test_every_configured_token_works_for_rotation(client: httpx.AsyncClient, store_url: str) -> None:
    assert (await client.put("/media/r.txt", content=b"1", headers=auth(ADMIN))).status_code == 201
    assert (await client.put("/media/r.txt", content=b"2", headers=auth(ROTATED_IN))).status_code == 200
    assert await stored(store_url, "r.txt") == b"2"


async def test_a_folder_token_writes_only_under_its_folder(client: httpx.AsyncClient, store_url: str) -> None:
    assert (await client.put("/media/blog/ok.png", content=b"p", headers=auth(BLOG_ONLY))).status_code == 201
    for target in ("/media/avatars/x.png", "/media/blogroll.png"):
        response = await client.put(target, content=b"p", headers=auth(BLOG_ONLY))
        assert response.status_code == 403
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    await client.put("/media/avatars/a.png", content=b"a", headers=auth())
    assert (await client.delete("/media/avatars/a.png", headers=auth(BLOG_ONLY))).status_code == 403
    assert await stored(store_url, "avatars/a.png") == b"a" and await stored(store_url, "blogroll.png") is None


async def test_without_tokens_writes_are_405_and_the_listing_does_not_exist(
    adapter: str, store_url: str, tmp_path: Path
) -> None:
    async with running(adapter, store_url, tmp_path / "cache", upload_tokens=[]) as client:
        put = await client.put("/media/a.txt", content=b"a", headers=auth())
        delete = await client.delete("/media/a.txt", headers=auth())
        assert (put.status_code, delete.status_code) == (405, 405)
        assert put.headers["allow"] == "GET, HEAD"
        assert (await client.get("/media/", headers=auth())).status_code == 404
    assert await stored(store_url, "a.txt") is None


async def test_with_tokens_other_methods_are_405_naming_put_and_delete(client: httpx.AsyncClient) -> None:
    response = await client.post("/media/a.txt", content=b"a", headers=auth())
    assert (response.status_code, response.headers["allow"]) == (405, "GET, HEAD, PUT, DELETE")


# -- the listing ------------------------------------------------------------------------------------------


async def test_listing_pages_through_a_prefix_in_key_order(client: httpx.AsyncClient) -> None:
    keys = [f"blog/{n:02d}.txt" for n in range(7)] + ["other/z.txt"]
    for key in keys:
        await client.put(f"/media/{key}", content=key.encode(), headers=auth())
    seen: list[str] = []
    target: str | None = "/media/?prefix=blog/&limit=3"
    while target is not None:
        response = await client.get(target, headers=auth())
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        page = response.json()
        for entry in page["files"]:
            assert entry["etag"] == etag(entry["key"].encode()) and entry["size"] == len(entry["key"])
            assert entry["url"] == f"/media/{entry['key']}"
        seen += [entry["key"] for entry in page["files"]]
        link = response.headers.get("link")
        assert (link is None) == (page["next"] is None)
        target = link.split(">")[0].lstrip("<") if link else None
    assert seen == keys[:7]


async def test_a_folder_token_lists_only_its_folder(client: httpx.AsyncClient) -> None:
    await client.put("/media/blog/a.txt", content=b"a", headers=auth())
    await client.put("/media/secret/b.txt", content=b"b", headers=auth())
    everything = await client.get("/media/", headers=auth(BLOG_ONLY))
    assert [entry["key"] for entry in everything.json()["files"]] == ["blog/a.txt"]
    assert (await client.get("/media/?prefix=secret/", headers=auth(BLOG_ONLY))).status_code == 403


async def test_head_of_the_listing_answers_as_its_get_without_a_body(client: httpx.AsyncClient) -> None:
    await client.put("/media/blog/a.txt", content=b"a", headers=auth())
    get = await client.get("/media/", headers=auth())
    head = await client.head("/media/", headers=auth())
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == get.headers["content-type"] == "application/json"
    assert (await client.head("/media/", headers=auth("wrong-token-0123456789abcdef"))).status_code == 401


async def test_listing_with_a_bad_limit_is_400(client: httpx.AsyncClient) -> None:
    for limit in ("0", "-1", "abc", "10001", "5_0", "\u0665", " 5", "1e3"):
        response = await client.get(f"/media/?limit={limit}", headers=auth())
        assert response.status_code == 400 and response.json()["error"] == "invalid_limit"


# -- other frontends and the Python API --------------------------------------------------------------------


async def test_other_frontends_get_a_put_and_a_delete_through_the_feed(
    adapter: str, store_url: str, tmp_path: Path
) -> None:
    async with (
        running(adapter, store_url, tmp_path / "a") as writer,
        running(adapter, store_url, tmp_path / "b") as reader,
    ):
        await writer.put("/media/shared.txt", content=b"v1", headers=auth())
        assert (await reader.get("/media/shared.txt")).content == b"v1"  # cached on the reader now
        await writer.put("/media/shared.txt", content=b"v2", headers=auth())
        deadline = time.monotonic() + PROPAGATION_SECONDS
        while (await reader.get("/media/shared.txt")).content != b"v2":
            assert time.monotonic() < deadline, "the replaced file did not reach the other frontend"
            await asyncio.sleep(0.02)
        await writer.delete("/media/shared.txt", headers=auth())
        while (await reader.get("/media/shared.txt")).status_code != 404:
            assert time.monotonic() < deadline + PROPAGATION_SECONDS, "the delete did not reach the other frontend"
            await asyncio.sleep(0.02)


async def test_the_python_api_writes_lists_and_deletes_with_read_your_writes(store_url: str, tmp_path: Path) -> None:
    app = ServeFiles(None, db=store_url, cache_dir=tmp_path / "cache")
    async with uvicorn_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        await _python_api(app, client)


async def _python_api(app: ServeFiles, client: httpx.AsyncClient) -> None:
    assert (await client.get("/media/api/x.txt")).status_code == 404
    meta = await app.put("api/x.txt", b"from python", "text/plain")
    assert meta.sha256 == sha(b"from python")
    assert (await client.get(app.url("api/x.txt"))).content == b"from python"
    assert [m.key for m in await app.list("api/")] == ["api/x.txt"]
    assert await app.delete("api/x.txt") is True
    assert await app.delete("api/x.txt") is False
    assert (await client.get("/media/api/x.txt")).status_code == 404
    assert app.url("a b/ü.png") == "/media/a%20b/%C3%BC.png"
