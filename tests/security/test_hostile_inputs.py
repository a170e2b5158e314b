"""The hostile-input corpus (``corpus.py``) against both adapters and both stores, in process.

One test per family and per adapter x store: each loops over its family, checks every response
against the invariants that hold whatever the input (``Harness.invariant_problems``: no 5xx,
no CR/LF/NUL in a header, no Set-Cookie, nosniff, no canary bytes, under 2 s) and against what
the family's input should get, and reports every failing input at once. Around the hostile
requests an audit hook records any file opened outside the cache dir, the database and Python's
own code; at the end nothing may have changed outside the cache dir.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote_to_bytes

from servefiles.content_types import is_active_content

from .corpus import (
    ACTIVE_UPLOADS,
    AUTHORIZATIONS,
    CONDITIONALS,
    ENCODED_TRAVERSALS,
    INJECTION_CONTENT_TYPES,
    INJECTION_TARGETS,
    LISTING_QUERIES,
    METHODS,
    RANGE_HEADERS,
    REFUSED_UPLOADS,
    SCOPE_LISTING_QUERIES,
    SCOPE_TARGETS,
    TRAVERSAL_TARGETS,
    UPLOAD_NAMES,
    family_sizes,
    oversized_requests,
    total_inputs,
)
from .harness import BLOG_TOKEN, PREFIX, TOKEN, Harness, Reply, expected_key, install_audit_hook, target_for

MAX_RANGES = 16
"""HttpPolicy.max_ranges, the default the apps run with."""

# An independent list of types a browser runs or renders as a document, so the check does not
# rest on servefiles' own is_active_content alone.
_ALWAYS_ACTIVE = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml", "text/xsl",
     "text/javascript", "application/javascript", "application/ecmascript", "application/x-javascript",
     "text/ecmascript", "text/jscript", "multipart/x-mixed-replace"}
)  # fmt: skip
_ATTACHMENT = re.compile(
    rb"attachment; filename=\"([\x20\x21\x23-\x5b\x5d-\x7e]*)\"; filename\*=UTF-8''([A-Za-z0-9!#$&+\-.^_`|~%]*)"
)
_CONTENT_RANGE = re.compile(rb"bytes ([0-9]+)-([0-9]+)/([0-9]+)")


def _essence(content_type: bytes | str) -> str:
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    return text.partition(";")[0].strip(" \t").lower()


def _must_be_attachment(content_type: bytes | str) -> bool:
    essence = _essence(content_type)
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    return is_active_content(text) or essence in _ALWAYS_ACTIVE or essence.endswith("+xml")


def _disposition_problems(reply: Reply, content_types: list[bytes], key: str | None = None) -> list[str]:
    """Active content is an attachment whose file names cannot break out of the header."""
    problems = []
    disposition = reply.header(b"content-disposition")
    if any(_must_be_attachment(t) for t in content_types) and disposition is None:
        problems.append(f"active content {content_types!r} served inline (no Content-Disposition)")
    if disposition is not None:
        match = _ATTACHMENT.fullmatch(disposition)
        if match is None:
            problems.append(f"malformed Content-Disposition {disposition[:200]!r}")
        elif key is not None:
            name = unquote_to_bytes(match.group(2).decode("ascii")).decode("utf-8", "replace")
            if name != key.rsplit("/", 1)[-1]:
                problems.append(f"Content-Disposition names {name!r}, not the key's last segment")
    return problems


def _json(reply: Reply) -> dict[str, object] | None:
    try:
        parsed = json.loads(reply.body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _json_error(reply: Reply, status: int, code: str | None = None) -> str | None:
    """None if ``reply`` is the JSON error ``status``/``code``, else what is wrong with it."""
    body = _json(reply)
    if reply.status != status or body is None or (code is not None and body.get("error") != code):
        return f"expected {status} {code}, got {reply.status} {reply.body[:200]!r}"
    if reply.header(b"content-type") != b"application/json":
        return f"JSON error with Content-Type {reply.header(b'content-type')!r}"
    return None


# -- corpus and hook self-checks --------------------------------------------------------------------------


def test_the_corpus_holds_at_least_300_inputs() -> None:
    assert total_inputs() >= 300, family_sizes()
    assert all(size > 0 for size in family_sizes().values()), family_sizes()
    for target in [*ENCODED_TRAVERSALS, *TRAVERSAL_TARGETS, *INJECTION_TARGETS]:
        assert target.isascii() and " " not in target, f"not a request-line target: {target!r}"


def test_the_audit_hook_records_opens_outside_the_allowed_roots(tmp_path: Path) -> None:
    """The hook the other tests rely on sees builtins.open and os.open, follows symlinks, and
    ignores what is allowed and everything while disarmed."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside.txt"
    allowed.mkdir()
    outside.write_bytes(b"x")
    (allowed / "link").symlink_to(outside)
    log = install_audit_hook()
    saved = (log.read_roots, log.write_roots, log.write_files)
    log.read_roots, log.write_roots, log.write_files = (), (str(allowed.resolve()),), frozenset()
    log.violations.clear()
    try:
        outside.read_bytes()  # disarmed: not recorded
        log.armed = True
        (allowed / "ok.txt").write_bytes(b"fine")
        outside.read_bytes()
        os.close(os.open(outside, os.O_RDONLY))
        (allowed / "link").read_bytes()  # a symlink out of an allowed root is outside
    finally:
        log.armed = False
        found = list(log.violations)
        log.violations.clear()
        log.read_roots, log.write_roots, log.write_files = saved
    assert len(found) == 3 and all(str(outside.resolve()) in v for v in found), found


