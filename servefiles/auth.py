"""Bearer tokens for the HTTP write API.

Several tokens may be configured at once, so one can be rotated in before the
old one is removed; each may be limited to keys under one folder. A presented
token is compared with every configured one in constant time (hashes of equal
length, :func:`hmac.compare_digest`, no early exit), so response timing tells
an attacker nothing about how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .keys import key_folder

MIN_TOKEN_LENGTH = 16
"""Shorter secrets are guessable; ``servefiles new-token`` makes 43-character ones."""
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
"""RFC 6750 §2.1 b64token: what a Bearer credential may contain."""


@dataclass(frozen=True)
class UploadToken:
    """A secret that may write keys under ``prefix`` ("" means every key).

    A prefix is a folder (:func:`~servefiles.keys.key_folder`): ``blog`` and ``blog/``
    both allow ``blog/…`` but not ``blogroll.png``. ValueError (:class:`InvalidKey` for the
    folder) when the token is too short or the folder is not a valid key folder; neither
    message contains the token.
    """

    token: str
    prefix: str = ""

    def __post_init__(self) -> None:
        if len(self.token) < MIN_TOKEN_LENGTH or not set(self.token) <= _TOKEN_CHARS:
            raise ValueError(
                f"an upload token must be at least {MIN_TOKEN_LENGTH} characters of A-Z a-z 0-9 - . _ ~ + / = "
                "(make one with `servefiles new-token`)"
            )
        object.__setattr__(self, "prefix", key_folder(self.prefix))

    @classmethod
    def parse(cls, spec: str) -> UploadToken:
        """``TOKEN`` or ``TOKEN:PREFIX``, as given on the command line or in the environment."""
        token, _, prefix = spec.strip().partition(":")
        return cls(token, prefix)

    def allows(self, key: str) -> bool:
        """Whether this token may write ``key`` (a canonical key)."""
        return key.startswith(self.prefix)

    def __repr__(self) -> str:  # never print the secret in logs or tracebacks
        return f"UploadToken(prefix={self.prefix!r})"


class TokenRing:
    """The configured tokens; answers who, if anyone, an Authorization header names."""

    def __init__(self, tokens: Iterable[UploadToken | str] = ()) -> None:
        self._tokens = [token if isinstance(token, UploadToken) else UploadToken.parse(token) for token in tokens]
        self._digests = [_digest(token.token) for token in self._tokens]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, authorization: str | None) -> UploadToken | Literal["missing", "invalid"]:
        """The token an ``Authorization: Bearer …`` header carries, or why there is none.

        "missing": no Bearer credentials at all; "invalid": credentials that
        match no configured token. Every configured token is compared, always.
        """
        if authorization is None:
            return "missing"
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return "missing"
        presented = _digest(credentials.strip())
        found: UploadToken | None = None
        for token, digest in zip(self._tokens, self._digests, strict=True):
            if hmac.compare_digest(presented, digest) and found is None:
                found = token
        return found if found is not None else "invalid"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
