"""Configuration from ``LEADFLOW_*`` environment variables (read in ``main()``, never at import).

``LEADFLOW_DATABASE_URL`` picks the persistence: ``sqlite:///path`` (default
``sqlite:///leadflow.db``), ``memory:`` (eventsourcing's in-memory POPO store, for tests),
``postgresql://user:pass@host:port/db`` (a password may hold reserved characters such as
``/``, ``@`` or ``#`` as long as the URL can be read only one way; percent-encoding them always
works). eventsourcing's own keys (``PERSISTENCE_MODULE``,
``POSTGRES_*``, ``SQLITE_*``, ``AGGREGATE_CACHE_*``) set in the environment win over what the
URL implies, so operators can tune the library directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

DEFAULT_DATABASE_URL = "sqlite:///leadflow.db"
DEFAULT_CIPHER_TOPIC = "eventsourcing.cryptography:AESCipher"
#: The library's PostgreSQL recorder with a binary column-array batch insert, in a module of
#: its own (it imports psycopg; a process on SQLite never imports it).
POSTGRES_RECORDER_TOPIC = "leadflow.store.postgres:LeadflowPostgresProcessRecorder"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    rules_path: str | None = None
    max_future_skew: timedelta = timedelta(minutes=5)
    # Live tier; on the default stream 150,000 live + the spill tier peaked at 904 MiB.
    aggregate_cache_size: int = 150_000
    # Second cache tier: evicted aggregates kept pickled, up to this many MiB (cache.py).
    aggregate_spill_mib: int = 256
    batch_size: int = 1000
    projection_page_size: int = 2000
    # Largest record accepted on any intake path (bytes); bigger ones are rejected unread.
    max_record_bytes: int = 1 << 20

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        try:
            skew = float(env.get("LEADFLOW_MAX_FUTURE_SKEW_SECONDS", "300"))
            cache = int(env.get("LEADFLOW_AGGREGATE_CACHE_SIZE", "150000"))
            spill = int(env.get("LEADFLOW_AGGREGATE_SPILL_MIB", "256"))
            batch = int(env.get("LEADFLOW_BATCH_SIZE", "1000"))
            page = int(env.get("LEADFLOW_PROJECTION_PAGE_SIZE", "2000"))
            max_record = int(env.get("LEADFLOW_MAX_RECORD_BYTES", str(1 << 20)))
        except ValueError as exc:
            raise ConfigError(f"LEADFLOW_* numeric setting is not a number: {exc}") from exc
        if batch < 1 or page < 1:
            raise ConfigError("LEADFLOW_BATCH_SIZE and LEADFLOW_PROJECTION_PAGE_SIZE must be "
                              "at least 1")
        if not 256 <= max_record <= 64 << 20:
            raise ConfigError("LEADFLOW_MAX_RECORD_BYTES must be between 256 and 67108864")
        return cls(
            database_url=env.get("LEADFLOW_DATABASE_URL", DEFAULT_DATABASE_URL),
            rules_path=env.get("LEADFLOW_RULES") or None,
            max_future_skew=timedelta(seconds=skew),
            aggregate_cache_size=cache,
            aggregate_spill_mib=spill,
            batch_size=batch,
            projection_page_size=page,
            max_record_bytes=max_record,
        )

    def eventsourcing_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for ``eventsourcing.Application`` derived from the database URL."""
        env = os.environ if environ is None else environ
        out = database_env(self.database_url)
        if self.aggregate_cache_size > 0:
            out["AGGREGATE_CACHE_MAXSIZE"] = str(self.aggregate_cache_size)
            # One writer per lead (one process, or one consumer per partition): a cache hit
            # needs no query, and nothing else can have moved the aggregate on.
            out["AGGREGATE_CACHE_FASTFORWARD"] = "n"
            # The engine never lets a half-applied record reach the cache: domain errors are
            # raised before mutation and any other failure clears the cache.
            out["DEEPCOPY_FROM_AGGREGATE_CACHE"] = "n"
            out["LEADFLOW_AGGREGATE_SPILL_MIB"] = str(self.aggregate_spill_mib)
        passthrough = ("PERSISTENCE_MODULE", "SQLITE_", "POSTGRES_", "AGGREGATE_CACHE_",
                       "DEEPCOPY_FROM_AGGREGATE_CACHE", "CREATE_TABLE", "LEADFLOW_POSTGRES_",
                       "LEADFLOW_SQLITE_")
        for key, value in env.items():
            if key.startswith(passthrough):
                out[key] = value
        if env.get("CIPHER_KEY") and not env.get("CIPHER_TOPIC"):
            # Encryption at rest of the whole store: the library's default cipher needs
            # pycryptodome; leadflow ships `cryptography` (AES-GCM) and uses that one.
            out["CIPHER_TOPIC"] = DEFAULT_CIPHER_TOPIC
        return out


