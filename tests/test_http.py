"""The sans-I/O HTTP decisions of ``servefiles.http``: one test per rule, no server.

Each test is named after the rule it checks; the rules come from RFC 9110
(sections cited) and from the design notes (hostile uploads, no oracle).
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from servefiles.http import (
    ByteRange,
    HttpPolicy,
    PreparedFile,
    Response,
    bearer_challenge,
    evaluate_preconditions,
    json_error,
    method_not_allowed,
    not_found,
    parse_range,
    respond,
    too_large,
    unavailable,
    written,
)
from servefiles.nginx.redirect import accel_redirect
from servefiles.store.types import FileMeta

SHA = hashlib.sha256(b"servefiles").hexdigest()
ETAG = f'"{SHA}"'
UPDATED = datetime(2024, 5, 6, 7, 8, 9, 654321, tzinfo=UTC)
LAST_MODIFIED = "Mon, 06 May 2024 07:08:09 GMT"
EARLIER = "Mon, 06 May 2024 07:08:08 GMT"
LATER = "Mon, 06 May 2024 07:08:10 GMT"
OTHER_ETAG = '"' + "0" * 64 + '"'


def make_meta(
    key: str = "docs/report.pdf",
    *,
    size: int = 100,
    content_type: str = "application/pdf",
    sha256: str = SHA,
    updated_at: datetime = UPDATED,
) -> FileMeta:
    return FileMeta(
        key=key,
        version=7,
        sha256=sha256,
        size=size,
        content_type=content_type,
        created_at=UPDATED - timedelta(days=1),
        updated_at=updated_at,
    )


def make_file(key: str = "docs/report.pdf", *, policy: HttpPolicy | None = None, **fields: object) -> PreparedFile:
    return PreparedFile(make_meta(key, **fields), policy or HttpPolicy())  # type: ignore[arg-type]


def header(response: Response, name: str) -> str | None:
    values = [value.decode("latin-1") for key, value in response.headers if key == name.encode("ascii")]
    assert len(values) <= 1, f"{name} repeated: {values}"
    return values[0] if values else None


def names(response: Response) -> list[str]:
    return [key.decode("ascii") for key, _value in response.headers]


def get(file: PreparedFile, **headers: str) -> Response:
    return respond("GET", {name.replace("_", "-"): value for name, value in headers.items()}, file)


def body_length(response: Response) -> int:
    return sum(len(s) if isinstance(s, bytes) else s.end - s.start for s in response.body)


# -- methods ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get", "head"])
def test_only_get_and_head_are_served(method: str) -> None:
    """Other methods (and lower-case ones: methods are case-sensitive, RFC 9110 §9.1) get 405."""
    response = respond(method, {}, make_file())
    assert response.status == 405
    assert header(response, "allow") == "GET, HEAD"


def test_method_not_allowed_names_the_policy_allow_header() -> None:
    response = method_not_allowed(HttpPolicy(allow="GET, HEAD, OPTIONS"))
    assert response.status == 405
    assert header(response, "allow") == "GET, HEAD, OPTIONS"
    assert int(header(response, "content-length") or -1) == body_length(response)


def test_head_gets_exactly_the_get_200_headers_and_no_body() -> None:
    file = make_file()
    head = respond("HEAD", {}, file)
    full = respond("GET", {}, file)
    assert head.status == full.status == 200
    assert head.headers == full.headers
    assert header(head, "content-length") == "100"
    assert head.body == ()


def test_range_is_ignored_for_head() -> None:
    file = make_file()
    head = respond("HEAD", {"range": "bytes=0-9"}, file)
    assert head.status == 200
    assert head.headers == respond("GET", {}, file).headers
    assert head.body == ()


def test_head_answers_preconditions_like_get() -> None:
    file = make_file()
    assert respond("HEAD", {"if-none-match": ETAG}, file).status == 304
    assert respond("HEAD", {"if-match": OTHER_ETAG}, file).status == 412


# -- 200 headers ----------------------------------------------------------------------------


def test_200_carries_the_file_headers() -> None:
    response = get(make_file())
    assert response.status == 200
    assert response.headers == [
        (b"content-type", b"application/pdf"),
        (b"content-length", b"100"),
        (b"etag", ETAG.encode()),
        (b"last-modified", LAST_MODIFIED.encode()),
        (b"cache-control", b"no-cache"),
        (b"accept-ranges", b"bytes"),
        (b"x-content-type-options", b"nosniff"),
    ]


def test_no_date_header_the_server_adds_it() -> None:
    assert "date" not in names(get(make_file()))


def test_header_names_are_lower_case_bytes() -> None:
    for response in (get(make_file()), get(make_file(), range="bytes=1-2,5-6"), not_found(), unavailable(3)):
        for key, value in response.headers:
            assert isinstance(key, bytes) and isinstance(value, bytes)
            assert key == key.lower()


@pytest.mark.parametrize(
    ("stored", "sent"),
    [
        ("text/plain", "text/plain; charset=utf-8"),
        ("text/css", "text/css; charset=utf-8"),
        ("TEXT/Markdown", "TEXT/Markdown; charset=utf-8"),
        ("text/plain; format=flowed", "text/plain; format=flowed; charset=utf-8"),
        ("text/plain;", "text/plain; charset=utf-8"),
        ("text/plain; charset=iso-8859-1", "text/plain; charset=iso-8859-1"),
        ("text/plain;CHARSET=utf-16", "text/plain;CHARSET=utf-16"),
        ("image/png", "image/png"),
        ("application/json", "application/json"),
    ],
)
def test_text_types_without_charset_get_utf8(stored: str, sent: str) -> None:
    response = get(make_file(content_type=stored))
    assert header(response, "content-type") == sent


def test_etag_is_strong_and_is_the_sha256() -> None:
    file = make_file()
    assert file.etag == ETAG.encode()
    assert header(get(file), "etag") == ETAG
    assert not ETAG.startswith("W/")


def test_etag_is_identical_on_every_frontend() -> None:
    """Two independent preparations of the same metadata agree byte for byte."""
    assert make_file().headers_200 == make_file().headers_200


def test_last_modified_is_imf_fixdate_of_updated_at_truncated_to_seconds() -> None:
    file = make_file()
    assert file.last_modified == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert header(get(file), "last-modified") == LAST_MODIFIED


def test_last_modified_converts_other_time_zones_to_gmt() -> None:
    paris = timezone(timedelta(hours=2))
    file = make_file(updated_at=datetime(2024, 5, 6, 9, 8, 9, tzinfo=paris))
    assert header(get(file), "last-modified") == LAST_MODIFIED


def test_cache_control_comes_from_the_policy() -> None:
    file = make_file(policy=HttpPolicy(cache_control="public, max-age=60"))
    assert header(get(file), "cache-control") == "public, max-age=60"
    assert header(get(file, if_none_match=ETAG), "cache-control") == "public, max-age=60"


def test_accept_ranges_bytes_is_advertised() -> None:
    assert header(get(make_file()), "accept-ranges") == "bytes"


def test_nosniff_is_on_every_response() -> None:
    file = make_file()
    meta = make_meta("docs/report.pdf")
    responses = [
        get(file),
        respond("HEAD", {}, file),
        get(file, if_none_match=ETAG),
        respond("HEAD", {"if-none-match": ETAG}, file),
        get(file, if_modified_since=LATER),
        respond("POST", {}, file),
        accel_redirect(file, "/_servefiles_accel/x"),
        json_error(400, "bad", "bad"),
        bearer_challenge(401, None, "token"),
        too_large(10),
        written(meta, created=True, url="/media/docs/report.pdf"),
        written(meta, created=False, url="/media/docs/report.pdf"),
        get(file, range="bytes=0-1"),
        get(file, range="bytes=0-1,5-6"),
        get(file, range="bytes=500-"),
        get(file, if_match=OTHER_ETAG),
        not_found(),
        method_not_allowed(HttpPolicy()),
        unavailable(5),
    ]
    for response in responses:
        assert header(response, "x-content-type-options") == "nosniff", response.status


def test_response_header_lists_are_fresh_copies() -> None:
    """An adapter may append to a response's headers without touching the next response."""
    file = make_file()
    get(file).headers.append((b"x-extra", b"1"))
    respond("HEAD", {}, file).headers.append((b"x-extra", b"1"))
    get(file, if_none_match=ETAG).headers.append((b"x-extra", b"1"))
    not_found().headers.append((b"x-extra", b"1"))
    assert header(get(file), "x-extra") is None
    assert header(get(file, if_none_match=ETAG), "x-extra") is None
    assert header(not_found(), "x-extra") is None