# -- 1 and 2: path traversal and header injection through the request target ------------------------------


async def _reference_404(harness: Harness) -> Reply:
    reply = await harness.request("GET", target_for("definitely/missing.txt"))
    assert reply.status == 404
    return reply


def _read_problems(harness: Harness, method: str, target: bytes, reply: Reply, not_found: Reply) -> list[str]:
    """GET/HEAD of a target: the file uploaded under exactly its canonical key, else the one 404."""
    under, key = expected_key(target)
    if under and key is not None and key in harness.files:
        data = harness.files[key]
        expected_body = b"" if method == "HEAD" else data
        if (reply.status, reply.body) != (200, expected_body):
            return [f"expected 200 with {key!r}, got {reply.status} {reply.body[:100]!r}"]
        return []
    if under and unquote_to_bytes(target.partition(b"?")[0]) == PREFIX.encode():
        # GET and HEAD {prefix}/ are the listing: a token is needed
        return [] if reply.status == 401 else [f"listing without a token: {reply.status}"]
    problems = []
    if reply.status != 404:
        problems.append(f"expected 404 (key {key!r}), got {reply.status} {reply.body[:100]!r}")
    elif sorted(reply.headers) != sorted(not_found.headers) or reply.body != (
        b"" if method == "HEAD" else not_found.body
    ):
        problems.append(f"a 404 unlike the one for a missing key: {reply.headers!r} {reply.body[:100]!r}")
    return problems


