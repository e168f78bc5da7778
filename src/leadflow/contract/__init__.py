"""The wire contracts: what producers send (``inbound``), what leadflow publishes
(``lifecycle``), identity normalisation at the boundary (``identity``) and the JSON Schema
files generated from them (``schemas``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leadflow.contract.inbound import (
        DEFAULT_MAX_RECORD_BYTES,
        DEFAULT_OLDEST,
        LATEST,
        SCHEMA_VERSION,
        Context,
        Deal,
        InboundRecord,
        LeadRef,
        RecordRejected,
        decode_record,
        inbound_json_schema,
        parse_lines,
        parse_record,
    )

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES", "DEFAULT_OLDEST", "LATEST", "SCHEMA_VERSION", "Context", "Deal",
    "InboundRecord", "LeadRef", "RecordRejected", "decode_record", "inbound_json_schema",
    "parse_lines", "parse_record",
]


def __getattr__(name: str) -> Any:
    # The inbound contract (pydantic models, email and phone validation) is imported on first
    # use: `leadflow lead show` and `--help` reach `leadflow.contract.identity` without it.
    if name in __all__:
        from leadflow.contract import inbound

        return getattr(inbound, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
