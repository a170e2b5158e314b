"""Remembered verifications of signed URLs (issue 17's signed-hit fast path): a signature whose MAC
matched once is not parsed or HMAC'd again, yet every verdict stays what a fresh verification
would say: the expiry is judged on every request, to the second (with the documented clock skew),
``max-age`` shrinks with the clock, forgeries are never remembered, memory is bounded, and a
signing key taken out of the configuration (a restart with the new set) verifies nothing more.

The pure rules are checked on :class:`Signer` and :class:`AccessPolicy` with an explicit clock; the
behaviour a client sees over real HTTP, on both adapters and both stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servefiles import CLOCK_SKEW_SECONDS, ServeFiles, ServeFilesWSGI, Signer, open_store
from servefiles.access import AccessPolicy
from servefiles.auth import TokenRing
from servefiles.signing import VERIFIED_ENTRIES

from .asgi_servers import uvicorn_server
from .test_health import wsgiref_serving

NEW_KEY = "remembered-test-new-signing-key-0123456789-abcdefghij"
OLD_KEY = "remembered-test-old-signing-key-9876543210-ZYXWVUTSRQ"
KEY = "invoices/2026/a.pdf"
DATA = b"%PDF-1.7 remembered\n" * 200
NOW = 1_800_000_000.0
"""A fixed clock for the pure tests (2027-01-15)."""


def fresh(keys: tuple[str, ...] = (NEW_KEY,), max_expires: int = 3600) -> Signer:
    return Signer(list(keys), "/media", max_expires)


# -- the signer, with an explicit clock ---------------------------------------------------------------


def test_a_remembered_signature_still_expires_to_the_second() -> None:
    signer = fresh()
    query = signer.query(KEY, 60, NOW)
    expires = int(NOW) + 60
    assert signer.check(KEY, query, NOW) == ("valid", expires)
    assert signer.remembered == 1
    last_valid = expires + CLOCK_SKEW_SECONDS
    moments = [NOW + 1, expires, last_valid - 0.5, last_valid, last_valid + 0.001, last_valid + 1, expires + 86400]
    for moment in moments:
        assert signer.check(KEY, query, moment) == fresh().check(KEY, query, moment), moment
    assert signer.check(KEY, query, last_valid).verdict == "valid"
    assert signer.check(KEY, query, last_valid + 0.001) == ("expired", expires)
    assert signer.remembered == 1, "judging the expiry again verifies nothing again"


def test_a_remembered_signature_too_far_ahead_of_the_clock_is_refused() -> None:
    """An expiry beyond now + the maximum (+ skew) is refused however it was remembered: a URL
    remembered under one clock reading is judged again under another (a clock stepped back)."""
    signer = fresh(max_expires=3600)
    query = signer.query(KEY, 3600, NOW)
    assert signer.check(KEY, query, NOW).verdict == "valid"
    earlier = NOW - CLOCK_SKEW_SECONDS - 1
    assert signer.check(KEY, query, earlier).verdict == "invalid"
    assert fresh(max_expires=3600).check(KEY, query, earlier).verdict == "invalid"


def test_forgeries_are_never_remembered() -> None:
    signer = fresh()
    good = signer.query(KEY, 60, NOW)
    expires, signature = re.fullmatch(r"expires=(\d+)&signature=(.+)", good).groups()  # type: ignore[union-attr]
    forged = [
        good[:-1] + ("A" if good[-1] != "A" else "B"),
        f"expires={int(expires) + 1}&signature={signature}",
        fresh((OLD_KEY,)).query(KEY, 60, NOW),
    ]
    for query in forged * 2:  # twice: a refusal is not remembered as anything either
        assert signer.check(KEY, query, NOW).verdict == "invalid", query
    assert signer.check("invoices/2026/b.pdf", good, NOW).verdict == "invalid", "for one key only"
    assert signer.remembered == 0


def test_other_spellings_of_a_signature_are_verified_and_remembered_too() -> None:
    """Parameters in another order, or with unsigned extras, carry the same signature: valid, and
    remembered by (expires, signature), so extras cannot multiply the entries of one signature."""
    signer = fresh()
    good = signer.query(KEY, 60, NOW)
    expires, signature = good.split("&")
    spellings = [f"{signature}&{expires}", f"utm=1&{good}", f"utm=2&{good}", f"{good}&x=3"]
    for query in spellings * 2:
        assert signer.check(KEY, query, NOW) == ("valid", int(NOW) + 60), query
    assert signer.remembered == 1
    assert signer.check(KEY, good, NOW).verdict == "valid"
    assert signer.remembered == 2  # the plain spelling is remembered whole
    expired_at = int(NOW) + 60 + CLOCK_SKEW_SECONDS + 1
    assert all(signer.check(KEY, query, expired_at).verdict == "expired" for query in [good, *spellings])


def test_remembered_signatures_are_bounded_and_the_forgotten_still_verify() -> None:
    signer = fresh()
    queries = [signer.query(f"invoices/{n}.pdf", 60, NOW) for n in range(VERIFIED_ENTRIES + 10)]
    for n, query in enumerate(queries):
        assert signer.check(f"invoices/{n}.pdf", query, NOW).verdict == "valid"
    assert signer.remembered == VERIFIED_ENTRIES
    assert signer.check("invoices/0.pdf", queries[0], NOW).verdict == "valid", "the oldest, forgotten, verifies again"
    assert signer.remembered == VERIFIED_ENTRIES


def test_a_removed_signing_key_verifies_nothing_more() -> None:
    """Rotation: the old key verifies while configured; a signer built without it (the restart
    that removes it) refuses the URL, however often the old configuration verified it."""
    by_old_key = fresh((OLD_KEY,)).query(KEY, 600, NOW)
    rotating = fresh((NEW_KEY, OLD_KEY))
    for _ in range(3):
        assert rotating.check(KEY, by_old_key, NOW).verdict == "valid"
    assert fresh((NEW_KEY,)).check(KEY, by_old_key, NOW).verdict == "invalid"


def test_the_max_age_of_a_remembered_signature_shrinks_with_the_clock() -> None:
    """RFC 9111 §5.2.2.1: no longer than the signature's remaining life, in whole seconds never
    rounded up; and no longer than a configured max-age."""
    policy = AccessPolicy(["invoices"], fresh(), TokenRing(()), None, "no-cache", 600)
    capped = AccessPolicy(["invoices"], fresh(), TokenRing(()), None, "max-age=30", 600)
    query = fresh().query(KEY, 100, NOW)
    expires = int(NOW) + 100
    for moment, age in [(NOW, 100), (NOW + 0.5, 99), (NOW + 60, 40), (expires - 0.001, 0), (expires, 0),
                        (expires + CLOCK_SKEW_SECONDS, 0)]:  # fmt: skip
        decision = policy.check(KEY, query, None, moment)
        assert decision.kind == "granted" and decision.cache_control == b"private, no-cache, max-age=%d" % age, moment
        capped_decision = capped.check(KEY, query, None, moment)
        assert capped_decision.cache_control == b"private, max-age=%d" % min(age, 30), moment
    refused = policy.check(KEY, query, None, expires + CLOCK_SKEW_SECONDS + 0.001)
    assert (refused.kind, refused.expired) == ("refused", True)


# -- over real HTTP, both adapters, both stores ---------------------------------------------------------


@contextlib.asynccontextmanager
async def frontend(kind: str, store_url: str, cache_dir: Path, keys: list[str]) -> AsyncIterator[str]:
    """One frontend (ASGI under uvicorn, or WSGI under threaded wsgiref) with ``invoices`` private
    and these signing keys, over ``cache_dir``; yields its base URL."""
    options: dict[str, Any] = {"cache_dir": cache_dir, "private": ["invoices"], "signing_keys": keys}
    if kind == "asgi":
        app = ServeFiles(None, store_url, **options)
        async with uvicorn_server(app) as base:
            yield base
        return
    wsgi = ServeFilesWSGI(None, store_url, **options)
    try:
        with wsgiref_serving(wsgi) as base:
            yield base
    finally:
        await asyncio.to_thread(wsgi.close)


@pytest.fixture(params=["asgi", "wsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def stored(store_url: str) -> str:
    """The store, holding :data:`KEY`."""
    async with open_store(store_url) as store:
        await store.put(KEY, DATA)
    return store_url


async def test_a_remembered_signed_url_is_refused_once_it_expires(kind: str, stored: str, tmp_path: Path) -> None:
    """Served (and its verification remembered) while valid; the same URL, once its expiry and the
    clock skew have passed, is the 403 that says "expired" in its body."""
    now = time.time()
    life = 1.5  # seconds of validity left, counting the skew
    url = fresh().url(KEY, 1, now - 1 - CLOCK_SKEW_SECONDS + life)
    expires = int(re.search(r"expires=(\d+)", url).group(1))  # type: ignore[union-attr]
    async with (
        frontend(kind, stored, tmp_path / "cache", [NEW_KEY]) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        served = [await client.get(url) for _ in range(3)]
        assert time.time() <= expires + CLOCK_SKEW_SECONDS, "the machine was too slow for this test's window"
        assert [(r.status_code, r.content) for r in served] == [(200, DATA)] * 3
        assert all(r.headers["cache-control"] == "private, no-cache, max-age=0" for r in served)
        await asyncio.sleep(max(0.0, expires + CLOCK_SKEW_SECONDS - time.time()) + 0.2)
        refused = await client.get(url)
    assert refused.status_code == 403 and b"expired" in refused.content and DATA[:32] not in refused.content
    assert "etag" not in refused.headers


async def test_a_signing_key_removed_at_restart_stops_verifying(kind: str, stored: str, tmp_path: Path) -> None:
    """The same store and cache directory, restarted with the old key taken out of the rotation:
    a URL the old configuration served (and remembered) is refused, and the new key's still works."""
    by_old_key = fresh((OLD_KEY,)).url(KEY, 600, time.time())
    by_new_key = fresh((NEW_KEY,)).url(KEY, 600, time.time())
    cache = tmp_path / "cache"
    async with frontend(kind, stored, cache, [NEW_KEY, OLD_KEY]) as base, httpx.AsyncClient(base_url=base) as client:
        for _ in range(3):
            response = await client.get(by_old_key)
            assert (response.status_code, response.content) == (200, DATA)
    async with frontend(kind, stored, cache, [NEW_KEY]) as base, httpx.AsyncClient(base_url=base) as client:
        refused = await client.get(by_old_key)
        served = await client.get(by_new_key)
    assert refused.status_code == 403 and b"expired" not in refused.content and DATA[:32] not in refused.content
    assert (served.status_code, served.content) == (200, DATA)