def database_env(url: str) -> dict[str, str]:
    if url in ("memory:", "memory://", "popo:"):
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        path = sqlite_path(url)
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path,
                "SQLITE_LOCK_TIMEOUT": "30"}
    if scheme in ("postgresql", "postgres"):
        pg = parse_postgres_url(url)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": pg.dbname,
            "POSTGRES_HOST": pg.host or "localhost",
            "POSTGRES_PORT": str(pg.port or 5432),
            "POSTGRES_USER": pg.user or "postgres",
            "POSTGRES_PASSWORD": pg.password or "",
            # Fail fast when the server is down: eventsourcing retries each call 10 times and
            # the consumer adds its own bounded retries on top (library default: 30 s each).
            "POSTGRES_CONNECT_TIMEOUT": "5",
            # The library's recorder with a binary column-array batch insert (store/postgres.py).
            "PROCESS_RECORDER_TOPIC": POSTGRES_RECORDER_TOPIC,
        }
    raise ConfigError(
        f"LEADFLOW_DATABASE_URL {redact_url(url)!r}: unsupported scheme; use sqlite:///PATH, "
        "memory: or postgresql://USER:PASS@HOST:PORT/DB"
    )


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL (as
    SQLAlchemy spells them), checked so that a missing directory is named up front rather
    than surfacing as the driver's "unable to open database file"."""
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else urlparse(url).path
    if not path:
        raise ConfigError(f"LEADFLOW_DATABASE_URL {url!r} names no SQLite file")
    if path == ":memory:" or path.startswith("file:"):
        return path  # SQLite's own in-memory and URI forms: nothing to check here
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"LEADFLOW_DATABASE_URL {url!r}: {path} is a directory, not a "
                          "SQLite file")
    if not file.parent.is_dir():
        raise ConfigError(f"LEADFLOW_DATABASE_URL {url!r}: the directory {file.parent} does "
                          "not exist; create it or choose another path")
    return path


@dataclass(frozen=True)
class PostgresURL:
    """The parts of a ``postgresql://`` URL, percent-decoded."""

    scheme: str
    user: str | None
    password: str | None
    host: str  # IPv6 without brackets, a socket directory decoded; "" for libpq's default
    port: int | None
    dbname: str
    query: str

    def url(self, password: str | None = None) -> str:
        """The URL with every part percent-encoded (what libpq and psycopg read correctly);
        ``password`` replaces the real one (``"***"`` to print it)."""
        secret = self.password if password is None else password
        userinfo = ""
        if self.user is not None:
            userinfo = quote(self.user, safe="")
            if secret is not None:
                userinfo += ":" + (secret if password is not None else quote(secret, safe=""))
            userinfo += "@"
        host = f"[{self.host}]" if ":" in self.host else quote(self.host, safe="")
        port = f":{self.port}" if self.port is not None else ""
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{userinfo}{host}{port}/{quote(self.dbname, safe='')}{query}"

    def redacted(self) -> str:
        return self.url(password="***" if self.password is not None else None)