# -- active content -----------------------------------------------------------------------

ACTIVE_TYPES = [
    "text/html",
    "text/html; charset=utf-8",
    "TEXT/HTML",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "application/rss+xml",
    "application/atom+xml; charset=utf-8",
    "text/javascript",
    "application/javascript",
    "application/ecmascript",
    "text/ecmascript",
    "application/x-javascript",
]


@pytest.mark.parametrize("content_type", ACTIVE_TYPES)
def test_active_content_is_sent_as_an_attachment(content_type: str) -> None:
    response = get(make_file("site/page.html", content_type=content_type))
    assert header(response, "content-disposition") == "attachment; filename=\"page.html\"; filename*=UTF-8''page.html"
    assert header(response, "content-security-policy") is None


@pytest.mark.parametrize("content_type", ACTIVE_TYPES)
def test_active_content_is_sandboxed_under_the_sandbox_policy(content_type: str) -> None:
    file = make_file("site/page.html", content_type=content_type, policy=HttpPolicy(active_content="sandbox"))
    response = get(file)
    assert header(response, "content-security-policy") == "sandbox"
    assert header(response, "content-disposition") is None


@pytest.mark.parametrize(
    "content_type", ["image/png", "application/pdf", "text/plain", "text/css", "application/json", "video/mp4"]
)
def test_passive_content_is_rendered_inline(content_type: str) -> None:
    response = get(make_file(content_type=content_type))
    assert header(response, "content-disposition") is None
    assert header(response, "content-security-policy") is None


