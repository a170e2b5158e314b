"""``servefiles serve``'s log: plain text by default, one JSON object a line with ``--log-format json``
(every line the process writes: the start-up line, servefiles', uvicorn's, errors), and the access log
(``--access-log``, off by default), read back from real server processes."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from servefiles.logs import FIELDS, JsonFormatter

from .servers import Frontend, cli

BIG = 300_000
"""Over the memory tier's largest file (256 KiB): served from the disk tier once cached."""


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of ``output`` as a JSON object with the four fields every line has."""
    records = []
    for line in output.splitlines():
        record = json.loads(line)  # a line that is not JSON fails here
        assert isinstance(record, dict), line
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), line
        assert record["timestamp"].endswith("Z") and record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR"), line
        records.append(record)
    return records


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'files.db'}"
    (tmp_path / "small.txt").write_bytes(b"small file")
    (tmp_path / "big.bin").write_bytes(os.urandom(BIG))
    for name in ("small.txt", "big.bin"):
        assert cli("put", str(tmp_path / name), f"logs/{name}", "--db", url).returncode == 0
    return url


def served(database: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Frontend:
    return Frontend("--db", database, "--cache-dir", str(tmp_path / "cache"), "--cache-min-uses", "1",
                    "--log-level", "info", *args, env=env).start()  # fmt: skip


def requests(base: str) -> None:
    """A miss and a memory hit, a miss and a disk hit, a range, a 404, a 431 and a path that must not
    forge a log line."""
    with httpx.Client(base_url=base) as client:
        assert client.get("/media/logs/small.txt").status_code == 200
        assert client.get("/media/logs/small.txt").status_code == 200
        assert client.get("/media/logs/big.bin").status_code == 200
        time.sleep(0.5)  # the fill's write-through is complete
        assert client.get("/media/logs/big.bin").status_code == 200
        assert client.get("/media/logs/big.bin", headers={"range": "bytes=0-99"}).status_code == 206
        assert client.get('/media/no/such%0A"file".txt?x=1').status_code == 404
        assert client.get("/media/logs/small.txt", headers={f"x-{n}": "v" for n in range(120)}).status_code == 431


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_json_format_makes_every_line_a_json_object_with_structured_access_lines(
    how: str, database: str, tmp_path: Path
) -> None:
    args, env = (("--log-format", "json", "--access-log"), None) if how == "flag" else \
        ((), {"SERVEFILES_LOG_FORMAT": "json", "SERVEFILES_ACCESS_LOG": "1"})  # fmt: skip
    frontend = served(database, tmp_path, *args, env=env)
    try:
        requests(frontend.base)
    finally:
        frontend.stop()
    records = json_lines(frontend.output())
    loggers = {record["logger"] for record in records}
    assert {"servefiles.serve", "servefiles", "uvicorn.error", "servefiles.access"} <= loggers, loggers
    [start_up] = [record for record in records if record["logger"] == "servefiles.serve"]
    assert start_up["message"].startswith("serving sqlite:///") and start_up["listen"].endswith("/media/")
    assert any(record["message"] == "Application startup complete." for record in records)

    access = [record for record in records if record["logger"] == "servefiles.access"]
    assert [(r["method"], r["path"], r["status"], r["tier"], r["key"], r["bytes"]) for r in access] == [
        ("GET", "/media/logs/small.txt", 200, "miss", "logs/small.txt", 10),
        ("GET", "/media/logs/small.txt", 200, "memory", "logs/small.txt", 10),
        ("GET", "/media/logs/big.bin", 200, "miss", "logs/big.bin", BIG),
        ("GET", "/media/logs/big.bin", 200, "disk", "logs/big.bin", BIG),
        ("GET", "/media/logs/big.bin", 206, "disk", "logs/big.bin", 100),
        ("GET", "/media/no/such%0A%22file%22.txt", 404, None, None, access[5]["bytes"]),  # no query string
        ("GET", "/media/logs/small.txt", 431, None, None, access[6]["bytes"]),
    ]
    for record in access:
        assert record["level"] == "INFO" and record["client"] == "127.0.0.1"
        assert isinstance(record["duration"], float) and 0 < record["duration"] < 5


def test_text_is_the_default_and_the_access_log_is_off_unless_asked_for(database: str, tmp_path: Path) -> None:
    frontend = served(database, tmp_path)
    try:
        requests(frontend.base)
    finally:
        frontend.stop()
    output = frontend.output()
    assert output.startswith("servefiles: serving sqlite:///"), output
    assert "INFO:     Application startup complete." in output and "{" not in output, output
    assert "/media/logs" not in output, output  # neither servefiles' access log nor uvicorn's

    frontend = served(database, tmp_path, "--access-log")
    try:
        with httpx.Client(base_url=frontend.base) as client:
            assert client.get("/media/logs/small.txt?signature=x").status_code == 200
    finally:
        frontend.stop()
    [line] = [line for line in frontend.output().splitlines() if "/media/logs" in line]
    # The file is a disk hit: the first run cached it. The query string is not shown.
    assert line.startswith('127.0.0.1 "GET /media/logs/small.txt" 200 10 ') and line.endswith(" disk"), line


def test_the_access_log_names_the_client_a_proxy_on_this_host_forwarded(database: str, tmp_path: Path) -> None:
    """Behind nginx (``X-Forwarded-For``, nginx-config's block sets it), the line names the client, not
    nginx: uvicorn's proxy headers, which ``servefiles serve`` runs only for its access log."""
    frontend = served(database, tmp_path, "--access-log")
    try:
        with httpx.Client(base_url=frontend.base) as client:
            forwarded = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}
            assert client.get("/media/logs/small.txt", headers=forwarded).status_code == 200
            assert client.get("/media/logs/small.txt").status_code == 200
    finally:
        frontend.stop()
    lines = [line for line in frontend.output().splitlines() if "/media/logs" in line]
    assert [line.split(" ", 1)[0] for line in lines] == ["203.0.113.7", "127.0.0.1"], lines


