"""The ``servefiles`` command, run as a real process against real databases."""

from __future__ import annotations

import hashlib
import json
import os
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
    result = cli("put", str(tmp_path / "absent.jpg"), env=db)
    assert result.returncode != 0
    assert b"Traceback" not in result.stderr and b"does not exist" in result.stderr


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
