"""Private files (issue 17) over real HTTP, on both adapters and both stores: ``ServeFiles``
under uvicorn and ``ServeFilesWSGI`` under a threaded wsgiref server, with private folders,
two signing keys (rotation), an ``authorize`` hook and upload tokens.

Signed URLs for the "other" cases are made here with :class:`servefiles.Signer`, the
documented format; expected bytes and validators come from the data sent (hashlib).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from servefiles import CLOCK_SKEW_SECONDS, ServeFiles, ServeFilesWSGI, Signer
from servefiles.logs import JsonFormatter

from .asgi_servers import uvicorn_server
from .wsgi_servers import wsgiref_serving

SIGNING_KEY = "private-test-signing-key-0123456789-abcdefghijklmnop"
OLD_KEY = "an-older-signing-key-still-verifying-QRSTUVWXYZ-98765"
TOKEN = "private-test-token-all-0123456789"
INVOICE_TOKEN = "private-test-token-invoices-0123"
PDF = b"%PDF-1.7 " + hashlib.sha256(b"invoice").digest() * 400  # 12,809 bytes
DOC = b"member document\n" * 50
PUBLIC = b"public notes\n" * 30
CAFE = "members/docs/caf\u00e9.txt"
"""A private key with a precomposed character: its NFD spelling names the same (private) key."""
FILES = {"invoices/2026/a.pdf": PDF, "members/docs/x.txt": DOC, CAFE: DOC, "notes.txt": PUBLIC}
IGNORED = frozenset({"date", "server", "connection"})
"""Headers a server adds on its own."""


@dataclass
class Site:
    """One frontend under test: its base URL, its ``url()`` and the keys its hook was asked about."""

    base: str
    url: Callable[..., str]
    asked: list[str] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=20)


def _allowed(user: str | None, asked: list[str], key: str) -> bool:
    """The tests' hook: ``X-User: alice`` may read everything, ``boom`` breaks the hook."""
    asked.append(key)
    if user == "boom":
        raise RuntimeError("the session store is down")
    if user == "truthy":
        return "yes"  # type: ignore[return-value]  # not True: refused
    return user == "alice"


def _options(tmp_path: Path) -> dict[str, Any]:
    return {
        "cache_dir": tmp_path / "cache",
        "private": ["invoices", "members/docs/"],
        "signing_keys": [SIGNING_KEY, OLD_KEY],
        "upload_tokens": [TOKEN, f"{INVOICE_TOKEN}:invoices"],
        "metrics": True,
        "cache_min_uses": 1,
    }


@contextlib.asynccontextmanager
async def _asgi(store_url: str, tmp_path: Path) -> AsyncIterator[Site]:
    asked: list[str] = []

    async def authorize(scope: dict[str, Any], key: str) -> bool:
        await asyncio.sleep(0)
        user = dict(scope["headers"]).get(b"x-user")
        return _allowed(user.decode() if user is not None else None, asked, key)

    app = ServeFiles(None, store_url, authorize=authorize, **_options(tmp_path))
    for key, data in FILES.items():
        await app.put(key, data)
    async with uvicorn_server(app) as base:
        yield Site(base, app.url, asked)


@contextlib.asynccontextmanager
async def _wsgi(store_url: str, tmp_path: Path) -> AsyncIterator[Site]:
    asked: list[str] = []
    seen_threads: set[str] = set()

    def authorize(environ: dict[str, Any], key: str) -> bool:
        seen_threads.add(threading.current_thread().name)
        return _allowed(environ.get("HTTP_X_USER"), asked, key)

    app = ServeFilesWSGI(None, store_url, authorize=authorize, **_options(tmp_path))
    for key, data in FILES.items():
        await asyncio.to_thread(app.put, key, data)
    try:
        with wsgiref_serving(app) as base:
            yield Site(base, app.url, asked)
    finally:
        await asyncio.to_thread(app.close)
    assert "servefiles-loop" not in seen_threads, "the WSGI hook ran on the loop, not in the request's thread"


@pytest.fixture(params=["asgi", "wsgi"])
async def site(request: pytest.FixtureRequest, store_url: str, tmp_path: Path) -> AsyncIterator[Site]:
    serving = _asgi if request.param == "asgi" else _wsgi
    async with serving(store_url, tmp_path) as running:
        yield running


def own_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name not in IGNORED}


def etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def signed(key: str, expires_in: float = 600, *, keys: tuple[str, ...] = (SIGNING_KEY,), now: float | None = None,
           prefix: str = "/media", max_expires: int = 7 * 86400) -> str:  # fmt: skip
    return Signer(list(keys), prefix, max_expires).url(key, expires_in, time.time() if now is None else now)


def max_age(response: httpx.Response) -> int | None:
    match = re.search(r"max-age=(\d+)", response.headers["cache-control"])
    return int(match.group(1)) if match else None


async def lookups(client: httpx.AsyncClient) -> list[str]:
    """The metrics samples that count lookups: hits per tier, misses, store fetches, revalidations."""
    text = (await client.get("/_servefiles/metrics")).text
    names = ("servefiles_hits_total", "servefiles_misses_total", "servefiles_store_fetches_total",
             "servefiles_revalidations_total")  # fmt: skip
    samples = [line for line in text.splitlines() if line.startswith(names)]
    assert len(samples) >= 4, text
    return samples


# -- refusals -----------------------------------------------------------------------------------------------


async def test_a_refusal_is_the_same_403_whether_or_not_the_file_exists(site: Site) -> None:
    async with site.client() as client:
        present = await client.get("/media/invoices/2026/a.pdf")
        absent = await client.get("/media/invoices/2026/none.pdf")
        head = await client.head("/media/invoices/2026/a.pdf")
    assert present.status_code == absent.status_code == head.status_code == 403
    assert present.content == absent.content and b"expired" not in present.content
    assert own_headers(present) == own_headers(absent) == own_headers(head)
    for name in ("etag", "last-modified", "accept-ranges", "content-range"):
        assert name not in present.headers
    assert present.headers["cache-control"] == "no-store"
    assert PDF[:64] not in present.content


async def test_refusals_are_decided_before_any_tier_or_the_store_is_asked(site: Site) -> None:
    async with site.client() as client:
        before = await lookups(client)
        for _ in range(3):
            assert (await client.get("/media/invoices/2026/a.pdf")).status_code == 403
            assert (await client.get("/media/members/docs/missing.txt")).status_code == 403
        after = await lookups(client)
    assert after == before


async def test_public_files_are_served_as_before_and_never_ask_the_hook(site: Site) -> None:
    async with site.client() as client:
        response = await client.get("/media/notes.txt")
        assert (response.status_code, response.content) == (200, PUBLIC)
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["etag"] == etag(PUBLIC)
        assert (await client.get("/media/invoicesx/none.txt")).status_code == 404, "a prefix is a folder"
    assert site.asked == []


# -- signed URLs --------------------------------------------------------------------------------------------------


async def test_a_signed_url_serves_the_file_privately_until_it_expires(site: Site) -> None:
    url = site.url("invoices/2026/a.pdf", expires_in=120)
    assert re.fullmatch(r"/media/invoices/2026/a\.pdf\?expires=\d+&signature=[A-Za-z0-9_-]{43}", url)
    async with site.client() as client:
        response = await client.get(url)
        head = await client.head(url)
    assert (response.status_code, response.content) == (200, PDF)
    assert response.headers["etag"] == etag(PDF)
    cache_control = response.headers["cache-control"]
    assert cache_control.startswith("private") and "public" not in cache_control and "s-maxage" not in cache_control
    age = max_age(response)
    assert age is not None and 110 <= age <= 120, cache_control
    assert head.status_code == 200 and head.headers["content-length"] == str(len(PDF)) and head.content == b""


async def test_url_signs_private_keys_by_default_and_leaves_public_ones_plain(site: Site) -> None:
    assert site.url("notes.txt") == "/media/notes.txt"
    private = site.url("members/docs/x.txt")
    assert private.startswith("/media/members/docs/x.txt?expires=")
    async with site.client() as client:
        response = await client.get(private)
    assert (response.status_code, response.content) == (200, DOC)
    age = max_age(response)
    assert age is not None and 3590 <= age <= 3600  # url_expires: one hour