def test_an_error_before_serving_is_one_json_line_in_json_format(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = cli("serve", "--db", f"sqlite:///{tmp_path / 'f.db'}", "--port", port, "--log-format", "json")
    assert result.returncode == 1 and result.stdout == b""
    [record] = json_lines(result.stderr.decode())
    assert record["level"] == "ERROR" and f"cannot listen on 127.0.0.1:{port}" in record["message"]

    bad_option = cli("serve", "--port", "99999", env={"SERVEFILES_LOG_FORMAT": "json"})
    assert bad_option.returncode == 2
    [record] = json_lines(bad_option.stderr.decode())
    assert "'--port'" in record["message"]


def test_a_json_line_holds_a_traceback_in_one_field_and_no_attribute_but_the_named_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("servefiles.test_logs")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            logger.error("failed for %s", "k", exc_info=True, extra={"key": "k", "tier": "disk", "password": "x"})
    finally:
        logger.removeHandler(handler)
    [record] = json_lines(stream.getvalue())
    assert record["message"] == "failed for k" and record["key"] == "k" and record["tier"] == "disk"
    assert "Traceback" in record["exception"] and "RuntimeError: boom" in record["exception"]
    assert "password" not in record and set(record) <= {"timestamp", "level", "logger", "message", "exception",
                                                          *FIELDS}  # fmt: skip


def test_the_start_up_line_shows_at_any_log_level(database: str, tmp_path: Path) -> None:
    frontend = Frontend("--db", database, "--cache-dir", str(tmp_path / "cache"), "--log-level", "error").start()
    frontend.stop()
    assert frontend.output().splitlines() == [f"servefiles: serving {database} at {frontend.base}/media/, "
                                              "read-only (no --upload-token)"]  # fmt: skip
