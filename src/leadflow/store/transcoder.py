"""The library's JSON format, written and read with orjson.

eventsourcing's ``JSONTranscoder`` encodes with Python's ``json`` module and a ``default`` hook
that tags datetimes and UUIDs (``{"_type_": "datetime_iso", "_data_": "…"}``), and decodes
with an ``object_hook`` called for every JSON object. For leadflow's events that was a quarter
of the time it took to store a record. ``OrjsonTranscoder`` keeps the format byte-compatible
for every reader (stores written before decode alike, and the library's own transcoder reads
what it writes): it tags the registered types itself in one walk over the state, then lets
orjson write the JSON; reading, orjson parses and one walk untags.

Anything orjson would write differently from ``json`` falls back to the library's encoder, so
the stored bytes never mean something else: a float that is not finite (orjson writes
``null``, ``json`` writes ``NaN``), an integer beyond 64 bits, a key that is no string.
Payloads orjson refuses to read (``NaN``, ``Infinity``, lone surrogates) or would read
otherwise (an integer of 19 digits or more, which orjson reads as a float) are read by the
library's decoder.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError

_NATIVE = (str, bool, type(None))
_INT_RANGE = range(-(2**63), 2**64)
_LONG_DIGITS = re.compile(rb"[0-9]{19}")  # 2**63 has 19 digits


class _Fallback(Exception):
    """A value orjson would not write as ``json`` does: use the library's encoder."""


class OrjsonTranscoder(JSONTranscoder):
    """``JSONTranscoder``'s format, encoded and decoded with orjson (see the module's doc)."""

    def encode(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(self._tag(obj))
        except (_Fallback, orjson.JSONEncodeError):
            return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        if _LONG_DIGITS.search(data) is not None:
            # orjson reads an integer beyond 64 bits as a float; json reads it exactly. Such
            # a run of digits in a string only costs the slower decoder.
            return super().decode(data)
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return super().decode(data)
        return self._untag(parsed)

    def _tag(self, value: Any) -> Any:
        kind = type(value)
        if kind in _NATIVE:
            return value
        if kind is dict:
            out = {}
            for key, item in value.items():
                if type(key) is not str:
                    raise _Fallback
                out[key] = self._tag(item)
            return out
        if kind is list or kind is tuple:
            return [self._tag(item) for item in value]
        if kind is float:
            if not math.isfinite(value):
                raise _Fallback
            return value
        if kind is int:
            if value not in _INT_RANGE:
                raise _Fallback
            return value
        transcoding = self.types.get(kind)
        if transcoding is None:
            if isinstance(value, str | int | float | dict | list | tuple):
                raise _Fallback  # a subclass: as the library writes it
            raise TranscodingNotRegisteredError(
                f"Object of type {kind} is not serializable. Please define and register a "
                "custom transcoding for this type.")
        return {"_type_": transcoding.name, "_data_": self._tag(transcoding.encode(value))}

    def _untag(self, value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                transcoding = self.names.get(value["_type_"])
                if transcoding is None:
                    raise TranscodingNotRegisteredError(
                        f"Data serialized with name '{value['_type_']}' is not "
                        "deserializable. Please register a custom transcoding for this type.")
                return transcoding.decode(self._untag(value["_data_"]))
            return {key: self._untag(item) for key, item in value.items()}
        if kind is list:
            return [self._untag(item) for item in value]
        return value
