"""Kafka ingestion: translate records into engine commands (no business rules here)."""
