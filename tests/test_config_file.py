"""``--config FILE`` (TOML) and ``servefiles config``: a flag beats its environment variable, which
beats the file, which beats the default; a bad file is one line naming the file, never a traceback."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from .servers import cli, running


def configured(*args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """``servefiles config ARGS``: the values (the output is TOML) and where each came from."""
    result = cli("config", *args, env=env)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    sources = {line.split(" = ")[0]: line.rpartition("  # ")[2] for line in text.splitlines()
               if not line.startswith("#")}  # fmt: skip
    return tomllib.loads(text), sources


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(tmp_path: Path) -> None:
    config = write(tmp_path / "servefiles.toml", """
        port = 9100
        prefix = "/from-file"
        cache-size = "2GiB"
        metrics = true
        cache_min_uses = 3          # an underscore may stand for a dash
    """)  # fmt: skip
    env = {"SERVEFILES_PREFIX": "/from-env", "SERVEFILES_CACHE_SIZE": "3G"}
    values, sources = configured("--config", str(config), "--cache-size", "4G", env=env)
    assert (values["cache-size"], sources["cache-size"]) == ("4GiB", "flag")
    assert (values["prefix"], sources["prefix"]) == ("/from-env", "environment (SERVEFILES_PREFIX)")
    assert (values["port"], sources["port"]) == (9100, "config file")
    assert (values["metrics"], values["cache-min-uses"]) == (True, 3)
    assert (values["memory-size"], sources["memory-size"]) == ("16MiB", "default")
    assert (values["host"], sources["host"]) == ("127.0.0.1", "default")

    by_env, by_env_sources = configured(env={"SERVEFILES_CONFIG": str(config)})
    assert (by_env["port"], by_env_sources["port"]) == (9100, "config file")
    assert configured()[0]["port"] == 8000


def test_serve_runs_with_the_file_and_lets_flags_win(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'files.db'}"
    (tmp_path / "a.txt").write_bytes(b"configured")
    assert cli("put", str(tmp_path / "a.txt"), "blog/a.txt", "--db", db).returncode == 0
    config = write(tmp_path / "servefiles.toml", f"""
        db = "{db}"
        cache-dir = "{tmp_path / 'cache'}"
        prefix = "/files"
        metrics = true
        log-level = "debug"
        port = 1                    # the test's --port flag wins
        upload-token = "a-token-of-twenty-characters:blog"   # one string for a repeatable option
        private = ["blog"]
    """)  # fmt: skip
    with running("--config", str(config)) as frontend:
        assert httpx.get(f"{frontend.base}/files/blog/a.txt").status_code == 403  # private, no signature
        bearer = {"authorization": "Bearer a-token-of-twenty-characters"}
        reply = httpx.get(f"{frontend.base}/files/blog/a.txt", headers=bearer)
        assert (reply.status_code, reply.content) == (200, b"configured")
        assert httpx.get(f"{frontend.base}/_servefiles/metrics").status_code == 200
    output = frontend.output()  # once the server has stopped: everything it wrote
    assert "DEBUG" not in output, output  # the test's --log-level warning flag wins too


def test_config_prints_a_file_that_reads_back_the_same(tmp_path: Path) -> None:
    config = write(tmp_path / "a.toml", 'freshness = 2.5\nprivate = ["invoices", "members/docs"]\nnginx = "tree"\n')
    first, _ = configured("--config", str(config), "--cache-dir", str(tmp_path / "c"))
    assert first["private"] == ["invoices/", "members/docs/"] and first["freshness"] == 2.5
    assert first["db"].startswith("sqlite:///") and first["publish-dir"]  # machine defaults, resolved
    printed = cli("config", "--config", str(config), "--cache-dir", str(tmp_path / "c")).stdout
    again, sources = configured("--config", str(write(tmp_path / "b.toml", printed.decode())))
    assert again == first
    assert set(sources.values()) == {"config file"}


def test_nginx_config_takes_the_options_it_shares_with_serve_from_the_same_file(tmp_path: Path) -> None:
    config = write(tmp_path / "s.toml", f"""
        db = "sqlite:///x.db"       # serve's alone: left out
        port = 8100
        prefix = "/files"
        cache-dir = "{tmp_path / 'cache'}"
        private = ["invoices"]
        max-upload-size = "5M"
    """)  # fmt: skip
    result = cli("nginx-config", "--config", str(config), "--mode", "tree")
    assert result.returncode == 0, result.stderr
    block = result.stdout.decode()
    assert f"{tmp_path / 'cache'}/objects" in block and "location ^~ /files/invoices/" in block, block
    assert "client_max_body_size 6m;" in block, block  # 5 MiB and what a request head adds
    bad = cli("nginx-config", "--config", str(write(tmp_path / "bad.toml", "mode = 'tree'\n")))
    assert bad.returncode == 2 and b"unknown option 'mode'" in bad.stderr


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("prot = 8000", "unknown option 'prot' (did you mean 'port'?)"),
        ("config = 'other.toml'", "unknown option 'config'"),
        ("port = '8000'", "port: expected an integer, got a string"),
        ("cache-size = true", "cache-size: expected a string or a number, got a boolean"),
        ("metrics = 'yes'", "metrics: expected true or false, got a string"),
        ("upload-token = 12345678901234567890", "upload-token: expected a string or an array of strings, got an"),
        ("[private]\nfolder = 'x'", "private: expected a string or an array of strings, got a table"),
        ("port = ", "not valid TOML: Invalid value (at line 1, column 8)"),
        ("port = 70000", "Invalid value for '--port': 70000 is not in the range 0<=x<=65535. (set in {path})"),
        ("cache-size = '12Q'", "Invalid value for '--cache-size': not a size: '12Q' (try 512M or 10GiB) (set in {path}"),  # noqa: E501
        ("nginx = 'both'", "Invalid value for '--nginx': 'both' is not one of 'off', 'accel', 'tree'. (set in {path})"),
    ],
)  # fmt: skip
def test_a_bad_config_file_is_one_line_that_names_it(text: str, said: str, tmp_path: Path) -> None:
    path = write(tmp_path / "servefiles.toml", text + "\n")
    for command in ("serve", "config"):
        result = cli(command, "--config", str(path))
        stderr = result.stderr.decode()
        assert result.returncode == 2 and len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
        assert stderr.startswith("servefiles: error: ") and str(path) in stderr, stderr
        assert said.format(path=path) in stderr, stderr


def test_an_unreadable_config_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes(b"host = '\xe9'\n")
    for path, said in [(tmp_path / "missing.toml", "No such file or directory"), (tmp_path, "is a directory"),
                       (tmp_path / "latin1.toml", "not valid TOML")]:  # fmt: skip
        result = cli("serve", "--config", str(path))
        stderr = result.stderr.decode()
        assert result.returncode == 2 and len(stderr.splitlines()) == 1, stderr
        assert said in stderr and "Traceback" not in stderr, stderr
