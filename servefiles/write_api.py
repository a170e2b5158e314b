"""The HTTP write API on the serving prefix: PUT and DELETE ``{prefix}/{key}``, and a
JSON listing at ``GET {prefix}/``, for token holders.

Admin tools and apps in other languages upload without Python. The order of
checks is fixed, so nothing is read, parsed or written for a request that must
fail: token (401/403), key (400), the refusals that need no body (400/413/415),
the precondition against the live file (412), and only then the body, which
streams to the store in chunks with its size counted as it arrives. Every
refusal is raised as an error type and turned into its reply in one place,
:func:`servefiles.http.replies.for_error`; every decision about status and
headers is :mod:`servefiles.http`'s. This module only sequences them with the
store, for both adapters.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from urllib.parse import parse_qs, quote

from .api import FilesApi
from .auth import TokenRing, UploadToken
from .content_types import check_content_type
from .errors import (
    InvalidKey,
    InvalidRequest,
    InvalidToken,
    NotFound,
    OutOfScope,
    PreconditionFailed,
    ServeFilesError,
    StoreUnavailable,
    Unauthorized,
    UnsupportedUpload,
    UploadAborted,
    UploadTooLarge,
)
from .http.replies import deleted, file_json, for_error, json_response, written
from .http.write import check_upload, unmodified_since, write_precondition
from .keys import canonical_key
from .service import Reply
from .store.base import MAX_LIST_LIMIT, WritePrecondition
from .store.types import FileMeta

logger = logging.getLogger("servefiles")

DEFAULT_LIST_LIMIT = 100
WRITE_METHODS = frozenset({"PUT", "DELETE"})
REQUEST_HEADERS = frozenset(
    (
        b"authorization",
        b"content-type",
        b"content-length",
        b"content-range",
        b"content-encoding",
        b"if-match",
        b"if-none-match",
        b"if-unmodified-since",
    )
)
"""The request headers a write decision reads."""


class WriteApi:
    """Answers write and listing requests under one prefix, for the tokens in ``tokens``."""

    def __init__(self, service: FilesApi, tokens: TokenRing, max_upload_bytes: int, prefix: str) -> None:
        if max_upload_bytes < 0:
            raise ValueError("max_upload_bytes cannot be negative")
        self.service = service
        self.tokens = tokens
        self.max_upload_bytes = max_upload_bytes
        self.prefix = prefix.rstrip("/")

    def handles(self, method: str, raw_key: str) -> bool:
        """Whether a request is this API's: writes, and ``GET {prefix}/`` (the listing, and
        its HEAD) once tokens exist."""
        return bool(self.tokens) and (method in WRITE_METHODS or (method in ("GET", "HEAD") and raw_key == ""))

    async def handle(
        self,
        method: str,
        raw_key: str,
        query: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes],
        root: str = "",
    ) -> Reply:
        """The reply to a request :meth:`handles`; ``body`` is read only by a PUT that passed every check.

        ``root`` is where the app is mounted (WSGI's SCRIPT_NAME): the URLs in the reply start with it.
        """
        try:
            return await self._answer(method, raw_key, query, headers, body, root)
        except ServeFilesError as exc:
            if isinstance(exc, StoreUnavailable):
                logger.warning("store unavailable: %s", exc)
            elif isinstance(exc, Unauthorized | OutOfScope):
                self.service.runtime.metrics.rejected["auth"].inc()
            elif isinstance(exc, InvalidKey):
                self.service.runtime.metrics.rejected["bad_key"].inc()
            return Reply(for_error(exc, "write"))

    async def _answer(
        self, method: str, raw_key: str, query: str, headers: Mapping[str, str], body: AsyncIterator[bytes], root: str
    ) -> Reply:
        """:meth:`handle`'s checks in their fixed order; every refusal is raised."""
        token = self.tokens.authenticate(headers.get("authorization"))
        if token == "missing":
            raise Unauthorized()
        if token == "invalid":
            raise InvalidToken()
        if method in ("GET", "HEAD"):  # the adapters drop a HEAD's body
            return await self._list(token, query, root)
        key = canonical_key(raw_key)
        if not token.allows(key):
            raise OutOfScope(token.prefix)
        if method == "PUT":
            return await self._put(key, headers, body, root)
        return await self._delete(key, headers)

    def url(self, key: str, root: str = "") -> str:
        """The path a key is served at: ``{root}{prefix}/{key}``, percent-encoded (a prefix
        may be non-ASCII too: header values must not be)."""
        return f"{quote(root + self.prefix, safe='/')}/{quote(key, safe='/')}"

    async def _conditions(
        self, key: str, headers: Mapping[str, str]
    ) -> tuple[FileMeta | None, WritePrecondition | None, bool]:
        """The live file, the test the store repeats atomically at commit, and whether the
        conditions hold now (RFC 9110 §13.2.2). No query for an unconditional write.

        If-Unmodified-Since is a date, which the store's test (a content hash) cannot
        repeat: when it holds now, the write is pinned to the version it was checked
        against, so a change in between still ends in 412.
        """
        precondition = write_precondition(headers)
        dated = "if-unmodified-since" in headers and "if-match" not in headers
        if precondition is None and not dated:
            return None, None, True
        live = await self.service.stat(key)
        live_sha256 = live.sha256 if live else None
        holds = (precondition is None or precondition(live_sha256)) and unmodified_since(headers, live)
        if not dated:
            return live, precondition, holds

        def pinned(sha256: str | None) -> bool:
            return sha256 == live_sha256 and (precondition is None or precondition(sha256))

        return live, pinned, holds

    async def _put(self, key: str, headers: Mapping[str, str], body: AsyncIterator[bytes], root: str) -> Reply:
        check_upload(headers, self.max_upload_bytes)
        declared_type = headers.get("content-type")
        essence = (declared_type or "").partition(";")[0].strip().lower()
        if essence == "multipart/form-data":
            raise UnsupportedUpload("form_upload", "send the file's bytes as the PUT body, not a form")
        if essence == "application/x-www-form-urlencoded":
            declared_type = None  # what `curl --data-binary` sends when told nothing: not the file's type
        content_type = check_content_type(declared_type) if declared_type else None
        _, precondition, holds = await self._conditions(key, headers)
        if not holds:
            raise PreconditionFailed(key)  # before reading a byte; the store checks again, atomically, at commit
        seen: list[str | None] = []

        def expect(live_sha256: str | None) -> bool:
            seen.append(live_sha256)
            return precondition is None or precondition(live_sha256)

        try:
            meta = await self.service.put(key, _limited(body, self.max_upload_bytes), content_type, expect=expect)
        except UploadAborted as exc:
            logger.info("upload of %s abandoned: %s", key, exc, extra={"key": key})
            raise
        return Reply(written(meta, created=seen[-1] is None, url=self.url(meta.key, root)))

    async def _delete(self, key: str, headers: Mapping[str, str]) -> Reply:
        live, precondition, holds = await self._conditions(key, headers)
        if precondition is not None and live is None:
            raise NotFound(key)  # a 404 whatever the conditions say (RFC 9110 §13.2.1)
        if not holds:
            raise PreconditionFailed(key)
        if await self.service.delete(key, expect=precondition) is None:
            raise NotFound(key)
        return Reply(deleted())

    async def _list(self, token: UploadToken, query: str, root: str) -> Reply:
        """``GET {prefix}/?prefix=blog/&after=blog/b.jpg&limit=100``: one page in key order,
        with ``next`` (and a ``Link: rel="next"``) when there may be more."""
        params = parse_qs(query, keep_blank_values=True)
        prefix = _single(params, "prefix") or ""
        after = _single(params, "after")
        limit_text = _single(params, "limit")
        if not prefix.startswith(token.prefix):
            if not token.prefix.startswith(prefix):
                raise OutOfScope(token.prefix)
            prefix = token.prefix  # a token sees only its own folder
        plain = not limit_text or (limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 6)
        limit = int(limit_text) if limit_text and plain else DEFAULT_LIST_LIMIT
        if not plain or not 1 <= limit <= MAX_LIST_LIMIT:  # int() would take "5_0" and non-ASCII digits
            raise InvalidRequest("invalid_limit", f"limit must be a number from 1 to {MAX_LIST_LIMIT}")
        try:
            page = await self.service.list(prefix, limit, after)
        except InvalidKey as exc:  # the key gate's refusal, about the prefix, not a key
            raise InvalidRequest("invalid_prefix", str(exc)) from exc
        next_after = page[-1].key if len(page) == limit else None
        listing = {"files": [file_json(meta, self.url(meta.key, root)) for meta in page], "next": next_after}
        link = []
        if next_after is not None:
            next_query = f"prefix={quote(prefix, safe='')}&after={quote(next_after, safe='')}&limit={limit}"
            target = f"{self.url('', root)}?{next_query}"
            link.append((b"link", f'<{target}>; rel="next"'.encode("ascii")))
        return Reply(json_response(200, listing, link))


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


async def _limited(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass ``body`` through, and raise :class:`UploadTooLarge` the moment it passes ``limit``
    (a chunked body announces no length), so the store aborts and keeps nothing."""
    received = 0
    async for piece in body:
        received += len(piece)
        if received > limit:
            raise UploadTooLarge(limit)
        yield piece
