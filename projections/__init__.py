"""Read models for analysts, built from the event store (issue: projections)."""
