"""Content types: guessed from the key's extension alone, and validated as a safe header value."""

from __future__ import annotations

import mimetypes

import pytest

from servefiles import InvalidContentType
from servefiles.content_types import (
    DEFAULT_CONTENT_TYPE,
    MAX_CONTENT_TYPE_LENGTH,
    check_content_type,
    guess_content_type,
)

# -- guess_content_type -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("photo.jpg", "image/jpeg"),
        ("photo.jpeg", "image/jpeg"),
        ("PHOTO.JPG", "image/jpeg"),
        ("img/2024/a.png", "image/png"),
        ("a.gif", "image/gif"),
        ("a.webp", "image/webp"),
        ("a.avif", "image/avif"),
        ("doc.pdf", "application/pdf"),
        ("page.html", "text/html"),
        ("notes.txt", "text/plain"),
        ("readme.md", "text/markdown"),
        ("app.js", "text/javascript"),
        ("mod.mjs", "text/javascript"),
        ("font.woff", "font/woff"),
        ("font.woff2", "font/woff2"),
        ("code.wasm", "application/wasm"),
        ("clip.webm", "video/webm"),
        ("song.ogg", "audio/ogg"),
        ("song.flac", "audio/flac"),
        ("logo.svg", "image/svg+xml"),
    ],
)
def test_type_is_guessed_from_the_extension(key: str, expected: str) -> None:
    assert guess_content_type(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("backup.tar.gz", "application/gzip"),
        ("backup.tgz", "application/gzip"),
        ("data.json.gz", "application/gzip"),
        ("a.bz2", "application/x-bzip2"),
        ("a.xz", "application/x-xz"),
        ("a.br", "application/x-brotli"),
    ],
)
def test_compressed_file_gets_the_compression_type(key: str, expected: str) -> None:
    assert guess_content_type(key) == expected


@pytest.mark.parametrize(
    "key",
    [
        "README",
        "a/b/c",
        "file.unknownextension",
        ".jpg",  # a dot file, not an extension
        "dir/.png",
        "images.jpg/file",  # the extension of a directory is not the file's
        "a.jpg?x=1",
    ],
)
def test_unknown_type_falls_back_to_octet_stream(key: str) -> None:
    assert guess_content_type(key) == DEFAULT_CONTENT_TYPE == "application/octet-stream"


@pytest.mark.parametrize(
    "key",
    ["data:text/html,x", "data:image/svg+xml,a", "DATA:text/html;base64,eA", "data:x,y"],
)
def test_key_that_looks_like_a_data_url_is_not_parsed_as_one(key: str) -> None:
    # Only the extension counts: a key's text must not choose its own (active) type.
    assert guess_content_type(key) == DEFAULT_CONTENT_TYPE


def test_data_url_lookalike_still_uses_its_extension() -> None:
    assert guess_content_type("data:text/html,photo.png") == "image/png"


def test_guess_ignores_types_registered_on_the_host() -> None:
    # The global mimetypes table (and the host's /etc/mime.types) must not change
    # the guess: every machine must give the same type for the same key.
    mimetypes.add_type("application/x-servefiles-host-only", ".sfhostonly")
    assert mimetypes.guess_type("a.sfhostonly")[0] == "application/x-servefiles-host-only"
    assert guess_content_type("a.sfhostonly") == DEFAULT_CONTENT_TYPE


def test_guess_always_passes_the_check() -> None:
    for key in ["a.jpg", "a.tar.gz", "a", "a.svg", "a.md", "a.weird"]:
        assert check_content_type(guess_content_type(key)) == guess_content_type(key)


# -- check_content_type -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "text/plain;charset=utf-8",
        'multipart/form-data; boundary="a b"',
        "application/vnd.api+json",
        "image/svg+xml",
        "application/x-www-form-urlencoded",
        "a/b",
    ],
)
def test_valid_content_type_is_returned_unchanged(value: str) -> None:
    assert check_content_type(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("text", id="no-subtype"),
        pytest.param("text/", id="empty-subtype"),
        pytest.param("/plain", id="empty-type"),
        pytest.param("text/plain\r\nX-Evil: 1", id="crlf-injection"),
        pytest.param("text/plain\nX-Evil: 1", id="lf"),
        pytest.param("text/plain\r", id="trailing-cr"),
        pytest.param("text/plain; charset=utf-8\r\n", id="crlf-after-params"),
        pytest.param("text/plain; a=\x00", id="nul-in-params"),
        pytest.param("text/plain; a=\x7f", id="del-in-params"),
        pytest.param("text/pl ain", id="space-in-subtype"),
        pytest.param("text /plain", id="space-before-slash"),
        pytest.param(" text/plain", id="leading-space"),
        pytest.param("text/plaín", id="non-ascii"),
        pytest.param("text/plain; charset=ü", id="non-ascii-param"),
        pytest.param("text/plain/x", id="two-slashes"),
        pytest.param("text/plain, text/html", id="list"),
    ],
)
def test_invalid_content_type_is_rejected(value: str) -> None:
    with pytest.raises(InvalidContentType):
        check_content_type(value)


def test_invalid_content_type_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_content_type("text/plain\r\n")


def test_content_type_length_limit() -> None:
    longest = "application/" + "x" * (MAX_CONTENT_TYPE_LENGTH - len("application/"))
    assert len(longest) == MAX_CONTENT_TYPE_LENGTH
    assert check_content_type(longest) == longest
    with pytest.raises(InvalidContentType):
        check_content_type(longest + "x")
