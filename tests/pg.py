"""Find a real PostgreSQL for the tests, or start a throwaway one.

Order: ``SERVEFILES_TEST_PG`` (a DSN); else a server on 127.0.0.1:5432,
database ``test`` (the CI machine's); else a private server started here from
the machine's ``initdb``/``pg_ctl`` on a free port, removed at exit. Never a
mock: when none of the three works the PostgreSQL tests skip, and under
``CI=true`` a skip is a failure (see conftest).
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from .servers import free_port

DEFAULT_DSN = "postgresql://127.0.0.1:5432/test"


@dataclass
class PgServer:
    dsn: str
    cleanup: list[str] = field(default_factory=list)  # a data dir to stop and remove

    def stop(self) -> None:
        for data_dir in self.cleanup:
            _as_postgres_user([_pg_bin("pg_ctl"), "-D", data_dir, "-m", "immediate", "stop"], check=False)
            shutil.rmtree(Path(data_dir).parent, ignore_errors=True)


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise FileNotFoundError(name)
    return candidates[-1]


def _as_postgres_user(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
    # initdb refuses to run as root: run it as the postgres system user then.
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, timeout=120)


def _start_throwaway() -> PgServer:
    base = tempfile.mkdtemp(prefix="servefiles-pg-")
    data_dir = os.path.join(base, "data")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    port = free_port()
    _as_postgres_user([_pg_bin("initdb"), "-D", data_dir, "-A", "trust", "-U", "postgres", "--no-sync"])
    _as_postgres_user([
        _pg_bin("pg_ctl"), "-D", data_dir, "-w", "-l", os.path.join(base, "log"),
        "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    ])  # fmt: skip
    return PgServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", cleanup=[data_dir])


def find_postgres() -> tuple[PgServer | None, str]:
    """A server to test against, or None and the reason there is none."""
    explicit = os.environ.get("SERVEFILES_TEST_PG")
    if explicit:
        if asyncio.run(_answers(explicit)):
            return PgServer(explicit), ""
        return None, "SERVEFILES_TEST_PG is set but does not answer"
    if asyncio.run(_answers(DEFAULT_DSN)):
        return PgServer(DEFAULT_DSN), ""
    try:
        server = _start_throwaway()
    except (FileNotFoundError, subprocess.SubprocessError, OSError, LookupError) as exc:
        return None, f"no PostgreSQL on 127.0.0.1:5432 and no initdb to start one ({exc})"
    return server, ""
