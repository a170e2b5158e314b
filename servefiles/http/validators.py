"""Validators and the conditions that test them (RFC 9110 §8.8, §13.1): entity tags, and
the If-Match, If-None-Match, If-Unmodified-Since and If-Range comparisons that reads and
writes both make."""

from __future__ import annotations

import re
from datetime import datetime

from ..store.types import FileMeta
from .dates import parse_http_date, whole_seconds
from .model import OWS

__all__ = [
    "entity_tags",
    "if_match_holds",
    "if_none_match_matches",
    "if_range_holds",
    "strong_etag",
    "unmodified_at",
]

# entity-tag = [ W/ ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
# (RFC 9110 §8.8.3). A comma is a valid etagc, so lists are scanned, not split.
_ENTITY_TAG = re.compile(r'(W/)?"[\x21\x23-\x7e\x80-\xff]*"')


def strong_etag(sha256: str) -> bytes:
    """The strong ETag of a content hash: the same on every frontend (RFC 9110 §8.8.3)."""
    return b'"' + sha256.encode("ascii") + b'"'


def entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """Parse ``#entity-tag`` into (weak, opaque-tag) pairs; None if malformed.

    Empty list elements are skipped (RFC 9110 §5.6.1.2). Linear time.
    """
    tags: list[tuple[bool, str]] = []
    position, length = 0, len(value)
    while True:
        while position < length and value[position] in OWS:
            position += 1
        if position == length:
            return tags
        if value[position] == ",":
            position += 1
            continue
        match = _ENTITY_TAG.match(value, position)
        if match is None:
            return None
        weak = match.group(1) is not None
        tags.append((weak, match.group(0)[2:] if weak else match.group(0)))
        position = match.end()
        while position < length and value[position] in OWS:
            position += 1
        if position < length:
            if value[position] != ",":
                return None
            position += 1


def if_match_holds(value: str, etag: bytes) -> bool:
    """If-Match (RFC 9110 §13.1.1): "*" or any tag equal by strong comparison.

    A malformed field cannot vouch for the current representation: false.
    """
    if value.strip(OWS) == "*":
        return True  # the file exists
    tags = entity_tags(value)
    if tags is None:
        return False
    current = etag.decode("ascii")
    return any(not weak and tag == current for weak, tag in tags)


def if_none_match_matches(value: str, etag: bytes) -> bool:
    """If-None-Match (RFC 9110 §13.1.2): "*" or any tag equal by weak comparison.

    A malformed field matches nothing: the full response is the safe answer.
    """
    if value.strip(OWS) == "*":
        return True
    tags = entity_tags(value)
    if tags is None:
        return False
    current = etag.decode("ascii")
    return any(tag == current for _weak, tag in tags)


def if_range_holds(value: str | None, etag: bytes, last_modified: datetime) -> bool:
    """If-Range (RFC 9110 §13.1.5): true when absent, else an exact validator match.

    An entity-tag matches only by strong comparison (a weak tag never does);
    an HTTP-date only when exactly equal to ``last_modified``; anything else is false.
    """
    if value is None:
        return True
    value = value.strip(OWS)
    if value[:1] == '"' or value[:3] == 'W/"':
        match = _ENTITY_TAG.fullmatch(value)
        return match is not None and match.group(1) is None and value == etag.decode("ascii")
    date = parse_http_date(value, last_modified.year)
    return date is not None and date == last_modified


def unmodified_at(meta: FileMeta, date: datetime) -> bool:
    """Whether ``meta``'s version was already there at ``date`` (whole seconds): If-Unmodified-Since.

    Judged by the write's true second, not the validator second a burst of writes pushes
    ahead: a client sends back the Last-Modified it was given, which states the response's
    time while the validator second is still ahead (:func:`servefiles.http.read.respond`);
    every such date is at or after the write's second, and no date stated for an older
    version is later than it. A date in that very second is ambiguous, as with every date
    validator (RFC 9110 §8.8.2.2); If-Match has no such blind spot. If-Modified-Since and
    If-Range keep to the validator second, so that ambiguity can only cost a full
    response, never a stale 304 or splice.
    """
    return min(whole_seconds(meta.updated_at), whole_seconds(meta.last_modified)) <= date
