"""The hostile-input corpus: data only, one list per family, run by ``test_hostile_inputs.py``
against both adapters and both stores.

Placeholders, replaced per test (the values depend on the test's tmp dir and files):
``{canary}`` / ``{secret}`` / ``{cache}`` are absolute paths (the canary files and the cache dir),
``{canary_enc}`` the canary's path percent-encoded whole, ``{object}`` the cache-relative path of
a content file that is on disk (``objects/ab/<sha256>``), ``{etag}`` / ``{weak}`` / ``{sha}`` /
``{date}`` the validators of the file under test, ``{size}`` / ``{last}`` / ``{past}`` its length,
last byte position and length + 10, ``{token}`` the configured upload token.

Request targets are ASCII, as they come on a request line: anything else is percent-encoded.
Header values are bytes as they come on the wire (non-ASCII text is UTF-8, which the adapters
see decoded as latin-1, the way servers hand it over).
"""

from __future__ import annotations

from typing import NamedTuple

Headers = tuple[tuple[bytes, bytes], ...]

# -- 1. path traversal -------------------------------------------------------------------------------

# Attacks: reaching the filesystem (the canary next to the cache dir, /etc/passwd) through a key, with
# every encoding of "..", "/" and "\" a decoder somewhere might normalise (percent, double percent,
# overlong UTF-8, fullwidth forms, %u, NUL-terminated), one level up and four levels up.
_DOT_DOTS = [
    "..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%252e%252e", "%25252e%25252e", "%c0%ae%c0%ae",
    "%e0%80%ae%e0%80%ae", "%f0%80%80%ae%f0%80%80%ae", "%c0%2e%c0%2e", "%ef%bc%8e%ef%bc%8e", "%u002e%u002e",
    "...", "..%00", "..%20", "..%2520", ".%00.", "%2e%2e%00",
]  # fmt: skip
_SEPARATORS = [
    "/", "%2f", "%2F", "%252f", "\\", "%5c", "%5C", "%255c", "%c0%af", "%e0%80%af", "%c1%9c", "%ef%bc%8f",
    "%e2%88%95", "//", "/./", "%00/",
]  # fmt: skip
ENCODED_TRAVERSALS: list[str] = [f"/media/{dots}{sep}canary.txt" for dots in _DOT_DOTS for sep in _SEPARATORS] + [
    f"/media/{(dots + sep) * 4}etc{sep}passwd" for dots in _DOT_DOTS[:10] for sep in _SEPARATORS[:8]
]

_KEY_1024 = "/".join(["a" * 200] * 5) + "/" + "b" * 19  # exactly MAX_KEY_BYTES: accepted
_KEY_1025 = _KEY_1024 + "b"  # one byte over: refused

# Attacks: the same, written by hand: dot and empty segments, prefix confusion, NUL and control
# characters, trailing dots and spaces, drive letters, UNC paths, Windows device names, absolute
# paths, the canary's own path, the cache dir's internals, very long names, and Unicode look-alikes
# of "." and "/" (which the gate accepts as ordinary characters: a 404 unless uploaded).
TRAVERSAL_TARGETS: list[str] = [
    # dot segments, empty segments
    "/media/..", "/media/.", "/media/../", "/media/./", "/media/...", "/media/../canary.txt",
    "/media/../../../../../../etc/passwd", "/media/./notes.txt", "/media/notes.txt/.", "/media/notes.txt/..",
    "/media/a/b/../b/c.txt", "/media/a/./b/c.txt", "/media/a//b/c.txt", "/media//notes.txt", "/media/notes.txt/",
    "/media///", "/media/", "/media", "/media/a/b/c.txt/../../../../canary.txt", "/media/%2e", "/media/%2e%2e",
    "/media/%2e%2e%2f", "/media/%2e%2e/", "/media/%2e/notes.txt", "/media/a/%2e%2e/notes.txt", "/media/..;/canary.txt",
    "/media/..%3b/canary.txt", "/media/.../canary.txt", "/media/..../canary.txt",
    "/media/a/b/%2e%2e%2f%2e%2e%2fnotes.txt",
    # prefix confusion
    "/media/../media/notes.txt", "/media%2fnotes.txt", "/media%2f..%2fcanary.txt", "/MEDIA/notes.txt",
    "/media./notes.txt", "/media%00/notes.txt", "/medianotes.txt", "/media/%2e%2e%2fmedia/notes.txt",
    "/../canary.txt", "/./media/notes.txt", "//media/notes.txt", "/media/notes.txt?/../../canary.txt",
    "/media/notes.txt%3f/../../canary.txt", "/media/notes.txt%23/../canary.txt", "/media/notes.txt#/../../canary.txt",
    "/_servefiles/health/../../media/notes.txt", "/_servefiles/../canary.txt", "/_servefiles/metrics",
    # NUL, C0, DEL, C1, line separators, invalid UTF-8, surrogates
    "/media/notes.txt%00", "/media/notes.txt%00.png", "/media/%00", "/media/notes%00/../canary.txt",
    "/media/notes.txt%0a", "/media/notes.txt%0d", "/media/notes.txt%09", "/media/notes.txt%0b", "/media/notes.txt%0c",
    "/media/notes.txt%1b", "/media/notes.txt%7f", "/media/notes.txt%c2%85", "/media/notes.txt%c2%9f",
    "/media/notes.txt%c2%80", "/media/notes.txt%e2%80%a8", "/media/notes.txt%e2%80%a9", "/media/notes.txt%ef%bf%bd",
    "/media/notes.txt%ed%a0%80", "/media/notes.txt%ed%bf%bf", "/media/notes.txt%ff", "/media/notes.txt%fe%ff",
    "/media/notes.txt%c0%80", "/media/%e2%80%8b..%e2%80%8b/canary.txt", "/media/%e2%80%ae..txt",
    "/media/notes.txt%f4%90%80%80", "/media/notes.txt%f8%88%80%80%80",
    # trailing dots and spaces, NTFS streams, 8.3 names, case
    "/media/notes.txt.", "/media/notes.txt..", "/media/notes.txt%20", "/media/notes.txt%20.",
    "/media/notes.txt%20%20%20",
    "/media/notes.txt::$DATA", "/media/notes.txt:stream", "/media/NOTES~1.TXT", "/media/NOTES.TXT", "/media/notes.TXT",
    "/media/%20/notes.txt", "/media/./%20", "/media/.%20", "/media/..%20/canary.txt", "/media/..%09/canary.txt",
    "/media/%20../canary.txt", "/media/..%2e/canary.txt",
    # drive letters, UNC and device paths, URLs
    "/media/C:/Windows/win.ini", "/media/C:%5cWindows%5cwin.ini", "/media/c:\\windows\\win.ini", "/media/C:",
    "/media/C:notes.txt", "/media/%43%3a%5c", "/media/\\\\server\\share\\x", "/media/%5c%5cserver%5cshare",
    "/media///server/share", "/media/%2f%2fserver%2fshare", "//server/share", "/media/\\\\?\\C:\\x",
    "/media/%5c%5c.%5cpipe%5cx", "/media/\\\\.\\GLOBALROOT\\x", "/media/file:///etc/passwd",
    "/media/file:%2f%2f%2fetc%2fpasswd", "/media/http://127.0.0.1/", "/media/\\notes.txt",
    # Windows device names
    "/media/con", "/media/nul", "/media/prn", "/media/aux", "/media/com1", "/media/lpt1", "/media/con.txt",
    "/media/nul.txt", "/media/com1.txt", "/media/aux.png", "/media/CON", "/media/conin$", "/media/a/con/b",
    "/media/con:", "/media/nul.tar.gz", "/media/COM%c2%b9", "/media/lpt9.html",
    # absolute paths and well-known secrets
    "/media//etc/passwd", "/media/%2fetc%2fpasswd", "/media/%2Fetc/passwd", "/media/etc/passwd",
    "/media/%252fetc%252fpasswd", "/etc/passwd", "/media/proc/self/environ", "/media//proc/self/environ",
    "/media//proc/self/fd/0", "/media/%2fdev%2furandom", "/media/~/.ssh/id_rsa", "/media/~root",
    "/media/$HOME/.profile", "/media/%24%7bHOME%7d", "/media/.git/config", "/media/.env", "/media/.htaccess",
    # the canary's own path, and the cache dir's internals (keys are never paths: all 404)
    "/media/{canary}", "/media/{canary_enc}", "/media/..{canary}", "/media/%2e%2e{canary_enc}", "/media/{secret}",
    "/media/../secret.txt", "/media/cache/../secret.txt", "/media/link-to-canary", "/media/../link-to-canary",
    "/media/../cache/escape", "/media/escape", "/media/index.sqlite3", "/media/index.sqlite3-wal", "/media/open.lock",
    "/media/locks", "/media/objects", "/media/objects/..", "/media/objects/../index.sqlite3", "/media/{object}",
    "/media/objects/../../canary.txt", "/media/cache/index.sqlite3", "/media/../cache/index.sqlite3",
    "/media/{cache}/index.sqlite3", "/media/{cache}/{object}", "/media/feed.cursor", "/media/../files.db",
    "/media/files.db", "/media/../files.db-wal",
    # very long names: a 300-byte segment, a 5,000-byte path, the 1,024-byte limit and one over
    "/media/" + "a" * 255, "/media/" + "a" * 256, "/media/" + "a" * 300, "/media/" + ("a" * 200 + "/") * 25 + "x",
    "/media/" + _KEY_1024, "/media/" + _KEY_1025, "/media/" + "%e2%82%ac" * 85, "/media/" + "%e2%82%ac" * 86,
    "/media/" + "%c3%a9" * 128, "/media/" + "../" * 2000 + "etc/passwd", "/media/" + "%2e%2e%2f" * 1000 + "canary.txt",
    "/media/" + "a/" * 2500, "/media/" + "%00" * 5000,
    # look-alikes of "." and "/" the gate accepts as ordinary characters, NFC/NFD, invisible characters
    "/media/%ef%bc%8e%ef%bc%8e%ef%bc%8fcanary.txt", "/media/%e2%80%a4%e2%80%a4/canary.txt",
    "/media/%e2%80%a5/canary.txt",
    "/media/%ef%b9%92%ef%b9%92/canary.txt", "/media/%e3%80%82%e3%80%82/canary.txt", "/media/n%cc%83otes.txt",
    "/media/notes%e2%80%8b.txt", "/media/%ef%bd%8eotes.txt", "/media/%e2%84%aa.txt", "/media/a%e2%88%95b%e2%88%95c.txt",
    "/media/a%e2%81%84b%e2%81%84c.txt", "/media/%ef%bb%bfnotes.txt", "/media/notes.txt%cc%81", "/media/%cc%81",
]  # fmt: skip

