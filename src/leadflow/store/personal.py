"""Personal data encrypted per person, so a person can be erased from an immutable store.

Crypto-shredding: each lead (and each anonymous interest) gets its own random 256-bit
*data key*. Before an event is stored, the values domain/privacy.py names personal (email,
phone, external and anonymous ids, names, title, URL queries) are taken out of its state
and stored beside the readable rest as one AES-GCM blob (``"pii"``) under that key.
Data keys sit in ``leadflow_data_keys``, each wrapped (AES-GCM) by the *master key*, which
is never in the database. ``leadflow forget`` deletes the data keys of a person's leads:
their rows stay byte for byte as they were (so the keyed chain still verifies: it covers
the ciphertext), but the personal values in them can never be read again.

Identity lookups use keyed hashes: ``leadflow_identities`` holds HMAC-SHA256(lookup key,
``email:…``), not the email, and forget deletes the person's rows. The lookup key is random,
made once per store and kept wrapped by the master key in the same table, so rotating the
master key re-wraps keys and never re-hashes the identity table.

The master key and the table of wrapped data keys are in store/master_keys.py.

``LEADFLOW_PERSONAL_DATA=plain`` stores personal values unencrypted: the bench's baseline
for the cost of encryption, never a production setting (``forget`` refuses such leads).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from binascii import a2b_base64, b2a_base64
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from leadflow.domain.ids import singleton_id
from leadflow.domain.privacy import PERSONAL_FIELDS, public_url
from leadflow.logs import get_logger
from leadflow.store.master_keys import KeyTable, MasterKeys

log = get_logger(__name__)  # structlog imported on the first log call

PII = "pii"
#: The identity lookup key's row in the data-key table (no aggregate has this id).
LOOKUP_KEY_ROW = singleton_id("identity-lookup-key")

# Subkeys of these dicts are deleted when sealed (a profile without a name); other
# personal values are replaced by an empty placeholder (None, []), so events keep their
# shape when the values are gone.
_DICTS_BY_KEY = frozenset({"changes", "profile", "context"})
# The data-key cache is bounded: beyond this many aggregates it starts over.
_CACHE_MAX = 200_000
#: Identity hashes kept (~180 bytes each). The engine's directory caches identity rows by
#: key, so a key is hashed again only while its row is new (looked up, then registered in
#: the same batch) or for a cookie noted again: a few batches' keys, not every key seen
#: (164,062 at the end of the default stream, ~29 MiB). A miss costs one HMAC (2-4 µs).
HASHES_MAX = 20_000


#: AES-GCM objects alive at once. Each holds ~2.6 KB of OpenSSL memory outside Python's heap
#: (100,000 of them: 259 MiB of RSS); one per cached data key (the cache holds up to
#: _CACHE_MAX) took the default bench's consumer from 963 to 1,367 MiB. The cache keeps the
#: key bytes; an AEAD is made again (~3 µs) for a key used after its AEAD was dropped. 4,000
#: covers a few batches' leads: the default stream in process peaked 38 MiB lower than with
#: 20,000 (1,187 against 1,225 MiB), in the same CPU time (319 against 317 s).
_AEADS_MAX = 4_000
_live_aeads: deque[_DataKey] = deque()


class _DataKey:
    """One aggregate's data key: its AEAD (made on first use, see _AEADS_MAX), and a short
    id of the key that every blob sealed with it starts with — so a blob sealed with a key
    since deleted (a forgotten person; a later event may have given the aggregate a new key)
    reads as gone, not as tampering."""

    __slots__ = ("_aead", "head", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        # What every blob sealed with the key starts with: the format's version byte and the
        # key id, made once per key rather than once per sealed event.
        self.head = _BLOB_PREFIX + hashlib.sha256(b"leadflow-data-key-id|" + key).digest()[:4]
        self._aead: AESGCM | None = None

    @property
    def aead(self) -> AESGCM:
        aead = self._aead
        if aead is None:
            aead = self._aead = AESGCM(self.key)
            _live_aeads.append(self)
            while len(_live_aeads) > _AEADS_MAX:
                _live_aeads.popleft()._aead = None
        return aead


#: The sealed blob's format: version byte, key id (4), nonce (12), AES-GCM ciphertext.
_BLOB_V1 = 1
_BLOB_PREFIX = bytes((_BLOB_V1,))


class Vault:
    """Seals and opens events' personal values with their aggregate's data key, and hashes
    identity keys for the identity table.

    Data keys made for new aggregates are *pending* until the transaction that stores the
    aggregate's first row commits (``new_keys`` hands them to the bookkeeping written with
    the events; ``committed``/``rolled_back`` settle them), so a failed batch never leaves a
    key the store does not hold.
    """

    def __init__(self, master: MasterKeys, recorder: Any, *, plain: bool = False) -> None:
        self.master = master
        self.table = KeyTable(recorder)
        self.plain = plain
        self._keys: dict[UUID, _DataKey | None] = {}
        self._pending: dict[UUID, tuple[bytes, _DataKey]] = {}
        self._lookup: tuple[Any, Any] | None = None
        self._hashes: dict[str, str] = {}
        # Aggregate ids read as text (a projector's pages), each made a UUID once: UUID()
        # is Python code, ~5 % of a rebuild when every page made its ids again.
        self._ids: dict[str, UUID] = {}

    def _id(self, value: UUID | str) -> UUID:
        if type(value) is not str:
            return _uuid(value)
        found = self._ids.get(value)
        if found is None:
            found = UUID(value)
            if len(self._ids) >= _CACHE_MAX:
                self._ids.clear()
            self._ids[value] = found
        return found

    # ----------------------------------------------------------------- data keys

    def preload(self, ids: Iterable[UUID | str]) -> None:
        """Read and unwrap the data keys of many aggregates in one query."""
        keys = self._keys
        # Each id is made a UUID once (a page names each aggregate many times, as text).
        missing = [i for i in dict.fromkeys(map(self._id, dict.fromkeys(ids)))
                   if i not in keys and i not in self._pending]
        if not missing:
            return
        if len(keys) + len(missing) > _CACHE_MAX:
            keys.clear()
        found = self.table.select(missing)
        master = self.master
        for aggregate_id in missing:
            wrapped = found.get(aggregate_id)
            keys[aggregate_id] = (_DataKey(master.unwrap(aggregate_id, wrapped))
                                  if wrapped is not None else None)

    def preload_all(self) -> None:
        """Every data key of the store, unwrapped (a whole-store check reads them all)."""
        self.preload(self.table.select_all())

    def _cipher(self, aggregate_id: UUID, create: bool) -> _DataKey | None:
        pending = self._pending.get(aggregate_id)
        if pending is not None:
            return pending[1]
        if aggregate_id not in self._keys:
            self.preload([aggregate_id])
        cipher = self._keys[aggregate_id]
        if cipher is None and create:
            key = AESGCM.generate_key(bit_length=256)
            cipher = _DataKey(key)
            self._pending[aggregate_id] = (self.master.wrap(aggregate_id, key), cipher)
        return cipher

    def holds_keys(self) -> bool:
        """Whether any data key (or a key's absence) is cached."""
        return bool(self._keys)

    def has_key(self, aggregate_id: UUID) -> bool:
        return self._cipher(aggregate_id, create=False) is not None

    def new_keys(self) -> dict[UUID, bytes]:
        """The wrapped keys made since the last commit, for the transaction's bookkeeping."""
        return {i: wrapped for i, (wrapped, _) in self._pending.items()}

    def committed(self) -> None:
        for aggregate_id, (_, cipher) in self._pending.items():
            self._keys[aggregate_id] = cipher
        self._pending.clear()

    def rolled_back(self) -> None:
        self._pending.clear()

    def shredded(self, ids: Iterable[UUID]) -> None:
        """The keys of ``ids`` were deleted (``forget`` committed)."""
        for aggregate_id in ids:
            self._keys[aggregate_id] = None

    def forget(self, ids: Iterable[UUID]) -> None:
        """Forget the cached keys of ``ids`` (a failed batch may have assumed they had none,
        while another writer stored one)."""
        keys = self._keys
        for aggregate_id in ids:
            keys.pop(aggregate_id, None)

    def clear(self) -> None:
        """Forget cached keys (another process may have deleted some)."""
        self._keys.clear()
        self._hashes.clear()

    # ----------------------------------------------------------------- events

    def seal(self, name: str, aggregate_id: UUID, state: dict[str, Any],
             first: bool = False) -> None:
        """Move event ``name``'s personal values out of ``state`` (a fresh dict of the
        event's fields, about to be encoded) into its sealed blob. ``first``: the event
        creates the aggregate, which then has no key yet (none is looked up)."""
        spec = _SPEC.get(name)
        if spec is None or self.plain:
            return
        secret: dict[str, Any] = {}
        for path in spec.paths:
            _take(state, path, secret)
        if not secret:
            return
        pending = self._pending.get(aggregate_id)  # a new aggregate's later events
        cipher: _DataKey | None
        if pending is not None:
            cipher = pending[1]
        else:
            if first:
                self._keys.setdefault(aggregate_id, None)  # known: none stored yet
            cipher = self._cipher(aggregate_id, create=True)
            assert cipher is not None
        nonce = os.urandom(12)
        # The associated data is _aad(name, aggregate_id), the name's part made once.
        state[PII] = b2a_base64(
            cipher.head + nonce
            + cipher.aead.encrypt(nonce, orjson.dumps(secret), spec.aad + aggregate_id.bytes),
            newline=False).decode("ascii")

    def open(self, name: str, aggregate_id: UUID | str, state: dict[str, Any]) -> bool:
        """Put event ``name``'s sealed personal values back into its decoded ``state``;
        False when they cannot be read any more (the person was forgotten): the state then
        keeps its placeholders."""
        blob = state.pop(PII, None)
        if blob is None:
            return True
        aggregate_id = _uuid(aggregate_id)
        values = _unseal(name, aggregate_id, self._cipher(aggregate_id, create=False), blob)
        if values is None:
            return False
        for path, value in values.items():
            _put(state, _parts(path), value)
        return True

    def open_all(self, events: Sequence[tuple[str, UUID | str, dict[str, Any]]]) -> None:
        """``open`` for many events at once (a projector's page): each aggregate's key and
        each field path are looked up once for the whole batch, not once per event. A blob
        that does not open raises ``SealedValuesError`` naming its index in ``events``; the
        events before it are opened."""
        ciphers: dict[UUID | str, tuple[UUID, _DataKey | None]] = {}
        parts = _PARTS
        for index, (name, aggregate_id, state) in enumerate(events):
            blob = state.pop(PII, None)
            if blob is None:
                continue
            found = ciphers.get(aggregate_id)
            if found is None:
                uid = self._id(aggregate_id)
                found = ciphers[aggregate_id] = (uid, self._cipher(uid, create=False))
            try:
                values = _unseal(name, found[0], found[1], blob)
            except ValueError as exc:
                raise SealedValuesError(index) from exc
            if values is None:
                continue
            for path, value in values.items():
                _put(state, parts.get(path) or _parts(path), value)

    # ----------------------------------------------------------------- identities

    def lookup(self, identity_key: str) -> str:
        """The identity table's key for ``identity_key``: HMAC-SHA256 with the store's
        lookup key, 128 bits in hex. Without the key, an email cannot be tested against it."""
        found = self._hashes.get(identity_key)
        if found is not None:
            return found
        if self._lookup is None:
            self._lookup = _pads(self._lookup_key())
        inner_pad, outer_pad = self._lookup
        inner = inner_pad.copy()
        inner.update(identity_key.encode())
        outer = outer_pad.copy()
        outer.update(inner.digest())
        digest: str = outer.hexdigest()[:32]
        if len(self._hashes) >= HASHES_MAX:
            self._hashes.clear()
        self._hashes[identity_key] = digest
        return digest

    def _lookup_key(self) -> bytes:
        found = self.table.select([LOOKUP_KEY_ROW]).get(LOOKUP_KEY_ROW)
        if found is None:
            # Two processes starting on a new store at once: the first insert wins, and
            # both read back the one that won.
            self.table.add_if_absent(LOOKUP_KEY_ROW,
                                     self.master.wrap(LOOKUP_KEY_ROW, secrets.token_bytes(32)))
            found = self.table.select([LOOKUP_KEY_ROW])[LOOKUP_KEY_ROW]
        return self.master.unwrap(LOOKUP_KEY_ROW, found)


class SealedValuesError(ValueError):
    """A sealed blob of a batch (``Vault.open_all``) does not open: ``index`` is its event's
    place in the batch; the cause is the error ``Vault.open`` raises for it."""

    def __init__(self, index: int) -> None:
        super().__init__(f"the sealed personal values of event {index} of the batch do not "
                         "open")
        self.index = index


def _unseal(name: str, aggregate_id: UUID, cipher: _DataKey | None,
            blob: Any) -> dict[str, Any] | None:
    """The personal values sealed in ``blob``; None when its key was deleted (the person is
    forgotten); ValueError when it does not decrypt (altered, or moved to another event)."""
    try:
        raw = a2b_base64(blob)
        if raw[:1] != _BLOB_PREFIX:
            raise ValueError("unknown format")
        if cipher is None or raw[:5] != cipher.head:  # version byte (checked), key id
            return None  # sealed with a key that was deleted: the person is forgotten
        values: dict[str, Any] = orjson.loads(
            cipher.aead.decrypt(raw[5:17], raw[17:], _aad(name, aggregate_id)))
    except (InvalidTag, ValueError, TypeError) as exc:
        raise ValueError(f"the personal data of {name} on {aggregate_id} does not "
                         "decrypt: the row was altered or moved") from exc
    return values


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _aad(name: str, aggregate_id: UUID) -> bytes:
    return name.encode() + b"|" + aggregate_id.bytes


def _pads(key: bytes) -> tuple[Any, Any]:
    # HMAC-SHA256 with the padded-key hashes computed once (as store/keys.py's Keyring).
    block = key.ljust(64, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)))