async def test_a_signature_holds_for_its_own_key_expiry_and_prefix_only(site: Site) -> None:
    good = signed("invoices/2026/a.pdf")
    path, _, query = good.partition("?")
    expires = re.search(r"expires=(\d+)", query)
    assert expires is not None
    other_key = signed("invoices/2026/b.pdf", now=int(expires.group(1)) - 600)  # same expiry, another key
    forged = [
        "/media/invoices/2026/b.pdf?" + query,  # another file
        path + "?" + query.replace(f"expires={expires.group(1)}", f"expires={int(expires.group(1)) + 1}"),
        path + "?" + other_key.partition("?")[2],
        path + "?" + signed("invoices/2026/a.pdf", prefix="/files").partition("?")[2],  # for another prefix
        signed("invoices/2026/a.pdf", keys=("a-key-this-server-never-heard-of-0123456789abcdef",)),
        path + "?" + query[:-1] + ("A" if query[-1] != "A" else "B"),
    ]
    async with site.client() as client:
        assert (await client.get(good)).status_code == 200
        for url in forged:
            refused = await client.get(url)
            assert refused.status_code == 403, url
            assert b"expired" not in refused.content and PDF[:64] not in refused.content
        put = await client.put(good, content=b"overwrite", headers={"authorization": "Bearer nope-nope-nope-nope"})
        assert put.status_code in (401, 403, 405)
    async with site.client() as client:
        assert (await client.get("/media/invoices/2026/a.pdf")).status_code == 403


async def test_an_expired_signature_says_expired_in_the_body_only(site: Site) -> None:
    expired = signed("invoices/2026/a.pdf", 10, now=time.time() - 60)
    within_skew = signed("invoices/2026/a.pdf", 1, now=time.time() - 1 - CLOCK_SKEW_SECONDS / 2)
    async with site.client() as client:
        refused = await client.get(expired)
        plain = await client.get("/media/invoices/2026/a.pdf")
        late = await client.get(within_skew)
    assert refused.status_code == 403 and b"expired" in refused.content
    assert own_headers(refused) == own_headers(plain), "only the body tells an expired URL"
    assert (late.status_code, late.content) == (200, PDF), "a few seconds of clock skew are allowed"
    assert max_age(late) == 0


async def test_an_expiry_beyond_the_maximum_is_refused(site: Site) -> None:
    too_far = signed("invoices/2026/a.pdf", 30 * 86400, max_expires=365 * 86400)
    async with site.client() as client:
        refused = await client.get(too_far)
    assert refused.status_code == 403 and b"expired" not in refused.content
    with pytest.raises(ValueError):
        site.url("invoices/2026/a.pdf", expires_in=30 * 86400)


async def test_every_configured_key_verifies_a_signature(site: Site) -> None:
    async with site.client() as client:
        response = await client.get(signed("members/docs/x.txt", keys=(OLD_KEY,)))
    assert (response.status_code, response.content) == (200, DOC)


async def test_ranges_and_preconditions_work_on_private_files(site: Site) -> None:
    url = site.url("invoices/2026/a.pdf", expires_in=300)
    async with site.client() as client:
        part = await client.get(url, headers={"range": "bytes=100-199"})
        assert (part.status_code, part.content) == (206, PDF[100:200])
        assert part.headers["content-range"] == f"bytes 100-199/{len(PDF)}"
        assert part.headers["cache-control"].startswith("private")
        unchanged = await client.get(url, headers={"if-none-match": etag(PDF)})
        assert unchanged.status_code == 304 and unchanged.content == b""
        assert unchanged.headers["etag"] == etag(PDF) and unchanged.headers["cache-control"].startswith("private")
        stale_range = await client.get(url, headers={"range": "bytes=0-9", "if-range": '"0000"'})
        assert (stale_range.status_code, stale_range.content) == (200, PDF)
        current_range = await client.get(url, headers={"range": "bytes=0-9", "if-range": etag(PDF)})
        assert (current_range.status_code, current_range.content) == (206, PDF[:10])
        refused_range = await client.get("/media/invoices/2026/a.pdf", headers={"range": "bytes=0-9"})
        assert refused_range.status_code == 403 and "content-range" not in refused_range.headers


# -- the hook ------------------------------------------------------------------------------------------------


