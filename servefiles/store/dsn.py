"""Database URLs as they may be shown: the one function that hides their secrets.

A DSN is shown in the start-up line, in log lines and in error messages (CLI errors,
:class:`~servefiles.errors.StoreUnavailable`, the health report); every one of them
formats it through :func:`mask_dsn`, so a password never reaches a console, a log
file or an HTTP reply.
"""

from __future__ import annotations

import re

MASK = "***"

_SECRET_PARAMETER = re.compile(r"(?i)([?&;][^=&#;?]*password=)[^&]*")
"""``?password=…``, ``&sslpassword=…`` (libpq's URI parameters): the value runs to the next ``&``."""
_SECRET_KEYWORD = re.compile(r"(?i)((?:^|\s)\w*password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")
"""``password=…`` in libpq's keyword/value form (``host=db password=s3cret``), quoted or not."""


def mask_dsn(dsn: str) -> str:
    """``dsn`` with every password replaced by ``***``: the form to show, never to connect with.

    ``postgresql://app:s3cret@h1:5432,h2/db?sslmode=require`` ->
    ``postgresql://app:***@h1:5432,h2/db?sslmode=require``; a password given as a
    query parameter (``?password=``, ``?sslpassword=``) or in keyword/value form is masked
    too. The password is masked as written, so a percent-encoded one (``p%40ss``) shows
    neither form. When the URL is ambiguous (a raw ``@`` or ``?`` in a password), more is
    masked rather than less. User, hosts, ports, database and other parameters stay, so
    the message still says which database it was.
    """
    text = _SECRET_PARAMETER.sub(lambda m: m.group(1) + MASK, _mask_user_info(dsn))
    return _SECRET_KEYWORD.sub(lambda m: m.group(1) + MASK, text)


def _mask_user_info(dsn: str) -> str:
    """``scheme://user:password@…`` -> ``scheme://user:***@…``."""
    scheme, sep, rest = dsn.partition("://")
    # The user info ends at the last "@" of the authority; a password may hold a raw "?",
    # so when no "@" comes before the first "?", the last "@" anywhere is taken.
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if at < 0:
        at = rest.rfind("@")
    user, colon, _password = rest[:at].partition(":")
    if not sep or at < 0 or not colon:
        return dsn
    return f"{scheme}://{user}:{MASK}{rest[at:]}"