def test_active_content_headers_are_on_206_too() -> None:
    file = make_file("page.svg", content_type="image/svg+xml")
    assert header(get(file, range="bytes=0-1"), "content-disposition") is not None
    assert header(get(file, range="bytes=0-1,4-5"), "content-disposition") is not None


def test_content_disposition_names_the_last_key_segment() -> None:
    response = get(make_file("a/b/c/index.html", content_type="text/html"))
    assert header(response, "content-disposition") == "attachment; filename=\"index.html\"; filename*=UTF-8''index.html"


@pytest.mark.parametrize(
    ("key", "fallback"),
    [
        ('say "hi".html', "say _hi_.html"),
        ("日本.html", "__.html"),
        ("é.html", "_.html"),
        ("a;b=c, d.html", "a;b=c, d.html"),
        ("x\u200by.html", "x_y.html"),
        ("emoji-😀.svg", "emoji-_.svg"),
        ("tab\tcr\rlf\nnul\x00del\x7f.html", "tab_cr_lf_nul_del_.html"),  # the key gate refuses these anyway
        ("back\\slash.html", "back_slash.html"),  # the key gate refuses these anyway
    ],
)
def test_content_disposition_ascii_fallback_replaces_unsafe_characters(key: str, fallback: str) -> None:
    response = get(make_file(key, content_type="text/html"))
    value = header(response, "content-disposition")
    assert value is not None
    assert value.startswith(f"attachment; filename=\"{fallback}\"; filename*=UTF-8''")
    assert value.isascii()
    assert not any(char < " " or char == "\x7f" for char in value)


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("page.html", "page.html"),
        ("a b.html", "a%20b.html"),
        ("é.html", "%C3%A9.html"),
        ("日本.html", "%E6%97%A5%E6%9C%AC.html"),
        ("100%.html", "100%25.html"),
        ("a'b\"c;d,e=f.html", "a%27b%22c%3Bd%2Ce%3Df.html"),
        ("x*y(z)[w]{v}.html", "x%2Ay%28z%29%5Bw%5D%7Bv%7D.html"),
        ("!#$&+-.^_`|~.html", "!#$&+-.^_`|~.html"),
        ("a:b@c?d.html", "a%3Ab%40c%3Fd.html"),
    ],
)
def test_filename_star_percent_encodes_everything_outside_attr_char(key: str, encoded: str) -> None:
    response = get(make_file(key, content_type="text/html"))
    value = header(response, "content-disposition")
    assert value is not None
    assert value.endswith(f"; filename*=UTF-8''{encoded}")


# -- defensive header values ------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/html\r\nSet-Cookie: a=b", "text/plain; x=\n", "image/pngé", "image/png\u2028", "nonsense", ""],
)
def test_invalid_stored_content_type_is_sent_as_octet_stream(content_type: str) -> None:
    response = get(make_file(content_type=content_type))
    assert header(response, "content-type") == "application/octet-stream"
    for _key, value in response.headers:
        assert b"\r" not in value and b"\n" not in value


@pytest.mark.parametrize("field", ["cache_control", "allow"])
@pytest.mark.parametrize("value", ["no-cache\r\nX-Evil: 1", "no-cache\n", "é"])
def test_policy_refuses_header_values_that_could_split_a_header(field: str, value: str) -> None:
    with pytest.raises(ValueError):
        HttpPolicy(**{field: value})  # type: ignore[arg-type]


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        HttpPolicy(active_content="inline")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HttpPolicy(max_ranges=0)


def test_prepared_file_refuses_a_sha256_that_is_not_hex() -> None:
    with pytest.raises(ValueError):
        make_file(sha256='abc"\r\nx')


