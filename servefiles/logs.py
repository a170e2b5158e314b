"""How ``servefiles serve`` writes its log: plain text (the default) or one JSON object a line.

Every line the process writes goes through :func:`configure`'s one handler on stderr:
servefiles' own records, its start-up line (:data:`STARTUP_LOGGER`), the access log
(:data:`ACCESS_LOGGER`, when on), uvicorn's lines and any other library's warnings, so a log
system that reads JSON never meets a line it cannot parse. A JSON line holds ``timestamp``
(UTC, ISO 8601), ``level``, ``logger`` and ``message``, then the structured fields of
:data:`FIELDS` a record carries (``logger.warning(…, extra={"key": key})``), then
``exception`` (the traceback as one string) when there is one.

Only the fields named in :data:`FIELDS` are copied: a record's other attributes never reach
a log line, so a secret passed along by a library cannot slip out through them.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any, Literal

__all__ = ["ACCESS_LOGGER", "FIELDS", "STARTUP_LOGGER", "JsonFormatter", "configure", "json_line"]

LogFormat = Literal["text", "json"]

STARTUP_LOGGER = "servefiles.serve"
"""The start-up line: shown whatever ``--log-level`` says, as ``servefiles: …`` in text."""
ACCESS_LOGGER = "servefiles.access"
"""One line per request when ``--access-log`` is on."""

FIELDS = ("method", "path", "status", "bytes", "duration", "tier", "key", "client", "db", "listen")
"""Structured fields copied from a record into its JSON line, in this order."""


def json_line(level: str, logger: str, message: str, created: float | None = None, **fields: Any) -> str:
    """One JSON log line (no newline): ``timestamp``, ``level``, ``logger``, ``message``, then ``fields``."""
    when = time.time() if created is None else created
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"
    line = {"timestamp": stamp, "level": level, "logger": logger, "message": message, **fields}
    return json.dumps(line, ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line (see the module)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {name: record.__dict__[name] for name in FIELDS if name in record.__dict__}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return json_line(record.levelname, record.name, record.getMessage(), record.created, **fields)


def configure(log_format: LogFormat, level: str) -> None:
    """Send every log record of this process to stderr in ``log_format``.

    ``level`` (``info``, ``warning``, …) applies to servefiles' and uvicorn's loggers; other
    libraries show warnings and worse (or ``level``, when it is stricter). The start-up line
    and the access log are shown at any level: they are asked for, not chatter. Python's
    warnings become log records too, so they are JSON lines as well.
    """
    threshold = logging.getLevelName(level.upper())
    formatters: dict[str, dict[str, Any]] = {
        "json": {"()": JsonFormatter},
        "text": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s"},
        "startup": {"format": "servefiles: %(message)s"},
        "plain": {"format": "%(message)s"},
    }
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    text = log_format == "text"
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {
            "default": {**handler, "formatter": "text" if text else "json"},
            "startup": {**handler, "formatter": "startup" if text else "json"},
            "access": {**handler, "formatter": "plain" if text else "json"},
        },
        "root": {"level": max(threshold, logging.WARNING), "handlers": ["default"]},
        "loggers": {
            "servefiles": {"level": threshold},
            "uvicorn": {"level": threshold, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": threshold, "handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},  # servefiles' own access log replaces it
            STARTUP_LOGGER: {"level": "INFO", "handlers": ["startup"], "propagate": False},
            ACCESS_LOGGER: {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    })  # fmt: skip
    logging.captureWarnings(True)
