"""The timer index's rules, shared by every recorder (store/recorders.py, store/postgres.py).

A lead's row in ``leadflow_timers`` is a *hint*: the time by which the clock must look at the
lead again, never later than its next due transition (``RecordIdIndex``). Record batches only
move rows earlier; the clock's commits replace them (``timer_writes``). Writers running beside
the clock are checked in the commit, under its lock (``check_reads``): the clock replaces a
row only from the lead as stored, moves past a day only when no row is due in it, and a batch
whose next transition falls behind a clock that moved on since it read it is a conflict.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError

#: The earliest time a timer row may hold (``select_due``'s lower bound without a position).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: The metadata row counting commits whose timers replaced rows (``timers_exact``): the only
#: writes that move a timer later or drop it. While it holds what a writer read, the rows
#: are no later than the timers it last wrote, so it need not write them again (below).
TIMERS_EPOCH = "timers_epoch"

#: The metadata row holding the clock's position, written by the commit that moves it
#: (``clock_guard``; ``check_reads``). A store whose clock was last moved by an earlier
#: version has none until the clock moves again; commits are then not checked against it.
CLOCK_POSITION = "clock_position"

def timers_of(kwargs: dict[str, Any]) -> dict[UUID, datetime | None]:
    return dict(kwargs.get("timers") or {})


def timers_exact(kwargs: dict[str, Any]) -> bool:
    """Whether the timers replace the stored ones (the clock, ``migrate``), or only move
    them earlier (record batches, the other commands): see ``RecordIdIndex``."""
    return bool(kwargs.get("timers_exact"))


#: Which of some aggregates have stored rows after a version (inside the commit's
#: transaction, under its lock): ``RecordIdIndex.select_moved_on``'s question.
MovedOn = Callable[[Sequence[tuple[UUID, int]]], Collection[UUID]]


def timer_writes(kwargs: dict[str, Any], stored_epoch: Callable[[], str | None],
                 moved_on: MovedOn | None = None,
                 ) -> tuple[list[UUID], list[tuple[UUID, datetime]]]:
    """The timer rows a commit deletes and upserts (see ``RecordIdIndex``); ``stored_epoch``
    reads the ``TIMERS_EPOCH`` row inside the commit's transaction.

    Exact timers come with the versions of the leads they were computed from
    (``timers_versions``, the clock's): a lead another writer stored past that version
    since keeps its row as that writer left it (no later than its next due time: that
    writer's timers only moved it earlier). Replacing it would put back a time computed from
    the lead as it was: a record routed meanwhile, its SLA due before that time, would go
    unnoticed until its next record. The clock looks at the lead again if its row is still
    due before the clock's next position (``clock_guard``, ``check_reads``)."""
    timers = timers_of(kwargs)
    if timers_exact(kwargs):
        versions: dict[UUID, int] = kwargs.get("timers_versions") or {}
        moved = set(moved_on([(lead, versions[lead]) for lead in timers if lead in versions])
                    ) if versions and moved_on is not None else set()
        return ([lead for lead, due in timers.items() if due is None and lead not in moved],
                [(lead, due) for lead, due in timers.items()
                 if due is not None and lead not in moved])
    due = [(lead, at) for lead, at in timers.items() if at is not None]
    skipped: dict[UUID, datetime] = kwargs.get("timers_skipped") or {}
    if skipped and stored_epoch() != kwargs.get("timers_epoch"):
        due += skipped.items()  # a row may have moved later since the writer knew it
    return [], due


#: Why a commit is refused when a lead's next transition falls behind the clock
#: (``check_reads``; the PostgreSQL recorder raises it from its statement's violation).
CLOCK_MOVED_ON = ("a lead's next transition is not after the clock's position, which moved on "
                  "since the writer read it")


def check_reads(kwargs: dict[str, Any], stored_clock: Callable[[], datetime | None] | None,
                rows_due: Callable[[datetime, datetime], bool]) -> datetime | None:
    """Refuse (``IntegrityError``, a write conflict: the writer retries on fresh state) a
    commit whose timers rest on a clock position that has moved on since they were computed:

    - ``earliest_due``: the earliest next due time of the leads the commit settled, each
      caught up to the clock's position as the writer read it. At or before the stored
      position (the clock moved on meanwhile), the transition would never be done: the clock
      does not look back. (``stored_clock`` reads the position; None: the recorder checks
      this itself.)
    - ``clock_guard`` ``(position, until)``: the clock moves from ``position`` to ``until``
      only when no timer row is due in between (a lead it looked at and another writer
      changed meanwhile keeps such a row, see ``timer_writes``: it is looked at again first).

    Called inside the commit's transaction, under its lock on the events table, after the
    timers are written. Returns the clock position the commit records (``CLOCK_POSITION``),
    if it moves the clock."""
    earliest: datetime | None = kwargs.get("earliest_due")
    if earliest is not None and stored_clock is not None:
        position = stored_clock()
        if position is not None and earliest <= position:
            raise IntegrityError(f"{CLOCK_MOVED_ON} ({earliest.isoformat()}, "
                                 f"{position.isoformat()})")
    guard: tuple[datetime | None, datetime] | None = kwargs.get("clock_guard")
    if guard is None:
        return None
    if rows_due(guard[0] or EPOCH, guard[1]):
        raise IntegrityError(f"timers due by {guard[1].isoformat()} changed since the clock "
                             "read them")
    return guard[1]