# -- full body ------------------------------------------------------------------------------


def test_full_200_body_is_the_whole_file_as_one_range() -> None:
    assert get(make_file(size=100)).body == (ByteRange(0, 100),)


def test_zero_length_file_has_an_empty_200_body() -> None:
    response = get(make_file(size=0))
    assert response.status == 200
    assert response.body == ()
    assert header(response, "content-length") == "0"


def test_head_body_is_empty() -> None:
    assert respond("HEAD", {}, make_file(size=100)).body == ()


# -- preconditions (RFC 9110 §13.1, §13.2.2) ------------------------------------------------


@pytest.mark.parametrize("value", [OTHER_ETAG, f"W/{ETAG}", f"{OTHER_ETAG}, W/{ETAG}", "", "garbage", SHA])
def test_if_match_false_is_412(value: str) -> None:
    """Strong comparison: a weak tag never satisfies If-Match (§13.1.1); junk is false."""
    file = make_file()
    assert evaluate_preconditions("GET", {"if-match": value}, file) == 412
    response = get(file, if_match=value)
    assert response.status == 412
    assert response.body == ()
    assert header(response, "content-length") == "0"


@pytest.mark.parametrize("value", [ETAG, "*", f"{OTHER_ETAG}, {ETAG}", f" ,{OTHER_ETAG} ,, {ETAG} , ", " * "])
def test_if_match_true_proceeds(value: str) -> None:
    file = make_file()
    assert evaluate_preconditions("GET", {"if-match": value}, file) is None
    assert get(file, if_match=value).status == 200


def test_if_match_list_tags_may_contain_commas() -> None:
    """A comma is a valid etagc (§8.8.3): lists are scanned, not split on commas."""
    file = make_file()
    assert evaluate_preconditions("GET", {"if-match": f'"a,b", {ETAG}'}, file) is None
    assert evaluate_preconditions("GET", {"if-match": f'"a,{SHA}"'}, file) == 412


def test_if_unmodified_since_earlier_than_last_modified_is_412() -> None:
    file = make_file()
    assert evaluate_preconditions("GET", {"if-unmodified-since": EARLIER}, file) == 412
    assert evaluate_preconditions("GET", {"if-unmodified-since": LAST_MODIFIED}, file) is None
    assert evaluate_preconditions("GET", {"if-unmodified-since": LATER}, file) is None


@pytest.mark.parametrize(
    "value", ["yesterday", "", "Mon, 06 May 2024 07:08:08", "1714979288", "Mon, 32 May 2024 07:08:08 GMT"]
)
def test_invalid_if_unmodified_since_is_ignored(value: str) -> None:
    assert evaluate_preconditions("GET", {"if-unmodified-since": value}, make_file()) is None


def test_if_unmodified_since_is_ignored_when_if_match_is_present() -> None:
    file = make_file()
    assert evaluate_preconditions("GET", {"if-match": ETAG, "if-unmodified-since": EARLIER}, file) is None


@pytest.mark.parametrize(
    "value", [ETAG, f"W/{ETAG}", "*", f"{OTHER_ETAG}, {ETAG}", f'W/"x", W/{ETAG}', f"{OTHER_ETAG},{ETAG}"]
)
def test_if_none_match_uses_weak_comparison_and_gives_304(value: str) -> None:
    file = make_file()
    assert evaluate_preconditions("GET", {"if-none-match": value}, file) == 304
    assert evaluate_preconditions("HEAD", {"if-none-match": value}, file) == 304


@pytest.mark.parametrize("value", [OTHER_ETAG, f"W/{OTHER_ETAG}", "", "garbage", SHA, f"{ETAG} junk", f"w/{ETAG}"])
def test_if_none_match_without_a_match_proceeds(value: str) -> None:
    assert evaluate_preconditions("GET", {"if-none-match": value}, make_file()) is None


def test_if_none_match_on_other_methods_is_412() -> None:
    assert evaluate_preconditions("PUT", {"if-none-match": "*"}, make_file()) == 412
    assert evaluate_preconditions("DELETE", {"if-none-match": ETAG}, make_file()) == 412


def test_if_modified_since_not_earlier_than_last_modified_is_304() -> None:
    file = make_file()
    assert evaluate_preconditions("GET", {"if-modified-since": LAST_MODIFIED}, file) == 304
    assert evaluate_preconditions("GET", {"if-modified-since": LATER}, file) == 304
    assert evaluate_preconditions("HEAD", {"if-modified-since": LATER}, file) == 304
    assert evaluate_preconditions("GET", {"if-modified-since": EARLIER}, file) is None


