"""The audit key: what makes the store's chain links an HMAC nobody without it can forge.

A plain hash chain proves nothing against someone who can write the events table: they edit
a row and recompute every link after it. Keyed links (HMAC-SHA256) can only be recomputed
with the key, and the key is never in the database:

- ``LEADFLOW_AUDIT_KEY``: one key, or several separated by commas — the first signs new
  links, the others only verify links made before a rotation;
- ``LEADFLOW_AUDIT_KEY_FILE``: a file with one key per line (``#`` comments allowed), the
  first line signing; ``leadflow audit rotate-key`` puts a new key on top;
- neither, with the embedded SQLite store: ``<database file>.audit-key`` beside it, created
  with owner-only permissions on first use (and logged), so the two-command demo works;
- neither, with PostgreSQL: an error naming both variables — a production store must not
  sign with a key that sits next to it by accident;
- the in-memory store (tests) signs with a key made for the process.

Each link names its key by a *key id*: the first 8 hex digits of a hash of the key, so a
rotated store keeps verifying with the old key, and a wrong key is reported as a wrong key
(its id matches no link) rather than as tampering on every row.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leadflow.config import ConfigError
from leadflow.logs import get_logger

log = get_logger(__name__)  # structlog imported on the first log call

KEY_ENV = "LEADFLOW_AUDIT_KEY"
KEY_FILE_ENV = "LEADFLOW_AUDIT_KEY_FILE"
MIN_KEY_BYTES = 16
KEY_FILE_SUFFIX = ".audit-key"


def key_id(key: bytes) -> str:
    """A key's public name: reveals nothing usable about the key (one-way, 32 bits)."""
    return hashlib.sha256(b"leadflow-audit-key-id|" + key).hexdigest()[:8]


def new_key() -> str:
    return secrets.token_hex(32)


@dataclass(frozen=True)
class Keyring:
    """The signing key and the keys of earlier rotations, by key id."""

    keys: Mapping[str, bytes]
    current: str
    source: str

    @classmethod
    def of(cls, texts: Sequence[str], source: str) -> Keyring:
        raws = key_bytes(texts, source, "audit key")
        keys: dict[str, bytes] = {}
        for raw in raws:
            keys.setdefault(key_id(raw), raw)
        return cls(keys, key_id(raws[0]), source)

    def __post_init__(self) -> None:
        # HMAC-SHA256 (RFC 2104) with the padded-key hashes computed once: a link then costs
        # two hash copies and updates (~1.7 µs), as little as a plain SHA-256 of the row,
        # where ``hmac.digest`` re-derives the pads on every call (~5 µs).
        pads: dict[str, tuple[Any, Any]] = {}
        for kid, key in self.keys.items():
            block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
            pads[kid] = (hashlib.sha256(bytes(b ^ 0x36 for b in block)),
                         hashlib.sha256(bytes(b ^ 0x5C for b in block)))
        object.__setattr__(self, "_pads", pads)

    def _mac(self, kid: str, message: bytes) -> str:
        inner_pad, outer_pad = self._pads[kid]  # type: ignore[attr-defined]
        inner = inner_pad.copy()
        inner.update(message)
        outer = outer_pad.copy()
        outer.update(inner.digest())
        return f"{kid}:{outer.hexdigest()}"

    def sign(self, message: bytes) -> str:
        """``<key id>:<HMAC-SHA256 hex>`` with the signing key."""
        return self._mac(self.current, message)

    def check(self, kid: str, message: bytes) -> str | None:
        """The link ``message`` gets with key ``kid``; None when that key is not here."""
        if kid not in self.keys:
            return None
        return self._mac(kid, message)


def read_key_file(path: Path, what: str = "audit key") -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{what} file {path} cannot be read: {exc.strerror}") from exc
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


AUDIT_KEY_FILE_HEADER = (
    "# leadflow audit keys: the first line signs new chain links; keep older\n"
    "# lines so links made before a rotation still verify. Keep a copy off\n"
    "# the database host: without it the chain cannot be checked.\n")


def write_key_file(path: Path, keys: Sequence[str], header: str = AUDIT_KEY_FILE_HEADER) -> None:
    """Write ``keys`` (signing key first) readable by the owner only, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(header)
        out.writelines(f"{key}\n" for key in keys)
    os.replace(tmp, path)


def default_key_file(database_file: str) -> Path:
    return Path(database_file + KEY_FILE_SUFFIX)


@dataclass(frozen=True)
class KeySource:
    """Where one kind of key comes from (the audit key here; the master key in
    store/personal.py): the same order for both, see the module doc."""

    what: str  # "audit key"
    env: str
    file_env: str
    suffix: str  # of the default key file beside an embedded SQLite store
    header: str
    lost: str  # what cannot be done without the key, for the warning and the error
    purpose: str


AUDIT_KEYS = KeySource("audit key", KEY_ENV, KEY_FILE_ENV, KEY_FILE_SUFFIX,
                       AUDIT_KEY_FILE_HEADER, "the chain cannot be verified",
                       "the audit key that signs the event store's chain links")


def key_texts(source: KeySource, env: Mapping[str, str], database_file: str | None,
              persistence: str) -> tuple[list[str], str]:
    """The configured keys (the first one in use) and where they came from."""
    text = env.get(source.env)
    if text:
        return [k for k in text.split(",") if k.strip()], source.env
    file = env.get(source.file_env)
    if file:
        return read_key_file(Path(file), source.what), f"{source.file_env}={file}"
    if persistence.endswith("popo"):
        return [new_key()], "a key made for this in-memory store"
    if database_file and persistence.endswith("sqlite") and database_file != ":memory:" \
            and not database_file.startswith("file:"):
        path = Path(database_file + source.suffix)
        if not path.exists():
            write_key_file(path, [new_key()], source.header)
            log.warning(f"{source.what} created beside the SQLite store; keep a copy "
                        f"elsewhere, without it {source.lost}", key_file=str(path))
        return read_key_file(path, source.what), str(path)
    if persistence.endswith("sqlite"):
        return [new_key()], "a key made for this in-memory SQLite store"
    raise ConfigError(f"set {source.env} or {source.file_env}: {source.purpose} must come "
                      "from outside the database (`leadflow audit new-key` prints one)")


def key_bytes(texts: Sequence[str], source: str, what: str) -> list[bytes]:
    """Each key's bytes; a key too short to be one is refused, naming where it came from."""
    out = []
    for text in texts:
        raw = text.strip().encode()
        if len(raw) < MIN_KEY_BYTES:
            raise ConfigError(f"{what} from {source} is too short: at least {MIN_KEY_BYTES} "
                              "characters (`leadflow audit new-key` prints a good one)")
        out.append(raw)
    if not out:
        raise ConfigError(f"no {what} in {source}")
    return out


def keyring_from_env(env: Mapping[str, str], database_file: str | None,
                     persistence: str) -> Keyring:
    """The keyring the environment configures (see the module doc for the order)."""
    return Keyring.of(*key_texts(AUDIT_KEYS, env, database_file, persistence))