async def _run_targets(harness: Harness, templates: list[str]) -> None:
    """Every target: GET and HEAD; PUT and DELETE with the token (refused keys: 400 invalid_key and
    nothing written); keys the gate accepts are then written, read back and deleted under exactly
    their canonical key."""
    not_found = await _reference_404(harness)
    before_outside = harness.outside_cache()
    before_version, before_files = await harness.store_state()
    accepted: dict[bytes, str] = {}
    with harness.armed():
        for template in templates:
            target = harness.fill_target(template)
            under, key = expected_key(target)
            for method in ("GET", "HEAD"):
                reply = await harness.send(template, method, target)
                if reply is not None:
                    for issue in _read_problems(harness, method, target, reply, not_found):
                        harness.fail(template, f"{method}: {issue}")
            if under and key is not None:
                if key not in harness.files:
                    accepted[target] = key
                continue
            for method in ("PUT", "DELETE"):
                version = await harness.store.last_version()
                body = b"must not be stored" if method == "PUT" else None
                reply = await harness.send(template, method, target, body=body, auth=True)
                if reply is None:
                    continue
                problem = (
                    _json_error(reply, 400, "invalid_key")
                    if under
                    else (None if reply.status == 404 else f"expected 404 outside the prefix, got {reply.status}")
                )
                if problem:
                    harness.fail(template, f"{method}: {problem}")
                if await harness.store.last_version() != version:
                    harness.fail(template, f"{method} of a refused key wrote to the store")
        for target, key in accepted.items():
            label = f"accepted {target.decode()[:120]}"
            body = b"stored under " + target
            reply = await harness.send(label, "PUT", target, body=body, auth=True)
            if reply is None:
                continue
            document = _json(reply)
            location = (PREFIX + quote(key, safe="/")).encode("ascii")
            if reply.status != 201 or document is None or document.get("key") != key:
                harness.fail(label, f"PUT: expected 201 for key {key!r}, got {reply.status} {reply.body[:200]!r}")
            elif reply.header(b"location") != location:
                harness.fail(label, f"PUT: Location {reply.header(b'location')!r}, expected {location!r}")
            meta = await harness.store.stat(key)
            if meta is None or meta.sha256 != hashlib.sha256(body).hexdigest():
                harness.fail(label, f"not stored under exactly {key!r}")
            got = await harness.send(label, "GET", target)
            if got is not None and (got.status, got.body) != (200, body):
                harness.fail(label, f"GET after PUT: {got.status} {got.body[:100]!r}")
            if got is not None:
                for issue in _disposition_problems(got, [got.header(b"content-type") or b""], key):
                    harness.fail(label, issue)
            gone = await harness.send(label, "DELETE", target, auth=True)
            if gone is not None and gone.status != 204:
                harness.fail(label, f"DELETE after PUT: {gone.status}")
            again = await harness.send(label, "GET", target)
            if again is not None and again.status != 404:
                harness.fail(label, f"GET after DELETE: {again.status}")
    after_version, after_files = await harness.store_state()
    if after_files != before_files:
        harness.fail("store", f"files changed: {sorted(set(before_files) ^ set(after_files))!r:.500}")
    if not accepted and after_version != before_version:
        harness.fail("store", "a version was taken by a refused request")
    harness.report(before_outside)


async def test_path_traversal(harness: Harness) -> None:
    await _run_targets(harness, [*ENCODED_TRAVERSALS, *TRAVERSAL_TARGETS])


async def test_header_injection(harness: Harness) -> None:
    """Keys with CR/LF and friends through every write and read, then Content-Types that would
    split the header they are sent in: refused with 400, nothing stored."""
    await _run_targets(harness, INJECTION_TARGETS)
    before_outside = harness.outside_cache()
    target = target_for("injected/type.txt")
    with harness.armed():
        for content_type in INJECTION_CONTENT_TYPES:
            label = f"Content-Type: {content_type[:100]!r}"
            version = await harness.store.last_version()
            reply = await harness.send(label, "PUT", target, [(b"content-type", content_type)], b"body", auth=True)
            if reply is not None and (problem := _json_error(reply, 400, "invalid_content_type")):
                harness.fail(label, problem)
            if await harness.store.last_version() != version or await harness.store.stat("injected/type.txt"):
                harness.fail(label, "stored despite the refusal")
    harness.report(before_outside)


# -- 3. ranges ------------------------------------------------------------------------------------------------


def _byteranges(body: bytes, boundary: bytes) -> list[tuple[int, int, int, bytes, bytes]]:
    """multipart/byteranges (RFC 9110 §14.6), strictly: (first, last, complete, part type, data) per part."""
    delimiter, position, parts = b"--" + boundary, 0, []
    while not body.startswith(delimiter + b"--\r\n", position):
        if not body.startswith(delimiter + b"\r\n", position):
            raise ValueError(f"no delimiter at {position}")
        head_end = body.index(b"\r\n\r\n", position)
        lines = body[position + len(delimiter) + 2 : head_end].split(b"\r\n")
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
        match = _CONTENT_RANGE.fullmatch(fields.get(b"content-range", b""))
        if match is None:
            raise ValueError(f"part without a valid Content-Range: {fields!r}")
        first, last, complete = (int(g) for g in match.groups())
        start = head_end + 4
        data = body[start : start + last - first + 1]
        if body[start + len(data) : start + len(data) + 2] != b"\r\n":
            raise ValueError("part not followed by CRLF")
        parts.append((first, last, complete, fields.get(b"content-type", b""), data))
        position = start + len(data) + 2
    if position + len(delimiter) + 4 != len(body):
        raise ValueError("bytes after the closing delimiter")
    return parts


