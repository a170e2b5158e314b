"""Where errors become exits of the ``servefiles`` command: one line on stderr, never a traceback."""

from __future__ import annotations

from typing import Any

import click

from ..errors import ServeFilesError
from ..logs import json_line

EXIT_ERROR = 1
EXIT_USAGE = 2

JSON_ERRORS = "servefiles.json_errors"
"""``ctx.meta`` key: set (by ``--log-format json``) when an error is to be shown as a JSON log line."""
CONFIG_FILE = "servefiles.config_file"
"""``ctx.meta`` key: the ``--config`` file read, named by errors about values that came from it."""


class ErrorLine(click.ClickException):
    """An error as the command shows it: ``servefiles: error: …``, one line on stderr, exit 1
    (a JSON log line instead, level ERROR, when ``serve --log-format json`` was asked for)."""

    as_json = False

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(line.strip() for line in message.splitlines() if line.strip()))

    def show(self, file: Any = None) -> None:
        line = json_line("ERROR", "servefiles", self.message) if self.as_json else f"servefiles: error: {self.message}"
        click.echo(line, file=file, err=True)


class UsageLine(ErrorLine):
    """A command line servefiles cannot run (bad option value, missing argument): one line, exit 2
    (as click's own usage errors), without click's usage block."""

    exit_code = EXIT_USAGE


_HELP_INSTEAD = getattr(click.exceptions, "NoArgsIsHelpError", ())
"""Click >= 8.2 shows the help for a bare ``servefiles`` through an error: that stays the help."""


def one_line(exc: click.ClickException) -> ErrorLine:
    """Click's error ``exc`` as one line: a usage error names the command and where its help is."""
    if isinstance(exc, ErrorLine):
        return exc
    if isinstance(exc, click.BadParameter) and _from_config_file(exc):
        return UsageLine(f"{exc.format_message()} (set in {exc.ctx.meta.get(CONFIG_FILE) if exc.ctx else None})")
    if isinstance(exc, click.UsageError):
        help_hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return UsageLine(exc.format_message() + help_hint)
    return ErrorLine(exc.format_message())


def _from_config_file(exc: click.BadParameter) -> bool:
    """Whether the value ``exc`` refuses came from the ``--config`` file (click's default_map)."""
    if exc.ctx is None or exc.param is None or not exc.param.name:
        return False
    return exc.ctx.get_parameter_source(exc.param.name) is click.core.ParameterSource.DEFAULT_MAP


class Commands(click.Group):
    """The one place where errors become CLI exits: one line on stderr, never a traceback.

    servefiles' error types and OSError (a missing or unreadable local file, named) exit 1;
    click's usage errors (a bad option value, a missing argument, no such option or command)
    exit 2, as with click, but in one line instead of click's usage block. ``--help`` is click's.
    """

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _HELP_INSTEAD:
            raise
        except click.ClickException as exc:  # the group's own options: `servefiles --bogus`
            raise one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke(ctx)
        except ErrorLine as exc:
            exc.as_json = bool(ctx.meta.get(JSON_ERRORS))  # meta is shared with the subcommand's context
            raise

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _HELP_INSTEAD:
            raise
        except click.ClickException as exc:
            raise one_line(exc) from None
        except ServeFilesError as exc:
            raise ErrorLine(str(exc)) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise ErrorLine(f"{exc.strerror or exc}{where}") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
