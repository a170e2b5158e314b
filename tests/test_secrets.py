"""No secret on any console (issue 13, item 12): a database password or an upload token never
appears in a start-up line, a log line, a CLI error or an HTTP reply (the health report
included). Every path that shows a DSN is driven for real — ``servefiles`` processes, the real
PostgreSQL (trust auth: the password is sent nowhere, so any password works), a port with nothing
listening, and a proxy that is cut — and its output searched for the secret. Issue 19 adds signed
URLs' signatures and signing keys, the JSON log format, the access log, ``--config`` files and
``servefiles config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from servefiles import ServeFiles
from servefiles.errors import StoreUnavailable
from servefiles.store import connect, mask_dsn
from servefiles.store.postgres import PostgresStore

from .asgi_servers import uvicorn_server
from .servers import WsgiFrontend, cli, free_port, running
from .tcp_proxy import TcpProxy, proxy_for
from .test_feed import until

PASSWORD = "Hush-7x!pa@ss:w/rd"
"""Needs percent-encoding in a URL (``@``, ``:``, ``/``, ``!``)."""
WITNESS = "Hush-7x"
"""What the password's raw and percent-encoded forms share: found in neither, shown in neither."""
TOKEN = "Hush-7x-upload-token-0123456789"
"""An upload token that contains the witness too."""


def with_password(url: str, user: str, *, in_query: bool = False, netloc: str | None = None) -> str:
    """``url`` with ``user`` and :data:`PASSWORD` (percent-encoded in the user info, or as ``password=``)."""
    parts = urlsplit(url)
    hosts = netloc or parts.netloc.rpartition("@")[2]
    if in_query:
        query = "&".join(filter(None, [parts.query, f"password={quote(PASSWORD, safe='')}"]))
        return urlunsplit((parts.scheme, f"{user}@{hosts}", parts.path, query, ""))
    return urlunsplit((parts.scheme, f"{user}:{quote(PASSWORD, safe='')}@{hosts}", parts.path, parts.query, ""))


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        shown = text.decode(errors="replace") if isinstance(text, bytes) else text
        assert WITNESS not in shown, shown


@pytest.fixture(scope="session")
def pg_user(pg_database: str) -> str:
    async def current_user() -> str:
        conn = await asyncpg.connect(pg_database)
        try:
            return str(await conn.fetchval("SELECT current_user"))
        finally:
            await conn.close()

    return asyncio.run(current_user())


@pytest.fixture(params=["user-info", "query", "multi-host"])
def secret_dsn(request: pytest.FixtureRequest, pg_url: str, pg_user: str) -> str:
    """This test's PostgreSQL, reached with a password in each place a DSN may carry one."""
    if request.param == "query":
        return with_password(pg_url, pg_user, in_query=True)
    if request.param == "multi-host":  # asyncpg tries the hosts in turn: the first one answers
        host = urlsplit(pg_url).netloc.rpartition("@")[2]
        return with_password(pg_url, pg_user, netloc=f"{host},127.0.0.1:{free_port()}")
    return with_password(pg_url, pg_user)


def nowhere(pg_user: str = "app", *, in_query: bool = False) -> str:
    """A DSN with the password, on a port with nothing listening."""
    return with_password(f"postgresql://127.0.0.1:{free_port()}/app", pg_user, in_query=in_query)


