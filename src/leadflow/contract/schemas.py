"""JSON Schemas generated from the pydantic models; ``schemas/`` holds the published copies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leadflow.contract import inbound_json_schema
from leadflow.contract.lifecycle import lifecycle_json_schema
from leadflow.domain.rules import rules_json_schema


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every contract leadflow publishes."""
    return {
        "inbound-record.v1.json": inbound_json_schema(),
        "rules.schema.json": rules_json_schema(),
        "lifecycle-event.v1.json": lifecycle_json_schema(),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