def test_if_modified_since_is_ignored_when_if_none_match_is_present() -> None:
    file = make_file()
    assert evaluate_preconditions("GET", {"if-none-match": OTHER_ETAG, "if-modified-since": LATER}, file) is None


def test_if_modified_since_applies_to_get_and_head_only() -> None:
    assert evaluate_preconditions("POST", {"if-modified-since": LATER}, make_file()) is None


@pytest.mark.parametrize("value", ["garbage", "", "Mon, 06 May 2024 07:08:10 +0000", "mon, 06 may 2024 07:08:10 gmt"])
def test_invalid_if_modified_since_is_ignored(value: str) -> None:
    assert evaluate_preconditions("GET", {"if-modified-since": value}, make_file()) is None


def test_if_match_is_evaluated_before_if_none_match() -> None:
    file = make_file()
    assert evaluate_preconditions("GET", {"if-match": OTHER_ETAG, "if-none-match": ETAG}, file) == 412
    assert evaluate_preconditions("GET", {"if-unmodified-since": EARLIER, "if-none-match": ETAG}, file) == 412


def test_preconditions_come_before_range() -> None:
    file = make_file()
    assert get(file, if_none_match=ETAG, range="bytes=0-1").status == 304
    assert get(file, if_match=OTHER_ETAG, range="bytes=0-1").status == 412
    assert get(file, if_match=OTHER_ETAG, range="bytes=500-").status == 412


def test_last_modified_comparisons_are_at_one_second_granularity() -> None:
    """updated_at has microseconds; HTTP-date has whole seconds (§5.6.7)."""
    file = make_file(updated_at=datetime(2024, 5, 6, 7, 8, 9, 999999, tzinfo=UTC))
    assert evaluate_preconditions("GET", {"if-modified-since": LAST_MODIFIED}, file) == 304
    assert evaluate_preconditions("GET", {"if-unmodified-since": LAST_MODIFIED}, file) is None
    assert get(file, range="bytes=0-1", if_range=LAST_MODIFIED).status == 206


@pytest.mark.parametrize(
    "value",
    [
        "Mon, 06 May 2024 07:08:09 GMT",  # IMF-fixdate
        "Monday, 06-May-24 07:08:09 GMT",  # rfc850-date
        "Mon May  6 07:08:09 2024",  # asctime-date
        "  Mon, 06 May 2024 07:08:09 GMT\t",  # OWS around the field value
    ],
)
def test_all_three_http_date_formats_are_accepted(value: str) -> None:
    file = make_file()
    assert evaluate_preconditions("GET", {"if-modified-since": value}, file) == 304
    assert get(file, range="bytes=0-1", if_range=value).status == 206


def test_rfc850_two_digit_year_more_than_50_years_ahead_is_the_previous_century() -> None:
    """§5.6.7, relative to the file's Last-Modified year (the module has no clock)."""
    old = make_file(updated_at=datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC))
    assert get(old, range="bytes=0-1", if_range="Sunday, 06-Nov-94 08:49:37 GMT").status == 206
    new = make_file(updated_at=datetime(2044, 11, 6, 8, 49, 37, tzinfo=UTC))
    assert get(new, range="bytes=0-1", if_range="Sunday, 06-Nov-44 08:49:37 GMT").status == 206
    # 2095 would be more than 50 years after 2044: it reads as 1995, before Last-Modified.
    assert evaluate_preconditions("GET", {"if-modified-since": "Monday, 06-Nov-95 08:49:37 GMT"}, new) is None
    assert evaluate_preconditions("GET", {"if-modified-since": "Sunday, 06-Nov-94 08:49:37 GMT"}, new) == 304


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "\x00",
        "Mon, 99 May 2024 07:08:09 GMT",
        "Mon, 31 Feb 2024 07:08:09 GMT",
        "Mon, 06 May 0000 07:08:09 GMT",
        "Mon, 06 May 2024 24:08:09 GMT",
        "Mon, 06 May 2024 07:60:09 GMT",
        "Mon, 06 Foo 2024 07:08:09 GMT",
        "Mon, \u0660\u0666 May 2024 07:08:09 GMT",  # Arabic-Indic digits
        "Mon, 06 May 99999999999999999999 07:08:09 GMT",
        "Mon May 36 07:08:09 2024",
        "Monday, 06-May-2024 07:08:09 GMT",
        "Mon, 06 May 2024 07:08:09 GMT, Mon, 06 May 2024 07:08:09 GMT",
        "9" * 10000,
        "Mon," * 1000,
    ],
)
def test_garbage_dates_never_raise_and_are_ignored(value: str) -> None:
    file = make_file()
    for name in ("if-modified-since", "if-unmodified-since"):
        assert evaluate_preconditions("GET", {name: value}, file) is None
    assert get(file, range="bytes=0-1", if_range=value).status == 200