# -- the one function that masks ----------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (f"postgresql://app:{quote(PASSWORD, safe='')}@db:5432/app", "postgresql://app:***@db:5432/app"),
        (f"postgresql://app:{PASSWORD}@db/app", "postgresql://app:***@db/app"),  # not encoded: the last @ ends it
        (f"postgresql://app:{WITNESS}@h1:5432,h2:5433/app?target_session_attrs=read-write",
         "postgresql://app:***@h1:5432,h2:5433/app?target_session_attrs=read-write"),
        (f"postgresql://app@db/app?password={WITNESS}&sslmode=require",
         "postgresql://app@db/app?password=***&sslmode=require"),
        (f"postgresql://db/app?sslmode=verify-full&sslpassword={WITNESS}&PASSWORD={WITNESS}",
         "postgresql://db/app?sslmode=verify-full&sslpassword=***&PASSWORD=***"),
        (f"postgresql://app:{WITNESS}?x@db/app?sslmode=disable", "postgresql://app:***@db/app?sslmode=disable"),
        (f"host=db user=app password={WITNESS} dbname=app", "host=db user=app password=*** dbname=app"),
        (f"host=db password='{WITNESS} x' dbname=app", "host=db password=*** dbname=app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("sqlite:////var/lib/files.db", "sqlite:////var/lib/files.db"),
    ],
)  # fmt: skip
def test_mask_dsn_hides_the_password_and_keeps_the_rest(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown


# -- servefiles serve ---------------------------------------------------------------------


def test_serve_start_up_line_and_health_show_no_password(secret_dsn: str, tmp_path: Path) -> None:
    with running("--db", secret_dsn, "--cache-dir", str(tmp_path / "cache"), "--upload-token", TOKEN,
                 "--log-level", "info") as frontend:  # fmt: skip
        health = httpx.get(f"{frontend.base}/_servefiles/health", headers={"authorization": f"Bearer {TOKEN}"})
        assert health.status_code == 200 and health.json()["store"] == "ok"  # the detailed report
        assert_no_secret(health.text, str(health.headers))
        written = httpx.put(f"{frontend.base}/media/a.txt", content=b"a", headers={"authorization": f"Bearer {TOKEN}"})
        assert written.status_code == 201
        assert_no_secret(written.text, str(written.headers))
    output = frontend.output()
    [start_up] = [line for line in output.splitlines() if "servefiles: serving" in line]
    assert "***" in start_up and urlsplit(secret_dsn).path in start_up
    assert_no_secret(output)


@pytest.mark.parametrize("in_query", [False, True])
def test_serve_with_no_database_listening_shows_no_password(in_query: bool) -> None:
    result = cli("serve", "--db", nowhere(in_query=in_query), "--port", str(free_port()))
    assert result.returncode != 0 and len(result.stderr.splitlines()) == 1, result.stderr
    assert b"cannot connect to PostgreSQL at postgresql://app" in result.stderr and b"***" in result.stderr
    assert_no_secret(result.stdout, result.stderr)


def test_serve_with_no_read_replica_listening_starts_and_shows_no_password(secret_dsn: str, tmp_path: Path) -> None:
    """A read replica that does not answer is no reason to refuse to start (content is read from
    the primary meanwhile); the one line that says so shows no password."""
    replica = nowhere()
    with running("--db", secret_dsn, "--read-db", replica, "--cache-dir", str(tmp_path / "cache")) as frontend:
        assert httpx.get(f"{frontend.base}/media/absent.txt").status_code == 404
        output = frontend.output()
    [line] = [line for line in output.splitlines() if "read replica" in line]
    assert "***" in line and "content is read from the primary" in line, output
    assert_no_secret(output)


# -- every command's database errors ------------------------------------------------------

STORE_COMMANDS = [
    ["ls"], ["init"], ["put", "{file}", "k.txt"], ["get", "k.txt"], ["rm", "k.txt"], ["import", "{dir}"],
    ["export", "{dir}/out"], ["warm", "--cache-dir", "{dir}/cache"], ["sync", "--cache-dir", "{dir}/cache"],
    ["serve", "--port", "0", "--cache-dir", "{dir}/cache"],
]  # fmt: skip


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=[c[0] for c in STORE_COMMANDS])
@pytest.mark.parametrize("in_query", [False, True], ids=["user-info", "query"])
def test_every_command_reports_an_unreachable_database_without_its_password(
    command: list[str], in_query: bool, tmp_path: Path
) -> None:
    (tmp_path / "file.txt").write_bytes(b"x")
    argv = [arg.format(file=tmp_path / "file.txt", dir=tmp_path) for arg in command]
    result = cli(*argv, "--db", nowhere(in_query=in_query))
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert b"servefiles: error: cannot connect to PostgreSQL at " in result.stderr and b"***" in result.stderr
    assert_no_secret(result.stdout, result.stderr)


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{PASSWORD}@127.0.0.1:notaport/app",
        f"postgresql://app:{WITNESS}@127.0.0.1:99999/app",
        f"postgresql://app:{WITNESS}@[::1/app",
        f"postgresql://app:{WITNESS}@127.0.0.1:5432/app?sslmode=sometimes",
        f"mysql://app:{WITNESS}@db/app?password={WITNESS}",
        f"sqlite://app:{WITNESS}@db/files.db",
    ],
)
def test_a_bad_database_url_is_one_line_without_its_password(dsn: str) -> None:
    result = cli("ls", "--db", dsn)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert b"Traceback" not in result.stderr and b"***" in result.stderr
    assert_no_secret(result.stdout, result.stderr)


