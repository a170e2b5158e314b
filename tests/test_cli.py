"""The ``servefiles`` command, run as a real process against real databases."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .servers import cli, free_port, serving


def ok(*args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> str:
    result = cli(*args, env=env, input=input)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def fails_in_one_line(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail: non-zero exit, one line on stderr, no traceback."""
    result = cli(*args, env=env)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    return stderr.strip()


@pytest.fixture
def db(store_url: str) -> dict[str, str]:
    """The environment that points every command at this test's store."""
    return {"SERVEFILES_DB": store_url}


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(os.urandom(300_000))
    return path


def test_put_then_get_returns_the_same_bytes(db: dict[str, str], photo: Path) -> None:
    out = ok("put", str(photo), "blog/photo.jpg", env=db)
    assert "blog/photo.jpg" in out and hashlib.sha256(photo.read_bytes()).hexdigest() in out
    assert cli("get", "blog/photo.jpg", env=db).stdout == photo.read_bytes()


def test_put_uses_the_file_name_as_default_key_and_guesses_the_type(db: dict[str, str], photo: Path) -> None:
    ok("put", str(photo), env=db)
    [entry] = json.loads(ok("ls", "--json", env=db))
    assert entry["key"] == "photo.jpg"
    assert entry["content_type"] == "image/jpeg"


def test_put_content_type_option_is_stored(db: dict[str, str], photo: Path) -> None:
    ok("put", str(photo), "x.bin", "--content-type", "image/png", env=db)
    [entry] = json.loads(ok("ls", "--json", env=db))
    assert entry["content_type"] == "image/png"


def test_put_from_stdin_needs_a_key(db: dict[str, str]) -> None:
    ok("put", "-", "notes.txt", input=b"from stdin", env=db)
    assert cli("get", "notes.txt", env=db).stdout == b"from stdin"
    assert "KEY" in fails_in_one_line("put", "-", env=db)


def test_get_to_a_file_writes_it_whole_and_leaves_no_temp_file(db: dict[str, str], photo: Path, tmp_path: Path) -> None:
    ok("put", str(photo), "p.jpg", env=db)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ok("get", "p.jpg", "-o", str(out_dir / "copy.jpg"), env=db)
    assert (out_dir / "copy.jpg").read_bytes() == photo.read_bytes()
    assert [p.name for p in out_dir.iterdir()] == ["copy.jpg"]


def test_get_of_a_missing_key_fails_in_one_line(db: dict[str, str], tmp_path: Path) -> None:
    assert "no such key: nothing.jpg" in fails_in_one_line("get", "nothing.jpg", env=db)
    fails_in_one_line("get", "nothing.jpg", "-o", str(tmp_path / "x"), env=db)
    assert not (tmp_path / "x").exists()


def test_rm_deletes_and_a_second_rm_fails(db: dict[str, str], photo: Path) -> None:
    ok("put", str(photo), "p.jpg", env=db)
    ok("rm", "p.jpg", env=db)
    assert json.loads(ok("ls", "--json", env=db)) == []
    assert "no such key" in fails_in_one_line("rm", "p.jpg", env=db)


def test_bad_keys_fail_in_one_line_and_store_nothing(db: dict[str, str], photo: Path) -> None:
    for bad in ("../etc/passwd", "/abs.jpg", "a//b.jpg", "a\\b.jpg", "dir/"):
        assert "key" in fails_in_one_line("put", str(photo), bad, env=db)
    assert json.loads(ok("ls", "--json", env=db)) == []


def test_missing_local_file_fails_in_one_line(db: dict[str, str], tmp_path: Path) -> None:
    message = fails_in_one_line("put", str(tmp_path / "absent.jpg"), env=db)
    assert "does not exist" in message and "absent.jpg" in message


def test_ls_lists_by_prefix_in_key_order(db: dict[str, str], photo: Path) -> None:
    for key in ("b/2.jpg", "a/1.jpg", "b/1.jpg", "bb.jpg"):
        ok("put", str(photo), key, env=db)
    assert [e["key"] for e in json.loads(ok("ls", "--json", "b/", env=db))] == ["b/1.jpg", "b/2.jpg"]
    lines = ok("ls", env=db).splitlines()
    assert [line.split()[-1] for line in lines] == ["a/1.jpg", "b/1.jpg", "b/2.jpg", "bb.jpg"]
    assert all(line.split()[0] == "300000" for line in lines)


