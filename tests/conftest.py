"""Shared fixtures: real stores (SQLite and PostgreSQL), isolated per test.

Each test run creates its own PostgreSQL database and drops it at the end;
each test gets its own schema in it (``?search_path=…`` in the DSN), so runs
and tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from hypothesis import settings

from servefiles import Store, open_store

from .pg import PgServer, find_postgres
from .tcp_proxy import TcpProxy, proxy_for

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Hypothesis fails an example that takes over 200 ms (its default deadline) as flaky. The
# property tests assert what the code answers, not how fast: the tests that bound a time say so
# themselves (test_http.py's "cost no time"). Under parallel workers on a loaded machine a
# descheduled example can take longer, so the deadline only catches the pathological.
settings.register_profile("servefiles", deadline=timedelta(seconds=2))
settings.load_profile("servefiles")


@pytest.fixture(autouse=True, scope="session")
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test (nor any server it starts) touches the user's real database or cache."""
    os.environ["SERVEFILES_DATA_DIR"] = str(tmp_path_factory.mktemp("servefiles-home"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Under CI=true a skipped PostgreSQL test is a failure, not a pass."""
    report: pytest.TestReport = yield
    if IN_CI and report.skipped and item.get_closest_marker("postgres") is not None:
        report.outcome = "failed"
        report.longrepr = f"PostgreSQL test skipped under CI=true: {report.longrepr}"
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs against PostgreSQL, so the CI rule above finds it."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and "postgres" in callspec.params.values()
        if on_postgres or "pg_database" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def _with_database(dsn: str, database: str, query: str = "") -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, query, ""))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server, reason = find_postgres()
    if server is None:
        pytest.skip(reason)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """The DSN of a database created for this test run, dropped at its end."""
    name = f"servefiles_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_server.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield _with_database(pg_server.dsn, name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_url(pg_database: str) -> str:
    """A DSN whose tables live in a schema of their own, fresh for this test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_database)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return pg_database + f"?search_path={schema}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'files.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store, once per backend: the contract runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'files.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as opened:
        yield opened


@pytest.fixture
async def pg_proxy(pg_url: str) -> AsyncIterator[TcpProxy]:
    """A cuttable TCP proxy to this test's PostgreSQL, on the test's event loop."""
    proxy = proxy_for(pg_url)
    await proxy.start()
    yield proxy
    await proxy.cut()
