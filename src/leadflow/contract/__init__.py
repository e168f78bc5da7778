"""The wire contracts: what producers send (``inbound``), what leadflow publishes
(``lifecycle``), identity normalisation at the boundary (``identity``) and the JSON Schema
files generated from them (``schemas``)."""

from __future__ import annotations

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