# -- 2. header injection ---------------------------------------------------------------------------------

# Attacks: response splitting through a key that ends up in Location or Content-Disposition: CR/LF
# (raw, double-encoded), Unicode line separators, NEL, and the characters whose low byte is CR or LF
# (U+010D U+010A, U+560D U+560A) for code that truncates to latin-1.
INJECTION_TARGETS: list[str] = [
    "/media/x%0d%0aSet-Cookie:%20x=1", "/media/x%0aSet-Cookie:%20x=1", "/media/x%0dSet-Cookie:%20x=1",
    "/media/notes.txt%0d%0aSet-Cookie:%20x=1", "/media/x%0d%0a%0d%0a%3chtml%3e", "/media/x%e2%80%a8Set-Cookie:%20x=1",
    "/media/x%e2%80%a9Set-Cookie:%20x=1", "/media/x%c2%85Set-Cookie:%20x=1", "/media/x%250d%250aSet-Cookie:%20x=1.html",
    "/media/x%5cr%5cnSet-Cookie:%20x=1", "/media/x%00Set-Cookie:%20x=1", "/media/a.html%0d%0aContent-Type:%20text/html",
    "/media/x%0d%0aLocation:%20http://evil.example/", "/media/%0d%0a", "/media/%0d%0aSet-Cookie:%20x=1/a.html",
    "/media/x%c4%8d%c4%8aSet-Cookie:%20x=1.html", "/media/x%e5%98%8a%e5%98%8dSet-Cookie:%20x=1.html",
    "/media/x%0d%0a%09Set-Cookie:%20x=1", "/media/x%0a%20Set-Cookie:%20x=1", "/media/x%2522%3b%20filename=evil.html",
    "/media/x%22%3b%20filename=%22evil.html", "/media/a%22%0d%0aSet-Cookie:%20x=1%22.html",
    "/media/x.svg%0d%0aContent-Disposition:%20inline", "/media/x%0d%0aX-Content-Type-Options:%20sniff.html",
]  # fmt: skip

# Attacks: a stored Content-Type that would split the response header it is sent in, or smuggle
# bytes no header may carry (all must be refused with 400 and nothing stored).
INJECTION_CONTENT_TYPES: list[bytes] = [
    b"text/plain\r\nSet-Cookie: x=1", b"text/plain\nSet-Cookie: x=1", b"text/plain\rSet-Cookie: x=1",
    b"text/plain; charset=utf-8\r\n\r\n<html>", b"text/plain\x00", b"text/plain; x=\x00", b"text/plain; x=\x0b",
    b"text/plain; x=\x0c", b"text/plain\x7f", b"text/plain; x=\x85", b"text/plain; x=\xc3\xa9",
    b"text/plain; x=\xe2\x80\xa8", b"text/html\x00; charset=utf-8", b"\r\ntext/html", b"text/pl\x00ain",
    b"text/plain; x=\x1b[31m", b"text/plain\tx", b"text/" + b"a" * 300, b"text/plain; charset=" + b"x" * 250,
    b"text/html; charset=utf-8\xc4\x8d\xc4\x8aSet-Cookie: x=1", b"image/svg+xml\r\nContent-Disposition: inline",
]  # fmt: skip

