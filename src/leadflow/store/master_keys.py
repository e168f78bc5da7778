"""The master key, which wraps every person's data key (store/personal.py), and the table of
wrapped data keys.

The master key is never in the database: ``LEADFLOW_MASTER_KEY`` (one key, or ``NEW,OLD``
after a rotation), ``LEADFLOW_MASTER_KEY_FILE`` (one key per line), or for the embedded
SQLite store a ``<database file>.master-key`` file beside it; PostgreSQL without either is
an error naming both. ``leadflow privacy rotate-master-key`` re-wraps every data key with
the first key (``KeyTable.rewrap_all``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from leadflow.config import ConfigError
from leadflow.store import bookkeeping, books_embedded
from leadflow.store.keys import (
    KeySource,
    key_bytes,
    key_texts,
    read_key_file,
    write_key_file,
)

MASTER_KEY_ENV = "LEADFLOW_MASTER_KEY"
MASTER_KEY_FILE_ENV = "LEADFLOW_MASTER_KEY_FILE"
MASTER_KEY_FILE_SUFFIX = ".master-key"
PERSONAL_DATA_ENV = "LEADFLOW_PERSONAL_DATA"

_MASTER_FILE_HEADER = (
    "# leadflow master key: wraps every person's data key. The first line wraps new keys;\n"
    "# keep older lines until `leadflow privacy rotate-master-key` has run. Keep a copy\n"
    "# off the database host: without it no personal value in the store can be read.\n")


def _derive(raw: bytes) -> tuple[str, AESGCM]:
    kid = hashlib.sha256(b"leadflow-master-key-id|" + raw).hexdigest()[:8]
    return kid, AESGCM(hashlib.sha256(b"leadflow-master-key|" + raw).digest())


class MasterKeys:
    """The wrapping key and the keys of earlier rotations, by key id (8 hex digits)."""

    def __init__(self, texts: Sequence[str], source: str) -> None:
        self.source = source
        self.keys: dict[str, AESGCM] = {}
        derived = [_derive(raw) for raw in key_bytes(texts, source, "master key")]
        for kid, aead in derived:
            self.keys.setdefault(kid, aead)
        self.current = derived[0][0]

    def wrap(self, aggregate_id: UUID, key: bytes) -> bytes:
        nonce = os.urandom(12)
        return (self.current.encode() + nonce
                + self.keys[self.current].encrypt(nonce, key, _wrap_aad(aggregate_id)))

    def key_id_of(self, wrapped: bytes) -> str:
        return wrapped[:8].decode("ascii", "replace")

    def unwrap(self, aggregate_id: UUID, wrapped: bytes) -> bytes:
        kid = self.key_id_of(wrapped)
        aead = self.keys.get(kid)
        if aead is None:
            raise ConfigError(
                f"the data key of {aggregate_id} is wrapped by master key {kid}, which is not "
                f"among the configured ones ({self.source}): set {MASTER_KEY_ENV} to this "
                "store's master key (after a rotation, NEW,OLD)")
        try:
            return aead.decrypt(wrapped[8:20], wrapped[20:], _wrap_aad(aggregate_id))
        except InvalidTag as exc:
            raise ValueError(f"the data key of {aggregate_id} does not unwrap: its row was "
                             "altered or copied from another aggregate") from exc


def _wrap_aad(aggregate_id: UUID) -> bytes:
    return b"leadflow-data-key|" + aggregate_id.bytes


MASTER_KEYS = KeySource("master key", MASTER_KEY_ENV, MASTER_KEY_FILE_ENV,
                        MASTER_KEY_FILE_SUFFIX, _MASTER_FILE_HEADER,
                        "no personal value can be read",
                        "the master key that wraps every person's data key")


def master_keys_from_env(env: Mapping[str, str], database_file: str | None,
                         persistence: str) -> MasterKeys:
    """The master keys the environment configures (see the module doc for the order)."""
    return MasterKeys(*key_texts(MASTER_KEYS, env, database_file, persistence))


def personal_data_plain(env: Mapping[str, str]) -> bool:
    """Whether ``LEADFLOW_PERSONAL_DATA`` asks for unencrypted personal values (the bench's
    baseline); anything but ``encrypted`` (the default) and ``plain`` is refused."""
    mode = (env.get(PERSONAL_DATA_ENV) or "encrypted").strip().lower()
    if mode not in ("encrypted", "plain"):
        raise ConfigError(f"{PERSONAL_DATA_ENV} must be 'encrypted' (the default) or 'plain', "
                          f"not {mode!r}")
    return mode == "plain"


def rotate_master_key_file(path: Path, new: str) -> list[str]:
    """Put ``new`` on top of a master key file, keeping the older keys (for re-wrapping)."""
    keys = [new, *(k for k in read_key_file(path, "master key") if k != new)]
    write_key_file(path, keys, _MASTER_FILE_HEADER)
    return keys


class KeyTable:
    """``leadflow_data_keys`` of the recorder's database (PostgreSQL, SQLite or memory)."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self.memory: books_embedded.MemoryBooks | None = getattr(recorder, "_books", None)
        datastore = getattr(recorder, "datastore", None)
        self.schema: str | None = getattr(datastore, "schema", None)

    def select(self, ids: Sequence[UUID]) -> dict[UUID, bytes]:
        if not ids:
            return {}
        if self.memory is not None:
            known = self.memory.data_keys
            return {i: known[i] for i in ids if i in known}
        reading = getattr(self.recorder, "reading", None)
        if self.schema is not None and reading is not None:
            # One statement: one round trip (store/postgres.py ``reading``), no transaction.
            with reading() as cursor:
                return bookkeeping.postgres_data_keys(cursor, self.schema, ids)
        with self.recorder.datastore.transaction(commit=False) as cursor:
            if self.schema is not None:
                return bookkeeping.postgres_data_keys(cursor, self.schema, ids)
            return books_embedded.sqlite_data_keys(cursor, ids)

    def select_all(self) -> list[UUID]:
        """The ids of every aggregate with a data key."""
        if self.memory is not None:
            return list(self.memory.data_keys)
        table = bookkeeping.DATA_KEYS_TABLE
        with self.recorder.datastore.transaction(commit=False) as cursor:
            if self.schema is not None:
                cursor.execute(f'SELECT aggregate_id FROM "{self.schema}".{table}')
                return [row["aggregate_id"] for row in cursor.fetchall()]
            cursor.execute(f"SELECT aggregate_id FROM {table}")
            return [UUID(row[0]) for row in cursor.fetchall()]

    def add_if_absent(self, aggregate_id: UUID, wrapped: bytes) -> None:
        if self.memory is not None:
            self.memory.data_keys.setdefault(aggregate_id, wrapped)
            return
        with self.recorder.datastore.transaction(commit=True) as cursor:
            if self.schema is not None:
                bookkeeping.postgres_add_data_key(cursor, self.schema, aggregate_id, wrapped)
            else:
                books_embedded.sqlite_add_data_key(cursor, aggregate_id, wrapped)

    def rewrap_all(self, master: MasterKeys) -> int:
        """Re-wrap every data key with the master key's current key; returns how many."""
        if self.memory is not None:
            rows = list(self.memory.data_keys.items())
            for aggregate_id, wrapped in rows:
                self.memory.data_keys[aggregate_id] = master.wrap(
                    aggregate_id, master.unwrap(aggregate_id, wrapped))
            return len(rows)
        table = bookkeeping.DATA_KEYS_TABLE
        params: list[tuple[bytes, Any]]
        with self.recorder.datastore.transaction(commit=True) as cursor:
            if self.schema is not None:
                table = f'"{self.schema}".{table}'
                cursor.execute(f"SELECT aggregate_id, wrapped FROM {table} FOR UPDATE")
                rows = [(r["aggregate_id"], bytes(r["wrapped"])) for r in cursor.fetchall()]
                update = f"UPDATE {table} SET wrapped = %s WHERE aggregate_id = %s"
                params = [(master.wrap(i, master.unwrap(i, w)), i) for i, w in rows]
            else:
                cursor.execute(f"SELECT aggregate_id, wrapped FROM {table}")
                rows = [(UUID(i), bytes(w)) for i, w in cursor.fetchall()]
                update = f"UPDATE {table} SET wrapped = ? WHERE aggregate_id = ?"
                params = [(master.wrap(i, master.unwrap(i, w)), i.hex) for i, w in rows]
            cursor.executemany(update, params)
        return len(rows)