def _range_problems(reply: Reply, data: bytes) -> list[str]:
    size = len(data)
    if reply.status == 200:
        return [] if reply.body == data else ["200 without the whole file"]
    if reply.status == 416:
        problems = (
            []
            if reply.header(b"content-range") == b"bytes */%d" % size
            else [f"416 with Content-Range {reply.header(b'content-range')!r}"]
        )
        return problems + (["416 with a body"] if reply.body else [])
    if reply.status != 206:
        return [f"unexpected status for a Range: {reply.status}"]
    content_type = reply.header(b"content-type") or b""
    if content_type.startswith(b"multipart/byteranges; boundary="):
        try:
            parts = _byteranges(reply.body, content_type.partition(b"boundary=")[2])
        except ValueError as exc:
            return [f"malformed multipart/byteranges: {exc}"]
        problems = [] if len(parts) >= 2 else ["multipart/byteranges with fewer than two parts"]
        types = {part[3] for part in parts}
        problems += _disposition_problems(reply, list(types))
    else:
        match = _CONTENT_RANGE.fullmatch(reply.header(b"content-range") or b"")
        if match is None:
            return [f"206 with Content-Range {reply.header(b'content-range')!r}"]
        first, last, complete = (int(g) for g in match.groups())
        parts = [(first, last, complete, content_type, reply.body)]
        problems = []
    for first, last, complete, _type, part in parts:
        if complete != size or not first <= last < size or part != data[first : last + 1]:
            problems.append(f"part {first}-{last}/{complete} is not those bytes of the file")
    if sum(len(part[4]) for part in parts) > size * MAX_RANGES:
        problems.append(f"{sum(len(p[4]) for p in parts)} bytes sent for a {size}-byte file")
    if any(later[0] <= earlier[1] + 1 for earlier, later in itertools.pairwise(parts)):
        problems.append("parts overlap, touch or are out of order (the README says ranges are coalesced)")
    return problems


def _fill(template: bytes, values: dict[bytes, bytes]) -> bytes:
    for name, value in values.items():
        template = template.replace(name, value)
    return template


async def test_hostile_ranges(harness: Harness) -> None:
    """Each Range value on a memory-tier file and a disk-tier file: the whole file, exactly the
    bytes asked for, or a 416 naming the length; never more than max_ranges times the file."""
    before_outside = harness.outside_cache()
    with harness.armed():
        for template in RANGE_HEADERS:
            for key in ("image.png", "big.bin"):
                data = harness.files[key]
                value = _fill(template, {b"{size}": b"%d" % len(data), b"{last}": b"%d" % (len(data) - 1),
                                         b"{past}": b"%d" % (len(data) + 10)})  # fmt: skip
                label = f"{key} Range: {template[:100]!r}"
                reply = await harness.send(label, "GET", target_for(key), [(b"range", value)])
                if reply is not None:
                    for issue in _range_problems(reply, data):
                        harness.fail(label, issue)
                head = await harness.send(label, "HEAD", target_for(key), [(b"range", value)])
                if head is not None and head.status != 200:
                    harness.fail(label, f"HEAD with Range: {head.status} (Range is defined for GET only)")
    harness.report(before_outside)


# -- 4. conditionals --------------------------------------------------------------------------------------------


