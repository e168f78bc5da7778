"""structlog set-up: JSON lines for machines, a readable console for people, both on stderr.

Log lines go to ``sys.stderr`` as it is at each write, so while a rich progress bar is drawn
(it redirects stderr to print above itself) they appear above the bar instead of through it.
While a bar is drawn, per-record warnings (one per rejected line or dead letter) are not
printed one by one either: ``per_record_summary()`` counts them by reason and the caller logs
one summary when the bar is gone. Where no bar is drawn (stderr is not a terminal: JSON logs
that operators grep) every event is written.

structlog is imported by the first module that logs, not here: importing it (its console
renderer imports rich, its stdlib module asyncio) costs more than the rest of ``lead show``'s
start-up. ``configure_logging`` checks the settings at once and applies them to structlog as
soon as it is imported, by whichever module imports it; ``get_logger`` is
``structlog.get_logger`` for a module that would rather not import it until it logs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import Counter
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO, cast

from leadflow.redaction import mask_personal_data

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType

#: Events logged once per input record; held back while a progress bar is on screen.
PER_RECORD_EVENTS = frozenset({"record rejected", "line not published", "dead-lettered"})

# (event, reason) -> count while per_record_summary() is active; None when it is not.
_held: Counter[tuple[str, str]] | None = None
# Warnings kept for the caller while held_warnings() is active; None when it is not.
_notes: list[MutableMapping[str, Any]] | None = None


class _CurrentStderr:
    """``sys.stderr`` looked up at each write (structlog would keep the one it was given)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _hold_per_record(_logger: Any, _method: str,
                     event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    held = _held
    if held is not None and event_dict.get("event") in PER_RECORD_EVENTS:
        held[(str(event_dict["event"]), str(event_dict.get("reason") or "-"))] += 1
        raise _drop_event()
    notes = _notes
    if notes is not None and _method == "warning":
        notes.append(dict(event_dict))
        raise _drop_event()
    return event_dict


def _drop_event() -> BaseException:
    import structlog

    return structlog.DropEvent()


@contextmanager
def held_warnings() -> Iterator[list[MutableMapping[str, Any]]]:
    """Keep warnings (not errors) for the caller to show with its result instead of writing
    them while it works: for a command whose screen must hold only progress bars until the
    result (``demo``). Per-record warnings are still counted under a progress bar."""
    global _notes
    previous, _notes = _notes, []
    try:
        yield _notes
    finally:
        _notes = previous


@contextmanager
def per_record_summary(log_summary: bool = True) -> Iterator[Counter[tuple[str, str]]]:
    """Count per-record warnings instead of writing them, then log one summary per event
    (``log_summary=False``: the caller reports the counts itself).

    For the time a progress bar is drawn: hundreds of "record rejected" lines would scroll
    the bar away, and each of them is in the rejects file (or the dead-letter topic) anyway.
    The bar shows the counts under itself while it runs.
    """
    global _held
    previous, _held = _held, Counter()
    held = _held
    try:
        yield held
    finally:
        _held = previous
        by_event: dict[str, Counter[str]] = {}
        for (event, reason), count in (held.items() if log_summary else ()):
            by_event.setdefault(event, Counter())[reason] += count
        log = get_logger("leadflow")
        for event, reasons in sorted(by_event.items()):
            log.warning(f"{event} (summary)", count=sum(reasons.values()),
                        by_reason=dict(sorted(reasons.items())))


class _LazyLogger:
    """``structlog.get_logger(name)``, imported on first use."""

    def __init__(self, name: str | None) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attribute: str) -> Any:
        if self._logger is None:
            import structlog

            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, attribute)


def get_logger(name: str | None = None) -> Any:
    """``structlog.get_logger(name)`` without importing structlog before the first log call
    (configured then, see ``configure_logging``)."""
    return _LazyLogger(name)


#: (level, format) given to configure_logging, applied when structlog is imported.
_settings: tuple[int, str] | None = None


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Check the level and format now (a bad one is an error at start-up) and configure
    structlog with them: at once when it is imported already, otherwise the moment it is."""
    global _settings
    level_name = (level or os.environ.get("LEADFLOW_LOG_LEVEL", "INFO")).upper()
    numeric = _level_number(level_name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level_name!r}")
    fmt = (fmt or os.environ.get("LEADFLOW_LOG_FORMAT") or (
        "console" if sys.stderr.isatty() else "json"
    )).lower()
    if fmt not in ("console", "json"):
        raise ValueError(f"unknown log format {fmt!r} (LEADFLOW_LOG_FORMAT): use console or json")
    _settings = (numeric, fmt)
    if "structlog" in sys.modules:
        _apply_settings()
    elif not any(isinstance(finder, _ConfigureOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ConfigureOnImport())


def _level_number(name: str) -> Any:
    """``logging.getLevelName(name)``: the number of a level name, else a string. The standard
    library's logging is imported only when something logs: until it is, no level can have
    been added to its standard ones."""
    logging = sys.modules.get("logging")
    if logging is not None:
        return logging.getLevelName(name)
    return _STANDARD_LEVELS.get(name, f"Level {name}")


_STANDARD_LEVELS = {"CRITICAL": 50, "FATAL": 50, "ERROR": 40, "WARN": 30, "WARNING": 30,
                    "INFO": 20, "DEBUG": 10, "NOTSET": 0}


class _ConfigureOnImport:
    """A meta path finder that applies the settings right after structlog's module has run,
    for whoever imports it first; then steps out of the import system."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "structlog":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader: Any = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            _apply_settings()

        loader.exec_module = exec_module
        return spec


def _apply_settings() -> None:
    import structlog

    if _settings is None:
        return
    numeric, fmt = _settings
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            _hold_per_record,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            mask_personal_data,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
