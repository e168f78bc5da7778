"""Typed column arrays for PostgreSQL parameters, dumped in binary in one pass.

psycopg dumps a plain ``list`` parameter element by element in Python (``ListBinaryDumper``
finds each element's dumper, calls it and packs its length; ``ListDumper`` escapes each text
element with a regular expression): 4% of the consumer's samples, in the commit's inserts
and the prefetch lookups. A list of one of these classes is the same list to Python, and is
dumped by ``store.postgres`` in one loop into the same binary array of its element type (the
server reads the same values: the SQL and its casts are unchanged). A ``None`` element is a
NULL. This module does not import psycopg (the SQLite store never needs it).
"""

from __future__ import annotations

from uuid import UUID


class UuidArray(list[UUID | None]):
    """A ``uuid[]`` parameter."""

    __slots__ = ()


class TextArray(list[str | None]):
    """A ``text[]`` parameter."""

    __slots__ = ()


class ByteaArray(list[bytes | None]):
    """A ``bytea[]`` parameter."""

    __slots__ = ()


class BigintArray(list[int | None]):
    """A ``bigint[]`` parameter."""

    __slots__ = ()


class BooleanArray(list[bool | None]):
    """A ``boolean[]`` parameter."""

    __slots__ = ()