def test_init_names_the_database_without_its_password(secret_dsn: str) -> None:
    result = cli("init", "--db", secret_dsn)
    assert result.returncode == 0, result.stderr
    assert b"schema ready in postgresql://" in result.stdout and b"***" in result.stdout
    assert_no_secret(result.stdout, result.stderr)


# -- the store's own messages -------------------------------------------------------------


async def test_store_unavailable_messages_and_repr_show_no_password(
    pg_url: str, pg_user: str, pg_proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="servefiles")
    with pytest.raises(StoreUnavailable) as refused:
        await connect(nowhere(pg_user))
    assert "***" in str(refused.value)
    assert_no_secret(str(refused.value))

    proxied = with_password(pg_url, pg_user, netloc=f"127.0.0.1:{pg_proxy.port}")
    replica_proxy = proxy_for(pg_url)
    await replica_proxy.start()
    replica = with_password(pg_url, pg_user, in_query=True, netloc=f"127.0.0.1:{replica_proxy.port}")
    store = await PostgresStore.open(proxied, read_dsn=replica)
    try:
        assert "***" in repr(store)
        await store.put("a.txt", b"content")
        await replica_proxy.cut()  # the replica goes: reads fall back to the primary, with a warning
        assert b"".join([chunk async for chunk in store.read("a.txt")]) == b"content"
        assert "read replica at" in caplog.text and "content is read from the primary" in caplog.text

        wake_ups = store.wake_ups(0.1)
        await anext(wake_ups)
        await pg_proxy.cut()
        failures: list[StoreUnavailable] = []
        with pytest.raises(StoreUnavailable) as lost:
            await anext(wake_ups)
        failures.append(lost.value)
        with pytest.raises(StoreUnavailable) as down:
            await store.stat("a.txt")
        failures.append(down.value)
        with pytest.raises(StoreUnavailable) as feedless:
            await anext(store.wake_ups(0.1))
        failures.append(feedless.value)
        for failure in failures:
            assert "***" in str(failure)
            assert_no_secret(str(failure), repr(failure))
        await wake_ups.aclose()
    finally:
        await pg_proxy.restore()
        await store.close()
    assert_no_secret(caplog.text)


# -- the health report and the feed's warnings, on both adapters --------------------------


@contextlib.asynccontextmanager
async def served(adapter: str, dsn: str, cache_dir: Path) -> AsyncIterator[str]:
    """servefiles on ``dsn`` behind a real server: uvicorn in this loop, or gunicorn (started in a
    thread, so the proxy in this loop keeps forwarding while it starts)."""
    options = {"cache_dir": str(cache_dir), "feed_check_seconds": 0.2, "freshness_seconds": 0.1,
               "upload_tokens": [TOKEN]}  # fmt: skip
    if adapter == "wsgi":
        frontend = WsgiFrontend({"db": dsn, **options})
        await asyncio.to_thread(frontend.start)
        try:
            yield frontend.base
        finally:
            await asyncio.to_thread(frontend.stop)
        assert_no_secret(frontend.output())
        return
    app = ServeFiles(None, db=dsn, cache_dir=cache_dir, feed_check_seconds=0.2, freshness_seconds=0.1,
                     upload_tokens=[TOKEN])  # fmt: skip
    try:
        async with uvicorn_server(app) as base:
            yield base
    finally:
        await app.aclose()


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
async def test_health_report_and_feed_warnings_show_no_password_through_an_outage(
    adapter: str, pg_url: str, pg_user: str, pg_proxy: TcpProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="servefiles")
    dsn = with_password(pg_url, pg_user, netloc=f"127.0.0.1:{pg_proxy.port}")
    async with served(adapter, dsn, tmp_path / "cache") as base, httpx.AsyncClient(base_url=base) as client:

        async def health() -> dict[str, object]:
            reply = await client.get("/_servefiles/health", headers={"authorization": f"Bearer {TOKEN}"})  # detailed
            assert reply.status_code == 200
            assert_no_secret(reply.text, str(reply.headers))
            report: dict[str, object] = reply.json()
            return report

        async def feed(healthy: bool) -> bool:
            report = await health()
            return isinstance(report.get("feed"), dict) and report["feed"]["healthy"] is healthy  # type: ignore[index]

        await until(lambda: feed(True), seconds=15)
        await pg_proxy.cut()
        await until(lambda: feed(False), seconds=15)
        # Health never waits on the database: a request that needs the store records why it failed.
        refused = await client.get("/media/not-cached.png")
        assert refused.status_code == 503
        assert_no_secret(refused.text, str(refused.headers))
        down = await health()
        assert str(down["store"]).startswith("unavailable: ") and "***" in str(down["store"])
        assert "***" in json.dumps(down["feed"])
        await pg_proxy.restore()
        await until(lambda: feed(True), seconds=30)
    if adapter == "asgi":  # in this process: its log records are here
        assert "change feed down" in caplog.text and "change feed following postgresql://" in caplog.text
        assert "***" in caplog.text
    assert_no_secret(caplog.text)