def test_leap_second_is_read_as_59() -> None:
    file = make_file(updated_at=datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert evaluate_preconditions("GET", {"if-modified-since": "Sat, 31 Dec 2016 23:59:60 GMT"}, file) == 304


def test_304_carries_only_etag_cache_control_and_nosniff() -> None:
    """RFC 9110 §15.4.5: of a 200's fields, ETag and Cache-Control here; no content fields.
    nosniff is no representation metadata: every response carries it, a 304 too."""
    response = get(make_file(content_type="text/html"), if_none_match=ETAG)
    assert response.status == 304
    assert response.headers == [
        (b"etag", ETAG.encode()),
        (b"cache-control", b"no-cache"),
        (b"x-content-type-options", b"nosniff"),
    ]
    assert response.body == ()


def test_412_has_no_body_and_no_validators() -> None:
    response = get(make_file(), if_unmodified_since=EARLIER)
    assert response.status == 412
    assert response.body == ()
    assert header(response, "content-length") == "0"
    assert header(response, "etag") is None


# -- If-Range (RFC 9110 §13.1.5) ------------------------------------------------------------


def test_if_range_with_the_current_strong_etag_gives_206() -> None:
    assert get(make_file(), range="bytes=0-9", if_range=ETAG).status == 206


@pytest.mark.parametrize("value", [f"W/{ETAG}", OTHER_ETAG, f"{ETAG}, {ETAG}", f'"{SHA}', "*"])
def test_if_range_entity_tag_matches_only_by_strong_comparison(value: str) -> None:
    response = get(make_file(), range="bytes=0-9", if_range=value)
    assert response.status == 200
    assert response.body == (ByteRange(0, 100),)


def test_if_range_date_matches_only_when_exactly_last_modified() -> None:
    file = make_file()
    assert get(file, range="bytes=0-9", if_range=LAST_MODIFIED).status == 206
    assert get(file, range="bytes=0-9", if_range=LATER).status == 200
    assert get(file, range="bytes=0-9", if_range=EARLIER).status == 200


def test_if_range_that_does_not_match_ignores_an_unsatisfiable_range_too() -> None:
    assert get(make_file(), range="bytes=500-", if_range=OTHER_ETAG).status == 200


def test_if_range_without_range_is_ignored() -> None:
    response = get(make_file(), if_range=OTHER_ETAG)
    assert response.status == 200
    assert response.body == (ByteRange(0, 100),)


# -- Range (RFC 9110 §14) -------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["bytes", "BYTES", "Bytes", "bYtEs"])
def test_range_unit_is_case_insensitive(unit: str) -> None:
    assert parse_range(f"{unit}=0-9", 100, 16) == [ByteRange(0, 10)]


@pytest.mark.parametrize("value", ["items=0-9", "byte=0-9", "bytes 0-9", "=0-9", "0-9", "bytes", "bytes\u212a=0-9"])
def test_unknown_range_unit_is_ignored(value: str) -> None:
    assert parse_range(value, 100, 16) is None
    assert get(make_file(), range=value).status == 200


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-9", [ByteRange(0, 10)]),
        ("bytes=10-", [ByteRange(10, 100)]),
        ("bytes=-10", [ByteRange(90, 100)]),
        ("bytes=99-99", [ByteRange(99, 100)]),
        ("bytes=0-0", [ByteRange(0, 1)]),
        ("bytes=0-9, 20-29", [ByteRange(0, 10), ByteRange(20, 30)]),
        ("bytes=0-9 ,\t20-29", [ByteRange(0, 10), ByteRange(20, 30)]),
        ("bytes=0-9,,20-29,", [ByteRange(0, 10), ByteRange(20, 30)]),
        ("bytes=007-009", [ByteRange(7, 10)]),
    ],
)
def test_range_forms_and_lists(value: str, expected: list[ByteRange]) -> None:
    assert parse_range(value, 100, 16) == expected


@pytest.mark.parametrize(
    "value",
    [
        "bytes=",
        "bytes=,",
        "bytes= , ",
        "bytes=-",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=1 - 2",
        "bytes=--1",
        "bytes=1_0-20",  # int() would accept the underscore
        "bytes=\u0661-\u0662",  # Arabic-Indic digits: int() would accept them
        "bytes=\uff10-\uff19",  # fullwidth digits
        "bytes=0-9,x",
        "bytes=0x10-20",
        "bytes=1.5-2",
    ],
)
def test_malformed_range_is_ignored(value: str) -> None:
    assert parse_range(value, 100, 16) is None
    assert get(make_file(), range=value).status == 200