async def test_hostile_conditionals(harness: Harness) -> None:
    """Reads: only 200/206/304/412/416, 304 and 412 without a body, the known answers where there
    is one. Writes: the same headers on a PUT and a DELETE decide 2xx or 412, and a 412 writes nothing."""
    data = harness.files["notes.txt"]
    sha = hashlib.sha256(data).hexdigest()
    first = await harness.request("GET", target_for("notes.txt"))
    values = {b"{etag}": b'"%s"' % sha.encode(), b"{weak}": b'W/"%s"' % sha.encode(), b"{sha}": sha.encode(),
              b"{date}": first.header(b"last-modified") or b"", b"{past}": b"%d" % (len(data) + 10)}  # fmt: skip
    victim = target_for("scratch/victim.txt")
    assert (await harness.request("PUT", victim, body=data, auth=True)).status == 201
    before_outside = harness.outside_cache()
    with harness.armed():
        for case in CONDITIONALS:
            headers = [(name, _fill(value, values)) for name, value in case.headers]
            label = f"{case.headers!r:.160}"
            for method in ("GET", "HEAD"):
                reply = await harness.send(label, method, target_for("notes.txt"), headers)
                if reply is None:
                    continue
                expect = 200 if method == "HEAD" and case.expect == 206 else case.expect
                if reply.status not in (200, 206, 304, 412, 416):
                    harness.fail(label, f"{method}: status {reply.status}")
                elif expect is not None and reply.status != expect:
                    harness.fail(label, f"{method}: expected {expect}, got {reply.status}")
                if reply.status in (304, 412, 416) and reply.body:
                    harness.fail(label, f"{method}: a {reply.status} with a body")
                if reply.status == 304 and reply.header(b"etag") != values[b"{etag}"]:
                    harness.fail(label, f"{method}: a 304 without the current ETag")
                if method == "GET" and reply.status in (200, 206):
                    for issue in _range_problems(reply, data):
                        harness.fail(label, f"{method}: {issue}")
            if any(name not in (b"if-match", b"if-none-match") for name, _ in headers):
                continue
            for method, target, ok in (("PUT", target_for("notes.txt"), 200), ("DELETE", victim, 204)):
                version = await harness.store.last_version()
                body = data if method == "PUT" else None
                reply = await harness.send(label, method, target, headers, body, auth=True)
                if reply is None:
                    continue
                if reply.status == 412:
                    if problem := _json_error(reply, 412, "precondition_failed"):
                        harness.fail(label, f"{method}: {problem}")
                    if await harness.store.last_version() != version:
                        harness.fail(label, f"{method}: a 412 that wrote to the store")
                elif reply.status != ok:
                    harness.fail(label, f"{method}: expected {ok} or 412, got {reply.status} {reply.body[:200]!r}")
                if method == "DELETE" and reply.status == 204:
                    await harness.request("PUT", victim, body=data, auth=True)
                if method == "PUT" and reply.status == 200:  # same bytes, but a new Last-Modified
                    # The version's validator second: a burst of PUTs puts it ahead of the clock, and
                    # while it is, the header states the clock's second instead (RFC 9110 §8.8.2.1),
                    # which If-Range must not match (test_last_modified pins that side).
                    current = await harness.store.stat("notes.txt")
                    assert current is not None
                    values[b"{date}"] = format_datetime(current.last_modified, usegmt=True).encode()
    harness.report(before_outside)


# -- 5. oversized headers -----------------------------------------------------------------------------------------


async def test_oversized_headers(harness: Harness) -> None:
    """1 MiB header values and 1,000 headers reach the adapters in process (real servers refuse
    them first, see ``corpus.oversized_requests``): answered correctly and fast, nothing written
    by a refusal."""
    image = harness.files["image.png"]
    before_outside = harness.outside_cache()
    with harness.armed():
        for case in oversized_requests():
            version = await harness.store.last_version()
            body = b"small body" if case.method == "PUT" else None
            reply = await harness.send(case.label, case.method, case.target.encode(), case.headers, body,
                                       auth=case.with_token)  # fmt: skip
            if reply is None:
                continue
            if reply.status not in case.allowed:
                harness.fail(case.label, f"expected {sorted(case.allowed)}, got {reply.status} {reply.body[:200]!r}")
            if case.method == "GET" and reply.status in (200, 206):
                for issue in _range_problems(reply, image):
                    harness.fail(case.label, issue)
            if reply.status >= 300 and await harness.store.last_version() != version:
                harness.fail(case.label, "a refused request wrote to the store")
    harness.report(before_outside)


