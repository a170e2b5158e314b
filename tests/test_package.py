"""The package as a user installs it: the sdist and the wheel built with ``python -m build``, the wheel
installed with its dependencies into a fresh virtual environment (no site packages, not this checkout),
and there ``servefiles put`` / ``serve`` / an HTTP GET on SQLite, ``import servefiles``, and mypy
checking code that uses servefiles through its ``py.typed`` marker. A file missing from the package,
a dependency missing from pyproject.toml or a lost marker fails here, not on a user's machine.

Dependencies come from the configured package index as any ``pip install`` would get them (pip's cache
makes the second run fast); the venv is made without pip, and this environment's pip installs into it
(``pip --python``), which saves bootstrapping pip each run.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import httpx

import servefiles

from .servers import free_port, listening

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

TYPED_USE = """\
import servefiles

version: str = servefiles.__version__


async def main() -> int:
    async with servefiles.open_store("sqlite:///files.db") as store:
        meta = await store.put("a.txt", b"typed")
        return meta.size


wrong: int = servefiles.canonical_key("a.txt")
"""
"""Correct but for its last line, which mypy must find only if it sees servefiles' annotations."""


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def sources(into: Path) -> Path:
    """The files a fresh clone has (tracked, or new and not ignored), copied: the build never writes into
    this checkout, and a file only this checkout has cannot hide a missing one."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            (into / name).write_bytes(source.read_bytes())
    return into


def test_the_version_has_one_source() -> None:
    assert servefiles.__version__ == VERSION
    said = run(sys.executable, "-m", "servefiles", "--version", cwd=ROOT)
    assert said.strip() == f"servefiles, version {VERSION}"


def test_the_built_wheel_installs_serves_and_type_checks_in_a_fresh_environment(tmp_path: Path) -> None:
    started = time.monotonic()
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, sources(tmp_path / "src"), cwd=tmp_path)  # sdist, then
    [wheel] = dist.glob("*.whl")  # the wheel built from the sdist
    [sdist] = dist.glob("*.tar.gz")
    assert wheel.name == f"servefiles-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "servefiles/py.typed" in names and "servefiles/nginx/static_types.py" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "examples/")) for name in names), names
    with tarfile.open(sdist) as archive:
        assert f"servefiles-{VERSION}/servefiles/py.typed" in archive.getnames()

    venv, home = tmp_path / "venv", tmp_path / "home"
    home.mkdir()
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python, command = venv / "bin" / "python", venv / "bin" / "servefiles"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", wheel, cwd=tmp_path)
    built = time.monotonic()

    # Run from an empty directory: nothing of this checkout is importable there.
    imported = run(python, "-c", "import servefiles, sys; print(servefiles.__version__, servefiles.__file__)", cwd=home)
    assert imported.split()[0] == VERSION and imported.split()[1].startswith(str(venv)), imported
    assert run(command, "--version", cwd=home).strip() == f"servefiles, version {VERSION}"

    db = f"sqlite:///{home / 'files.db'}"
    (home / "hello.txt").write_bytes(b"hello from the wheel")
    run(command, "put", "hello.txt", "smoke/hello.txt", "--db", db, cwd=home)
    port = free_port()
    serve = [command, "serve", "--db", db, "--port", str(port), "--cache-dir", home / "cache"]
    with listening([str(part) for part in serve], port, tmp_path / "serve.log", cwd=home, what="the installed serve"):
        reply = httpx.get(f"http://127.0.0.1:{port}/media/smoke/hello.txt")
    assert (reply.status_code, reply.content) == (200, b"hello from the wheel")
    assert "Traceback" not in (tmp_path / "serve.log").read_text()

    (home / "uses_servefiles.py").write_text(TYPED_USE)
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-executable", str(python), "--no-incremental",
         "uses_servefiles.py"], cwd=home, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert checked.returncode == 1, checked.stdout + checked.stderr
    [error] = [line for line in checked.stdout.splitlines() if ": error:" in line]
    line = TYPED_USE.splitlines().index('wrong: int = servefiles.canonical_key("a.txt")') + 1
    assert f'uses_servefiles.py:{line}: error: Incompatible types in assignment (expression has type "str", ' \
           'variable has type "int")' in error, checked.stdout  # fmt: skip
    print(f"wheel smoke test: build and install {built - started:.1f} s, all {time.monotonic() - started:.1f} s")
