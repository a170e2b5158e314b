"""Private files on the command line: the signing-key options ``serve`` and ``sign`` share,
``servefiles sign`` (a signed, expiring URL) and ``servefiles new-signing-key``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import click

from .. import defaults
from ..errors import InvalidKey
from ..keys import key_folder
from ..signing import Signer, new_signing_key, parse_duration
from .exits import ErrorLine


def signing_key_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--signing-key`` (repeatable, env ``SERVEFILES_SIGNING_KEY``, space-separated) and
    ``--signing-key-file`` (one key a line, ``#`` comments), passed as ``signing_keys`` and
    ``signing_key_file``; :func:`read_signing_keys` joins them."""
    func = click.option(
        "--signing-key-file", type=click.File("r"), envvar="SERVEFILES_SIGNING_KEY_FILE", default=None,
        help="Read signing keys from a file, one a line (keeps secrets out of `ps`).",
    )(func)  # fmt: skip
    return click.option(
        "--signing-key", "signing_keys", envvar="SERVEFILES_SIGNING_KEY", multiple=True, metavar="KEY",
        help="Secret for signed URLs of private files (at least 32 random bytes: `servefiles new-signing-key`). "
        "Repeat for rotation: the first signs, all verify (env SERVEFILES_SIGNING_KEY, space-separated).",
    )(func)  # fmt: skip


def duration(ctx: click.Context | None, param: click.Parameter | None, value: str | int) -> int:
    """``90s``, ``15m``, ``1h``, ``7d`` as seconds (click's BadParameter otherwise)."""
    if isinstance(value, int):
        return value
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def private_folders(ctx: click.Context | None, param: click.Parameter | None, value: Iterable[str]) -> list[str]:
    """``--private`` folders (``invoices``, ``members/docs``), each checked as a key folder."""
    try:
        return [key_folder(folder) for folder in value]
    except InvalidKey as exc:
        raise click.BadParameter(str(exc)) from None


def read_signing_keys(keys: Iterable[str], file: Iterable[str] | None) -> list[str]:
    """The keys given on the command line, then those in the file (blank lines and ``#`` comments skipped)."""
    lines = [*keys, *(file or ())]
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@click.command()
@click.argument("key")
@click.option("--expires", "expires_in", callback=duration, default="1h", show_default=True,
              help="How long the URL works: 90s, 15m, 1h, 7d.")
@click.option("--prefix", envvar="SERVEFILES_PREFIX", default=defaults.PREFIX, show_default=True,
              help="The URL prefix of the `serve` that will check it: a URL signed for one prefix fails under another.")
@click.option("--max-expires", callback=duration, envvar="SERVEFILES_MAX_URL_EXPIRES",
              default=f"{defaults.MAX_URL_EXPIRES // 86400}d", show_default=True,
              help="The longest life `serve` accepts (its --max-url-expires).")
@click.option("--base-url", default="", help="Prepended to the printed path, e.g. https://files.example.com.")
@signing_key_options
def sign(key: str, expires_in: int, prefix: str, max_expires: int, base_url: str, signing_keys: tuple[str, ...],
         signing_key_file: Any) -> None:  # fmt: skip
    """Print a signed URL that lets GET and HEAD of KEY through until it expires."""
    keys = read_signing_keys(signing_keys, signing_key_file)
    if not keys:
        raise ErrorLine("no signing key: pass --signing-key, --signing-key-file or set SERVEFILES_SIGNING_KEY")
    try:
        signer = Signer(keys, "/" + prefix.strip("/"), max_expires)  # as `serve` reads --prefix
        url = signer.url(key, expires_in, time.time())
    except ValueError as exc:  # InvalidKey too; the messages never contain a key
        raise ErrorLine(str(exc)) from None
    click.echo(base_url.rstrip("/") + url)


@click.command("new-signing-key")
def new_signing_key_command() -> None:
    """Print a fresh random signing key (32 bytes, URL-safe base64) for --signing-key."""
    click.echo(new_signing_key())
