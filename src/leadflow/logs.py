"""structlog set-up: JSON lines for machines, a readable console for people, both on stderr."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    level_name = (level or os.environ.get("LEADFLOW_LOG_LEVEL", "INFO")).upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level_name!r}")
    fmt = fmt or os.environ.get("LEADFLOW_LOG_FORMAT") or (
        "console" if sys.stderr.isatty() else "json"
    )
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
