"""The bookkeeping tables (store/bookkeeping.py) of the embedded stores: SQLite's, written
in the events' transaction, and the in-memory recorder's. One writer owns an embedded store,
so none of PostgreSQL's settling of two writers' races is needed here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from leadflow.store.bookkeeping import (
    COUNTERS_TABLE,
    DATA_KEYS_TABLE,
    ENGAGEMENTS_TABLE,
    IDENTITIES_TABLE,
    Books,
    Target,
)

_SQLITE_TIME = "%Y-%m-%dT%H:%M:%S.%f"  # fixed width, so text order is time order


def sqlite_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime(_SQLITE_TIME)


def from_sqlite_time(text: str) -> datetime:
    return datetime.strptime(text, _SQLITE_TIME).replace(tzinfo=UTC)


# ----------------------------------------------------------------- SQLite


SQLITE_DDL = [
    f"CREATE TABLE IF NOT EXISTS {IDENTITIES_TABLE} (key TEXT PRIMARY KEY, "
    "target_id TEXT NOT NULL, is_interest INTEGER NOT NULL) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {ENGAGEMENTS_TABLE} (account_id TEXT NOT NULL, "
    "lead_id TEXT NOT NULL, engaged_at TEXT NOT NULL, PRIMARY KEY (account_id, lead_id)) "
    "WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {COUNTERS_TABLE} (name TEXT PRIMARY KEY, "
    "value INTEGER NOT NULL) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {DATA_KEYS_TABLE} (aggregate_id TEXT PRIMARY KEY, "
    "wrapped BLOB NOT NULL) WITHOUT ROWID",
]


def sqlite_write(c: Any, books: Books) -> None:
    """Raises sqlite3.IntegrityError for a new identity key that is already registered."""
    if books.dropped_data_keys:
        # forget: the deleted keys' bytes are overwritten with zeros, not left in free space
        # (the application truncates the write-ahead log after the commit).
        c.execute("PRAGMA secure_delete=ON")
    c.executemany(f"INSERT INTO {DATA_KEYS_TABLE} VALUES (?, ?)",
                  # sorted by hex, in C: the order of the ids (see postgres_write)
                  sorted([(i.hex, w) for i, w in books.new_data_keys.items()]))
    c.executemany(f"DELETE FROM {DATA_KEYS_TABLE} WHERE aggregate_id = ?",
                  [(i.hex,) for i in sorted(books.dropped_data_keys)])
    c.executemany(f"DELETE FROM {IDENTITIES_TABLE} WHERE key = ?",
                  [(k,) for k in sorted(books.dropped_identities)])
    c.executemany(f"INSERT INTO {IDENTITIES_TABLE} VALUES (?, ?, ?)",
                  [(k, t.hex, int(i)) for k, (t, i) in sorted(books.new_identities.items())])
    c.executemany(f"INSERT OR REPLACE INTO {IDENTITIES_TABLE} VALUES (?, ?, ?)",
                  [(k, t.hex, int(i)) for k, (t, i) in sorted(books.moved_identities.items())])
    c.executemany(
        f"INSERT INTO {ENGAGEMENTS_TABLE} VALUES (?, ?, ?) ON CONFLICT (account_id, lead_id) "
        "DO UPDATE SET engaged_at = max(engaged_at, excluded.engaged_at)",
        [(a.hex, lead.hex, sqlite_time(at)) for (a, lead), at in sorted(books.engagements.items())])
    c.executemany(f"INSERT INTO {COUNTERS_TABLE} VALUES (?, ?) ON CONFLICT (name) "
                  "DO UPDATE SET value = value + excluded.value", books.counters_added())
    c.executemany(f"INSERT OR REPLACE INTO {COUNTERS_TABLE} VALUES (?, ?)", books.counters_set())


def sqlite_identities(c: Any, keys: Sequence[str]) -> dict[str, Target]:
    out: dict[str, Target] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), 500):
        chunk = unique[start:start + 500]
        c.execute(f"SELECT key, target_id, is_interest FROM {IDENTITIES_TABLE} "
                  f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        for key, target, interest in c.fetchall():
            out[key] = (UUID(target), bool(interest))
    return out


def sqlite_identity_page(c: Any, after: str, limit: int) -> list[tuple[str, UUID, bool]]:
    c.execute(f"SELECT key, target_id, is_interest FROM {IDENTITIES_TABLE} WHERE key > ? "
              "ORDER BY key LIMIT ?", (after, limit))
    return [(key, UUID(target), bool(interest)) for key, target, interest in c.fetchall()]


def sqlite_engagements(c: Any, account_ids: Sequence[UUID]) -> dict[UUID, dict[UUID, datetime]]:
    out: dict[UUID, dict[UUID, datetime]] = {}
    ids = [a.hex for a in dict.fromkeys(account_ids)]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        c.execute(f"SELECT account_id, lead_id, engaged_at FROM {ENGAGEMENTS_TABLE} "
                  f"WHERE account_id IN ({','.join('?' * len(chunk))})", chunk)
        for account, lead, at in c.fetchall():
            out.setdefault(UUID(account), {})[UUID(lead)] = from_sqlite_time(at)
    return out


def sqlite_data_keys(c: Any, ids: Sequence[UUID]) -> dict[UUID, bytes]:
    out: dict[UUID, bytes] = {}
    unique = [i.hex for i in dict.fromkeys(ids)]
    for start in range(0, len(unique), 500):
        chunk = unique[start:start + 500]
        c.execute(f"SELECT aggregate_id, wrapped FROM {DATA_KEYS_TABLE} "
                  f"WHERE aggregate_id IN ({','.join('?' * len(chunk))})", chunk)
        for aggregate_id, wrapped in c.fetchall():
            out[UUID(aggregate_id)] = bytes(wrapped)
    return out


def sqlite_add_data_key(c: Any, aggregate_id: UUID, wrapped: bytes) -> None:
    c.execute(f"INSERT OR IGNORE INTO {DATA_KEYS_TABLE} VALUES (?, ?)",
              (aggregate_id.hex, wrapped))


def sqlite_counters(c: Any) -> dict[str, int]:
    c.execute(f"SELECT name, value FROM {COUNTERS_TABLE}")
    return {name: int(value) for name, value in c.fetchall()}


# ----------------------------------------------------------------- in memory


@dataclass
class MemoryBooks:
    """The in-memory recorder's tables."""

    identities: dict[str, Target] = field(default_factory=dict)
    engagements: dict[UUID, dict[UUID, datetime]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    data_keys: dict[UUID, bytes] = field(default_factory=dict)

    def conflicts(self, books: Books) -> list[str]:
        return [k for k in books.new_identities if k in self.identities]

    def write(self, books: Books) -> None:
        self.data_keys.update(books.new_data_keys)
        for aggregate_id in books.dropped_data_keys:
            self.data_keys.pop(aggregate_id, None)
        for key in books.dropped_identities:
            self.identities.pop(key, None)
        self.identities.update(books.new_identities)
        self.identities.update(books.moved_identities)
        for (account, lead), at in books.engagements.items():
            mine = self.engagements.setdefault(account, {})
            if lead not in mine or at > mine[lead]:
                mine[lead] = at
        for name, delta in books.counters_added():
            self.counters[name] = self.counters.get(name, 0) + delta
        self.counters.update(books.counters_set())
