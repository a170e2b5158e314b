"""Content types: guessed from the key's extension alone, and validated as a safe header value."""

from __future__ import annotations

import json
import mimetypes
import re
import subprocess
import sys
from pathlib import Path

import pytest

from servefiles import InvalidContentType
from servefiles.content_types import (
    DEFAULT_CONTENT_TYPE,
    MAX_CONTENT_TYPE_LENGTH,
    check_content_type,
    content_type_table,
    guess_content_type,
    is_active_content,
)
from servefiles.nginx import NginxSettings, render

# The whole table, written out: every supported Python must give exactly these, and no other
# extension may have a type. IANA-registered types, except audio/wav (IANA's audio/vnd.wave is
# unknown to browsers) and the archive formats that have no registered type.
EXPECTED_TABLE = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
    "avif": "image/avif", "heic": "image/heic", "heif": "image/heif", "jxl": "image/jxl", "svg": "image/svg+xml",
    "ico": "image/vnd.microsoft.icon", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff",
    "mp4": "video/mp4", "m4v": "video/mp4", "webm": "video/webm", "mov": "video/quicktime",
    "mkv": "video/matroska", "ogv": "video/ogg",
    "mp3": "audio/mpeg", "m4a": "audio/mp4", "aac": "audio/aac", "ogg": "audio/ogg", "oga": "audio/ogg",
    "opus": "audio/ogg", "flac": "audio/flac", "wav": "audio/wav", "weba": "audio/webm",
    "pdf": "application/pdf", "txt": "text/plain", "csv": "text/csv", "md": "text/markdown",
    "json": "application/json", "xml": "application/xml", "xhtml": "application/xhtml+xml",
    "html": "text/html", "htm": "text/html", "rtf": "application/rtf", "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xls": "application/vnd.ms-excel",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt": "application/vnd.ms-powerpoint",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "odt": "application/vnd.oasis.opendocument.text", "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation", "epub": "application/epub+zip",
    "woff": "font/woff", "woff2": "font/woff2", "ttf": "font/ttf", "otf": "font/otf",
    "zip": "application/zip", "gz": "application/gzip", "tgz": "application/gzip", "tar": "application/x-tar",
    "7z": "application/x-7z-compressed", "zst": "application/zstd", "bz2": "application/x-bzip2",
    "xz": "application/x-xz", "br": "application/x-brotli", "rar": "application/vnd.rar",
    "wasm": "application/wasm", "js": "text/javascript", "mjs": "text/javascript", "css": "text/css",
    "ics": "text/calendar", "vcf": "text/vcard",
}  # fmt: skip

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


@pytest.mark.parametrize(("extension", "expected"), sorted(EXPECTED_TABLE.items()))
def test_the_whole_table_is_pinned(extension: str, expected: str) -> None:
    for name in (f"a.{extension}", f"dir/A.{extension.upper()}", f"x.tar.{extension}", f"b.{extension.title()}"):
        assert guess_content_type(name) == expected, name


def test_no_extension_outside_the_table_has_a_type() -> None:
    table = content_type_table()
    assert {extension: content_type for content_type, names in table.items() for extension in names} == EXPECTED_TABLE
    # Extensions Python's mimetypes knows on one version or another, and look-alikes: not ours.
    for extension in ("toml", "sql", "ai", "py", "sh", "exe", "bin", "jpe", "mpeg", "eml", "mht", "z", "svgz",
                      "tbz2", "txz", "xsl", "webmanifest", "m3u8", "jp", "mk\u212a"):  # fmt: skip
        assert guess_content_type(f"a.{extension}") == DEFAULT_CONTENT_TYPE, extension


def test_the_table_does_not_consult_mimetypes_at_all(tmp_path: Path) -> None:
    """A fresh interpreter whose ``mimetypes`` raises on any use gives the same table; and in
    this one, types added to ``mimetypes`` change no guess."""
    (tmp_path / "mimetypes.py").write_text(
        "def __getattr__(name):\n    raise AssertionError(f'mimetypes.{name} was consulted')\n"
    )  # first on sys.path (the working directory of ``python -c``): it shadows the standard one
    script = (
        "import json, mimetypes\n"
        f"assert mimetypes.__file__ == {str(tmp_path / 'mimetypes.py')!r}, mimetypes.__file__\n"
        "from servefiles.content_types import guess_content_type\n"
        f"print(json.dumps({{e: guess_content_type('a.' + e) for e in {sorted(EXPECTED_TABLE)!r}}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == EXPECTED_TABLE
    for extension in ("png", "xhtml", "mkv", "toml"):
        mimetypes.add_type("application/x-from-the-host", "." + extension)
    assert guess_content_type("a.png") == "image/png" and guess_content_type("a.xhtml") == "application/xhtml+xml"
    assert guess_content_type("a.mkv") == "video/matroska" and guess_content_type("a.toml") == DEFAULT_CONTENT_TYPE


def test_active_types_of_the_table_are_never_rendered_inline() -> None:
    active = {extension for extension, content_type in EXPECTED_TABLE.items() if is_active_content(content_type)}
    assert active == {"svg", "xml", "xhtml", "html", "htm", "js", "mjs"}


def test_nginx_types_block_is_the_table_less_text_and_active_types(tmp_path: Path) -> None:
    block = render(NginxSettings("tree", "127.0.0.1:8000", "/media", tmp_path / "c", tmp_path / "p"))
    bodies = re.findall(r"types \{\n(.*?)\n +\}", block, re.S)
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    found: dict[str, str] = {}
    for line in bodies[0].splitlines():
        content_type, *extensions = line.strip().rstrip(";").split()
        for extension in extensions:
            assert extension not in found, extension
            found[extension] = content_type
    inert = {"svg", "xml", "xhtml", "html", "htm", "js", "mjs", "txt", "csv", "md", "css", "ics", "vcf"}
    assert found == {extension: t for extension, t in EXPECTED_TABLE.items() if extension not in inert}


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
