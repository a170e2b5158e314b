"""One source for each default: the command, the adapters, the nginx block and the cache
settings all start from ``servefiles.defaults``; and the small helpers that replaced copies
(the file hash, the key digest) give what the copies gave."""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

import click
import pytest

from servefiles import defaults
from servefiles.cli import main
from servefiles.cli.options import format_size, parse_size
from servefiles.http import HttpPolicy
from servefiles.keys import key_digest
from servefiles.localfs import HASH_BLOCK, open_regular, sha256_of_fd
from servefiles.middleware.limits import RequestLimits
from servefiles.nginx import NginxSettings
from servefiles.service import CacheSettings


def test_defaults_imports_nothing_from_servefiles() -> None:
    tree = ast.parse(Path(defaults.__file__).read_text())
    imported = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom | ast.Import)]
    for node in imported:
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module in ("__future__", "typing"), ast.unparse(node)
        else:
            assert all(not alias.name.startswith("servefiles") for alias in node.names), ast.unparse(node)


@pytest.mark.parametrize(
    ("size", "text"),
    [(defaults.MAX_UPLOAD_BYTES, "1GiB"), (defaults.MEMORY_BYTES, "16MiB"), (defaults.MAX_FIELD_LINE, "8KiB"),
     (defaults.MAX_HEADER_BLOCK, "32KiB"), (1536, "1536"), (0, "0"), (3 << 40, "3TiB")],
)  # fmt: skip
def test_a_size_default_shows_as_people_type_it_and_reads_back(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(None, None, text) == size


def _serve_defaults(command: str) -> dict[str, object]:
    cmd = main.commands[command]
    with click.Context(cmd) as ctx:
        # As click processes an option given nowhere: its default, converted, through its callback.
        return {p.name: p.process_value(ctx, p.get_default(ctx)) for p in cmd.params if p.name is not None}


def test_the_command_starts_from_the_library_defaults() -> None:
    serve = _serve_defaults("serve")
    cache, policy, limits = CacheSettings(), HttpPolicy(), RequestLimits()
    assert serve["cache_size"] == cache.disk_bytes
    assert serve["memory_size"] == cache.memory_bytes
    assert serve["freshness"] == cache.freshness_seconds
    assert serve["prefetch"] == cache.prefetch
    assert serve["cache_min_uses"] == cache.cache_min_uses
    assert serve["cache_control"] == policy.cache_control
    assert serve["active_content"] == policy.active_content
    assert serve["max_upload_size"] == defaults.MAX_UPLOAD_BYTES
    assert serve["prefix"] == defaults.PREFIX
    assert (serve["max_header_line"], serve["max_header_size"], serve["max_header_count"], serve["max_url_size"]) == (
        limits.max_field_line, limits.max_header_block, limits.max_fields, limits.max_target
    )  # fmt: skip
    nginx = _serve_defaults("nginx-config")
    settings = NginxSettings(mode="accel", upstream="x", prefix="/media", cache_dir=Path("/c"))
    assert nginx["max_upload_size"] == settings.max_upload_bytes
    assert nginx["cache_control"] == settings.cache_control
    assert nginx["upstream"] == f"{serve['host']}:{serve['port']}"


@pytest.mark.parametrize("size", [0, 1, HASH_BLOCK - 1, HASH_BLOCK, 2 * HASH_BLOCK + 7])
def test_sha256_of_fd_hashes_the_whole_file_wherever_the_offset_is(size: int, tmp_path: Path) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = open_regular(path)
    try:
        os.lseek(fd, size // 2, os.SEEK_SET)
        assert sha256_of_fd(fd) == hashlib.sha256(data).hexdigest()
        assert os.lseek(fd, 0, os.SEEK_CUR) == size // 2
    finally:
        os.close(fd)


@pytest.mark.parametrize("key", ["a", "blog/ü.png", "x" * 5000, "\ud800 lone surrogate"])
def test_key_digest_is_32_bytes_for_any_text(key: str) -> None:
    digest = key_digest(key)
    assert len(digest) == 32
    assert digest == hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    assert key_digest(key + "!") != digest
