"""Binary dumpers for ``store.arrays``' typed column arrays (see there why).

Each builds the array's binary form (PostgreSQL's ``array_recv``: dimensions, null flag,
element type, then each element as its length and bytes, -1 for NULL) in one loop, as
psycopg's ``ListBinaryDumper`` builds it from one element dumper call each. Registered on
psycopg's global adapters for these classes only (a plain list is dumped as before), by
``store.postgres`` as it is imported: before any connection of the store is made.
"""

from __future__ import annotations

import struct
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from leadflow.store.arrays import BigintArray, BooleanArray, ByteaArray, TextArray, UuidArray

_HEAD = struct.Struct("!iiiii")  # ndims (1), has nulls, element oid, length, lower bound (1)
_EMPTY = struct.Struct("!iii")  # ndims (0), has nulls (0), element oid
_LENGTH = struct.Struct("!i").pack
_BIGINT = struct.Struct("!iq").pack
_NULL = b"\xff\xff\xff\xff"
_UUID_LENGTH = b"\x00\x00\x00\x10"
_TRUE = b"\x00\x00\x00\x01\x01"
_FALSE = b"\x00\x00\x00\x01\x00"


class _ArrayDumper(Dumper):
    format = Format.BINARY
    #: The array's and its elements' type oids. The class's ``oid`` stays 0 so that
    #: registering it does not make it psycopg's dumper for the array type by oid
    #: (COPY, or a plain list with a known type): only these classes use it.
    array_oid = 0
    element_oid = 0

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        self.oid = self.array_oid

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY.pack(0, 0, self.element_oid)
        # A list comprehension per element type when there is no NULL (the usual case):
        # ``None in obj`` is a C-level scan for these element types (not for UUIDs, whose
        # ``__eq__`` is Python: their dumper finds a None by the AttributeError instead).
        if None in obj:
            return self._join([_NULL if v is None else self._element(v) for v in obj], 1)
        return self._join(self._elements(obj), 0)

    def _join(self, parts: list[bytes], has_null: int) -> bytes:
        parts.insert(0, _HEAD.pack(1, has_null, self.element_oid, len(parts), 1))
        return b"".join(parts)

    def _element(self, value: Any) -> bytes:
        """One element, its length first."""
        raise NotImplementedError

    def _elements(self, values: list[Any]) -> list[bytes]:
        """Every element of ``values`` (none of them None), each its length first."""
        return [self._element(v) for v in values]


class _UuidArrayDumper(_ArrayDumper):
    array_oid, element_oid = 2951, 2950

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY.pack(0, 0, self.element_oid)
        # ``v.int.to_bytes(16)`` is ``UUID.bytes`` without the property's Python call.
        try:
            return self._join([_UUID_LENGTH + v.int.to_bytes(16) for v in obj], 0)
        except AttributeError:
            if None not in obj:  # not a None: something else without ``int``
                raise
        return self._join([_NULL if v is None else _UUID_LENGTH + v.int.to_bytes(16)
                           for v in obj], 1)


class _TextArrayDumper(_ArrayDumper):
    array_oid, element_oid = 1009, 25

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        # As psycopg's text dumpers: the connection's client encoding.
        self._encoding = self.connection.info.encoding if self.connection else "utf-8"

    def _element(self, value: Any) -> bytes:
        data: bytes = value.encode(self._encoding)
        return _LENGTH(len(data)) + data

    def _elements(self, values: list[Any]) -> list[bytes]:
        encoding = self._encoding
        return [_LENGTH(len(d)) + d for d in [v.encode(encoding) for v in values]]


class _ByteaArrayDumper(_ArrayDumper):
    array_oid, element_oid = 1001, 17

    def _element(self, value: Any) -> bytes:
        return _LENGTH(len(value)) + value  # type: ignore[no-any-return]

    def _elements(self, values: list[Any]) -> list[bytes]:
        return [_LENGTH(len(v)) + v for v in values]


class _BigintArrayDumper(_ArrayDumper):
    array_oid, element_oid = 1016, 20

    def _element(self, value: Any) -> bytes:
        return _BIGINT(8, value)

    def _elements(self, values: list[Any]) -> list[bytes]:
        return [_BIGINT(8, v) for v in values]


class _BooleanArrayDumper(_ArrayDumper):
    array_oid, element_oid = 1000, 16

    def _element(self, value: Any) -> bytes:
        return _TRUE if value else _FALSE

    def _elements(self, values: list[Any]) -> list[bytes]:
        return [_TRUE if v else _FALSE for v in values]


def register() -> None:
    """Make psycopg dump the typed arrays with these dumpers (idempotent)."""
    for cls, dumper in ((UuidArray, _UuidArrayDumper), (TextArray, _TextArrayDumper),
                        (ByteaArray, _ByteaArrayDumper), (BigintArray, _BigintArrayDumper),
                        (BooleanArray, _BooleanArrayDumper)):
        psycopg.adapters.register_dumper(cls, dumper)
