"""A rebuild's replay split among processes by lead (``Projector.rebuild``).

Almost every read-model row belongs to one lead: its ``lead_state``, ``lead_personal`` and
``lead_model_state`` rows, and its transitions and ledger rows (numbered within the
notification of the lead's event that made them). So the leads are dealt to forked
processes by the last byte of their id, modulo the number of parts (in SQL:
``select_part_rows``); each part replays its leads' events in notification order into the
fresh tables, exactly as one process replays them, and copies its own rows. Lead ids are
UUIDs (random, or a hash of an identity key), so their last bytes are evenly spread and the
parts get about equal work.

What sums over leads is merged here and written once: funnel counts and owner load add up.
An account's row comes from the account's own events, which every part reads (so each knows
which accounts exist at each moment, as one process does), and from its people's: their
engagements add up, the latest engagement wins, and the surges are counted once each by
their notification (an account's own surge is met by every part, a lead's by one), the
latest giving the row its time and window.

One thing is not confined to a lead: forgetting a person empties the rows of the leads that
were merged into theirs. A part notes every id a ``Forgotten`` event names outside its own
leads; if one of them is a lead (and not, say, an anonymous interest the person absorbed),
the replay is done again in one process. That is rare (the person must have been merged
across parts, then forgotten) and always right.

A part that fails is reported as one process would report it: an event or row that cannot
be projected raises ``ProjectionFailedError`` (the first in notification order among the
parts' replays, then among their written rows); a part that dies or meets anything else
makes the replay run again in one process, where the same error surfaces as it would have.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import structlog

from leadflow.projections.db import ProjectionDB
from leadflow.projections.decode import ProjectionFailedError
from leadflow.projections.events import TOPICS
from leadflow.projections.rows import _plus
from leadflow.projections.writer import Page, RowFailed

if TYPE_CHECKING:
    from leadflow.projections.projector import Projector

log = structlog.get_logger(__name__)

#: Topics every part reads: the accounts' own events (and their envelopes).
SHARED_TOPICS = [t for t in TOPICS if t.partition(":")[2].startswith("Account.")]
#: Events a part is worth starting for: a fork, its own app and connections (~0.3 s) against
#: ~25 µs an event.
MIN_EVENTS_PER_PART = 50_000
#: Most parts.
MAX_PARTS = 8
#: How often the parent looks at the parts' progress (seconds).
TICK = 0.2


class OneProcess(Exception):
    """The replay must be done in one process (the reason says why)."""


def part_of(lead_id: str, parts: int) -> int:
    """The part a lead id belongs to: its last byte modulo ``parts`` (as the SQL)."""
    return int(lead_id[-2:], 16) % parts


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parts_for(projector: Projector, workers: int | None, events: int) -> int:
    """How many processes replay: ``workers`` if given, else one per core (at most
    ``MAX_PARTS``) with ``MIN_EVENTS_PER_PART`` events each; one unless the event store and
    the read models are on PostgreSQL (others can open them) and this is Linux (forks)."""
    possible = (projector.db.dialect == "postgres"
                and hasattr(projector.app.indexes, "select_part_rows")
                and sys.platform.startswith("linux"))
    wanted = workers if workers is not None else \
        max(1, min(_cpus(), MAX_PARTS, events // MIN_EVENTS_PER_PART))
    if wanted > 1 and not possible:
        if workers is not None:
            log.info("rebuild replays in one process: parallel needs PostgreSQL (the event "
                     "store and the read models) on Linux", workers=workers)
        return 1
    return max(1, wanted)


class PartPage(Page):
    """One part's replay: a ``Page`` that notes each account surge by notification and the
    ids a ``Forgotten`` event names outside the part."""

    def __init__(self, db: ProjectionDB, suffix: str, half_life_days: float,
                 models: dict[str, tuple[float, float]], part: int, parts: int) -> None:
        super().__init__(db, suffix, half_life_days, models, replaying=True)
        self.part, self.parts = part, parts
        self.scratch = f"{suffix}_{part}"
        #: Each account's surges in notification order: (notification id, time, window).
        self.surges: dict[str, list[tuple[int, datetime, Any]]] = {}
        #: (id, notification id of the Forgotten event) of ids outside the part.
        self.foreign: list[tuple[str, int]] = []
        #: Events of the accounts' own met so far (every part meets them).
        self.shared_events = 0

    def _account(self, nid: int, account_id: str, kind: str, e: Any) -> None:
        self.shared_events += 1
        super()._account(nid, account_id, kind, e)

    def _surge(self, nid: int, account_id: str, row: dict[str, Any], e: Any) -> None:
        super()._surge(nid, account_id, row, e)
        self.surges.setdefault(account_id, []).append((nid, e.occurred_at, e.window_days))

    def _on_Forgotten(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        self.foreign += [(key, nid) for key in map(str, e.data_keys)
                         if part_of(key, self.parts) != self.part]
        super()._on_Forgotten(nid, row, e)


@dataclass
class PartDone:
    """What a part sends back once its rows are written: the totals to merge."""

    accounts: dict[str, dict[str, Any]]
    surges: dict[str, list[tuple[int, datetime, Any]]]
    funnel: Counter[tuple[str, str, str, str]]
    load: Counter[tuple[str, str]]
    last_event: dict[str, int]
    foreign: list[tuple[str, int]]
    events: int
    pages: int
    position: int


@dataclass(order=True)
class PartFailed:
    """An event or row a part could not project (``writing``: its rows, after its replay)."""

    writing: bool
    notification_id: int
    originator_id: str = field(compare=False)
    topic: str | None = field(compare=False)
    reason: str = field(compare=False)
    row: bool = field(compare=False)  # a row (RowFailed: the topic is looked up) or an event

    def error(self) -> Exception:
        if self.row:
            return RowFailed(self.notification_id, self.originator_id, self.reason)
        return ProjectionFailedError(self.notification_id, self.originator_id, self.topic,
                                     self.reason)


def replay(projector: Projector, state: Page, parts: int, page_size: int, total: int,
           progress: Callable[[int, int], None] | None) -> int:
    """Replay the store in ``parts`` forked processes into ``state``'s fresh tables; their
    totals are merged into ``state`` (written by the swap). Returns the last notification
    id replayed (stopped: where the slowest part was). Raises ``OneProcess`` when the replay
    must be done again in one process, ``RowFailed`` or ``ProjectionFailedError`` for what
    cannot be projected."""
    context = multiprocessing.get_context("fork")
    for stream in (sys.stdout, sys.stderr):  # nothing written yet is written twice
        with contextlib.suppress(Exception):
            stream.flush()
    helpers: list[tuple[Any, Any, Any]] = []
    try:
        for part in range(parts):
            receive, send = context.Pipe(duplex=False)
            counter = context.RawValue("q", 0)
            process = context.Process(
                target=_work, args=(projector, state.s, part, parts, total, page_size, send,
                                    counter, os.getpid()), daemon=True)
            process.start()
            send.close()
            helpers.append((process, receive, counter))
        results = _wait(projector, helpers, total, progress)
    finally:
        for process, receive, _ in helpers:
            receive.close()
            if process.is_alive():
                process.terminate()
            process.join()
    if results is None:  # stopped
        return min((int(c.value) for _, _, c in helpers), default=0)
    failed = sorted(r for r in results if isinstance(r, PartFailed))
    if failed:
        raise failed[0].error()
    done = [r for r in results if isinstance(r, PartDone)]
    _check_forgets(projector, state.s, done)
    _merge(state, done)
    projector.stats.events = sum(d.events for d in done)
    projector.stats.pages = max(d.pages for d in done)
    projector.stats.position = max(d.position for d in done)
    if progress:
        progress(projector.stats.position, total)
    return projector.stats.position


def _wait(projector: Projector, helpers: list[tuple[Any, Any, Any]], total: int,
          progress: Callable[[int, int], None] | None) -> list[PartDone | PartFailed] | None:
    """Each part's result, in part order; None when told to stop."""
    results: list[PartDone | PartFailed | None] = [None] * len(helpers)
    while any(r is None for r in results):
        if projector._stop.is_set():
            return None
        for index, (process, receive, _) in enumerate(helpers):
            if results[index] is not None:
                continue
            message: tuple[str, Any] | None
            try:
                ready = receive.poll(TICK / len(helpers))
                message = receive.recv() if ready else None
            except (EOFError, OSError):
                message = ("died", _exit(process))
            if message is None:
                if process.is_alive() or receive.poll():
                    continue
                message = ("died", _exit(process))
            if projector._stop.is_set():  # a Ctrl-C reaches the parts too: they die of it
                return None
            kind, body = cast("tuple[str, Any]", message)
            if kind in ("done", "failed"):
                results[index] = body
            else:
                raise OneProcess(f"part {index} of {len(helpers)}: {body}")
        if progress:
            progress(min(int(c.value) for _, _, c in helpers), total)
    return [r for r in results if r is not None]


