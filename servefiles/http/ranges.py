"""Range requests (RFC 9110 §14): parsing a Range header against a file's length, and
naming a range in Content-Range."""

from __future__ import annotations

import re
from typing import Literal

from .model import HUGE, MAX_DIGITS, OWS, ByteRange

__all__ = ["content_range", "parse_range"]


def parse_range(value: str, size: int, max_ranges: int) -> list[ByteRange] | Literal["unsatisfiable"] | None:
    """Parse a Range header (RFC 9110 §14.1.2) against a file of ``size`` bytes.

    Returns None when the header must be ignored (a 200 follows): unknown unit,
    any malformed range-spec, or more than ``max_ranges`` list elements (§14.2
    lets a server ignore Range; ignoring is never wrong); also when ``size`` is 0
    and a suffix-range with a non-zero length makes the set satisfiable (§14.1.1:
    the only satisfiable form on an empty representation) although it selects no
    byte that a Content-Range could name (the 200 with an empty body that Go's
    ServeContent and Werkzeug send). Returns
    ``"unsatisfiable"`` when no range-spec is satisfiable (§14.1.1; 416).
    Otherwise the satisfiable ranges, sorted, with overlapping and adjacent
    ones coalesced (§14.2 allows coalescing). Cost is linear in the header:
    the element count is checked (one C-level scan) before any per-range work,
    and digit strings longer than 19 are never converted to int.
    """
    unit, equals, range_set = value.strip(OWS).partition("=")
    if not equals or not unit.isascii() or unit.lower() != "bytes":
        return None
    # Empty list elements (§5.6.1.2) count toward the limit: a header padded
    # with commas is as suspicious as one with many ranges.
    if range_set.count(",") >= max_ranges:
        return None
    satisfiable: list[ByteRange] = []
    any_spec = False
    empty_suffix = False  # a satisfiable suffix-range of an empty file: it selects no byte
    for element in range_set.split(","):
        element = element.strip(OWS)
        if not element:
            continue
        match = _RANGE_SPEC.fullmatch(element)
        if match is None:
            return None
        any_spec = True
        first_digits, last_digits, suffix_digits = match.groups()
        if suffix_digits is not None:
            # suffix-range: the last N bytes; N = 0 is unsatisfiable (§14.1.1). On an
            # empty file N > 0 is satisfiable yet selects nothing: noted, not a range.
            length = _bounded_int(suffix_digits)
            if length > 0 and size > 0:
                satisfiable.append(ByteRange(max(0, size - length), size))
            elif length > 0:
                empty_suffix = True
            continue
        if last_digits and _numeric_key(last_digits) < _numeric_key(first_digits):
            return None  # §14.1.1: an int-range with last-pos < first-pos is invalid
        first = _bounded_int(first_digits)
        if first < size:
            # An int-range is satisfiable when it starts inside the file; its end is clamped.
            end = size if not last_digits else min(_bounded_int(last_digits) + 1, size)
            satisfiable.append(ByteRange(first, end))
    if not any_spec:
        return None  # 1#range-spec: at least one element
    if not satisfiable:
        # An empty file: "bytes=-1" is satisfiable but no Content-Range can describe it,
        # so Range is ignored (200, empty body); "bytes=0-" stays 416 "bytes */0".
        return None if empty_suffix else "unsatisfiable"
    return _coalesce(satisfiable)


def content_range(byte_range: ByteRange, size: int) -> bytes:
    """``bytes first-last/complete-length`` (RFC 9110 §14.4), last inclusive."""
    return b"bytes %d-%d/%d" % (byte_range.start, byte_range.end - 1, size)


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """Sort and merge overlapping or adjacent ranges: no byte is sent twice."""
    ranges.sort(key=lambda r: r.start)
    merged = [ranges[0]]
    for byte_range in ranges[1:]:
        previous = merged[-1]
        if byte_range.start <= previous.end:
            if byte_range.end > previous.end:
                merged[-1] = ByteRange(previous.start, byte_range.end)
        else:
            merged.append(byte_range)
    return merged


# int-range "a-" / "a-b", or suffix-range "-n" (RFC 9110 §14.1.2). [0-9], never
# \d: Python's \d and int() accept other Unicode digits (and int() underscores).
_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")


def _numeric_key(digits: str) -> tuple[int, str]:
    """Orders digit strings by value without converting them (they may be huge)."""
    stripped = digits.lstrip("0")
    return len(stripped), stripped


def _bounded_int(digits: str) -> int:
    """``int(digits)``, or :data:`HUGE` when it is too long to matter or to parse cheaply."""
    stripped = digits.lstrip("0")
    if len(stripped) > MAX_DIGITS:
        return HUGE
    return int(stripped) if stripped else 0
