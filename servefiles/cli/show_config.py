"""``servefiles config``: the configuration ``servefiles serve`` would run with, secrets masked.

It takes exactly ``serve``'s options (its ``--config`` file, flags and environment, under the
same precedence) and prints every option as TOML, in ``serve``'s order, each with where its
value came from: ``flag``, ``environment (SERVEFILES_…)``, ``config file`` or ``default``.
Defaults that depend on the machine are shown resolved (the embedded database, the cache and
publish dirs). Secrets are masked: a password in a database URL (``postgresql://app:***@db/app``),
upload tokens (``***``, ``***:blog``) and signing keys; files of them are shown by path.

With secrets masked the output is a valid config file for ``--config`` in every other respect.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from .. import config
from ..store import mask_dsn
from ..store.dsn import MASK
from .config_file import long_name
from .exits import CONFIG_FILE
from .options import format_size, parse_size, positive_size

__all__ = ["config_command"]

_DSNS = frozenset(("db_url", "read_db"))
_TOKENS = "upload_tokens"
"""``TOKEN[:PREFIX]``: the token is masked, its folder shown."""
_SECRETS = frozenset(("signing_keys",))
_RESOLVED: dict[str, Callable[[], object]] = {
    "db_url": config.default_db_url,
    "cache_dir": config.default_cache_dir,
    "publish_dir": config.default_publish_dir,
}
"""Options whose unset value (None) stands for a default of this machine: shown resolved."""

_SOURCES = {
    ParameterSource.COMMANDLINE: "flag",
    ParameterSource.DEFAULT_MAP: "config file",
    ParameterSource.DEFAULT: "default",
}


def show_config(**values: Any) -> None:
    """Print the effective configuration (see the module)."""
    ctx = click.get_current_context()
    lines = ["# servefiles serve's effective configuration (a flag > its environment variable > --config > default)"]
    lines.append(f"# config file: {ctx.meta.get(CONFIG_FILE) or 'none'}")
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name not in values or not param.expose_value:
            continue
        name, value = long_name(param), values[param.name]
        if value is None and param.name in _RESOLVED:
            value = _RESOLVED[param.name]()
        source = _source(ctx, param)
        if value is None:
            lines.append(f"# {name} = (not set)  # {source}")
        else:
            lines.append(f"{name} = {_toml(_shown(param, value))}  # {source}")
    click.echo("\n".join(lines))


def _source(ctx: click.Context, param: click.Option) -> str:
    source = ctx.get_parameter_source(str(param.name))
    if source is ParameterSource.ENVIRONMENT:
        return f"environment ({param.envvar})"
    return _SOURCES.get(source, "default") if source is not None else "default"


def _shown(param: click.Option, value: Any) -> Any:
    """``value`` as it may be printed: secrets masked, files by name, sizes as people write them."""
    if param.name in _DSNS:
        return mask_dsn(str(value))
    if param.name == _TOKENS:
        return [MASK + "".join(spec.strip().partition(":")[1:]) for spec in value]
    if param.name in _SECRETS:
        return [MASK for _ in value]
    if hasattr(value, "read"):  # an open file (--upload-token-file): its path
        return str(getattr(value, "name", "?"))
    if param.callback in (parse_size, positive_size) and isinstance(value, int):
        return format_size(value)
    return value


def _toml(value: Any) -> str:
    """``value`` as a TOML value (strings in JSON's escapes, which TOML's basic strings share)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _command() -> click.Command:
    from .serve import serve

    return click.Command(
        "config", params=list(serve.params), callback=show_config,
        help="Print the configuration `serve` would run with (same options, --config file and environment), "
        "secrets masked, as TOML.",
    )  # fmt: skip


config_command = _command()