def _exit(process: Any) -> str:
    process.join(5)  # its pipe closes as it exits, a moment before its exit code is known
    return f"exit code {process.exitcode}"


def _work(projector: Projector, suffix: str, part: int, parts: int, stop: int,
          page_size: int, conn: Any, counter: Any, parent: int) -> None:
    """A part's process: its own app and connections (none of the parent's is used), its
    leads replayed and written, the totals sent back."""
    for sig in (signal.SIGTERM, signal.SIGINT):  # the parent stops a part by terminating it
        signal.signal(sig, signal.SIG_DFL)
    gc.disable()  # as the parent's replay (Projector.rebuild)
    message: tuple[str, Any]
    try:
        message = _replay_part(projector, suffix, part, parts, stop, page_size, counter,
                               parent)
    except BaseException as exc:  # told to the parent, which replays in one process then
        message = ("error", f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(Exception):  # the parent is gone: nothing to tell
        conn.send(message)
    with contextlib.suppress(Exception):
        conn.close()


def _replay_part(projector: Projector, suffix: str, part: int, parts: int, stop: int,
                 page_size: int, counter: Any, parent: int) -> tuple[str, PartDone | PartFailed]:
    from leadflow.engine.app import LeadflowApp

    env = {**projector.app.env, "CREATE_TABLE": "no", "LEADFLOW_CREATE_TABLE": "no"}
    app = LeadflowApp(env=env, rules=projector.app.rules)
    db = ProjectionDB(projector.db.url)
    try:
        mine = type(projector)(app, db)
        state = PartPage(db, suffix, app.rules.scoring.half_life_days,
                         {model_id: (model.half_life_days, model.threshold)
                          for model_id, model in app.rules.models.items()}, part, parts)
        indexes: Any = app.indexes

        def select(start: int, size: int, topics: list[str]) -> list[Any]:
            return list(indexes.select_part_rows(start, stop, size, topics, SHARED_TOPICS,
                                                 part, parts))

        def step(position: int, _: int) -> None:
            counter.value = position
            if os.getppid() != parent:  # the parent died: its rebuild is over
                raise SystemExit(1)

        writing = False
        try:
            mine._replay(state, page_size, stop, step, select)
            writing = True
            with db.transaction():
                state.write_leads()
        except ProjectionFailedError as exc:
            return "failed", PartFailed(writing, exc.notification_id, exc.originator_id,
                                        exc.topic, exc.reason, row=False)
        except RowFailed as exc:
            return "failed", PartFailed(writing, exc.notification_id, str(exc.originator_id),
                                        None, exc.reason, row=True)
        counter.value = mine.stats.position
        shared = set(state.accounts)
        return "done", PartDone(
            accounts=state.accounts, surges=state.surges, funnel=state.funnel,
            load=state.open_load(),
            last_event={k: v for k, v in state.last_event.items() if k in shared},
            foreign=state.foreign,
            # Every part reads the accounts' own events: the first counts them.
            events=mine.stats.events - (state.shared_events if part else 0),
            pages=mine.stats.pages, position=mine.stats.position)
    finally:
        db.close()
        app.close()


def _check_forgets(projector: Projector, suffix: str, done: list[PartDone]) -> None:
    """A Forgotten event that named a lead of another part: one process must replay."""
    foreign = sorted({key for d in done for key, _ in d.foreign})
    if not foreign:
        return
    found = projector.db.query(f"SELECT lead_id FROM lead_state{suffix} "
                               "WHERE lead_id = ANY(%s)", [foreign])
    if found:
        raise OneProcess(f"a forgotten person's merged lead {found[0]['lead_id']} was "
                         "replayed by another part")


def _merge(state: Page, done: list[PartDone]) -> None:
    """The parts' totals into ``state`` (which holds no lead)."""
    for d in done:
        state.funnel.update(d.funnel)
        state.other_load.update(d.load)
        for key, nid in d.last_event.items():
            state.last_event[key] = max(nid, state.last_event.get(key, 0))
        for account_id, row in d.accounts.items():
            merged = state.accounts.get(account_id)
            if merged is None:
                state.accounts[account_id] = dict(row, surges=0, last_surge_at=None,
                                                  surge_window_days=None)
                continue
            merged["engagements"] = _plus(merged["engagements"], row["engagements"])
            if row["last_engaged_at"] is not None and (
                    merged["last_engaged_at"] is None
                    or row["last_engaged_at"] > merged["last_engaged_at"]):
                merged["last_engaged_at"] = row["last_engaged_at"]
    # Each surge once, by (notification id, its rank among the surges of that notification):
    # the same in every part that met it.
    surges: dict[str, dict[tuple[int, int], tuple[datetime, Any]]] = {}
    for d in done:
        for account_id, noted in d.surges.items():
            mine = surges.setdefault(account_id, {})
            ranks: Counter[int] = Counter()
            for nid, at, window in noted:
                mine[(nid, ranks[nid])] = (at, window)
                ranks[nid] += 1
    for account_id, by_key in surges.items():
        row = state.accounts[account_id]
        row["surges"] = len(by_key)
        row["last_surge_at"], row["surge_window_days"] = by_key[max(by_key)]