# -- upload tokens ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--upload-token", WITNESS], {}),  # too short
        (["--upload-token", f"{TOKEN}:../x"], {}),  # a folder that is not one
        (["--upload-token", f"{TOKEN}!"], {}),  # a character a Bearer credential cannot carry
        ([], {"SERVEFILES_UPLOAD_TOKEN": f"{TOKEN}:a//b"}),
        (["--upload-token-file", "{tokens}"], {}),
    ],
)
def test_a_bad_upload_token_is_refused_without_echoing_it(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"# rotation\n{TOKEN}\n{WITNESS}-short\n")
    argv = [arg.format(tokens=tokens) for arg in args]
    result = cli("serve", *argv, "--db", f"sqlite:///{tmp_path / 'files.db'}", "--port", str(free_port()), env=env)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert b"--upload-token" in result.stderr
    assert_no_secret(result.stdout, result.stderr)


WRONG = f"{TOKEN}-wrong"


def test_upload_tokens_are_never_in_a_reply_or_a_repr(tmp_path: Path) -> None:
    with running("--db", f"sqlite:///{tmp_path / 'files.db'}", "--cache-dir", str(tmp_path / "cache"),
                 "--upload-token", f"{TOKEN}:blog", "--log-level", "debug") as frontend:  # fmt: skip
        replies = [
            httpx.put(f"{frontend.base}/media/blog/a.txt", content=b"a", headers={"authorization": f"Bearer {TOKEN}"}),
            httpx.put(f"{frontend.base}/media/x.txt", content=b"a", headers={"authorization": f"Bearer {TOKEN}"}),
            httpx.put(f"{frontend.base}/media/x.txt", content=b"a", headers={"authorization": f"Bearer {WRONG}"}),
            httpx.get(f"{frontend.base}/media/?prefix=other/", headers={"authorization": f"Bearer {TOKEN}"}),
            httpx.get(f"{frontend.base}/_servefiles/health"),
        ]
        assert [reply.status_code for reply in replies] == [201, 403, 401, 403, 200]
        for reply in replies:
            assert_no_secret(reply.text, str(reply.headers))
    assert_no_secret(frontend.output())
    from servefiles.auth import TokenRing, UploadToken

    assert_no_secret(repr(UploadToken.parse(f"{TOKEN}:blog")), repr(TokenRing([TOKEN])))


# -- logs in both formats, the access log, the configuration ------------------------------

SIGNING_KEY = f"{WITNESS}-signing-key-{'k7Qx' * 11}"
"""A signing key strong enough for serve (44 random-looking characters after the witness)."""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_and_the_access_log_show_no_password_token_signature_or_key(
    log_format: str, secret_dsn: str, tmp_path: Path
) -> None:
    """Every request that carries a secret (a signed URL's signature, an upload token in Authorization,
    a forged signature, a token where a path belongs) logged at debug level with the access log on, on
    a database reached with a password: the output shows none of them, and in JSON every line parses."""
    signed = cli("sign", "private/a.txt", "--signing-key", SIGNING_KEY).stdout.decode().strip()
    signature = signed.rpartition("signature=")[2]
    assert len(signature) == 43
    with running("--db", secret_dsn, "--cache-dir", str(tmp_path / "cache"), "--upload-token", TOKEN,
                 "--private", "private", "--signing-key", SIGNING_KEY, "--log-level", "debug", "--access-log",
                 "--log-format", log_format) as frontend:  # fmt: skip
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.put(f"{frontend.base}/media/private/a.txt", content=b"a", headers=bearer).status_code == 201
        assert httpx.get(f"{frontend.base}{signed}").status_code == 200
        assert httpx.get(f"{frontend.base}/media/private/a.txt?expires=1&signature={WITNESS}x").status_code == 403
        assert httpx.get(f"{frontend.base}/media/private/a.txt", headers=bearer).status_code == 200
        assert httpx.put(f"{frontend.base}/media/b.txt", content=b"b",
                         headers={"authorization": f"Bearer {WRONG}"}).status_code == 401  # fmt: skip
        assert httpx.get(f"{frontend.base}/media/{TOKEN}?token={TOKEN}").status_code == 404
    output = frontend.output()  # once the server has stopped: its last line may follow the reply
    assert output.count('"GET /media/private/a.txt"') + output.count(r"\"GET /media/private/a.txt\"") == 3, output
    assert "/media/Hush-7x" in output  # the one place a witness belongs: the path asked for...
    assert_no_secret(output.replace(f"/media/{TOKEN}", "/media/<path>"))  # ...and nothing else
    assert signature not in output and "signature=" not in output and "token=" not in output, output
    if log_format == "json":
        records = [json.loads(line) for line in output.splitlines()]
        assert [r["status"] for r in records if r["logger"] == "servefiles.access"] == [201, 200, 403, 200, 401, 404]
        [start_up] = [r for r in records if r["logger"] == "servefiles.serve"]
        assert "***" in start_up["db"] and "***" in start_up["message"]