def test_range_with_last_before_first_is_invalid_and_ignored() -> None:
    assert parse_range("bytes=9-0", 100, 16) is None
    assert parse_range("bytes=0-1,9-0", 100, 16) is None
    assert parse_range("bytes=" + "9" * 21 + "-" + "9" * 20, 100, 16) is None  # both huge, still ordered
    assert parse_range("bytes=" + "9" * 21 + "-" + "0009" + "9" * 20, 100, 16) == "unsatisfiable"


def test_overlong_last_pos_is_clamped_to_the_file() -> None:
    assert parse_range("bytes=90-1000", 100, 16) == [ByteRange(90, 100)]
    assert parse_range("bytes=90-" + "9" * 100, 100, 16) == [ByteRange(90, 100)]


def test_suffix_longer_than_the_file_is_the_whole_file() -> None:
    assert parse_range("bytes=-1000", 100, 16) == [ByteRange(0, 100)]
    assert parse_range("bytes=-" + "9" * 100, 100, 16) == [ByteRange(0, 100)]


def test_huge_numbers_cost_no_time() -> None:
    """Digit strings beyond 19 digits are never converted (int() would refuse >4300 anyway)."""
    huge = "9" * 1_000_000
    start = time.perf_counter()
    assert parse_range(f"bytes={huge}-", 100, 16) == "unsatisfiable"
    assert parse_range(f"bytes=0-{huge}", 100, 16) == [ByteRange(0, 100)]
    assert parse_range(f"bytes=-{huge}", 100, 16) == [ByteRange(0, 100)]
    assert parse_range(f"bytes={'0' * 1_000_000}5-9", 100, 16) == [ByteRange(5, 10)]
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "value", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=200-, -0", "bytes=" + "9" * 30 + "-"]
)
def test_no_satisfiable_range_is_416(value: str) -> None:
    assert parse_range(value, 100, 16) == "unsatisfiable"
    response = get(make_file(), range=value)
    assert response.status == 416
    assert header(response, "content-range") == "bytes */100"
    assert response.body == ()


@pytest.mark.parametrize("value", ["bytes=0-", "bytes=0-0", "bytes=-0", "bytes=0-9, -0", "bytes=5-, 0-"])
def test_zero_length_file_makes_int_ranges_and_empty_suffixes_unsatisfiable(value: str) -> None:
    assert parse_range(value, 0, 16) == "unsatisfiable"
    response = get(make_file(size=0), range=value)
    assert response.status == 416
    assert header(response, "content-range") == "bytes */0"


@pytest.mark.parametrize(
    "value", ["bytes=-1", "bytes=-500", "bytes=-" + "9" * 30, "bytes=0-9,-5", "bytes=-1,0-", "bytes=0-, -1"]
)
def test_zero_length_file_ignores_a_satisfiable_suffix_range(value: str) -> None:
    """RFC 9110 §14.1.1: on an empty representation a suffix-range with a non-zero length is
    satisfiable, yet no Content-Range can name its bytes: Range is ignored, 200 with no body."""
    assert parse_range(value, 0, 16) is None
    file = make_file(size=0)
    response = get(file, range=value)
    assert response.status == 200
    assert response.headers == file.headers_200
    assert header(response, "content-length") == "0"
    assert response.body == ()


def test_unsatisfiable_specs_are_dropped_from_a_list() -> None:
    assert parse_range("bytes=500-600, 0-9", 100, 16) == [ByteRange(0, 10)]


def test_one_satisfiable_range_is_206_with_the_200_headers_and_partial_length() -> None:
    file = make_file()
    response = get(file, range="bytes=10-19")
    assert response.status == 206
    assert response.body == (ByteRange(10, 20),)
    assert header(response, "content-range") == "bytes 10-19/100"
    assert header(response, "content-length") == "10"
    full = dict(get(file).headers)
    partial = dict(response.headers)
    assert {k: v for k, v in partial.items() if k not in (b"content-range", b"content-length")} == {
        k: v for k, v in full.items() if k != b"content-length"
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-9,5-14", [ByteRange(0, 15)]),  # overlapping
        ("bytes=0-9,10-19", [ByteRange(0, 20)]),  # adjacent
        ("bytes=20-29,0-9", [ByteRange(0, 10), ByteRange(20, 30)]),  # sorted
        ("bytes=50-59,0-9,5-7,-45", [ByteRange(0, 10), ByteRange(50, 100)]),
        ("bytes=0-0,0-0,0-0", [ByteRange(0, 1)]),
        ("bytes=-10,0-", [ByteRange(0, 100)]),
    ],
)
def test_overlapping_and_adjacent_ranges_are_coalesced(value: str, expected: list[ByteRange]) -> None:
    assert parse_range(value, 100, 16) == expected