class _Path:
    """A personal field's path (domain/privacy.py), parsed once."""

    __slots__ = ("delete", "first", "name", "parts", "rest", "url")

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = name.endswith("~")
        self.parts = tuple((name[:-1] if self.url else name).split("."))
        self.first, self.rest = self.parts[0], self.parts[1:]
        self.delete = len(self.parts) > 1 and self.parts[-2] in _DICTS_BY_KEY


class _Spec:
    """An event's personal paths, and its name's part of the sealed blob's associated data
    (``_aad``), made once."""

    __slots__ = ("aad", "paths")

    def __init__(self, name: str, paths: Iterable[str]) -> None:
        self.paths = tuple(map(_Path, paths))
        self.aad = name.encode() + b"|"


_SPEC: dict[str, _Spec] = {
    name: _Spec(name, paths) for name, paths in PERSONAL_FIELDS.items()}


def _take(state: dict[str, Any], path: _Path, secret: dict[str, Any]) -> None:
    """Move the value at ``path`` into ``secret``; dicts on the way are copied first (they
    are the live event's own), and only when there is something to take."""
    # Most events hold none of their kind's personal values (a touchpoint's context without
    # a query string): they are let go after one lookup per level, without copying.
    value = state.get(path.first)
    if value is None:
        return
    for part in path.rest:
        if not isinstance(value, dict):
            return
        value = value.get(part)
        if value is None:
            return
    if value in ([], ""):
        return
    public: str | None = None
    if path.url:
        if not isinstance(value, str) or ("?" not in value and "#" not in value):
            return  # no query, no fragment: the URL is all public (public_url(value) == value)
        public = public_url(value)
    parts = path.parts
    parent = state
    for part in parts[:-1]:
        parent[part] = child = dict(parent[part])
        parent = child
    leaf = parts[-1]
    secret[path.name] = value
    if public is not None:
        parent[leaf] = public
    elif path.delete:
        del parent[leaf]
    else:
        parent[leaf] = [] if isinstance(value, list) else None


#: Each sealed field path's keys ("profile.name" -> ("profile", "name")), parsed once.
_PARTS: dict[str, tuple[str, ...]] = {}


def _parts(path: str) -> tuple[str, ...]:
    found = _PARTS.get(path)
    if found is None:
        found = tuple((path[:-1] if path.endswith("~") else path).split("."))
        if len(_PARTS) < 1024:  # the domain names a few dozen; a hostile blob cannot grow it
            _PARTS[path] = found
    return found


def _put(state: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    parent = state
    for part in parts[:-1]:
        child = parent.get(part)
        if not isinstance(child, dict):
            child = parent[part] = {}
        parent = child
    parent[parts[-1]] = value
