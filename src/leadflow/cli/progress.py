"""Progress bars on stderr for the commands that walk many records, leads or days, with
the per-record warnings counted under them (rich is imported when a bar is first drawn).
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from leadflow.cli.common import err_console

if TYPE_CHECKING:
    from rich.progress import Progress


@functools.cache
def _progress_parts() -> dict[str, Any]:
    """rich's progress classes and leadflow's own columns, built on first use (rich is not
    imported by commands that draw no bar)."""
    from rich.console import RenderableType
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second, in the task's unit (events, leads, days)."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            unit = task.fields.get("unit", "")
            return Text("" if speed is None else f"{speed:,.0f} {unit}/s".replace(" /", "/"),
                        style="progress.data.speed")

    class RecordsColumn(ProgressColumn):
        """Records done and records per second (the bar itself follows the file's bytes)."""

        def render(self, task: Task) -> Text:
            records = int(task.fields.get("records", 0))
            elapsed = task.finished_time if task.finished else task.elapsed
            rate = f" ({records / elapsed:,.0f}/s)" if elapsed else ""
            return Text(f"{records:,} records{rate}", style="progress.data.speed")

    class HeldProgress(Progress):
        """A progress bar with, under it, the per-record warnings counted so far.

        Printed one by one they would scroll the bar away; counted here they stay in view
        (and on screen once the bar is finished), by reason.
        """

        held: Counter[tuple[str, str]] | None = None

        def get_renderables(self) -> Iterable[RenderableType]:
            yield from super().get_renderables()
            if self.held:
                for line in held_lines(self.held):
                    yield Text(line, style="yellow", overflow="fold")

    return {"Progress": Progress, "HeldProgress": HeldProgress, "TextColumn": TextColumn,
            "BarColumn": BarColumn, "TaskProgressColumn": TaskProgressColumn,
            "MofNCompleteColumn": MofNCompleteColumn, "TimeElapsedColumn": TimeElapsedColumn,
            # Never wrapped under the bar: the bar gives way on a narrow terminal instead.
            "RateColumn": lambda: RateColumn(table_column=Column(no_wrap=True)),
            "RecordsColumn": lambda: RecordsColumn(table_column=Column(no_wrap=True))}


#: How the per-record warnings counted under a bar are named there.
_HELD_NAMES = {"record rejected": "rejected", "line not published": "not published",
               "dead-lettered": "dead-lettered"}


def held_lines(held: Counter[tuple[str, str]]) -> list[str]:
    """One line per kind of held-back warning: ``rejected 81: invalid_identity 24, ...``."""
    by_event: dict[str, Counter[str]] = {}
    for (event, reason), count in held.items():
        by_event.setdefault(event, Counter())[reason] += count
    return [f"{_HELD_NAMES.get(event, event)} {sum(reasons.values()):,}: "
            + ", ".join(f"{reason} {count:,}" for reason, count in sorted(reasons.items()))
            for event, reasons in sorted(by_event.items())]


@contextlib.contextmanager
def progress_bar(records: bool = False, log_summary: bool = True) -> Iterator[Progress]:
    """A progress bar on stderr when it is a terminal (``records``: for ingest, a bar over
    the input's bytes with the count of records beside it).

    Log lines print above the bar; per-record warnings are counted while it is drawn, shown
    by reason under it, and summarised once after it (see ``leadflow.logs``; not with
    ``log_summary=False``, for a caller that reports the counts itself).
    """
    from leadflow.logs import per_record_summary

    parts = _progress_parts()
    columns: tuple[Any, ...] = (
        (parts["TextColumn"]("[bold]{task.description}"), parts["BarColumn"](),
         parts["TaskProgressColumn"](), parts["RecordsColumn"](), parts["TimeElapsedColumn"]())
        if records else
        (parts["TextColumn"]("[bold]{task.description}"), parts["BarColumn"](),
         parts["MofNCompleteColumn"](), parts["RateColumn"](), parts["TimeElapsedColumn"]()))
    console = err_console()
    if not console.is_terminal:
        with parts["Progress"](*columns, console=console, disable=True) as progress:
            yield progress
        return
    # stdout is the command's output (JSON, JSONL with -o -): never redirected to the bar.
    progress = parts["HeldProgress"](*columns, console=console, redirect_stdout=False)
    with per_record_summary(log_summary=log_summary) as held:
        progress.held = held
        with progress:
            yield progress