# -- 6 and 7: uploads with active content and hostile names -----------------------------------------------------


async def _check_served(harness: Harness, label: str, key: str, body: bytes, stored_type: str) -> None:
    """Ranges (first, while the file is cold: from the store), GET, HEAD and GET again (a cache
    hit) of an uploaded file: nosniff (checked on every reply), the stored type, and active types
    only ever as attachments."""
    target = target_for(key)
    requests: list[tuple[str, list[tuple[bytes, bytes]]]] = [
        ("GET", [(b"range", b"bytes=0-3")]), ("GET", [(b"range", b"bytes=0-1,3-4")]), ("GET", []), ("HEAD", []),
        ("GET", []),
    ]  # fmt: skip
    for method, headers in requests:
        reply = await harness.send(label, method, target, headers)
        if reply is None:
            continue
        content_type = reply.header(b"content-type") or b""
        types = [content_type]
        if reply.status == 206 and content_type.startswith(b"multipart/byteranges"):
            try:
                types = [p[3] for p in _byteranges(reply.body, content_type.partition(b"boundary=")[2])]
            except ValueError as exc:
                harness.fail(label, f"{method} {headers!r}: {exc}")
        elif reply.status in (200, 206) and _essence(content_type) != _essence(stored_type):
            harness.fail(label, f"{method}: served as {content_type!r}, stored as {stored_type!r}")
        if reply.status not in (200, 206):
            harness.fail(label, f"{method} {headers!r}: status {reply.status}")
        if method == "GET" and reply.status in (200, 206):
            for issue in _range_problems(reply, body):
                harness.fail(label, f"{method} {headers!r}: {issue}")
        for issue in _disposition_problems(reply, [*types, stored_type.encode("latin-1")], key):
            harness.fail(label, f"{method} {headers!r}: {issue}")


async def test_active_content_uploads(harness: Harness) -> None:
    """HTML, SVG, XHTML, JavaScript and polyglots, under every declared type: stored, then never
    rendered inline on the app's origin."""
    before_outside = harness.outside_cache()
    with harness.armed():
        for upload in ACTIVE_UPLOADS:
            label = f"{upload.key} as {upload.content_type!r}"
            headers = [(b"content-type", upload.content_type)] if upload.content_type is not None else []
            reply = await harness.send(label, "PUT", target_for(upload.key), headers, upload.body, auth=True)
            document = _json(reply) if reply is not None else None
            if reply is None or reply.status != 201 or document is None:
                harness.fail(label, f"PUT: {reply and reply.status} {reply and reply.body[:200]!r}")
                continue
            stored_type = str(document.get("content_type"))
            await _check_served(harness, label, upload.key, upload.body, stored_type)
    harness.report(before_outside)


async def test_hostile_upload_names(harness: Harness) -> None:
    """Names that would split Location or Content-Disposition: refused by the gate (400, nothing
    stored), or stored under their canonical key and named safely in every header."""
    body = b"<html><script>alert(document.domain)</script></html>"
    before_outside = harness.outside_cache()
    with harness.armed():
        for name in UPLOAD_NAMES:
            target = target_for(name)
            _under, key = expected_key(target)
            label = f"name {name[:100]!r}"
            version = await harness.store.last_version()
            reply = await harness.send(label, "PUT", target, [(b"content-type", b"text/html")], body, auth=True)
            if reply is None:
                continue
            if key is None:
                if problem := _json_error(reply, 400, "invalid_key"):
                    harness.fail(label, problem)
                if await harness.store.last_version() != version:
                    harness.fail(label, "a refused name wrote to the store")
                continue
            document = _json(reply)
            location = (PREFIX + quote(key, safe="/")).encode("ascii")
            if reply.status != 201 or document is None or document.get("key") != key:
                harness.fail(label, f"PUT: {reply.status} {reply.body[:200]!r}, expected 201 for {key!r}")
                continue
            if reply.header(b"location") != location:
                harness.fail(label, f"Location {reply.header(b'location')!r}, expected {location!r}")
            await _check_served(harness, label, key, body, "text/html")
            gone = await harness.send(label, "DELETE", target, auth=True)
            if gone is not None and gone.status != 204:
                harness.fail(label, f"DELETE: {gone.status}")
    harness.report(before_outside)


