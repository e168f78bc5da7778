"""JSON values in and out under the contract's bounds, for paths that must look inside a
document before each record in it reaches :func:`~leadflow.contract.inbound.parse_record`
(an array of records, a Segment batch, a Segment message mapped to a record).

``load_json`` parses with the contract's parser (pydantic's jiter: nesting limited, lone
surrogates refused) and refuses what that parser lets through but a record may not hold:
infinite numbers (``1e400`` parses as ``inf``) and integers no JSON writer here can write back.
``dump_json`` writes a value back to bytes for ``parse_record``. Both raise
:class:`~leadflow.contract.inbound.RecordRejected` with the contract's reason codes.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pydantic_core

from leadflow.contract.inbound import RecordRejected

#: orjson writes integers within 64 bits; a larger one is out of any field's range anyway.
_INT_RANGE = (-(1 << 63), (1 << 64) - 1)


def load_json(data: bytes | str) -> Any:
    """The JSON value of ``data``, or :class:`RecordRejected` (``malformed_json``,
    ``nesting_too_deep``, ``number_out_of_range``). Duplicate keys: the last one wins, as
    in the contract's parser."""
    try:
        value = pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        message = str(exc)
        if "recursion limit" in message:
            raise RecordRejected("nesting_too_deep",
                                 "JSON nested deeper than 200 levels") from None
        if "number out of range" in message:
            raise RecordRejected("number_out_of_range", f"JSON {message}") from None
        raise RecordRejected("malformed_json", f"not JSON: {message}") from None
    check_numbers(value)
    return value


def check_numbers(value: Any) -> None:
    """Refuse non-finite floats and integers beyond 64 bits anywhere in ``value``.

    Iterative, so a value as deep as the parser allows costs no recursion.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise RecordRejected("number_out_of_range",
                                 "a number is too large to be finite (like 1e400)")
        elif (isinstance(item, int) and not isinstance(item, bool)
              and not _INT_RANGE[0] <= item <= _INT_RANGE[1]):
            raise RecordRejected("number_out_of_range",
                                 f"the integer {str(item)[:40]}... is beyond 64 bits")


def dump_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (what ``parse_record`` then reads)."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # a lone surrogate or an integer orjson cannot write
        raise RecordRejected("schema_violation", f"cannot be written as JSON: {exc}") from None