# -- 3. hostile Range headers --------------------------------------------------------------------------------

# Attacks: CPU and memory (thousands of ranges, huge numbers), multipart amplification (overlapping
# and unsorted ranges), parser confusion (signs, non-ASCII digits, whitespace, other units).
RANGE_HEADERS: list[bytes] = [
    b"bytes=" + b",".join([b"0-0"] * 5000), b"bytes=0-0," * 5000,
    b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(16)),
    b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(17)), b"bytes=" + b",".join([b"-1"] * 16),
    b"bytes=" + b",".join([b"0-"] * 16), b"bytes=" + b",".join(b"%d-" % (i * 7) for i in range(16)),
    b"bytes=" + b",".join(b"%d-%d" % (i, i + 1000) for i in range(0, 16000, 1000)),
    b"bytes=" + b",".join([b"-{size}"] * 16),
    b"bytes=0-100,50-150,10-20", b"bytes=500-600,0-10,300-400", b"bytes=0-,0-", b"bytes=-100,0-", b"bytes=0-0,-1",
    b"bytes=0-9,10-19", b"bytes=10-19,0-9", b"bytes=0-0,2-2,4-4,6-6", b"bytes=5-,-5", b"bytes=0-{last},0-{last}",
    b"bytes=0-99999999999999999999999", b"bytes=99999999999999999999999-", b"bytes=-99999999999999999999999",
    b"bytes=" + b"9" * 10000 + b"-", b"bytes=0-" + b"9" * 100000, b"bytes=00000000000000000000000000001-2",
    b"bytes=18446744073709551615-18446744073709551616", b"bytes=9223372036854775807-", b"bytes=9223372036854775808-",
    b"bytes=0-9223372036854775807", b"bytes=-9223372036854775808", b"bytes=" + b"0" * 100000 + b"1-2",
    b"bytes=-0", b"bytes=--1", b"bytes=-1-2", b"bytes=1--2", b"bytes=-", b"bytes=--", b"bytes=-1-", b"bytes=+1-2",
    b"bytes=1-+2", b"bytes=0x10-0x20", b"bytes=1e3-2e3", b"bytes=1_000-2_000", b"bytes=1.5-2", b"bytes= 1 - 2 ",
    b"bytes=1 -2", b"bytes=5-4", b"bytes={size}-", b"bytes={size}-{past}", b"bytes={past}-", b"bytes=0-0",
    b"bytes=-1", b"bytes=-{size}", b"bytes=-{past}", b"bytes={last}-{last}", b"bytes={last}-", b"bytes=0-{last}",
    b"bytes=-0,-0", b"bytes=-0,0-0", b"bytes={size}-,{past}-", b"bytes=-(1)", b"bytes=(0)-(1)",
    # Arabic-Indic, extended Arabic-Indic, fullwidth, superscript, Devanagari, mathematical bold digits
    "bytes=\u0660-\u0669".encode(), "bytes=\u06f0-\u06f9".encode(), "bytes=\uff10-\uff19".encode(),
    "bytes=0-\uff19".encode(), "bytes=0-\u00b2".encode(), "bytes=-\u0661".encode(), "bytes=\u0966-\u096f".encode(),
    "bytes=\U0001d7ce-\U0001d7d7".encode(), "bytes=1\u0660-2".encode(), "bytes=\u0663-".encode(),
    b"bytes=", b"bytes=,", b"bytes=,,,,", b"bytes= , , ", b"bytes=\t", b"", b" ", b",", b"bytes",
    b"bytes=0-0" + b"," * 40, b"bytes = 0-1", b" bytes=0-1", b"bytes=0-1 ", b"bytes=\t0-1\t", b"bytes=0-1\x00",
    b"bytes=0-1\x0b", b"bytes=0-1;q=1", b"bytes=0-1\r\nSet-Cookie: x=1", b"bytes=" + b" " * 1000000 + b"0-1",
    b"BYTES=0-1", b"Bytes=0-1", b"items=0-1", b"bits=0-1", b"none", b"bytes:0-1", b"bytes 0-1", b"byte=0-1",
    b"bytes=bytes=0-1", "\uff42\uff59\uff54\uff45\uff53=0-1".encode(), b"bytes=0-1, items=0-1", b"\xff\xfe=0-1",
    b"bytes\x00=0-1",
    b"=0-1", b"*=0-1", b"bytes=*", b"bytes=0-1=2",
]  # fmt: skip

# -- 4. hostile conditionals ----------------------------------------------------------------------------------


class Conditional(NamedTuple):
    """Request headers, and the status a GET must get (None: any of 200/206/304/412/416)."""

    headers: Headers
    expect: int | None = None


_TEN_THOUSAND_TAGS = b", ".join(b'"t%d"' % i for i in range(10_000))
_WEIRD_TAGS: list[bytes] = [
    b"", b"*", b"*, {etag}", b"{etag}, *", b'"', b'""', b'W/""', b'"a", "b"', b"a", b'W/"x', b'"x"x"', b", , ,",
    b",", b'"\x00"', b'"\x7f"', "\"é\"".encode(), b"{etag} ", b" {etag}", b"{sha}", b"W/ {etag}", b"w/{etag}",
    b"{etag};q=1", b"*" * 1000, b'"' * 10001, b"\t*\t", _TEN_THOUSAND_TAGS, _TEN_THOUSAND_TAGS + b", {etag}",
    b"W/" * 5000 + b'"x"', b"{etag}" * 100, b"{etag},{etag}", b"{etag}\r\nSet-Cookie: x=1", b"W/W/{etag}",
]  # fmt: skip
_DATES: list[bytes] = [
    b"", b"garbage", b"{date}", b"Thu, 01 Jan 1970 00:00:00 GMT", b"Fri, 31 Dec 9999 23:59:59 GMT",
    b"Sat, 01 Jan 0001 00:00:00 GMT", b"Mon, 00 Jan 0000 00:00:00 GMT", b"Sun, 06 Nov 1994 08:49:37 GMT",
    b"Sunday, 06-Nov-94 08:49:37 GMT", b"Sun Nov  6 08:49:37 1994", b"2024-01-01T00:00:00Z", b"1704067200", b"-1",
    b"Thu, 01 Jan 1970 00:00:00 UTC", b"Thu, 31 Feb 2024 00:00:00 GMT", b"Thu, 01 Jan 2024 25:61:61 GMT",
    b"Thu, 01 Jan 99999 00:00:00 GMT", b"Thu, 01 Jan 2024 00:00:60 GMT", b"thu, 01 jan 2024 00:00:00 gmt",
    "Thu, \uff10\uff11 Jan \uff12\uff10\uff12\uff14 00:00:00 GMT".encode(),
    "Thu, \u0660\u0661 Jan \u0662\u0660\u0662\u0664 00:00:00 GMT".encode(),
    b"Thu, 01 Jan 2024 00:00:00 GMT, Fri, 02 Jan 2024 00:00:00 GMT", b"Sunday, 06-Nov-99 08:49:37 GMT",
    b"Sunday, 06-Nov-00 08:49:37 GMT", b"Sun Nov 31 08:49:37 1994", b"Sun, 06 Nov 1994 08:49:37 GMT\x00",
    b"Sun, 06 Nov 1994 08:49:37 +0000", b"Sun, 06 Nov 1994 08:49:37", b"{date}" * 1000, b"Sun, 6 Nov 1994 8:49:37 GMT",
    b"Tue, 19 Jan 2038 03:14:08 GMT", b"Sun, 07 Feb 2106 06:28:16 GMT", b"\xff\xfe\xfd",
]  # fmt: skip
_IF_RANGES: list[bytes] = [
    b"garbage", b"{etag}", b"{weak}", b'"other"', b"{date}", b"W/", b'"', b"*", b"", b"{sha}", b"{etag}, {etag}",
    b"Thu, 01 Jan 1970 00:00:00 GMT", b"Fri, 31 Dec 9999 23:59:59 GMT", b"{date}x", b" {etag} ", b"W/{etag}x",
    _TEN_THOUSAND_TAGS,
]  # fmt: skip