# host[:port][/dbname][?query][#fragment] after the userinfo. The host is a name, an IPv4
# address, a bracketed IPv6 address or a percent-encoded socket directory; the database
# name holds no '/'.
_HOST_PART = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._%~-]*)(?::(?P<port>[0-9]*))?"
    r"(?P<path>/(?P<db>[^/?#]*))?(?:\?(?P<query>[^#]*))?(?:#.*)?")


def parse_postgres_url(url: str) -> PostgresURL:
    """Read ``postgresql://USER:PASS@HOST:PORT/DB`` even when the password holds reserved
    characters (``/``, ``@``, ``?``, ``#``, ``:``) that a strict URL parser splits on.

    The userinfo may end at any ``@``; the reading whose remainder is a valid
    ``host[:port]/db`` is taken. When two readings are valid the URL is refused (percent-
    encoding the password removes the doubt). Error messages never contain the password.
    """
    shown = _redact_unread(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"LEADFLOW_DATABASE_URL {shown!r}: expected "
                          "postgresql://USER:PASS@HOST:PORT/DB")
    readings: list[tuple[str | None, re.Match[str]]] = []
    splits = [-1] + [i for i, ch in enumerate(rest) if ch == "@"]
    for at in splits:
        userinfo, hostpart = (rest[:at], rest[at + 1:]) if at >= 0 else (None, rest)
        match = _HOST_PART.fullmatch(hostpart)
        if match is not None and match["path"] is not None:
            readings.append((userinfo, match))
    if not readings:
        raise ConfigError(f"LEADFLOW_DATABASE_URL {shown!r} names no database (expected "
                          "postgresql://USER:PASS@HOST:PORT/DB; percent-encode reserved "
                          "characters in the password, e.g. '/' as %2F)")
    if len(readings) > 1:
        raise ConfigError(f"LEADFLOW_DATABASE_URL {shown!r}: cannot tell where the password "
                          "ends; percent-encode '@', '/', '?' and '#' in it (e.g. '@' as %40)")
    userinfo, match = readings[0]
    user = password = None
    if userinfo is not None:
        name, colon, secret = userinfo.partition(":")
        user = unquote(name)
        password = unquote(secret) if colon else None
    port = None
    if match["port"]:
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"LEADFLOW_DATABASE_URL {shown!r}: port {port} is out of range")
    dbname = unquote(match["db"] or "")
    if not dbname:
        raise ConfigError(f"LEADFLOW_DATABASE_URL {shown!r} names no database")
    host = match["host"]
    host = host[1:-1] if host.startswith("[") else unquote(host)
    if not host.startswith("/"):  # a name or an address (a socket directory keeps its case)
        host = host.lower()
    return PostgresURL(scheme=scheme.lower(), user=user, password=password, host=host,
                       port=port, dbname=dbname, query=match["query"] or "")


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs. When the URL cannot be read at
    all, everything between ``://`` and the last ``@`` is hidden."""
    scheme = url.partition(":")[0].lower()
    if scheme in ("postgresql", "postgres"):
        try:
            return parse_postgres_url(url).redacted()
        except ConfigError:
            pass
    return _redact_unread(url)


def _redact_unread(url: str) -> str:
    # Without a reading of the URL, hide everything from after the user name to the last
    # '@': wherever the password ends, it is inside.
    head, sep, rest = url.partition("://")
    userinfo, at, tail = rest.rpartition("@")
    if not (sep and at) or ":" not in userinfo:
        return url  # no userinfo, or a user name without a password
    user = userinfo.partition(":")[0]
    return f"{head}://{user}:***@{tail}"


def database_url_for_clients(url: str) -> str:
    """The URL other PostgreSQL clients (psycopg) read the same way as ``database_env``:
    percent-encoded, so a password with '/' or '@' cannot be misread. Others unchanged."""
    if url.partition(":")[0].lower() in ("postgresql", "postgres"):
        return parse_postgres_url(url).url()
    return url
