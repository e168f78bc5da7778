"""Intake tokens: who may write records over HTTP.

Tokens come from ``LEADFLOW_INTAKE_TOKENS`` (comma-separated) and/or a file (one a line,
``#`` comments and blank lines ignored). A request presents one as ``Authorization: Bearer
T`` or as the user name of HTTP Basic (``Basic base64(T:)``), which is how Segment SDKs send
their write key. Tokens are compared by their SHA-256 digests with ``hmac.compare_digest``
against every configured token, so neither a token's content nor its length shows in the
time an answer takes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from leadflow.config import ConfigError

MAX_TOKEN_LENGTH = 512


class Tokens:
    """The configured tokens, kept as digests only."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(sorted({_digest(t) for t in tokens}))
        if not self._digests:
            raise ConfigError("no intake tokens configured")

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str | None) -> bool:
        if presented is None:
            return False
        digest = _digest(presented)
        accepted = False
        for known in self._digests:  # no early exit: every token costs the same
            accepted |= hmac.compare_digest(digest, known)
        return accepted


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_tokens(text: str, *, source: str) -> list[str]:
    """Tokens in ``text``: comma- or line-separated, ``#`` starts a comment."""
    tokens: list[str] = []
    for line in text.splitlines():
        for part in line.split("#", 1)[0].split(","):
            token = part.strip()
            if not token:
                continue
            if len(token) > MAX_TOKEN_LENGTH or any(ch.isspace() for ch in token):
                raise ConfigError(f"{source}: a token holds whitespace or is longer than "
                                  f"{MAX_TOKEN_LENGTH} characters")
            tokens.append(token)
    return tokens


def load_tokens(env_value: str | None, file: Path | None) -> list[str]:
    """Tokens from the environment variable's value and the file, together."""
    tokens = parse_tokens(env_value or "", source="LEADFLOW_INTAKE_TOKENS")
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read the tokens file: {exc}") from exc
        tokens += parse_tokens(text, source=str(file))
    return tokens


def presented_token(authorization: str | None) -> str | None:
    """The token an ``Authorization`` header presents, or None (absent or malformed)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        # Segment's write key is the user name; a client that puts it in the password with
        # an empty user name is read the same way.
        return user or password or None
    return None