def test_import_uploads_a_tree_then_skips_unchanged_files(db: dict[str, str], tmp_path: Path) -> None:
    tree = tmp_path / "site"
    (tree / "img" / "2024").mkdir(parents=True)
    (tree / "index.html").write_bytes(b"<h1>hi</h1>")
    (tree / "img" / "2024" / "cat.png").write_bytes(os.urandom(5000))
    assert "imported 2, unchanged 0, failed 0" in ok("import", str(tree), "--prefix", "static/", env=db)
    keys = [e["key"] for e in json.loads(ok("ls", "--json", env=db))]
    assert keys == ["static/img/2024/cat.png", "static/index.html"]
    versions = {e["key"]: e["version"] for e in json.loads(ok("ls", "--json", env=db))}

    (tree / "index.html").write_bytes(b"<h1>changed</h1>")
    assert "imported 1, unchanged 1, failed 0" in ok("import", str(tree), "--prefix", "static/", env=db)
    after = {e["key"]: e["version"] for e in json.loads(ok("ls", "--json", env=db))}
    assert after["static/img/2024/cat.png"] == versions["static/img/2024/cat.png"]
    assert after["static/index.html"] > versions["static/index.html"]
    assert cli("get", "static/index.html", env=db).stdout == b"<h1>changed</h1>"


