"""The ``servefiles`` command.

Every option can come from the environment (``SERVEFILES_DB``,
``SERVEFILES_CACHE_DIR``, ``SERVEFILES_UPLOAD_TOKEN``, ``SERVEFILES_HOST``,
``SERVEFILES_PORT``, ``SERVEFILES_PREFIX``, ``SERVEFILES_PRIVATE``,
``SERVEFILES_SIGNING_KEY``) and every command shares the same
defaults (:mod:`servefiles.config` for places, :mod:`servefiles.defaults` for the
rest). Errors are one line on stderr and a non-zero exit, mapped from servefiles'
error types in :class:`~servefiles.cli.exits.Commands`.

``serve`` (and ``nginx-config``) also read a TOML file, ``--config FILE``
(:mod:`.config_file`), and ``config`` prints what ``serve`` would run with (:mod:`.show_config`).

One module per family of commands: :mod:`.serve` (``serve``, ``nginx-config``,
``new-token``), :mod:`.signing` (``sign``, ``new-signing-key``),
:mod:`.files` (the database: ``init``, ``put``, ``get``, ``rm``, ``ls``,
``import``, ``export``), :mod:`.cache` (a cache dir: ``warm``, ``sync``, ``stats``);
:mod:`.options` holds what they share.
"""

from __future__ import annotations

import click

from .cache import stats, sync, warm
from .exits import Commands
from .files import export, get, import_, init, ls, put, rm
from .serve import new_token, nginx_config, serve
from .show_config import config_command
from .signing import new_signing_key_command, sign

__all__ = ["main"]


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="servefiles", prog_name="servefiles")
def main() -> None:
    """Serve uploaded files from the database, fast, on every frontend."""


_COMMANDS = (serve, config_command, nginx_config, new_token, sign, new_signing_key_command, init, put, get, rm, ls,
             import_, export, warm, sync, stats)  # fmt: skip
for _command in _COMMANDS:
    main.add_command(_command)