async def test_the_hook_decides_for_private_keys_with_the_canonical_key(site: Site) -> None:
    nfd = quote(unicodedata.normalize("NFD", CAFE))
    assert nfd != quote(CAFE)
    async with site.client() as client:
        allowed = await client.get("/media/invoices/2026/a.pdf", headers={"x-user": "alice"})
        again = await client.get("/media/invoices/2026/a.pdf", headers={"x-user": "alice"})  # a memory hit
        refused = await client.get("/media/invoices/2026/a.pdf", headers={"x-user": "mallory"})
        truthy = await client.get("/media/invoices/2026/a.pdf", headers={"x-user": "truthy"})
        absent = await client.get("/media/invoices/none.pdf", headers={"x-user": "alice"})
        other = await client.get("/media/" + nfd, headers={"x-user": "alice"})
        other_refused = await client.get("/media/" + nfd)
    assert (allowed.status_code, allowed.content) == (200, PDF)
    assert allowed.headers["cache-control"] == "private, no-cache"
    assert (again.status_code, again.content) == (200, PDF)
    assert refused.status_code == truthy.status_code == 403, "only True itself lets a request through"
    assert absent.status_code == 404, "allowed, then the file service's 404"
    assert (other.status_code, other.content) == (200, DOC) and other_refused.status_code == 403
    assert site.asked == ["invoices/2026/a.pdf"] * 4 + ["invoices/none.pdf", CAFE, CAFE]


async def test_a_hook_that_raises_is_a_500_for_that_request_only(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="servefiles")
    async with site.client() as client:
        broken = await client.get("/media/invoices/2026/a.pdf", headers={"x-user": "boom"})
        after = await client.get("/media/invoices/2026/a.pdf", headers={"x-user": "alice"})
        public = await client.get("/media/notes.txt", headers={"x-user": "boom"})
    assert broken.status_code == 500 and PDF[:64] not in broken.content and "etag" not in broken.headers
    assert (after.status_code, after.content) == (200, PDF)
    assert public.status_code == 200, "the hook runs for private keys only"
    [failed] = [record for record in caplog.records if "authorize hook failed" in record.getMessage()]
    logged = json.loads(JsonFormatter().format(failed))  # as `servefiles serve --log-format json` shows it
    assert logged["key"] == "invoices/2026/a.pdf" and logged["level"] == "ERROR" and "Traceback" in logged["exception"]


# -- upload tokens -----------------------------------------------------------------------------------------------


async def test_an_upload_token_reads_the_private_files_of_its_folder(site: Site) -> None:
    async with site.client() as client:

        async def read(key: str, token: str) -> int:
            return (await client.get(f"/media/{key}", headers={"authorization": f"Bearer {token}"})).status_code

        assert await read("invoices/2026/a.pdf", INVOICE_TOKEN) == 200
        assert await read("members/docs/x.txt", INVOICE_TOKEN) == 403, "the token's folder only"
        assert await read("members/docs/x.txt", TOKEN) == 200
        assert await read("invoices/2026/a.pdf", "not-a-configured-token-000000") == 403


# -- the pieces alone ------------------------------------------------------------------------------------------


def test_signing_keys_must_be_long_and_random() -> None:
    for weak in ("short", "a" * 64, "0123456789" * 5, b"\x00" * 32, b"31-bytes-are-one-too-few-ABCDEF"):
        with pytest.raises(ValueError) as raised:
            Signer([weak], "/media", 3600)
        assert str(weak) not in str(raised.value)
    with pytest.raises(ValueError):
        Signer([], "/media", 3600)
    assert "keys=1" in repr(Signer([SIGNING_KEY], "/media", 3600)) and SIGNING_KEY not in repr(
        Signer([SIGNING_KEY], "/media", 3600)
    )


def test_the_options_are_checked_when_the_middleware_is_built(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    with pytest.raises(ValueError, match="private"):
        ServeFiles(None, db, cache_dir=tmp_path, authorize=lambda request, key: True)
    with pytest.raises(TypeError):
        ServeFiles(None, db, cache_dir=tmp_path, private="invoices")  # a str is an Iterable[str]: refused all the same
    with pytest.raises(ValueError):
        ServeFiles(None, db, cache_dir=tmp_path, private=["a/../b"])
    with pytest.raises(ValueError) as raised:
        ServeFiles(None, db, cache_dir=tmp_path, private=["a"], signing_keys=["tooshort-secret"])
    assert "tooshort" not in str(raised.value)
    plain = ServeFiles(None, db, cache_dir=tmp_path, private=["a"])
    assert plain.url("a/b.txt") == "/media/a/b.txt", "no signing key: the hook or a token decides"
    with pytest.raises(ValueError, match="signing key"):
        plain.url("a/b.txt", expires_in=60)
    short = ServeFiles(None, db, cache_dir=tmp_path, private=["a"], signing_keys=[SIGNING_KEY], max_url_expires=600)
    expires = re.search(r"expires=(\d+)", short.url("a/b.txt"))
    assert expires is not None and abs(int(expires.group(1)) - (time.time() + 600)) < 5, "the default follows the max"
