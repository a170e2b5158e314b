"""Property tests of ``servefiles.http`` against tiny reference models.

Each model restates a rule of RFC 9110 in the plainest Python available (sets
of byte offsets, string methods, the §13.2.2 steps as an if-chain over
structured inputs) so that it is obviously right; hypothesis then looks for a
header on which the real, optimised code disagrees with it.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Literal

from hypothesis import event, given, settings
from hypothesis import strategies as st

from servefiles.http import HttpPolicy, PreparedFile, Response, evaluate_preconditions, parse_range, respond
from servefiles.store.types import FileMeta

OWS = " \t"
GARBAGE = "garbage"


def make_file(
    *,
    size: int,
    sha256: str,
    updated_at: datetime,
    content_type: str = "application/octet-stream",
    max_ranges: int = 16,
) -> PreparedFile:
    meta = FileMeta(
        key="dir/file.bin",
        version=1,
        sha256=sha256,
        size=size,
        content_type=content_type,
        created_at=updated_at,
        updated_at=updated_at,
    )
    return PreparedFile(meta, HttpPolicy(max_ranges=max_ranges))


def header(response: Response, name: str) -> str | None:
    for key, value in response.headers:
        if key == name.encode("ascii"):
            return value.decode("latin-1")
    return None


# -- (a) parse_range against a set-of-bytes model -----------------------------------------


def range_model(value: str, size: int, max_ranges: int) -> set[int] | Literal["unsatisfiable"] | None:
    """RFC 9110 §14.1: the set of byte offsets a Range header selects, the plain way.

    None: ignore the header (unknown unit, malformed, too many list elements).
    """
    unit, equals, rest = value.strip(OWS).partition("=")
    if equals != "=" or unit.lower() != "bytes" or not unit.isascii():
        return None
    elements = rest.split(",")
    if len(elements) > max_ranges:
        return None
    covered: set[int] = set()
    seen_any = satisfiable = False
    for element in elements:
        element = element.strip(OWS)
        if element == "":
            continue
        seen_any = True
        first, dash, last = element.partition("-")
        if dash != "-" or not all(char in "0123456789" for char in first + last) or (first == last == ""):
            return None
        if first == "":
            length = int(last)
            satisfiable |= length > 0  # §14.1.1, even on an empty file
            covered |= set(range(max(0, size - length), size))
        else:
            start = int(first)
            if last != "" and int(last) < start:
                return None
            satisfiable |= start < size
            stop = size if last == "" else min(int(last) + 1, size)
            covered |= set(range(start, stop))
    if not seen_any:
        return None
    if not satisfiable:
        return "unsatisfiable"
    # Satisfiable but selecting no byte (a suffix-range of an empty file): no Content-Range
    # can describe it, so the header is ignored.
    return covered if covered else None


numbers = st.one_of(
    st.integers(0, 130).map(str),
    st.integers(0, 130).map(lambda n: "00" + str(n)),
    st.integers(19, 45).map(lambda n: "9" * n),
    st.sampled_from(["9999999999999999999", "10000000000000000000", "18446744073709551616"]),
)
valid_specs = st.one_of(
    st.tuples(numbers, numbers).map(lambda t: f"{t[0]}-{t[1]}"),
    numbers.map(lambda n: f"{n}-"),
    numbers.map(lambda n: f"-{n}"),
)
invalid_specs = st.sampled_from(
    ["-", "a-b", "1-2-3", "+1-2", "1_0-20", "\u0661-\u0662", "\uff10-\uff19", "0x1-2", "1 -2", "--1", "1.0-2", "*", "5"]
)
elements = st.one_of(valid_specs, valid_specs, valid_specs, invalid_specs, st.just(""))
ows = st.sampled_from(["", "", " ", "\t", "  "])


@st.composite
def range_headers(draw: st.DrawFn, specs: st.SearchStrategy[str] = elements) -> str:
    unit = draw(st.sampled_from(["bytes", "bytes", "BYTES", "Bytes", "items", "byte", "", "bytes "]))
    separator = draw(st.sampled_from(["=", "=", "=", "", "= "]))
    parts = draw(st.lists(st.tuples(ows, specs, ows), min_size=0, max_size=20))
    return unit + separator + ",".join(before + spec + after for before, spec, after in parts)


def check_range_against_model(value: str, size: int, max_ranges: int) -> None:
    expected = range_model(value, size, max_ranges)
    actual = parse_range(value, size, max_ranges)
    if expected is None or expected == "unsatisfiable":
        assert actual == expected
        return
    assert isinstance(actual, list)
    covered = {offset for byte_range in actual for offset in range(byte_range.start, byte_range.end)}
    assert covered == expected
    # Canonical: sorted, non-empty, inside the file, neither overlapping nor adjacent.
    for byte_range in actual:
        assert 0 <= byte_range.start < byte_range.end <= size
    for previous, following in itertools.pairwise(actual):
        assert previous.end < following.start


@settings(max_examples=1000)
@given(value=range_headers(), size=st.integers(0, 140), max_ranges=st.integers(1, 20))
def test_parse_range_matches_the_set_of_bytes_model(value: str, size: int, max_ranges: int) -> None:
    check_range_against_model(value, size, max_ranges)


@settings(max_examples=500)
@given(
    value=st.text(alphabet="bytesBYTES=0123456789-, \t\u0663_+x", max_size=40),
    size=st.integers(0, 60),
    max_ranges=st.integers(1, 8),
)
def test_parse_range_matches_the_model_on_arbitrary_text(value: str, size: int, max_ranges: int) -> None:
    check_range_against_model(value, size, max_ranges)


# -- (b) preconditions against the §13.2.2 order ------------------------------------------

SHA = hashlib.sha256(b"current").hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()

Tag = tuple[bool, str]  # (weak, opaque value without quotes)
TagsInput = Literal["*", "garbage"] | list[Tag] | None
DateInput = Literal["garbage"] | tuple[int, str] | None  # (offset seconds from Last-Modified, format)

tags = st.tuples(st.booleans(), st.sampled_from([SHA, OTHER, "a,b", "", SHA[:10]]))
tag_inputs: st.SearchStrategy[TagsInput] = st.one_of(
    st.none(), st.just("*"), st.just(GARBAGE), st.lists(tags, min_size=0, max_size=4)
)
date_inputs: st.SearchStrategy[DateInput] = st.one_of(
    st.none(), st.just(GARBAGE), st.tuples(st.integers(-3, 3), st.sampled_from(["imf", "rfc850", "asctime"]))
)
updated_ats = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC))


def render_tags(value: TagsInput, separator: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return separator.join(("W/" if weak else "") + f'"{opaque}"' for weak, opaque in value)


def render_date(value: DateInput, last_modified: datetime) -> str | None:
    if value is None or isinstance(value, str):
        return value
    offset, form = value
    moment = last_modified + timedelta(seconds=offset)
    if form == "imf":
        return format_datetime(moment, usegmt=True)
    if form == "rfc850":
        return moment.strftime("%A, %d-%b-") + f"{moment.year % 100:02d}" + moment.strftime(" %H:%M:%S GMT")
    return moment.strftime("%a %b ") + f"{moment.day:2d}" + moment.strftime(" %H:%M:%S %Y")


def preconditions_model(
    method: str,
    if_match: TagsInput,
    if_unmodified_since: DateInput,
    if_none_match: TagsInput,
    if_modified_since: DateInput,
) -> int | None:
    """RFC 9110 §13.2.2, steps 1-4, over structured inputs (dates as offsets from Last-Modified)."""
    if if_match is not None:
        holds = if_match == "*" or (
            isinstance(if_match, list) and any(not weak and opaque == SHA for weak, opaque in if_match)
        )
        if not holds:
            return 412
    elif isinstance(if_unmodified_since, tuple) and if_unmodified_since[0] < 0:
        return 412  # modified after the given date
    if if_none_match is not None:
        matches = if_none_match == "*" or (
            isinstance(if_none_match, list) and any(opaque == SHA for _weak, opaque in if_none_match)
        )
        if matches:
            return 304 if method in ("GET", "HEAD") else 412
    elif method in ("GET", "HEAD") and isinstance(if_modified_since, tuple) and if_modified_since[0] >= 0:
        return 304  # not modified since the given date
    return None


@settings(max_examples=1000)
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]),
    if_match=tag_inputs,
    if_unmodified_since=date_inputs,
    if_none_match=tag_inputs,
    if_modified_since=date_inputs,
    separator=st.sampled_from([",", ", ", " ,\t", " , , "]),
    updated_at=updated_ats,
)
def test_evaluate_preconditions_matches_the_rfc_9110_order(
    method: str,
    if_match: TagsInput,
    if_unmodified_since: DateInput,
    if_none_match: TagsInput,
    if_modified_since: DateInput,
    separator: str,
    updated_at: datetime,
) -> None:
    file = make_file(size=10, sha256=SHA, updated_at=updated_at)
    last_modified = updated_at.replace(microsecond=0)
    rendered = {
        "if-match": render_tags(if_match, separator),
        "if-unmodified-since": render_date(if_unmodified_since, last_modified),
        "if-none-match": render_tags(if_none_match, separator),
        "if-modified-since": render_date(if_modified_since, last_modified),
    }
    headers = {name: value for name, value in rendered.items() if value is not None}
    expected = preconditions_model(method, if_match, if_unmodified_since, if_none_match, if_modified_since)
    assert evaluate_preconditions(method, headers, file) == expected


IfRangeInput = tuple[Literal["tag"], Tag] | tuple[Literal["date"], int, str] | Literal["garbage"] | None

if_range_inputs: st.SearchStrategy[IfRangeInput] = st.one_of(
    st.none(),
    st.just(GARBAGE),
    st.tuples(st.just("tag"), tags),
    st.tuples(st.just("date"), st.integers(-2, 2), st.sampled_from(["imf", "rfc850", "asctime"])),
)


@settings(max_examples=500)
@given(
    method=st.sampled_from(["GET", "HEAD"]),
    if_none_match=tag_inputs,
    if_modified_since=date_inputs,
    if_range=if_range_inputs,
    with_range=st.booleans(),
    updated_at=updated_ats,
)
def test_respond_status_follows_preconditions_then_if_range(
    method: str,
    if_none_match: TagsInput,
    if_modified_since: DateInput,
    if_range: IfRangeInput,
    with_range: bool,
    updated_at: datetime,
) -> None:
    """Step 5 of §13.2.2: If-Range (strong tag or exact date) decides 206 vs 200, for GET with Range only."""
    file = make_file(size=10, sha256=SHA, updated_at=updated_at)
    last_modified = updated_at.replace(microsecond=0)
    headers: dict[str, str] = {}
    if (rendered := render_tags(if_none_match, ", ")) is not None:
        headers["if-none-match"] = rendered
    if (rendered := render_date(if_modified_since, last_modified)) is not None:
        headers["if-modified-since"] = rendered
    if with_range:
        headers["range"] = "bytes=0-4"
    if if_range == GARBAGE:
        headers["if-range"] = GARBAGE
    elif isinstance(if_range, tuple) and if_range[0] == "tag":
        weak, opaque = if_range[1]
        headers["if-range"] = ("W/" if weak else "") + f'"{opaque}"'
    elif isinstance(if_range, tuple) and if_range[0] == "date":
        headers["if-range"] = render_date((if_range[1], if_range[2]), last_modified) or ""

    expected = preconditions_model(method, None, None, if_none_match, if_modified_since)
    if expected is None:
        if_range_holds = (
            if_range is None
            or (isinstance(if_range, tuple) and if_range[0] == "tag" and if_range[1] == (False, SHA))
            or (isinstance(if_range, tuple) and if_range[0] == "date" and if_range[1] == 0)
        )
        expected = 206 if method == "GET" and with_range and if_range_holds else 200
    assert respond(method, headers, file).status == expected


# -- (c) every body reassembles into exactly the bytes its headers promise ------------------

CONTENT_RANGE = re.compile(rb"bytes ([0-9]+)-([0-9]+)/([0-9]+)")


def materialise(response: Response, data: bytes) -> bytes:
    return b"".join(s if isinstance(s, bytes) else data[s.start : s.end] for s in response.body)


def parse_multipart(body: bytes, boundary: bytes) -> list[tuple[bytes, int, int, int, bytes]]:
    """Split multipart/byteranges (RFC 9110 §14.6) into (type, first, last, size, data), strictly."""
    parts = []
    position = 0
    delimiter = b"--" + boundary + b"\r\n"
    while body.startswith(delimiter, position):
        position += len(delimiter)
        head_end = body.index(b"\r\n\r\n", position)
        fields = dict(line.split(b": ", 1) for line in body[position:head_end].split(b"\r\n"))
        assert set(fields) == {b"Content-Type", b"Content-Range"}
        match = CONTENT_RANGE.fullmatch(fields[b"Content-Range"])
        assert match is not None
        first, last, size = (int(group) for group in match.groups())
        position = head_end + 4
        data = body[position : position + last - first + 1]
        position += last - first + 1
        assert body.startswith(b"\r\n", position)
        position += 2
        parts.append((fields[b"Content-Type"], first, last, size, data))
    assert body[position:] == b"--" + boundary + b"--\r\n"
    return parts


@st.composite
def files_and_ranges(draw: st.DrawFn) -> tuple[bytes, str]:
    """A random file and a Range header whose specs mostly fall inside it (so multipart is common)."""
    size = draw(st.integers(0, 300))
    data = draw(st.binary(min_size=size, max_size=size))
    position = st.integers(0, size + 5)
    short = st.tuples(position, st.integers(0, 12)).map(lambda t: f"{t[0]}-{t[0] + t[1]}")
    spec = st.one_of(
        short,
        short,
        short,
        st.tuples(position, position).map(lambda t: f"{min(t)}-{max(t)}"),
        position.map(lambda n: f"{n}-"),
        st.integers(0, 8).map(lambda n: f"-{n}"),
    )
    parts = draw(st.lists(st.tuples(ows, spec, ows), min_size=2, max_size=8))
    return data, "bytes=" + ",".join(before + spec + after for before, spec, after in parts)


@settings(max_examples=1000)
@given(
    case=st.one_of(
        files_and_ranges(), files_and_ranges(), files_and_ranges(), st.tuples(st.binary(max_size=50), range_headers())
    ),
    content_type=st.sampled_from(["application/octet-stream", "text/plain", "image/svg+xml"]),
)
def test_every_body_reassembles_into_what_its_headers_promise(case: tuple[bytes, str], content_type: str) -> None:
    data, value = case
    sha = hashlib.sha256(data).hexdigest()
    file = make_file(size=len(data), sha256=sha, updated_at=datetime(2024, 1, 1, tzinfo=UTC), content_type=content_type)
    response = respond("GET", {"range": value}, file)
    multipart = (header(response, "content-type") or "").startswith("multipart/")
    event("206 multipart" if multipart else f"{response.status}")
    body = materialise(response, data)
    assert len(body) == int(header(response, "content-length") or "-1")
    expected = range_model(value, len(data), 16)
    if response.status == 200:
        assert expected is None
        assert body == data
    elif response.status == 416:
        assert expected == "unsatisfiable"
        assert header(response, "content-range") == f"bytes */{len(data)}"
        assert body == b""
    elif header(response, "content-range") is not None:
        assert response.status == 206
        match = CONTENT_RANGE.fullmatch((header(response, "content-range") or "").encode())
        assert match is not None
        first, last, size = (int(group) for group in match.groups())
        assert size == len(data)
        assert body == data[first : last + 1]
        assert expected == set(range(first, last + 1))
    else:
        assert response.status == 206
        media_type = header(response, "content-type") or ""
        boundary = "servefiles-" + sha[:32]
        assert media_type == f"multipart/byteranges; boundary={boundary}"
        parts = parse_multipart(body, boundary.encode())
        assert len(parts) >= 2
        covered: set[int] = set()
        for part_type, first, last, size, part_data in parts:
            assert part_type == file.content_type
            assert size == len(data)
            assert part_data == data[first : last + 1]
            covered |= set(range(first, last + 1))
        assert expected == covered
        for previous, following in itertools.pairwise(parts):
            assert previous[2] + 1 < following[1]  # sorted, disjoint, not adjacent
