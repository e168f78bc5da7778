"""Configuration from ``LEADFLOW_*`` environment variables (read in ``main()``, never at import).

``LEADFLOW_DATABASE_URL`` picks the persistence: ``sqlite:///path`` (default
``sqlite:///leadflow.db``), ``memory:`` (eventsourcing's in-memory POPO store, for tests),
``postgresql://user:pass@host:port/db``. eventsourcing's own keys (``PERSISTENCE_MODULE``,
``POSTGRES_*``, ``SQLITE_*``, ``AGGREGATE_CACHE_*``) set in the environment win over what the
URL implies, so operators can tune the library directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import unquote, urlparse

DEFAULT_DATABASE_URL = "sqlite:///leadflow.db"


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
        return out


def database_env(url: str) -> dict[str, str]:
    if url in ("memory:", "memory://", "popo:"):
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy spells them.
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
        if not path:
            raise ConfigError(f"LEADFLOW_DATABASE_URL {url!r} names no SQLite file")
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path,
                "SQLITE_LOCK_TIMEOUT": "30"}
    if parsed.scheme in ("postgresql", "postgres"):
        if not parsed.path.strip("/"):
            raise ConfigError(f"LEADFLOW_DATABASE_URL {url!r} names no database")
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(parsed.path.lstrip("/")),
            "POSTGRES_HOST": parsed.hostname or "localhost",
            "POSTGRES_PORT": str(parsed.port or 5432),
            "POSTGRES_USER": unquote(parsed.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parsed.password or ""),
            # Fail fast when the server is down: eventsourcing retries each call 10 times and
            # the consumer adds its own bounded retries on top (library default: 30 s each).
            "POSTGRES_CONNECT_TIMEOUT": "5",
            # The library's recorder with a binary column-array batch insert (storage.py).
            "PROCESS_RECORDER_TOPIC": "leadflow.storage:LeadflowPostgresProcessRecorder",
        }
    raise ConfigError(
        f"LEADFLOW_DATABASE_URL {url!r}: unsupported scheme; use sqlite:///PATH, memory: "
        "or postgresql://USER:PASS@HOST:PORT/DB"
    )