def test_import_reports_bad_names_and_imports_the_rest(db: dict[str, str], tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.txt").write_bytes(b"good")
    (tree / "bad\\name.txt").write_bytes(b"bad")
    result = cli("import", str(tree), env=db)
    assert result.returncode != 0
    assert b"imported 1, unchanged 0, failed 1" in result.stdout
    assert b"bad\\name.txt" in result.stderr and b"Traceback" not in result.stderr
    assert [e["key"] for e in json.loads(ok("ls", "--json", env=db))] == ["good.txt"]


def test_export_writes_every_file_under_its_key(db: dict[str, str], tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    files = {"top.txt": b"top", "a/b/deep.bin": os.urandom(600_000), "a/ünï.txt": "ünï".encode()}
    for key, data in files.items():
        (tree / key).write_bytes(data)
    ok("import", str(tree), env=db)
    out = tmp_path / "export"
    assert "exported 3 files" in ok("export", str(out), env=db)
    exported = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert exported == files


def test_environment_supplies_options_and_defaults_are_shared(tmp_path: Path, photo: Path) -> None:
    """`servefiles put x` then `servefiles serve`, with no --db anywhere, serve the same file."""
    home = {"SERVEFILES_DATA_DIR": str(tmp_path / "data")}
    ok("put", str(photo), "shared.jpg", env=home)
    assert (tmp_path / "data" / "files.db").exists()
    with serving(env=home) as base:
        response = httpx.get(f"{base}/media/shared.jpg")
    assert response.status_code == 200
    assert response.content == photo.read_bytes()


def test_unreachable_postgres_is_a_one_line_error() -> None:
    message = fails_in_one_line("ls", "--db", f"postgresql://127.0.0.1:{free_port()}/nowhere")
    assert "cannot connect to PostgreSQL" in message


def test_unreachable_database_stops_serve_in_one_line() -> None:
    assert "cannot connect" in fails_in_one_line("serve", "--db", f"postgresql://127.0.0.1:{free_port()}/x")


def test_unsupported_url_is_a_one_line_error() -> None:
    assert "unsupported database URL" in fails_in_one_line("ls", "--db", "mysql://root@127.0.0.1/test")


def test_init_creates_the_schema(db: dict[str, str]) -> None:
    assert "schema ready" in ok("init", env=db)
    assert json.loads(ok("ls", "--json", env=db)) == []


def test_serve_answers_files_and_refuses_the_rest(db: dict[str, str], photo: Path) -> None:
    ok("put", str(photo), "pics/p.jpg", env=db)
    with serving("--prefix", "/files", env=db) as base, httpx.Client(base_url=base) as client:
        got = client.get("/files/pics/p.jpg")
        assert got.status_code == 200
        assert got.content == photo.read_bytes()
        assert got.headers["content-type"] == "image/jpeg"
        assert got.headers["etag"] == f'"{hashlib.sha256(photo.read_bytes()).hexdigest()}"'
        assert got.headers["x-content-type-options"] == "nosniff"
        head = client.head("/files/pics/p.jpg")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(photo.stat().st_size)
        missing = client.get("/files/pics/none.jpg")
        rejected = client.get("/files/pics/%2e%2e/%2e%2e/etc/passwd")
        assert missing.status_code == rejected.status_code == 404
        assert missing.content == rejected.content
        assert client.post("/files/pics/p.jpg").status_code == 405
        assert client.get("/media/pics/p.jpg").status_code == 404  # outside the prefix


# -- a prefix that places files is a folder (issue 13, item 5) ----------------------------


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """A directory holding a/b/c.txt and top.txt."""
    tree = tmp_path / "nested"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "c.txt").write_bytes(b"c")
    (tree / "top.txt").write_bytes(b"top")
    return tree


@pytest.mark.parametrize("prefix", ["imported", "imported/", "/imported/", "imported//"])
def test_import_prefix_is_a_folder(db: dict[str, str], nested: Path, prefix: str) -> None:
    ok("import", str(nested), "--prefix", prefix, env=db)
    assert [e["key"] for e in json.loads(ok("ls", "--json", env=db))] == ["imported/a/b/c.txt", "imported/top.txt"]


@pytest.mark.parametrize("prefix", ["", "/"])
def test_import_with_an_empty_prefix_places_files_at_the_root(db: dict[str, str], nested: Path, prefix: str) -> None:
    ok("import", str(nested), "--prefix", prefix, env=db)
    assert [e["key"] for e in json.loads(ok("ls", "--json", env=db))] == ["a/b/c.txt", "top.txt"]


@pytest.mark.parametrize("prefix", ["a//b", "../up", "a/./b", "back\\slash"])
def test_import_prefix_that_is_not_a_folder_fails_in_one_line_and_stores_nothing(
    db: dict[str, str], nested: Path, prefix: str
) -> None:
    message = fails_in_one_line("import", str(nested), "--prefix", prefix, env=db)
    assert "--prefix" in message and repr(prefix) in message
    assert json.loads(ok("ls", "--json", env=db)) == []


def test_new_token_prefix_is_a_folder() -> None:
    for prefix in ("blog", "blog/", "/blog/"):
        token, _, folder = ok("new-token", "--prefix", prefix).strip().partition(":")
        assert folder == "blog" and len(token) >= 16
    assert ":" not in ok("new-token", "--prefix", "/")
    assert "'a//b'" in fails_in_one_line("new-token", "--prefix", "a//b")


def test_upload_token_folders_are_read_like_import_prefixes() -> None:
    from servefiles.auth import UploadToken

    secret = "a-token-0123456789abcdef"
    for prefix in ("blog", "blog/", "/blog/", "blog//"):
        assert UploadToken(secret, prefix).prefix == "blog/"
        assert UploadToken.parse(f"{secret}:{prefix}").prefix == "blog/"
    assert UploadToken(secret, "").prefix == UploadToken(secret, "/").prefix == ""
    for bad in ("a//b", "../x", "a/./b"):
        with pytest.raises(ValueError, match="not a valid folder") as refused:
            UploadToken.parse(f"{secret}:{bad}")
        assert secret not in str(refused.value)


def test_filtering_prefixes_say_in_help_that_they_are_plain_string_prefixes() -> None:
    for command in (["ls"], ["warm"], ["export"]):
        assert "plain string prefix" in " ".join(ok(*command, "--help").split())
    assert "'blog' and 'blog/' both" in " ".join(ok("import", "--help").split())


def test_ls_and_export_prefixes_match_strings_not_folders(db: dict[str, str], photo: Path, tmp_path: Path) -> None:
    for key in ("blog/a.jpg", "blogroll.jpg", "other.jpg"):
        ok("put", str(photo), key, env=db)
    assert [e["key"] for e in json.loads(ok("ls", "--json", "blog", env=db))] == ["blog/a.jpg", "blogroll.jpg"]
    assert [e["key"] for e in json.loads(ok("ls", "--json", "blog/", env=db))] == ["blog/a.jpg"]
    ok("export", str(tmp_path / "out"), "--prefix", "blog", env=db)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg")) == [
        "blog/a.jpg", "blogroll.jpg",
    ]  # fmt: skip


# -- every error is one line (issue 13, item 6) -------------------------------------------