# Attacks: precondition evaluation with malformed lists, weak/strong confusion, "*" with other
# tags, 10^4-tag lists, dates in every wrong format and absurd year, If-Range garbage; plus a few
# with a known answer (RFC 9110 §13.1, §13.2.2).
CONDITIONALS: list[Conditional] = (
    [Conditional(((b"if-match", tag),)) for tag in _WEIRD_TAGS]
    + [Conditional(((b"if-none-match", tag),)) for tag in _WEIRD_TAGS]
    + [Conditional(((b"if-modified-since", date),)) for date in _DATES]
    + [Conditional(((b"if-unmodified-since", date),)) for date in _DATES]
    + [Conditional(((b"range", b"bytes=0-9"), (b"if-range", value))) for value in _IF_RANGES]
    + [
        Conditional(((b"if-none-match", b"{etag}"),), 304),
        Conditional(((b"if-none-match", b"{weak}"),), 304),  # weak comparison
        Conditional(((b"if-none-match", b"*"),), 304),
        Conditional(((b"if-none-match", _TEN_THOUSAND_TAGS + b", {weak}"),), 304),
        Conditional(((b"if-match", b"{weak}"),), 412),  # strong comparison
        Conditional(((b"if-match", b'"nope"'),), 412),
        Conditional(((b"if-match", b"garbage"),), 412),
        Conditional(((b"if-match", _TEN_THOUSAND_TAGS),), 412),
        Conditional(((b"if-match", b"*"),), 200),
        Conditional(((b"if-match", b"{etag}"),), 200),
        Conditional(((b"if-unmodified-since", b"Thu, 01 Jan 1970 00:00:00 GMT"),), 412),
        Conditional(((b"if-modified-since", b"Fri, 31 Dec 9999 23:59:59 GMT"),), 304),
        Conditional(((b"if-match", b"*"), (b"if-none-match", b"*")), 304),
        Conditional(((b"if-match", b'"nope"'), (b"if-none-match", b"{etag}")), 412),
        Conditional(((b"if-none-match", b'"nope"'), (b"if-modified-since", b"Fri, 31 Dec 9999 23:59:59 GMT")), 200),
        Conditional(((b"range", b"bytes=0-9"), (b"if-range", b"{etag}")), 206),
        Conditional(((b"range", b"bytes=0-9"), (b"if-range", b"{weak}")), 200),
        Conditional(((b"range", b"bytes=0-9"), (b"if-range", b"{date}")), 206),
        Conditional(((b"range", b"bytes=0-9"), (b"if-range", b"garbage")), 200),
        Conditional(((b"range", b"bytes={past}-"), (b"if-none-match", b"{etag}")), 304),
        Conditional(((b"range", b"bytes={past}-"), (b"if-match", b"garbage")), 412),
        Conditional(((b"range", b"bytes=0-1,3-4"), (b"if-range", b"{etag}"), (b"if-match", b"*")), 206),
        Conditional(((b"if-none-match", b"{etag}"), (b"if-none-match", b"{etag}")), 304),  # repeated header
        Conditional(((b"if-match", b"{etag}"), (b"if-match", b"garbage")), 412),  # joined: malformed
    ]
)

# -- 5. oversized headers ----------------------------------------------------------------------------------------


class Oversized(NamedTuple):
    """A request with huge headers, and the statuses it may get."""

    label: str
    method: str
    target: str
    headers: Headers
    allowed: frozenset[int]
    with_token: bool = False


MIB = 1024 * 1024
_OK = frozenset({200, 206, 304, 412, 416})