# -- 8. refused uploads ----------------------------------------------------------------------------------------------


async def test_refused_and_odd_upload_requests(harness: Harness) -> None:
    """Partial, encoded, form, mis-framed, over-size and abandoned uploads: the documented
    refusal, and a refusal stores nothing."""
    before_outside = harness.outside_cache()
    with harness.armed():
        for number, case in enumerate(REFUSED_UPLOADS):
            key = f"refused/{number}.bin"
            body = case.body if isinstance(case.body, bytes) else b"x" * case.body
            version = await harness.store.last_version()
            reply = await harness.send(case.label, "PUT", target_for(key), case.headers, body, auth=True,
                                       length=case.length, abort=case.abort)  # fmt: skip
            if reply is None:
                continue
            if reply.status not in case.allowed:
                harness.fail(case.label, f"expected {sorted(case.allowed)}, got {reply.status} {reply.body[:200]!r}")
            if reply.status >= 300:
                if _json(reply) is None:
                    harness.fail(case.label, f"a refusal without a JSON body: {reply.body[:200]!r}")
                if await harness.store.last_version() != version or await harness.store.stat(key) is not None:
                    harness.fail(case.label, "a refused upload was stored")
    harness.report(before_outside)


# -- 9. methods and credentials ---------------------------------------------------------------------------------------


async def test_other_methods_and_bad_credentials(harness: Harness) -> None:
    """Methods other than GET/HEAD/PUT/DELETE: 405 with Allow, with or without the token. Writes
    and the listing with missing or bad credentials: 401 with a Bearer challenge. Nothing written."""
    before_outside = harness.outside_cache()
    before = await harness.store_state()
    token_values = {
        b"{token}": TOKEN.encode(),
        b"{TOKEN}": TOKEN.upper().encode(),
        b"{token_short}": TOKEN[:-1].encode(),
        b"{token_fullwidth}": "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in TOKEN).encode(),
        b"{token_url}": "".join(f"%{ord(c):02X}" for c in TOKEN).encode(),
    }
    with harness.armed():
        for method in METHODS:
            for target in ("/media/notes.txt", "/media/new/file.txt", "/media/"):
                for auth in (False, True):
                    label = f"{method!r:.40} {target} token={auth}"
                    reply = await harness.send(label, method, target.encode(), body=b"payload", auth=auth)
                    if reply is not None and (reply.status, reply.header(b"allow")) != (405, b"GET, HEAD, PUT, DELETE"):
                        harness.fail(label, f"expected 405 with Allow, got {reply.status} {reply.header(b'allow')!r}")
        for value in AUTHORIZATIONS:
            headers = [] if value is None else [(b"authorization", _fill(value, token_values))]
            label = f"Authorization: {value!r:.80}"
            for method, target, body in (
                ("PUT", "/media/auth/new.txt", b"payload"),
                ("DELETE", "/media/notes.txt", None),
                ("GET", "/media/", None),
                ("PUT", "/media/../canary.txt", b"payload"),
            ):
                reply = await harness.send(label, method, target.encode(), headers, body)
                if reply is None:
                    continue
                if problem := _json_error(reply, 401):
                    harness.fail(label, f"{method} {target}: {problem}")
                elif not (reply.header(b"www-authenticate") or b"").startswith(b'Bearer realm="servefiles"'):
                    harness.fail(label, f"{method}: 401 without a Bearer challenge")
    if await harness.store_state() != before:
        harness.fail("store", "changed by requests that had to be refused")
    harness.report(before_outside)