USAGE, RUNTIME = 2, 1
BAD_INVOCATIONS = [
    # (arguments, a word the line must name, exit code); {tmp} is a scratch dir, {file} a file in it,
    # stored as x.jpg first when the arguments name x.jpg
    (["put", "{tmp}/missing.txt"], "missing.txt", USAGE),
    (["put"], "LOCAL_FILE", USAGE),
    (["put", "{file}", "a//b.jpg"], "empty segment", RUNTIME),
    (["put", "-"], "KEY", RUNTIME),
    (["import", "{tmp}/missing-dir"], "missing-dir", USAGE),
    (["import", "{file}"], "file.txt", USAGE),
    (["export"], "DIRECTORY", USAGE),
    (["export", "{file}"], "file.txt", USAGE),
    (["get"], "KEY", USAGE),
    (["get", "nothing.jpg"], "nothing.jpg", RUNTIME),
    (["get", "x.jpg", "--output", "{file}/below-a-file"], "file.txt", RUNTIME),
    (["rm"], "KEY", USAGE),
    (["rm", "nothing.jpg"], "nothing.jpg", RUNTIME),
    (["ls", "--jsn"], "--jsn", USAGE),
    (["ls", "a", "b"], "(b)", USAGE),
    (["init", "--db", "mysql://root@127.0.0.1/test"], "unsupported database URL", RUNTIME),
    (["init", "--db", "postgresql://127.0.0.1:notaport/test"], "notaport", RUNTIME),
    (["init", "--db", "postgresql://127.0.0.1:99999/test"], "99999", RUNTIME),
    (["init", "--db", "postgresql://[::1/test"], "[::1", RUNTIME),
    (["init", "--db", "sqlite://host/files.db"], "not a SQLite URL", RUNTIME),
    (["serve", "--cache-size", "lots"], "--cache-size", USAGE),
    (["serve", "--memory-size", "-1"], "--memory-size", USAGE),
    (["serve", "--max-upload-size", "inf"], "--max-upload-size", USAGE),
    (["warm", "--cache-size", "1e400"], "--cache-size", USAGE),
    (["serve", "--port", "99999"], "--port", USAGE),
    (["serve", "--freshness", "soon"], "--freshness", USAGE),
    (["serve", "--nginx", "fast"], "--nginx", USAGE),
    (["serve", "--host", "no-such-host.invalid"], "no-such-host.invalid", RUNTIME),
    (["serve", "--cache-dir", "{file}/cache"], "--cache-dir", RUNTIME),
    (["serve", "--upload-token", "short"], "--upload-token", USAGE),
    (["serve", "--upload-token-file", "{tmp}/no-tokens.txt"], "no-tokens.txt", USAGE),
    (["nginx-config", "--mode", "fast"], "--mode", USAGE),
    (["nginx-config", "--max-upload-size", "big"], "--max-upload-size", USAGE),
    (["new-token", "--prefix", "a//b"], "--prefix", USAGE),
    (["warm", "--cache-size", "-5"], "--cache-size", USAGE),
    (["warm", "--cache-dir", "{file}"], "--cache-dir", USAGE),
    (["sync", "--cache-dir", "{file}"], "--cache-dir", USAGE),
    (["sync", "--verify=yes"], "--verify", USAGE),
    (["stats", "--cache-dir", "{tmp}/no-cache"], "no-cache", RUNTIME),
    (["stats", "--json", "extra"], "(extra)", USAGE),
    (["bogus"], "bogus", USAGE),
    (["--bogus"], "--bogus", USAGE),
]


@pytest.mark.parametrize(("args", "named", "code"), BAD_INVOCATIONS, ids=[" ".join(a) for a, _, _ in BAD_INVOCATIONS])
def test_every_cli_error_is_one_line(
    db: dict[str, str], tmp_path: Path, args: list[str], named: str, code: int
) -> None:
    (tmp_path / "file.txt").write_bytes(b"a file")
    argv = [arg.format(tmp=tmp_path, file=tmp_path / "file.txt") for arg in args]
    if "x.jpg" in argv:
        ok("put", str(tmp_path / "file.txt"), "x.jpg", env=db)
    result = cli(*argv, env=db)
    stderr = result.stderr.decode()
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr and "Usage:" not in stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("servefiles: error: ") and named in stderr, stderr


def test_the_console_script_reports_a_missing_file_in_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("servefiles")
    result = subprocess.run([str(script), "put", str(tmp_path / "missing.txt")], capture_output=True, timeout=60)
    assert result.returncode == USAGE
    assert result.stderr.decode().splitlines() == [
        f"servefiles: error: Invalid value for 'LOCAL_FILE': File '{tmp_path / 'missing.txt'}' does not exist. "
        "(see 'servefiles put --help')"
    ]


@pytest.mark.parametrize("command", ["", "serve", "put", "import", "ls", "nginx-config", "new-token", "stats"])
def test_help_is_clicks_own(command: str) -> None:
    result = cli(*command.split(), "--help")
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout.decode().startswith("Usage: ")
    assert f"servefiles {command}".rstrip() + " [OPTIONS]" in result.stdout.decode().splitlines()[0]
    assert "-h, --help" in result.stdout.decode()


def test_no_command_still_shows_the_help() -> None:
    result = cli()
    shown = (result.stdout + result.stderr).decode()
    assert "servefiles [OPTIONS] COMMAND" in shown and "Commands:" in shown and "error" not in shown


def test_serve_on_a_port_in_use_fails_in_one_line(db: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert f"127.0.0.1:{port}" in fails_in_one_line("serve", "--port", port, env=db)