def oversized_requests() -> list[Oversized]:
    """Attacks: memory and CPU through one 1 MiB header value, or 1,000 headers.

    In process these reach the adapters directly. In front of servefiles, gunicorn refuses them
    itself (limit_request_field_size 8,190 bytes, limit_request_fields 100), and so does uvicorn
    with h11 (a request head over h11_max_incomplete_event_size, 16 KiB by default). uvicorn with
    httptools, which it picks when installed (``uvicorn[standard]``), was seen passing both a 1 MiB
    header and 1,000 headers to the app: servefiles itself must answer them, quickly and correctly.
    """
    many = tuple((b"x-header-%d" % i, b"value-%d" % i) for i in range(1000))
    return [
        Oversized("1 MiB unknown header", "GET", "/media/image.png", ((b"x-junk", b"a" * MIB),), frozenset({200})),
        Oversized("1 MiB header name", "GET", "/media/image.png", ((b"x" * MIB, b"1"),), frozenset({200})),
        Oversized("1 MiB Range", "GET", "/media/image.png", ((b"range", b"bytes=" + b"0-0," * (MIB // 4)),), _OK),
        Oversized("1 MiB Range digits", "GET", "/media/image.png", ((b"range", b"bytes=0-" + b"9" * MIB),), _OK),
        Oversized("1 MiB If-None-Match", "GET", "/media/image.png", ((b"if-none-match", b'"x", ' * (MIB // 5)),), _OK),
        Oversized("1 MiB If-Match", "GET", "/media/image.png", ((b"if-match", b'W/"x",' * (MIB // 6)),), _OK),
        Oversized("1 MiB If-Modified-Since", "GET", "/media/image.png", ((b"if-modified-since", b"a" * MIB),), _OK),
        Oversized("1 MiB If-Unmodified-Since", "GET", "/media/image.png",
                  ((b"if-unmodified-since", b"a" * MIB),), _OK),
        Oversized("1 MiB If-Range", "GET", "/media/image.png",
                  ((b"range", b"bytes=0-1"), (b"if-range", b'"' * MIB)), _OK),
        Oversized("1 MiB Cookie", "GET", "/media/image.png", ((b"cookie", b"a=" + b"b" * MIB),), frozenset({200})),
        Oversized("1 MiB Authorization on GET", "GET", "/media/image.png",
                  ((b"authorization", b"Bearer " + b"a" * MIB),), frozenset({200})),
        Oversized("1 MiB Authorization on PUT", "PUT", "/media/huge/auth.txt",
                  ((b"authorization", b"Bearer " + b"a" * MIB),), frozenset({401})),
        Oversized("1 MiB Content-Type on PUT", "PUT", "/media/huge/type.txt",
                  ((b"content-type", b"text/plain; x=" + b"a" * MIB),), frozenset({400}), with_token=True),
        Oversized("1 MiB If-Match on PUT", "PUT", "/media/notes.txt",
                  ((b"if-match", b'"x", ' * (MIB // 5)),), frozenset({412}), with_token=True),
        Oversized("1 MiB Content-Length on PUT", "PUT", "/media/huge/length.txt",
                  ((b"content-length", b"9" * MIB),), frozenset({413}), with_token=True),
        Oversized("1,000 headers", "GET", "/media/image.png", many, frozenset({200})),
        Oversized("1,000 headers on HEAD", "HEAD", "/media/image.png", many, frozenset({200})),
        Oversized("1,000 headers on PUT", "PUT", "/media/huge/many.txt", many, frozenset({201}), with_token=True),
        Oversized("1,000 Range headers", "GET", "/media/image.png", ((b"range", b"bytes=0-0"),) * 1000, _OK),
        Oversized("1,000 If-None-Match headers", "GET", "/media/image.png", ((b"if-none-match", b'"x"'),) * 1000, _OK),
        Oversized("1,000 Host headers", "GET", "/media/image.png", ((b"host", b"evil.example"),) * 1000,
                  frozenset({200})),
        Oversized("1,000 Authorization headers", "PUT", "/media/huge/auths.txt",
                  ((b"authorization", b"Bearer x" * 3),) * 1000, frozenset({401})),
    ]  # fmt: skip


# -- 6. uploads with active content ------------------------------------------------------------------------------


class Upload(NamedTuple):
    """A PUT with the token: the key, the declared Content-Type (None: none sent), the body."""

    key: str
    content_type: bytes | None
    body: bytes


_HTML = b"<!doctype html><html><body><script>alert(document.domain)</script></body></html>"
_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(document.cookie)</script>'
    b'<foreignObject><body xmlns="http://www.w3.org/1999/xhtml"><iframe src="javascript:alert(2)"/></body>'
    b"</foreignObject></svg>"
)
_GIF_HTML = b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=1;<script>alert(1)</script><!--\x00\x00;-->"
_PNG_HTML = b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>"
_XHTML = b'<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>'
_JS = b"alert(document.cookie)"
_UTF7 = b"+ADw-script+AD4-alert(1)+ADw-/script+AD4-"
_XSL = b'<?xml version="1.0"?><xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"/>'
_MIXED = b"--x\r\nContent-Type: text/html\r\n\r\n<script>alert(1)</script>\r\n--x--\r\n"
_PDF = b"%PDF-1.4\n1 0 obj<</OpenAction<</S/JavaScript/JS(app.alert(1))>>>>endobj\ntrailer<</Root 1 0 R>>"

# Attacks: stored XSS on the app's origin: HTML/SVG/XHTML/JS and polyglots under every declared type
# (case, parameters, charset=utf-7, +xml suffixes, JS aliases), types that contradict the extension,
# and guessed types from extensions; all must be served with nosniff and, when active, as attachments.
ACTIVE_UPLOADS: list[Upload] = [
    Upload("poly/script.svg", b"image/svg+xml", _SVG), Upload("poly/guessed.svg", None, _SVG),
    Upload("poly/gif.gif", b"image/gif", _GIF_HTML), Upload("poly/gif-guessed.gif", None, _GIF_HTML),
    Upload("poly/gif.html", None, _GIF_HTML), Upload("poly/html.png", b"text/html", _HTML),
    Upload("poly/png-named.png", None, _HTML), Upload("poly/png-magic.html", None, _PNG_HTML),
    Upload("poly/png-magic.png", b"image/png", _PNG_HTML), Upload("poly/x.xhtml", b"application/xhtml+xml", _XHTML),
    Upload("poly/guessed.xhtml", None, _XHTML), Upload("poly/x.js", b"text/javascript", _JS),
    Upload("poly/guessed.js", None, _JS), Upload("poly/guessed.mjs", None, _JS),
    Upload("poly/utf7.txt", b"text/html; charset=utf-7", _UTF7), Upload("poly/upper.bin", b"TEXT/HTML", _HTML),
    Upload("poly/semicolon.bin", b"text/html;", _HTML), Upload("poly/spaced.bin", b"Text/Html ; charset=utf-8", _HTML),
    Upload("poly/tabbed.bin", b"text/html\t; x=1", _HTML),
    Upload("poly/svg-charset.bin", b"image/svg+xml; charset=utf-8", _SVG),
    Upload("poly/app-xml.bin", b"application/xml", _XHTML), Upload("poly/text-xml.bin", b"text/xml", _XHTML),
    Upload("poly/xsl.bin", b"text/xsl", _XSL), Upload("poly/rss.bin", b"application/rss+xml", _XHTML),
    Upload("poly/mathml.bin", b"application/mathml+xml", _XHTML),
    Upload("poly/atom.bin", b"APPLICATION/ATOM+XML", _XHTML),
    Upload("poly/appjs.bin", b"application/javascript", _JS), Upload("poly/ecma.bin", b"application/ecmascript", _JS),
    Upload("poly/textecma.bin", b"text/ecmascript", _JS), Upload("poly/jscript.bin", b"text/jscript", _JS),
    Upload("poly/xjs.bin", b"application/x-javascript", _JS), Upload("poly/js15.bin", b"text/javascript1.5", _JS),
    Upload("poly/octet.bin", b"application/octet-stream", _HTML), Upload("poly/plain.html", b"text/plain", _HTML),
    Upload("poly/guessed.htm", None, _HTML), Upload("poly/guessed.xml", None, _XHTML),
    Upload("poly/guessed.xsl", None, _XSL), Upload("poly/UPPER.HTML", None, _HTML),
    Upload("poly/dot.html.", None, _HTML),
    Upload("poly/form.html", b"application/x-www-form-urlencoded", _HTML),
    Upload("poly/form.bin", b"application/x-www-form-urlencoded", _HTML),
    Upload("poly/x.pdf", b"application/pdf", _PDF),
    Upload("poly/mixed.bin", b"multipart/x-mixed-replace; boundary=x", _MIXED),
    Upload("poly/utf7-plain.bin", b"text/plain; charset=utf-7", _UTF7),
    Upload("poly/json.bin", b"application/json", _HTML),
    Upload("poly/css.bin", b"text/css", b"body{background:url(javascript:alert(1))}"),
    Upload("poly/svgz.svgz", None, _SVG), Upload("poly/html.gz", None, _HTML), Upload("poly/index.html", None, _HTML),
    Upload("poly/params.bin", b'text/html; charset="utf-8"; x=","', _HTML),
    Upload("poly/large.svg", None, _SVG + b"<!--" + b"x" * 300_000 + b"-->"),  # the disk tier, wsgi.file_wrapper
]  # fmt: skip

# -- 7. hostile upload names ----------------------------------------------------------------------------------------

# Attacks: a name that splits a header or escapes its quoted-string when it reaches Location or
# Content-Disposition (quotes, semicolons, CR/LF, Unicode line breaks, RTL override, encoded words,
# characters PostgreSQL or SQLite might choke on: noncharacters, astral planes, U+FFFD).
UPLOAD_NAMES: list[str] = [
    "x\r\nSet-Cookie: x=1.html", "x\nSet-Cookie: x=1.html", "x\rSet-Cookie: x=1.html", "x\u2028Set-Cookie: x=1.html",
    "x\u2029.html", "x\u0085.html", "x\x00.html", "x\x1b[31m.html", "x\t.html", "x\x7f.html", "x\ud800.html",
    "x\ufffd.html", 'a"; filename="evil.html', 'a";.html', "evil\u202egnp.html", "x;.html", "x'.svg", "x%22.html",
    "x%0d%0aSet-Cookie:%20x=1.html", "<script>alert(1)</script>.html", "\u200b.html", "x\ufeff.svg", "\uff58.html",
    "a\u0301.html", "x .html", "x.html.", "x.html ", "=?utf-8?q?evil=2Ehtml?=.html", "..html", "x\\.html",
    "résumé.svg", "\U0001f600.html", "x\ufffe.html", "x\uffff.html", "x\ufdd0.html", "x\U0010ffff.html",
    "x\u010d\u010aSet-Cookie: x=1.html", "x\u560a\u560dSet-Cookie: x=1.html", "a" * 250 + ".html", "dir\u2215x.html",
    "x\u00a0.html", "\u3000.html", "x*.html", "x?.html", "x#.html", "x&y=1.html", "x<>.html", "x|.html", "x:.html",
    "filename*=UTF-8''evil.html", "x\\\"y.html", "%",
]  # fmt: skip

# -- 8. refused and odd upload requests -------------------------------------------------------------------------------


class RefusedUpload(NamedTuple):
    """A PUT with the token and hostile framing, and the statuses it may get.

    ``body`` is the body (an int: that many bytes); ``length``: send a Content-Length matching
    the body unless the headers carry their own; ``abort``: the client goes away after the first chunk.
    """

    label: str
    headers: Headers
    body: bytes | int
    allowed: frozenset[int]
    length: bool = True
    abort: bool = False


MAX_UPLOAD_BYTES = 1_000_000

# Attacks: partial PUTs stored as whole files, encoded bodies stored undecoded, form posts, lying or
# malformed Content-Length, bodies over the limit with and without a length, clients that vanish.
REFUSED_UPLOADS: list[RefusedUpload] = [
    RefusedUpload("content-range", ((b"content-range", b"bytes 0-4/5"),), b"hello", frozenset({400})),
    RefusedUpload("empty content-range", ((b"content-range", b""),), b"hello", frozenset({400})),
    RefusedUpload("gzip", ((b"content-encoding", b"gzip"),), b"\x1f\x8b\x08\x00", frozenset({415})),
    RefusedUpload("GZIP", ((b"content-encoding", b"GZIP"),), b"x", frozenset({415})),
    RefusedUpload("identity, gzip", ((b"content-encoding", b"identity, gzip"),), b"x", frozenset({415})),
    RefusedUpload("br", ((b"content-encoding", b"br"),), b"x", frozenset({415})),
    RefusedUpload("long encoding", ((b"content-encoding", b"x" * 10000),), b"x", frozenset({415})),
    RefusedUpload("form-data", ((b"content-type", b"multipart/form-data; boundary=x"),), b"--x--", frozenset({415})),
    RefusedUpload("FORM-DATA", ((b"content-type", b"MULTIPART/FORM-DATA"),), b"--x--", frozenset({415})),
    RefusedUpload("length abc", ((b"content-length", b"abc"),), b"hello", frozenset({400})),
    RefusedUpload("length -1", ((b"content-length", b"-1"),), b"hello", frozenset({400})),
    RefusedUpload("length 1e3", ((b"content-length", b"1e3"),), b"hello", frozenset({400})),
    RefusedUpload("length 0x10", ((b"content-length", b"0x10"),), b"hello", frozenset({400})),
    RefusedUpload("length +5", ((b"content-length", b"+5"),), b"hello", frozenset({400})),
    RefusedUpload("length arabic five", ((b"content-length", "\u0665".encode()),), b"hello", frozenset({400})),
    RefusedUpload("length superscript two", ((b"content-length", "\u00b2".encode()),), b"he", frozenset({400})),
    RefusedUpload("length 5, 5", ((b"content-length", b"5, 5"),), b"hello", frozenset({400})),
    RefusedUpload("length 5_0", ((b"content-length", b"5_0"),), b"hello", frozenset({400})),
    RefusedUpload("length space", ((b"content-length", b" "),), b"hello", frozenset({400})),
    RefusedUpload("length huge", ((b"content-length", b"99999999999999999999"),), b"hello", frozenset({413})),
    RefusedUpload("length over the limit", ((b"content-length", b"%d" % (MAX_UPLOAD_BYTES + 1)),), b"hello",
                  frozenset({413})),
    RefusedUpload("body over the limit, no length", (), MAX_UPLOAD_BYTES + 1, frozenset({413}), length=False),
    RefusedUpload("body over the limit, short length", ((b"content-length", b"10"),), MAX_UPLOAD_BYTES + 1,
                  frozenset({201, 400, 413})),
    # The ASGI adapter leaves Content-Length framing to the server (uvicorn's h11/httptools enforce it);
    # the WSGI adapter counts: either answer is fine as long as a refusal stores nothing.
    RefusedUpload("length longer than body", ((b"content-length", b"100"),), b"hello", frozenset({201, 400})),
    RefusedUpload("empty length", ((b"content-length", b""),), b"hello", frozenset({201, 400})),
    RefusedUpload("client goes away", (), 600_000, frozenset({400}), abort=True),
    RefusedUpload("client goes away, no length", (), 600_000, frozenset({400}), length=False, abort=True),
]  # fmt: skip

# -- 9. methods and credentials ----------------------------------------------------------------------------------------

# Attacks: verb tampering (methods servefiles does not implement, case variants, padded names) that a
# dispatcher might route to a write or to the wrapped app.
METHODS: list[str] = [
    "POST", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK",
    "UNLOCK", "SEARCH", "QUERY", "LINK", "UNLINK", "PURGE", "M-SEARCH", "BREW", "get", "Get", "head", "put",
    "delete", "Delete", "GET ", " PUT", "PUT\x00", "DELETE\r\n", "GETX", "PUTS", "X" * 1000, "",
]  # fmt: skip

# Attacks: authentication bypass: missing, empty, malformed, oversized (100 KB), other schemes, the
# token with a byte too many or too few, in another case, twice, with NUL or non-ASCII look-alikes.
AUTHORIZATIONS: list[bytes | None] = [
    None, b"", b"Bearer", b"Bearer ", b"Bearer " + b"A" * 100_000, b"A" * 100_000, b"Basic c2VjOmNvcnB1cw==",
    b"Bearer {token}x", b"Bearer x{token}", b"Bearer {TOKEN}", b"Bearer {token_short}", b"Bearer {token}\x00",
    b"Bearer {token}, Bearer {token}", b"Token {token}", b"Bearer\t{token}", b"Bearer=\"{token}\"",
    b"Digest username=\"x\", response=\"{token}\"", b"Bearer null", b"Bearer undefined", b"Bearer *",
    b"Bearer %00", b"Bearer " + b"\xff" * 100, b"Bearer {token_fullwidth}", b"{token}",
    b"Bearer {token_url}", b"Bearer \"{token}\"", b"Bearer {token}\xc2\xa0",
]  # fmt: skip

# -- 10. listing queries ---------------------------------------------------------------------------------------

# Attacks: the listing (GET {prefix}/ with the token) as a directory listing of the filesystem or of
# another scope: traversal in prefix/after, NUL and surrogates that PostgreSQL cannot take as text,
# limits that are not numbers or are out of range, repeated and oversized parameters.
LISTING_QUERIES: list[str] = [
    "", "prefix=", "prefix=../", "prefix=..%2f..%2f", "prefix=%2fetc", "prefix=/", "prefix=%00", "prefix=a%00",
    "prefix=a%0d%0aSet-Cookie:%20x=1", "after=%00", "after=../../", "after=%ed%a0%80", "prefix=%ed%a0%80",
    "limit=0", "limit=-1", "limit=10001", "limit=99999999999999999999999", "limit=1e3", "limit=%d9%a3",
    "limit=+5", "limit=%205", "limit=5_0", "limit=", "limit=abc", "limit=1&limit=2", "prefix=a&prefix=b",
    "prefix=" + "a" * 5000, "after=" + "a" * 5000, "prefix[]=x", "%ff=%ff", "prefix=%ff", "prefix=%c0%ae%c0%ae%2f",
    "?", "&&&&", "prefix=a/b", "prefix=a/b/", "prefix=poly/", "limit=1", "limit=1&prefix=a", "limit=1&after=a",
    "limit=1&prefix=%3e%22%0d%0a", "after=%f4%8f%bf%bf", "prefix=%f4%8f%bf%bf", "prefix=%ef%bf%bf",
    "prefix=%25", "prefix=_", "prefix=%5c", "prefix=*", "prefix=%", "after=", "limit=10000", "limit=1&after=%00",
]  # fmt: skip


# -- 11. a token scoped to one folder -----------------------------------------------------------------------------

# Attacks: a token limited to "blog" writing, deleting or listing outside its folder: traversal out of
# it, sibling names sharing its first letters, case and Unicode look-alikes of the folder name,
# percent-encoding of the folder name itself (which is the folder: allowed), dot and empty segments.
SCOPE_TARGETS: list[str] = [
    "/media/blog/../notes.txt", "/media/blog%2f..%2fnotes.txt", "/media/blog/%2e%2e/notes.txt", "/media/blogroll.png",
    "/media/blog", "/media/blog/", "/media/Blog/x.txt", "/media/BLOG/x.txt", "/media/blog%e2%88%95x.txt",
    "/media/%ef%bd%82log/x.txt", "/media/blog/./x.txt", "/media/./blog/x.txt", "/media//blog/x.txt",
    "/media/blog\\..\\notes.txt", "/media/blog%5c..%5cnotes.txt", "/media/notes.txt", "/media/a/b/c.txt",
    "/media/blo%67/scoped.txt", "/media/%62%6c%6f%67/scoped.txt", "/media/blog%00/x.txt", "/media/blog%20/x.txt",
    "/media/blog./x.txt", "/media/blog%c2%a0/x.txt", "/media/blog%e2%80%8b/x.txt", "/media/blog/x.txt",
    "/media/blog/deeper/x.txt", "/media/blog/..", "/media/blog/../blog/x.txt",
    "/media/blog/%2e%2e%2f%2e%2e%2fetc/passwd",
    "/media/../media/blog/../notes.txt", "/media/blog%2f%2e%2e%2fa%2fb%2fc.txt", "/media/blog/x.txt/../../notes.txt",
]  # fmt: skip
SCOPE_LISTING_QUERIES: list[str] = [
    "", "prefix=", "prefix=b", "prefix=blo", "prefix=blog", "prefix=blog/", "prefix=blogroll", "prefix=a",
    "prefix=a/b/", "prefix=notes", "prefix=../", "prefix=blog/../", "prefix=blog%2f..%2f", "prefix=%00",
    "prefix=Blog/", "prefix=%ef%bd%82log/", "after=a", "after=blog/", "prefix=blog/&after=a", "prefix=a&prefix=blog/",
    "prefix=blog/&prefix=a", "prefix=blog/&limit=1", "after=%f4%8f%bf%bf", "prefix=blog/%00",
]  # fmt: skip


def total_inputs() -> int:
    """How many inputs the corpus holds, over every family."""
    families: list[list[object]] = [
        list(ENCODED_TRAVERSALS), list(TRAVERSAL_TARGETS), list(INJECTION_TARGETS), list(INJECTION_CONTENT_TYPES),
        list(RANGE_HEADERS), list(CONDITIONALS), list(oversized_requests()), list(ACTIVE_UPLOADS), list(UPLOAD_NAMES),
        list(REFUSED_UPLOADS), list(METHODS), list(AUTHORIZATIONS), list(LISTING_QUERIES), list(SCOPE_TARGETS),
        list(SCOPE_LISTING_QUERIES),
    ]  # fmt: skip
    return sum(len(family) for family in families)


def family_sizes() -> dict[str, int]:
    """Inputs per family, for the report."""
    return {
        "encoded traversals": len(ENCODED_TRAVERSALS),
        "traversal targets": len(TRAVERSAL_TARGETS),
        "injection targets": len(INJECTION_TARGETS),
        "injection content types": len(INJECTION_CONTENT_TYPES),
        "range headers": len(RANGE_HEADERS),
        "conditionals": len(CONDITIONALS),
        "oversized requests": len(oversized_requests()),
        "active uploads": len(ACTIVE_UPLOADS),
        "upload names": len(UPLOAD_NAMES),
        "refused uploads": len(REFUSED_UPLOADS),
        "methods": len(METHODS),
        "authorizations": len(AUTHORIZATIONS),
        "listing queries": len(LISTING_QUERIES),
        "scope targets": len(SCOPE_TARGETS),
        "scope listing queries": len(SCOPE_LISTING_QUERIES),
        "private targets": len(PRIVATE_TARGETS),
        "private headers": len(PRIVATE_HEADERS),
    }

# -- 9. private files: signatures and paths ----------------------------------------------------------

# Run against an app with private folders ``members/docs`` and ``invoices`` and a signing key, by
# ``test_private_inputs.py``. Placeholders: ``{e}`` / ``{s}`` a valid expiry and its signature for
# members/docs/x.pdf; ``{s_other}`` the signature of members/docs/y.pdf with the same expiry;
# ``{e_past}``/``{s_past}`` an expired pair, ``{e_far}``/``{s_far}`` a pair beyond the maximum expiry
# (both signed with the right key); ``{s_trunc}`` ``{s}`` less its last character, ``{s_pct}`` /
# ``{s_pct2}`` ``{s}`` percent-encoded once / twice, character by character.
# Attacks: reading a private file without a valid signature for it (every mangling of the query a
# client, proxy or attacker might produce), or through a path that canonicalises to a private key.
PRIVATE_PATH = "/media/members/docs/x.pdf"
PRIVATE_TARGETS: list[str] = [
    PRIVATE_PATH, PRIVATE_PATH + "?", PRIVATE_PATH + "?expires={e}", PRIVATE_PATH + "?signature={s}",
    PRIVATE_PATH + "?expires={e}&signature=", PRIVATE_PATH + "?expires=&signature={s}",
    # truncated, doubled, padded, non-ASCII, percent-encoded once and twice
    PRIVATE_PATH + "?expires={e}&signature={s_trunc}", PRIVATE_PATH + "?expires={e}&signature={s}{s}",
    PRIVATE_PATH + "?expires={e}&signature={s}=", PRIVATE_PATH + "?expires={e}&signature={s}%3D",
    PRIVATE_PATH + "?expires={e}&signature={s}%C3%A9", PRIVATE_PATH + "?expires={e}&signature=%C3%A9{s_trunc}",
    PRIVATE_PATH + "?expires={e}&signature={s_trunc}%C3", PRIVATE_PATH + "?expires={e}&signature={s_trunc}%FF",
    PRIVATE_PATH + "?expires={e}&signature={s_pct}", PRIVATE_PATH + "?expires={e}&signature={s_pct2}",
    PRIVATE_PATH + "?expires={e}&signature=%00{s_trunc}", PRIVATE_PATH + "?expires={e}&signature={s_trunc}%0A",
    # another key's signature with the same expiry, expired, too far ahead
    PRIVATE_PATH + "?expires={e}&signature={s_other}", PRIVATE_PATH + "?expires={e_past}&signature={s_past}",
    PRIVATE_PATH + "?expires={e_far}&signature={s_far}", PRIVATE_PATH + "?expires={e_past}&signature={s}",
    # non-numeric and odd expiries
    PRIVATE_PATH + "?expires={e}x&signature={s}", PRIVATE_PATH + "?expires=abc&signature={s}",
    PRIVATE_PATH + "?expires=-{e}&signature={s}", PRIVATE_PATH + "?expires=%2B{e}&signature={s}",
    PRIVATE_PATH + "?expires={e}.0&signature={s}", PRIVATE_PATH + "?expires=0{e}&signature={s}",
    PRIVATE_PATH + "?expires=%20{e}&signature={s}", PRIVATE_PATH + "?expires={e}%20&signature={s}",
    PRIVATE_PATH + "?expires=99999999999999999999999999&signature={s}",
    PRIVATE_PATH + "?expires=%D9%A1%D9%A2%D9%A3&signature={s}", PRIVATE_PATH + "?expires=1e10&signature={s}",
    PRIVATE_PATH + "?expires=0x7fffffff&signature={s}", PRIVATE_PATH + "?expires=inf&signature={s}",
    # repeated, renamed and smuggled parameters
    PRIVATE_PATH + "?expires={e}&signature={s}&signature={s}", PRIVATE_PATH + "?expires={e}&expires={e}&signature={s}",
    PRIVATE_PATH + "?expires={e}&signature={s_other}&signature={s}",
    PRIVATE_PATH + "?expires={e_past}&expires={e}&signature={s}", PRIVATE_PATH + "?EXPIRES={e}&SIGNATURE={s}",
    PRIVATE_PATH + "?expires%3D{e}%26signature%3D{s}", PRIVATE_PATH + "?expires={e};signature={s}",
    PRIVATE_PATH + "?expires={e}&signature[]={s}", PRIVATE_PATH + "?expires[]={e}&signature={s}",
    PRIVATE_PATH + "?%65xpires={e}&signature={s}", PRIVATE_PATH + "?expires={e}&%73ignature={s}",
    PRIVATE_PATH + "?expires={e}%26signature%3D{s}", PRIVATE_PATH + "#?expires={e}&signature={s}",
    PRIVATE_PATH + "%3Fexpires={e}&signature={s}",
    # the right signature on another path
    "/media/members/docs/y.pdf?expires={e}&signature={s}", "/media/invoices/x.pdf?expires={e}&signature={s}",
    "/media/members/docs/x.pdf/?expires={e}&signature={s}", "/media/members/docs/x.pdf.?expires={e}&signature={s}",
    # paths that canonicalise to a private key, or try to
    "/media/members/docs/../docs/x.pdf", "/media/members/docs/%2e%2e/docs/x.pdf", "/media/members/./docs/x.pdf",
    "/media/members/docs/%2E%2E/docs/x.pdf?expires={e}&signature={s}", "/media/members//docs/x.pdf",
    "/media/members/docs/%252e%252e/docs/x.pdf", "/media/%6dembers/docs/x.pdf", "/media/members%2fdocs%2fx.pdf",
    "/media/members/docs%2Fx.pdf", "/media/Members/docs/x.pdf", "/media/MEMBERS/DOCS/X.PDF",
    "/media/members/Docs/x.pdf", "/media/members/docs/X.pdf", "/media/members/docs/x.pdf%00",
    "/media/members/docs/x.pdf%20", "/media/members/docs/x.pdf.", "/media/members/docs/x.pdf%2e",
    "/media/members/docs/caf%C3%A9.pdf", "/media/members/docs/cafe%CC%81.pdf", "/media/members/docs/CAF%C3%89.pdf",
    "/media/members/docs/caf%EF%BD%85%CC%81.pdf", "/media/members/docs%E2%88%95x.pdf", "/media/members/docs",
    "/media/members/docs/", "/media/members", "/media/invoices", "/media/invoices/",
    "/media/a/../members/docs/x.pdf", "/media/./members/docs/x.pdf", "/media//members/docs/x.pdf",
]  # fmt: skip
PRIVATE_HEADERS: list[Headers] = [
    ((b"x-signature", b"{s}"), (b"x-expires", b"{e}")),
    ((b"signature", b"{s}"), (b"expires", b"{e}")),
    ((b"authorization", b"Signature {s}"),),
    ((b"authorization", b"Bearer {s}"),),
    ((b"authorization", b"Bearer expires={e}&signature={s}"),),
    ((b"cookie", b"expires={e}; signature={s}"),),
    ((b"referer", b"http://test/media/members/docs/x.pdf?expires={e}&signature={s}"),),
    ((b"x-original-url", b"/media/members/docs/x.pdf?expires={e}&signature={s}"),),
    ((b"x-forwarded-uri", b"/media/members/docs/x.pdf?expires={e}&signature={s}"),),
]