# -- 10. listing queries ---------------------------------------------------------------------------------------


async def test_hostile_listing_queries(harness: Harness) -> None:
    """The listing with hostile parameters: 200 with only stored keys under the asked prefix, or a
    JSON 400; without the token, 401."""
    before_outside = harness.outside_cache()
    with harness.armed():
        for query in LISTING_QUERIES:
            target = f"/media/?{query}".encode()
            label = f"listing ?{query[:100]}"
            anonymous = await harness.send(label, "GET", target)
            if anonymous is not None and anonymous.status != 401:
                harness.fail(label, f"without a token: {anonymous.status}")
            reply = await harness.send(label, "GET", target, auth=True)
            if reply is None:
                continue
            document = _json(reply)
            if document is None:
                harness.fail(label, f"not JSON: {reply.status} {reply.body[:200]!r}")
                continue
            if reply.status == 400:
                continue
            if reply.status != 200:
                harness.fail(label, f"status {reply.status}")
                continue
            prefix = (parse_qs(query, keep_blank_values=True).get("prefix") or [""])[-1]
            files = document.get("files")
            keys = [entry.get("key") for entry in files] if isinstance(files, list) else None
            if keys is None or any(k not in harness.files or not str(k).startswith(prefix) for k in keys):
                harness.fail(label, f"listed {keys!r:.300} for prefix {prefix!r}")
            link = reply.header(b"link")
            if link is not None and not (link.isascii() and link.startswith(b"</media/?prefix=")):
                harness.fail(label, f"Link {link[:200]!r}")
    harness.report(before_outside)


# -- 11. a token scoped to one folder --------------------------------------------------------------------------


async def test_scoped_token_stays_in_its_folder(harness: Harness) -> None:
    """A token for ``blog`` writes and deletes keys under ``blog/`` only (403 elsewhere, 400 for a
    refused key), and its listing never shows a key outside ``blog/``; nothing outside changes."""
    assert (await harness.request("PUT", target_for("blog/first.txt"), body=b"first", auth=BLOG_TOKEN)).status == 201
    before_outside = harness.outside_cache()
    outside_before = [entry for entry in (await harness.store_state())[1] if not entry[0].startswith("blog/")]
    with harness.armed():
        for template in SCOPE_TARGETS:
            target = harness.fill_target(template)
            under, key = expected_key(target)
            for method in ("PUT", "DELETE"):
                label = f"blog token {method} {template}"
                body = b"scoped" if method == "PUT" else None
                reply = await harness.send(label, method, target, body=body, auth=BLOG_TOKEN)
                if reply is None:
                    continue
                if not under:
                    problem = None if reply.status == 404 else f"expected 404 outside the prefix, got {reply.status}"
                elif key is None:
                    problem = _json_error(reply, 400, "invalid_key")
                elif not key.startswith("blog/"):
                    problem = _json_error(reply, 403, "insufficient_scope")
                else:
                    problem = (
                        None
                        if reply.status in ((200, 201) if method == "PUT" else (204, 404))
                        else (f"in scope ({key!r}), got {reply.status} {reply.body[:200]!r}")
                    )
                if problem:
                    harness.fail(label, problem)
        for query in SCOPE_LISTING_QUERIES:
            label = f"blog token listing ?{query}"
            reply = await harness.send(label, "GET", f"/media/?{query}".encode(), auth=BLOG_TOKEN)
            if reply is None or reply.status in (400, 403):
                continue
            document = _json(reply)
            files = document.get("files") if document is not None else None
            keys = [entry.get("key") for entry in files] if isinstance(files, list) else None
            if reply.status != 200 or keys is None or any(not str(k).startswith("blog/") for k in keys):
                harness.fail(label, f"{reply.status}: listed {keys!r:.300}")
    outside_after = [entry for entry in (await harness.store_state())[1] if not entry[0].startswith("blog/")]
    if outside_after != outside_before:
        changed = set(outside_before) ^ set(outside_after)
        harness.fail("store", f"the blog token changed keys outside blog/: {changed!r}")
    harness.report(before_outside)
