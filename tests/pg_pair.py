"""A real PostgreSQL primary and a hot standby streaming from it, for the high-availability tests.

Started from the machine's own binaries (``initdb``, ``pg_ctl``, ``pg_basebackup -R``) on
private ports, in a private directory owned by the ``postgres`` user (initdb and postgres
refuse to run as root); the machine's own server (127.0.0.1:5432) is never touched.
:meth:`PgPair.remove` stops both servers and removes the directory, whatever state the
test left them in (stopped, promoted, cut off).

Replication is asynchronous (PostgreSQL's default): a write the primary acknowledged can be
missing on the standby, which is what :meth:`PgPair.cut_standby_off` makes certain.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from .pg import _as_postgres_user, _pg_bin
from .servers import free_port

START_SECONDS = 30.0


class PgServerDir:
    """One PostgreSQL server of the pair: its data directory, port and log."""

    def __init__(self, base: Path, name: str) -> None:
        self.data = base / name
        self.log = base / f"{name}.log"
        self.port = free_port()
        self.socket_dir = base

    @property
    def netloc(self) -> str:
        return f"postgres@127.0.0.1:{self.port}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.netloc}/{database}"

    def pg_ctl(self, *args: str, check: bool = True) -> None:
        _as_postgres_user([_pg_bin("pg_ctl"), "-D", str(self.data), *args], check=check)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        self.pg_ctl("-w", "-t", str(int(START_SECONDS)), "-l", str(self.log), "-o", options, "start")

    def start_if_stopped(self) -> None:
        """Start the server unless it runs (``pg_ctl status`` exits with 3 when it does not)."""
        status = _as_postgres_user([_pg_bin("pg_ctl"), "-D", str(self.data), "status"], check=False)
        if status.returncode == 3:
            self.start()

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: a crash, as far as clients and the standby can tell."""
        self.pg_ctl("-m", "immediate", "-w", "stop", check=False)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class PgPair:
    """A primary and a hot standby replicating from it (see the module)."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="servefiles-ha-"))
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        self.primary = PgServerDir(self.base, "primary")
        self.standby = PgServerDir(self.base, "standby")

    def start(self) -> PgPair:
        """initdb the primary, start it, clone the standby from it with ``pg_basebackup -R``, start that."""
        _as_postgres_user([_pg_bin("initdb"), "-D", str(self.primary.data), "-A", "trust", "-U", "postgres",
                           "--no-sync", "--no-instructions"])  # fmt: skip
        with (self.primary.data / "postgresql.conf").open("a") as conf:
            # fsync off: a crash of the whole machine is not what these tests are about. A short
            # wal_sender_timeout lets a dead standby's slot go quickly; hot_standby answers reads.
            conf.write("fsync = off\nwal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n"
                       "wal_sender_timeout = 5s\nwal_receiver_status_interval = 1s\n")  # fmt: skip
        self.primary.start()
        _as_postgres_user([_pg_bin("pg_basebackup"), "-D", str(self.standby.data), "-R", "-X", "stream",
                           "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres", "--no-sync",
                           "-c", "fast"])  # fmt: skip
        self.standby.start()
        return self

    def remove(self) -> None:
        """Stop both servers (whatever their state) and remove their directory."""
        for server in (self.standby, self.primary):
            server.stop_immediately()
        shutil.rmtree(self.base, ignore_errors=True)

    def multi_host_dsn(self, database: str) -> str:
        """The DSN a frontend uses: both hosts, connecting to whichever accepts writes."""
        hosts = f"postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://{hosts}/{database}?target_session_attrs=read-write"

    # -- what the tests do to the pair --------------------------------------------------------

    def create_database(self, name: str) -> None:
        """CREATE DATABASE on the primary, and wait until the standby has replayed it."""

        async def go() -> None:
            await sql(self.primary.dsn(), f'CREATE DATABASE "{name}"')
            await self.wait_replayed()

        asyncio.run(go())

    async def wait_replayed(self, seconds: float = 10.0) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        target = await sql(self.primary.dsn(), "SELECT pg_current_wal_lsn()")

        async def caught_up() -> bool:
            return bool(await sql(self.standby.dsn(), "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target))

        await poll(caught_up, seconds, "standby replay caught up")

    async def cut_standby_off(self) -> None:
        """Stop the standby's WAL receiver: from now on it receives nothing from the primary.

        (Pausing replay is not enough: a paused standby still receives WAL and applies it all
        when promoted.) An empty ``primary_conninfo`` plus a reload stops the WAL receiver.
        """
        await sql(self.standby.dsn(), "ALTER SYSTEM SET primary_conninfo = ''")
        await sql(self.standby.dsn(), "SELECT pg_reload_conf()")

        async def receiver_gone() -> bool:
            return await sql(self.standby.dsn(), "SELECT count(*) FROM pg_stat_wal_receiver") == 0

        await poll(receiver_gone, 10.0, "WAL receiver stopped")

    def promote(self) -> None:
        """``pg_ctl promote`` the standby, waiting until it accepts writes."""
        self.standby.pg_ctl("-w", "-t", str(int(START_SECONDS)), "promote")

    async def pause_replay(self) -> None:
        await sql(self.standby.dsn(), "SELECT pg_wal_replay_pause()")

        async def paused() -> bool:
            return await sql(self.standby.dsn(), "SELECT pg_get_wal_replay_pause_state()") == "paused"

        await poll(paused, 10.0, "replay paused")

    async def resume_replay(self) -> None:
        await sql(self.standby.dsn(), "SELECT pg_wal_replay_resume()")


async def sql(dsn: str, query: str, *args: object) -> object:
    """One query's first value on a connection of its own (superuser, as the pair's owner)."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def poll(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Until ``check()`` is true; AssertionError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not reached in {seconds} s"
        await asyncio.sleep(0.02)
