"""Last-Modified is never from the future, and the times servefiles reports are true, on real
servers: ``servefiles serve`` (uvicorn) and ``ServeFilesWSGI`` under gunicorn, on both stores.

RFC 9110 §8.8.2.1: an origin server MUST NOT send a Last-Modified later than its Date. A key's
versions never share a validator second (nginx's "mtime-size" ETag depends on it), so a burst
of writes pushes that second ahead of the clock; the response must still not state it early,
and the Python API, the write replies and the listing report the true time of each write.
The nginx modes have their own test in ``test_nginx.py``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from servefiles import open_store
from servefiles.http import HttpPolicy, PreparedFile, Response, respond, unmodified_since
from servefiles.nginx.redirect import accel_redirect
from servefiles.nginx.tree import PublishedTree
from servefiles.store.types import FileMeta

from .servers import Frontend, WsgiFrontend

TOKEN = "last-modified-test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TOLERANCE = timedelta(seconds=1)
"""How far a reported write time may be from this test's clock: the request's own round trip."""


@contextlib.contextmanager
def server(kind: str, store_url: str, cache_dir: Path) -> Iterator[str]:
    if kind == "serve":
        frontend = Frontend("--db", store_url, "--cache-dir", str(cache_dir), "--upload-token", TOKEN)
    else:
        frontend = WsgiFrontend({"db": store_url, "cache_dir": str(cache_dir), "upload_tokens": [TOKEN]})
    frontend.start()
    try:
        yield frontend.base
    finally:
        frontend.stop()
    assert "Traceback" not in frontend.output(), frontend.output()


def assert_not_from_the_future(response: httpx.Response) -> None:
    dates = response.headers.get_list("date")
    assert len(dates) == 1, response.headers
    modified = parsedate_to_datetime(response.headers["last-modified"])
    assert modified <= parsedate_to_datetime(dates[0]), (response.request.method, response.headers)


@pytest.mark.parametrize("kind", ["serve", "gunicorn"])
async def test_a_burst_of_writes_never_sends_a_last_modified_after_the_date(
    kind: str, store_url: str, tmp_path: Path
) -> None:
    """Six PUTs of one key within about a second, each followed by a GET and a HEAD: every
    Last-Modified <= its Date; every date a client was given, sent back in If-Modified-Since,
    brings the newest version rather than a 304; the PUT replies, the listing and the store
    report the true time of each write, not a second pushed ahead."""
    with server(kind, store_url, tmp_path / "cache") as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            given: list[tuple[str, bytes]] = []
            for n in range(6):
                data = b"same size %d " % n + os.urandom(100)
                before = datetime.now(UTC)
                put = await client.put("/media/burst.bin", content=data, headers=AUTH)
                assert put.status_code in (200, 201), put.text
                written = datetime.fromisoformat(put.json()["updated_at"])
                assert before - TOLERANCE <= written <= datetime.now(UTC) + TOLERANCE, (n, written)
                for method in ("GET", "HEAD"):
                    got = await client.request(method, "/media/burst.bin")
                    assert got.status_code == 200
                    assert_not_from_the_future(got)
                assert got.headers["etag"] == put.headers["etag"]
                given.append((got.headers["last-modified"], data))
                ranged = await client.get("/media/burst.bin", headers={"range": "bytes=1-4"})
                assert ranged.status_code == 206 and ranged.content == data[1:5]
                assert_not_from_the_future(ranged)
            newest = given[-1][1]
            for last_modified, data in given:
                again = await client.get("/media/burst.bin", headers={"if-modified-since": last_modified})
                if data != newest:
                    assert (again.status_code, again.content) == (200, newest), last_modified
                else:
                    assert again.status_code in (200, 304)
                if again.status_code == 200:
                    assert_not_from_the_future(again)
            listing = await client.get("/media/", headers=AUTH)
            assert listing.status_code == 200, listing.text
            (entry,) = listing.json()["files"]
            listed = datetime.fromisoformat(entry["updated_at"])
            assert abs(listed - written) < timedelta(milliseconds=1), "the listing reports the write's time"
    async with open_store(store_url) as store:
        meta = await store.stat("burst.bin")
    assert meta is not None and meta.updated_at == written
    assert meta.last_modified > meta.updated_at + timedelta(seconds=2), "the validator second was pushed ahead"


# -- the sans-I/O rule (servefiles.http) ---------------------------------------------------

WRITTEN = datetime(2024, 5, 6, 7, 8, 9, 250000, tzinfo=UTC)  # the true time of the write
PUSHED = datetime(2024, 5, 6, 7, 8, 14, tzinfo=UTC)  # its validator second, after a burst of writes
PUSHED_HTTP = "Mon, 06 May 2024 07:08:14 GMT"
NOW = datetime(2024, 5, 6, 7, 8, 10, 900000, tzinfo=UTC).timestamp()  # between the two
NOW_HTTP = "Mon, 06 May 2024 07:08:10 GMT"


def pushed_file(size: int = 100) -> PreparedFile:
    meta = FileMeta("a.bin", 7, "ab" * 32, size, "application/octet-stream", WRITTEN, WRITTEN, PUSHED)
    return PreparedFile(meta, HttpPolicy())


def last_modified(response: Response) -> str:
    (value,) = [value.decode("ascii") for name, value in response.headers if name == b"last-modified"]
    return value


def test_last_modified_is_the_validator_second_not_updated_at() -> None:
    file = pushed_file()
    assert file.last_modified == PUSHED
    assert last_modified(respond("GET", {}, file, PUSHED.timestamp())) == PUSHED_HTTP


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", {}, 200),
        ("HEAD", {}, 200),
        ("GET", {"range": "bytes=0-9"}, 206),
        ("GET", {"range": "bytes=0-9,20-29"}, 206),
    ],
)
def test_a_validator_second_still_ahead_of_the_clock_is_stated_as_now(
    method: str, headers: dict[str, str], status: int
) -> None:
    """RFC 9110 §8.8.2.1: a Last-Modified later than the Date is replaced by the Date."""
    response = respond(method, headers, pushed_file(), NOW)
    assert response.status == status
    assert last_modified(response) == NOW_HTTP
    assert last_modified(accel_redirect(pushed_file(), "/_servefiles_accel/x", NOW)) == NOW_HTTP


def test_once_the_clock_has_reached_it_the_precomputed_header_is_sent() -> None:
    file = pushed_file()
    for now in (PUSHED.timestamp(), PUSHED.timestamp() + 0.5, PUSHED.timestamp() + 86400):
        response = respond("GET", {}, file, now)
        assert response.headers == file.headers_200
        assert last_modified(response) == PUSHED_HTTP
    assert last_modified(respond("GET", {}, file, PUSHED.timestamp() - 0.001)) == "Mon, 06 May 2024 07:08:13 GMT"


def test_the_stated_date_sent_back_never_earns_a_304_or_a_range_of_another_version() -> None:
    """Preconditions are judged against the true validator second, not the stated one: a client
    holding the earlier date gets the whole file (it may be a newer version than it has)."""
    file = pushed_file()
    assert respond("GET", {"if-modified-since": NOW_HTTP}, file, NOW).status == 200
    assert respond("GET", {"range": "bytes=0-9", "if-range": NOW_HTTP}, file, NOW).status == 200
    assert respond("GET", {"if-modified-since": PUSHED_HTTP}, file, NOW).status == 304
    assert respond("GET", {"range": "bytes=0-9", "if-range": PUSHED_HTTP}, file, NOW).status == 206


def test_if_unmodified_since_holds_for_the_stated_date_and_fails_for_one_before_the_write() -> None:
    """A client writing back with the Last-Modified it was given (the stated, earlier date) may
    write; a date before the version was written is a 412, on GET and on PUT/DELETE alike."""
    file = pushed_file()
    before = "Mon, 06 May 2024 07:08:08 GMT"
    for date, holds in ((NOW_HTTP, True), (PUSHED_HTTP, True), ("Mon, 06 May 2024 07:08:09 GMT", True),
                        (before, False)):  # fmt: skip
        assert respond("GET", {"if-unmodified-since": date}, file, NOW).status == (200 if holds else 412), date
        assert unmodified_since({"if-unmodified-since": date}, file.meta) is holds, date


def test_the_tree_takes_a_version_once_nginx_may_state_its_second(tmp_path: Path) -> None:
    """A version written in its own second is due at once; one pushed ahead by a burst is due
    once its second is over, so nginx never sends a Last-Modified after its Date."""
    tree = PublishedTree(tmp_path, "/media")
    plain = FileMeta("a.png", 1, "ab" * 32, 3, "image/png", WRITTEN, WRITTEN)
    assert tree.is_due(plain, WRITTEN.timestamp())
    pushed = FileMeta("a.png", 2, "cd" * 32, 3, "image/png", WRITTEN, WRITTEN, PUSHED)
    assert not tree.is_due(pushed, NOW)
    assert not tree.is_due(pushed, PUSHED.timestamp() + 0.5)
    assert tree.is_due(pushed, PUSHED.timestamp() + 1)
    content = tmp_path / "content"
    content.write_bytes(b"png")
    future = FileMeta("b.png", 3, "cd" * 32, 3, "image/png", datetime.now(UTC), datetime.now(UTC),
                      datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5))  # fmt: skip
    assert not tree.publish(future, content)
    assert not tree.path("b.png").exists()
