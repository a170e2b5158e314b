"""The ready-made replies of ``servefiles.http.replies`` and the one mapping from error
types to replies, ``for_error``: one test per rule, no server. Expected bytes are written
out here, never computed by the code under test."""

from __future__ import annotations

import json

import pytest

from servefiles.breaker import CircuitBreaker
from servefiles.errors import (
    CacheWriteError,
    ContentChanged,
    InvalidContentType,
    InvalidKey,
    InvalidRequest,
    InvalidToken,
    MethodNotAllowed,
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
from servefiles.http.model import Response
from servefiles.http.replies import Surface, for_error, health, metrics, retry_after_seconds
from servefiles.http.write import check_upload

JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


def json_body(response: Response) -> object:
    (body,) = response.body
    assert isinstance(body, bytes)
    return json.loads(body)


def without_length(response: Response) -> list[tuple[bytes, bytes]]:
    (body,) = response.body
    assert isinstance(body, bytes)
    lengths = [value for name, value in response.headers if name == b"content-length"]
    assert lengths == [str(len(body)).encode("ascii")]
    return [header for header in response.headers if header[0] != b"content-length"]


# -- the read surface: nothing about existence ------------------------------------------------


@pytest.mark.parametrize("error", [InvalidKey("../etc/passwd"), NotFound("a.png")])
def test_a_bad_key_on_the_read_surface_is_the_one_plain_404(error: ServeFilesError) -> None:
    response = for_error(error, "read")
    assert response.status == 404
    assert response.body == (b"Not Found",)
    assert response.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"9"),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]


def test_a_failed_precondition_on_the_read_surface_is_an_empty_412() -> None:
    response = for_error(PreconditionFailed("a.png"), "read")
    assert response == Response(412, [(b"content-length", b"0"), (b"x-content-type-options", b"nosniff")])


@pytest.mark.parametrize("surface", ["read", "write"])
def test_method_not_allowed_is_405_with_allow(surface: Surface) -> None:
    response = for_error(MethodNotAllowed("POST", "GET, HEAD"), surface)
    assert response.status == 405
    assert response.headers == [
        (b"allow", b"GET, HEAD"),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"18"),
        (b"x-content-type-options", b"nosniff"),
    ]
    assert response.body == (b"Method Not Allowed",)


# -- the write surface: JSON with a code -------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code", "message"),
    [
        (InvalidKey("bad key"), 400, "invalid_key", "bad key"),
        (InvalidContentType("not a valid content type: 'x'"), 400, "invalid_content_type",
         "not a valid content type: 'x'"),
        (InvalidRequest("invalid_limit", "limit must be a number"), 400, "invalid_limit", "limit must be a number"),
        (UploadAborted("the client went away"), 400, "upload_aborted", "the client went away"),
        (NotFound("a.png"), 404, "not_found", "no such file"),
        (PreconditionFailed("a.png"), 412, "precondition_failed", "the file is not in the state the request names"),
        (UploadTooLarge(1000), 413, "too_large", "uploads are limited to 1000 bytes"),
        (UnsupportedUpload("form_upload", "not a form"), 415, "form_upload", "not a form"),
    ],
)  # fmt: skip
def test_write_surface_errors_are_json_with_a_code(
    error: ServeFilesError, status: int, code: str, message: str
) -> None:
    response = for_error(error, "write")
    assert response.status == status
    assert without_length(response) == JSON_HEADERS
    assert json_body(response) == {"error": code, "message": message}


def test_no_token_is_401_with_a_bare_bearer_challenge() -> None:
    response = for_error(Unauthorized(), "write")
    assert response.status == 401
    assert without_length(response) == [*JSON_HEADERS, (b"www-authenticate", b'Bearer realm="servefiles"')]
    assert json_body(response) == {
        "error": "unauthorized",
        "message": "this needs an upload token: Authorization: Bearer <token>",
    }


def test_a_wrong_token_is_401_invalid_token() -> None:
    response = for_error(InvalidToken(), "write")
    assert response.status == 401
    challenge = (b"www-authenticate", b'Bearer realm="servefiles", error="invalid_token"')
    assert without_length(response) == [*JSON_HEADERS, challenge]
    assert json_body(response) == {"error": "invalid_token", "message": "the upload token is not valid"}


