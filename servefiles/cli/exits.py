"""Where errors become exits of the ``servefiles`` command: one line on stderr, never a traceback."""

from __future__ import annotations

from typing import Any

import click

from ..errors import ServeFilesError

EXIT_ERROR = 1
EXIT_USAGE = 2


class ErrorLine(click.ClickException):
    """An error as the command shows it: ``servefiles: error: …``, one line on stderr, exit 1."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(line.strip() for line in message.splitlines() if line.strip()))

    def show(self, file: Any = None) -> None:
        click.echo(f"servefiles: error: {self.message}", file=file, err=True)


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
    if isinstance(exc, click.UsageError):
        help_hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return UsageLine(exc.format_message() + help_hint)
    return ErrorLine(exc.format_message())


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