def test_ranges_that_coalesce_into_one_are_a_single_part_206() -> None:
    response = get(make_file(), range="bytes=0-9,10-19")
    assert response.status == 206
    assert header(response, "content-range") == "bytes 0-19/100"
    assert response.body == (ByteRange(0, 20),)


def test_more_ranges_than_max_ranges_are_ignored() -> None:
    sixteen = ",".join(f"{i * 2}-{i * 2}" for i in range(16))
    seventeen = ",".join(f"{i * 2}-{i * 2}" for i in range(17))
    assert parse_range(f"bytes={sixteen}", 100, 16) is not None
    assert parse_range(f"bytes={seventeen}", 100, 16) is None
    assert get(make_file(), range=f"bytes={seventeen}").status == 200
    policy = HttpPolicy(max_ranges=2)
    assert get(make_file(policy=policy), range="bytes=0-1,3-4,6-7").status == 200


def test_empty_list_elements_count_toward_max_ranges() -> None:
    assert parse_range("bytes=0-1" + "," * 16, 100, 16) is None
    assert parse_range("bytes=0-1" + "," * 15, 100, 16) == [ByteRange(0, 2)]


def test_ten_thousand_ranges_are_rejected_fast() -> None:
    value = "bytes=" + ",".join(f"{i}-{i}" for i in range(10_000))
    start = time.perf_counter()
    for _ in range(100):
        assert parse_range(value, 1_000_000, 16) is None
    assert time.perf_counter() - start < 0.5


# -- multipart/byteranges (RFC 9110 §14.6) --------------------------------------------------


def test_several_ranges_are_a_multipart_byteranges_206() -> None:
    file = make_file(content_type="text/plain")
    response = get(file, range="bytes=0-4, 10-14")
    boundary = "servefiles-" + SHA[:32]
    assert response.status == 206
    assert header(response, "content-type") == f"multipart/byteranges; boundary={boundary}"
    assert header(response, "content-range") is None
    part_head = "--{b}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes {r}/100\r\n\r\n"
    assert response.body == (
        part_head.format(b=boundary, r="0-4").encode(),
        ByteRange(0, 5),
        b"\r\n",
        part_head.format(b=boundary, r="10-14").encode(),
        ByteRange(10, 15),
        b"\r\n",
        f"--{boundary}--\r\n".encode(),
    )
    assert header(response, "content-length") == str(body_length(response))


def test_multipart_boundary_is_derived_from_the_sha256() -> None:
    a = get(make_file(), range="bytes=0-1,5-6")
    b = get(make_file(), range="bytes=0-1,5-6")
    other = get(make_file(sha256=hashlib.sha256(b"other").hexdigest()), range="bytes=0-1,5-6")
    assert a == b
    assert header(a, "content-type") != header(other, "content-type")


def test_multipart_keeps_the_other_200_headers() -> None:
    file = make_file()
    response = get(file, range="bytes=0-1,5-6")
    full = dict(get(file).headers)
    partial = dict(response.headers)
    for name in (b"etag", b"last-modified", b"cache-control", b"accept-ranges", b"x-content-type-options"):
        assert partial[name] == full[name]


# -- error responses ------------------------------------------------------------------------


def test_not_found_is_one_identical_short_text_404() -> None:
    first, second = not_found(), not_found()
    assert first == second
    assert first.status == 404
    assert header(first, "content-type") == "text/plain; charset=utf-8"
    assert header(first, "content-length") == str(body_length(first))
    assert 0 < body_length(first) < 64
    assert header(first, "etag") is None


def test_errors_are_not_stored_by_caches() -> None:
    """An upload must be visible at once, so no cache may keep its absence."""
    assert header(not_found(), "cache-control") == "no-store"
    assert header(unavailable(5), "cache-control") == "no-store"


def test_unavailable_is_503_with_retry_after() -> None:
    response = unavailable(7)
    assert response.status == 503
    assert header(response, "retry-after") == "7"
    assert header(response, "content-type") == "text/plain; charset=utf-8"
    assert header(response, "content-length") == str(body_length(response))
    assert header(unavailable(-3), "retry-after") == "0"


def test_prepared_file_keeps_its_metadata() -> None:
    meta = make_meta()
    file = PreparedFile(meta, HttpPolicy())
    assert file.meta is meta
    assert file.policy == HttpPolicy()