def test_config_masks_every_secret_wherever_it_was_given(tmp_path: Path) -> None:
    tokens, keys = tmp_path / "tokens.txt", tmp_path / "keys.txt"
    tokens.write_text(f"{TOKEN}\n")
    keys.write_text(f"{SIGNING_KEY}\n")
    config = tmp_path / "servefiles.toml"
    config.write_text(f'db = "{with_password("postgresql://db.internal/app", "app")}"\n'
                      f'signing-key = ["{SIGNING_KEY}"]\nupload-token = ["{TOKEN}:blog"]\n')  # fmt: skip
    env = {"SERVEFILES_READ_DB": with_password("postgresql://replica/app", "app", in_query=True),
           "SERVEFILES_UPLOAD_TOKEN": f"{WITNESS}-env-token-0123456789"}  # fmt: skip
    shown = cli("config", "--config", str(config), "--upload-token-file", str(tokens), "--signing-key-file", str(keys),
                env=env)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert_no_secret(text, shown.stderr)
    assert 'db = "postgresql://app:***@db.internal/app"  # config file' in text
    assert 'read-db = "postgresql://app@replica/app?password=***"  # environment (SERVEFILES_READ_DB)' in text
    assert 'upload-token = ["***"]  # environment (SERVEFILES_UPLOAD_TOKEN)' in text  # the environment wins
    assert 'signing-key = ["***"]  # config file' in text
    assert f'upload-token-file = "{tokens}"' in text and f'signing-key-file = "{keys}"' in text

    flags = cli("config", "--config", str(config), "--upload-token", f"{TOKEN}:blog", "--db", nowhere(in_query=True))
    assert 'upload-token = ["***:blog"]  # flag' in flags.stdout.decode()
    assert_no_secret(flags.stdout, flags.stderr)


@pytest.mark.parametrize(
    "line",
    [
        f'db = "postgresql://app:{WITNESS}@127.0.0.1:notaport/app"',
        f'upload-token = ["{WITNESS}"]',  # too short
        f'signing-key = "{WITNESS}"',  # too weak
        f"upload-token = {{ token = '{WITNESS}' }}",  # a table
    ],
)
def test_a_secret_in_a_bad_config_file_is_never_echoed(line: str, tmp_path: Path) -> None:
    config = tmp_path / "servefiles.toml"
    config.write_text(f"port = {free_port()}\n{line}\n")
    for log_format in ("text", "json"):
        result = cli("serve", "--config", str(config), "--cache-dir", str(tmp_path / "cache"), "--log-format",
                     log_format)  # fmt: skip
        assert result.returncode in (1, 2) and len(result.stderr.splitlines()) == 1, result.stderr
        assert b"Traceback" not in result.stderr
        assert_no_secret(result.stdout, result.stderr)


def test_a_json_error_line_shows_no_password() -> None:
    result = cli("serve", "--db", nowhere(), "--port", str(free_port()), "--log-format", "json")
    assert result.returncode == 1, result.stderr
    [record] = [json.loads(line) for line in result.stderr.splitlines()]
    assert record["level"] == "ERROR" and "cannot connect to PostgreSQL at postgresql://app:***@" in record["message"]
    assert_no_secret(result.stdout, result.stderr)
