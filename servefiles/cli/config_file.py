"""``--config FILE``: ``serve``'s options from a TOML file, under click's own precedence.

The file holds any ``serve`` option by its long name, with the value TOML gives it::

    db = "postgresql://servefiles@db.internal/app"
    cache-dir = "/var/cache/servefiles/cache"
    port = 8000
    metrics = true
    private = ["invoices", "members/docs"]

(an underscore may stand for a dash: ``cache_dir``). The option is eager: the file is read
with :mod:`tomllib` before any other option is processed, and becomes the command's
``default_map``. Click then applies the precedence itself: a flag on the command line, else
the option's environment variable, else the file, else the built-in default.

An unknown option, a value of the wrong TOML type (a string where a number belongs), a table
or an unreadable file is refused in one line that names the file and the option, never the
value (it may be a secret). A value of the right type that the option then refuses (port
70000, size ``12Q``) is click's usual message, with the file named after it.

``nginx-config`` takes the same file and uses the options it shares with ``serve`` (prefix,
cache and publish dirs, upload size, Cache-Control, private folders), so the nginx block and the
server it fronts come from one place.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .exits import CONFIG_FILE

__all__ = ["CONFIG_ENV", "config_option", "long_name", "read_config"]

CONFIG_ENV = "SERVEFILES_CONFIG"


def config_option(schema: Callable[[], click.Command]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--config FILE`` (env ``SERVEFILES_CONFIG``): not passed to the command, which sees its
    values as defaults; the path is kept in ``ctx.meta`` (:data:`~.exits.CONFIG_FILE`). ``schema``
    gives the command whose options the file may hold (``serve``, whichever command reads it),
    asked for when the file is read: the command that defines it need not exist yet."""

    def load(ctx: click.Context, param: click.Parameter, path: Path | None) -> None:
        if path is None:
            return
        ctx.meta[CONFIG_FILE] = path
        ctx.default_map = {**(ctx.default_map or {}), **read_config(path, schema(), ctx.command)}

    return click.option(
        "--config", type=click.Path(dir_okay=False, path_type=Path), envvar=CONFIG_ENV, is_eager=True,
        expose_value=False, callback=load, metavar="FILE",
        help="Read options from a TOML file (long option names as keys: port = 8000). A flag or an environment "
        f"variable wins over the file, the file over the default (env {CONFIG_ENV}).",
    )  # fmt: skip


def long_name(option: click.Option) -> str:
    """How ``option`` is named in a config file: its first long flag, without the dashes."""
    return next(opt for opt in option.opts if opt.startswith("--"))[2:]


def read_config(path: Path, schema: click.Command, command: click.Command) -> dict[str, Any]:
    """The ``default_map`` for ``command`` from the TOML file at ``path``, which may set any
    option of ``schema`` (``serve``); options ``command`` does not have are left out.
    click.BadParameter, in one line, for anything wrong with the file."""
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path}: not valid TOML: {exc}") from None
    known = {long_name(option): option for option in schema.params if isinstance(option, click.Option) and
             _settable(option)}  # fmt: skip
    names = {option.name for option in command.params}
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        option = known.get(key.replace("_", "-"))
        if option is None:
            close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise click.BadParameter(f"{path}: unknown option {key!r}{hint}")
        wanted = _wanted(option, value)
        if wanted is not None:
            raise click.BadParameter(f"{path}: {key}: expected {wanted}, got {_kind(value)}")
        if option.name in names:
            defaults[str(option.name)] = [value] if option.multiple and isinstance(value, str) else value
    return defaults


def _settable(option: click.Option) -> bool:
    """An option a file may set: every option with a long name, but ``--config`` and ``--help``."""
    return option.name not in (None, "config", "help") and any(opt.startswith("--") for opt in option.opts)


def _wanted(option: click.Option, value: object) -> str | None:
    """What ``option`` takes from a file, when ``value`` is not that; None when it is."""
    if option.multiple:
        items = value if isinstance(value, list) else [value]
        return None if all(isinstance(item, str) for item in items) else "a string or an array of strings"
    if option.is_flag and option.is_bool_flag:
        return None if isinstance(value, bool) else "true or false"
    kind = option.type
    if isinstance(kind, click.types.IntParamType):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(kind, click.types.FloatParamType):
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if isinstance(kind, click.Choice | click.Path | click.File):
        return None if isinstance(value, str) else "a string"
    # Plain strings, sizes (512M or 1048576) and durations (7d or 604800).
    return None if isinstance(value, str | int | float) and not isinstance(value, bool) else "a string or a number"


def _kind(value: object) -> str:
    """The TOML type of ``value``, as an error names it (the value itself may be a secret)."""
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "an array"), (dict, "a table")):  # fmt: skip
        if isinstance(value, kind):
            return name
    return "a date or time"