def test_a_token_outside_its_folder_is_403_insufficient_scope() -> None:
    response = for_error(OutOfScope("blog/"), "write")
    assert response.status == 403
    challenge = (b"www-authenticate", b'Bearer realm="servefiles", error="insufficient_scope"')
    assert without_length(response) == [*JSON_HEADERS, challenge]
    assert json_body(response) == {
        "error": "insufficient_scope",
        "message": "this token may only change keys under 'blog/'",
    }


# -- 503 and Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize("surface", ["read", "write"])
def test_a_store_failure_is_503_with_the_default_retry_after(surface: Surface) -> None:
    response = for_error(StoreUnavailable("connection refused"), surface)
    assert response.status == 503
    assert response.headers == [
        (b"retry-after", b"5"),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"19"),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    assert response.body == (b"Service Unavailable",)


@pytest.mark.parametrize(("wait", "stated"), [(0.0, b"1"), (0.2, b"1"), (1.0, b"1"), (1.01, b"2"), (14.5, b"15")])
def test_retry_after_is_the_known_wait_rounded_up_and_at_least_a_second(wait: float, stated: bytes) -> None:
    response = for_error(StoreUnavailable("circuit open", retry_after=wait), "read")
    assert dict(response.headers)[b"retry-after"] == stated


def test_an_unknown_wait_is_the_default() -> None:
    assert retry_after_seconds(None) == 5


@pytest.mark.parametrize("error", [ContentChanged("a.png"), CacheWriteError("disk full"), ServeFilesError("?")])
def test_any_other_error_is_503_with_the_default_retry_after(error: ServeFilesError) -> None:
    response = for_error(error, "read")
    assert response.status == 503
    assert dict(response.headers)[b"retry-after"] == b"5"


def test_an_open_breaker_says_how_long_until_its_next_trial() -> None:
    now = [100.0]
    breaker = CircuitBreaker(threshold=1, cooldown=2.5, clock=lambda: now[0])
    breaker.failed()
    now[0] = 101.0
    with pytest.raises(StoreUnavailable) as refused:
        breaker.before()
    assert refused.value.retry_after == pytest.approx(1.5)
    assert dict(for_error(refused.value, "read").headers)[b"retry-after"] == b"2"


def test_a_breaker_whose_trial_is_running_refuses_with_at_least_a_second() -> None:
    now = [100.0]
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, clock=lambda: now[0])
    breaker.failed()
    now[0] = 102.0
    breaker.before()  # the trial call
    with pytest.raises(StoreUnavailable) as refused:
        breaker.before()
    assert refused.value.retry_after == 0.0
    assert dict(for_error(refused.value, "read").headers)[b"retry-after"] == b"1"


# -- refusals before an upload's body is read -------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "error", "code"),
    [
        ({"content-range": "bytes 0-9/100"}, InvalidRequest, "partial_put"),
        ({"content-encoding": "gzip"}, UnsupportedUpload, "content_encoding"),
        ({"content-length": "12a"}, InvalidRequest, "content_length"),
    ],
)
def test_an_upload_that_cannot_be_stored_is_refused_before_its_body(
    headers: dict[str, str], error: type[InvalidRequest | UnsupportedUpload], code: str
) -> None:
    with pytest.raises(error) as refused:
        check_upload(headers, 1000)
    assert refused.value.code == code


def test_an_upload_announced_over_the_limit_is_refused_before_its_body() -> None:
    with pytest.raises(UploadTooLarge) as refused:
        check_upload({"content-length": "1001"}, 1000)
    assert refused.value.limit == 1000
    check_upload({"content-length": "1000", "content-encoding": " Identity "}, 1000)


# -- the service's own endpoints ------------------------------------------------------------


def test_health_is_the_report_as_json_never_cached() -> None:
    response = health({"status": "ok", "state": "running"})
    assert response.status == 200
    assert response.body == (b'{"status": "ok", "state": "running"}',)
    assert without_length(response) == JSON_HEADERS


def test_metrics_is_the_prometheus_text_never_cached() -> None:
    response = metrics(b"# HELP x\n")
    assert response.status == 200
    assert response.body == (b"# HELP x\n",)
    assert without_length(response) == [
        (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
