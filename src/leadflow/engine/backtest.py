"""Rules backtesting: replay each lead's recorded touchpoints under two rule sets.

``run_backtest`` is what `leadflow rescore` computes: for every live lead, when it would
have become MQL under the current rules and under a candidate, compared with what the
recorded history says happened next (SQL, customer). It only reads the store; publishing a
candidate is ``LeadflowApp.publish_rules``.

How it stays fast (issue 12: ~10,000 -> see the README's Performance section). Each lead's
rows are read in bulk (``_Reader.read``: one query per ``PRELOAD`` leads) and, instead of
replaying a whole ``Lead`` aggregate, folded into the few things a backtest needs
(``_fold``): its key, creation time, profile, stage, the stages it reached, whether it is
merged away, and its touchpoints. The fold reads the rows as parsed by orjson, with only the
fields it reads decoded (``backtest_rows.RowDecoder``), not as domain events; the anonymous
interests the leads absorbed are read in one query per chunk and folded the same way
(``_add_interests``). Anything the fold does not know for sure (a row the decoder is unsure
of, an event class it does not handle, a missing field, a version gap, a lead that absorbed
another lead) goes the general way, exactly as before: the rows made events as the
Auditor's ``preload`` makes them, its replay and ``touchpoints``, with the interests read
ahead in bulk (``_Reader``). The scoring itself runs on rules compiled once per rule set
(``_Compiled``), with the same arithmetic, in the same order, as ``leadflow.domain.scoring``,
so every score and MQL moment is bit-for-bit the one the domain's functions give
(tests/unit/test_backtest_fast.py compares both on generated stores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast
from uuid import UUID

import structlog
from eventsourcing.domain import decorated_funcs
from eventsourcing.persistence import PersistenceError, StoredEvent
from eventsourcing.utils import resolve_topic

from leadflow.domain import STAGES, Interest, Lead
from leadflow.domain.rules import EngagementRule, FitRule, Model, Rules
from leadflow.engine.app import LeadflowApp
from leadflow.engine.auditor import Auditor, stored_lead_ids
from leadflow.engine.backtest_rows import Pair, RowDecoder
from leadflow.engine.unit import INFRASTRUCTURE_ERRORS
from leadflow.engine.views import finite

log = structlog.get_logger(__name__)

#: Leads whose events are read in one query during a backtest.
PRELOAD = 500

#: A touchpoint as the scoring loop reads it: (occurred_at, event_id, type, context).
Touch = tuple[datetime, str, str, Mapping[str, Any]]


def run_backtest(app: LeadflowApp, candidate: Rules, *, since: datetime | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 model: str | None = None) -> dict[str, Any]:
    """Backtest ``candidate`` against the app's current rules over every live lead (created
    at or after ``since``, when given); writes nothing.

    ``model`` backtests one named model (``[models.<id>]`` of ``candidate``) instead of the
    primary one, against the current rules' model of that id (none: a new model, which no
    lead has crossed yet): when each lead first reaches the model's threshold, and its score
    after its last touchpoint, under both (``compare`` with ``moment="crossed"``).

    The result is ``compare``'s report plus ``unloadable_leads``: leads whose stored events
    cannot be read or loaded are left out and named, never the end of the backtest (only
    the database failing is). ``progress(done, total)`` is called as leads are taken up (a
    few hundred at a time).

    On a store other processes can open (a SQLite file, PostgreSQL) with enough leads, the
    leads' chunks (``PRELOAD`` leads each) are dealt round-robin to this process and forked
    worker processes (``_workers``): older leads have longer histories, so contiguous halves
    would not be equal work. The chunks' results are then taken in lead order, so the report
    is the one a single process makes. The chunks of a worker that fails in any way are
    read again here.
    """
    old, new = Backtest(app.rules), Backtest(candidate)
    lead_ids, unreadable = stored_lead_ids(app)
    scores: dict[str, tuple[float | None, float | None]] = {}
    unloadable = [str(p["lead_id"]) for p in unreadable]
    total = len(lead_ids)
    if progress is not None:
        progress(0, total)
    chunks = [lead_ids[i:i + PRELOAD] for i in range(0, total, PRELOAD)]
    processes = _workers(app, total)
    dealt = [chunks[p::processes] for p in range(processes)]
    job = _Job(app.rules, candidate, since, model)
    with _fewer_collections():
        helpers = [_Helper.start(app, job, hand) for hand in dealt[1:]]
        try:
            mine = 0

            def step(done: int) -> None:
                nonlocal mine
                mine = done
                if progress is not None:
                    progress(done + sum(h.done for h in helpers if h), total)

            results = [job.run(app, dealt[0], step)]
            for helper, hand in zip(helpers, dealt[1:], strict=True):
                got = helper.wait(lambda: step(mine)) if helper else None
                results.append(got if got is not None else job.run(app, hand))
        finally:
            for helper in helpers:
                if helper:
                    helper.stop()
    if progress is not None:
        progress(total, total)
    outcomes: dict[str, set[str]] = {"sql": set(), "customer": set()}
    stages: dict[str, str] = {}
    for index in range(len(chunks)):  # in lead order: chunk i went to process i % processes
        for lead_id, found in zip(chunks[index], results[index % processes][index // processes],
                                  strict=True):
            if found is None:
                continue
            if isinstance(found, _Left):
                unloadable.append(found.lead)
                log.warning("lead left out of the backtest: its stored events cannot be "
                            "loaded", lead=found.lead, error=found.error)
                continue
            # A forgotten person's lead has no key left (forget erased it): named by its id,
            # as every command that takes an IDENTITY reads it.
            key = found.key if found.key is not None else f"lead:{lead_id}"
            old.mql_at[key] = found.mql_current
            new.mql_at[key] = found.mql_new
            if found.sql:
                outcomes["sql"].add(key)
            if found.customer:
                outcomes["customer"].add(key)
            stages[key] = found.stage
            if model is not None:
                scores[key] = (found.score_current, found.score_new)
    if model is None:
        result = compare(old, new, outcomes, stages)
    else:
        result = compare(old, new, outcomes, stages, moment="crossed", scores=scores)
        current = app.rules.models.get(model)
        result["model"] = model
        result["threshold"] = {"current": current.threshold if current else None,
                               "new": candidate.models[model].threshold}
    result["unloadable_leads"] = unloadable
    return result


class _Left(NamedTuple):
    """A lead left out: its stored events cannot be loaded."""

    lead: str
    error: str


class _Done(NamedTuple):
    """A lead backtested: its MQL moment under the current and the new rules, its recorded
    stage, whether it reached SQL (or later) and customer; for a named model's backtest,
    the moments it first reaches the model's threshold and its score after its last
    touchpoint under both (None: no such model, or no touchpoint)."""

    key: str
    mql_current: datetime | None
    mql_new: datetime | None
    stage: str
    sql: bool
    customer: bool
    score_current: float | None = None
    score_new: float | None = None


#: One lead's result; None for a lead not backtested (merged away, before ``since``).
Result = _Done | _Left | None


class _Job:
    """The backtest of some of the leads (in this process or a worker)."""

    def __init__(self, current: Rules, candidate: Rules, since: datetime | None,
                 model: str | None = None) -> None:
        self.current, self.candidate, self.since = current, candidate, since
        self.model = model

    def run(self, app: Any, chunks: Sequence[Sequence[UUID]],
            step: Callable[[int], None] | None = None) -> list[list[Result]]:
        """Each chunk's results, lead by lead; ``step(leads done)`` after each chunk."""
        if self.model is not None:
            return self._run(app, chunks, step, self._model_lead())
        old, new = _Compiled(self.current), _Compiled(self.candidate)
        both = (old.threshold, new.threshold) if old.same_scores(new) else None

        def lead(found: Found) -> _Done:
            key, profile, touches, stage, reached = found
            if both is not None:
                current, candidate = old.mql_at(profile, touches, both)
            else:
                current = old.mql_at(profile, touches)[0]
                candidate = new.mql_at(profile, touches)[0]
            return _Done(key, current, candidate, stage, bool(reached & _SQL_OR_LATER),
                         "customer" in reached)

        return self._run(app, chunks, step, lead)

    def _model_lead(self) -> Callable[[Found], _Done]:
        """A lead's backtest for the named model ``self.model``."""
        assert self.model is not None
        current = self.current.models.get(self.model)
        old = _Compiled(current) if current is not None else None
        new = _Compiled(self.candidate.models[self.model])

        def lead(found: Found) -> _Done:
            key, profile, touches, stage, reached = found
            before, score_before = old.crossing(profile, touches) if old else (None, None)
            after, score_after = new.crossing(profile, touches)
            return _Done(key, before, after, stage, bool(reached & _SQL_OR_LATER),
                         "customer" in reached, score_before, score_after)

        return lead

    def _run(self, app: Any, chunks: Sequence[Sequence[UUID]],
             step: Callable[[int], None] | None,
             lead: Callable[[Found], _Done]) -> list[list[Result]]:
        reader = _Reader(app)
        results: list[list[Result]] = []
        done = 0
        for chunk in chunks:
            out: list[Result] = []
            results.append(out)
            for lead_id, found in zip(chunk, _read_chunk(reader, chunk, self.since),
                                      strict=True):
                if found is None:
                    out.append(None)
                elif isinstance(found, Exception):
                    out.append(_Left(str(lead_id), f"{type(found).__name__}: {found}"))
                else:
                    out.append(lead(found))
            done += len(chunk)
            if step is not None:
                step(done)
        return results


#: Leads a worker process is worth starting for: one starts in ~0.06 s (the fork, its own
#: app and connection, while this process reads its first chunk), and a lead takes ~0.3 ms.
MIN_LEADS_PER_WORKER = 1_000
#: Most worker processes (this one included).
MAX_WORKERS = 8


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _workers(app: Any, leads: int) -> int:
    """How many processes read the leads: one unless other processes can open the store
    (not an in-memory one), this is Linux (the workers are forked) and the leads are many."""
    env = getattr(app, "env", None) or {}
    module = env.get("PERSISTENCE_MODULE", "")
    if module == "eventsourcing.sqlite":
        name = env.get("SQLITE_DBNAME", "")
        shared = bool(name) and ":memory:" not in name and "mode=memory" not in name
    else:
        shared = module == "eventsourcing.postgres"
    if not shared or not sys.platform.startswith("linux"):  # fork: safe on Linux
        return 1
    return max(1, min(_cpus(), MAX_WORKERS, leads // MIN_LEADS_PER_WORKER))


class _Helper:
    """A forked worker process backtesting some of the leads with its own app (its own
    database connections: none of this process's is used in it)."""

    def __init__(self, process: Any, conn: Any, counter: Any) -> None:
        self.process, self.conn, self.counter = process, conn, counter

    @classmethod
    def start(cls, app: Any, job: _Job, chunks: Sequence[Sequence[UUID]]) -> _Helper | None:
        """The worker for ``chunks``, started; None when none can be (this process reads
        them then)."""
        context = multiprocessing.get_context("fork")
        for stream in (sys.stdout, sys.stderr):  # nothing written yet is written twice
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            receive, send = context.Pipe(duplex=False)
            counter = context.RawValue("q", 0)
            process = context.Process(target=_work, args=(dict(app.env), job, chunks, send,
                                                          counter), daemon=True)
            process.start()
        except Exception as exc:  # e.g. in a daemon process, which may have no children
            log.info("backtest worker not started; its leads are read in the main process",
                     error=f"{type(exc).__name__}: {exc}")
            return None
        send.close()
        return cls(process, receive, counter)

    @property
    def done(self) -> int:
        return int(self.counter.value)

    def wait(self, tick: Callable[[], None]) -> list[list[Result]] | None:
        """The chunks' results; None when the worker failed (they are then read here)."""
        try:
            while not self.conn.poll(0.2):
                tick()
                if not self.process.is_alive() and not self.conn.poll():
                    return None
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            return None
        if kind != "ok":
            log.info("backtest worker failed; its leads are read in the main process",
                     error=payload)
            return None
        return cast(list[list[Result]], payload)

    def stop(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()


def _work(env: dict[str, str], job: _Job, chunks: Sequence[Sequence[UUID]], conn: Any,
          counter: Any) -> None:
    """A worker process: its own app on the same store, the job, the results sent back."""
    message: tuple[str, Any]
    try:
        # The store's tables exist (the parent opened it): no DDL round trips again.
        env = {**env, "CREATE_TABLE": "no", "LEADFLOW_CREATE_TABLE": "no"}
        app = LeadflowApp(env=env, rules=job.current)
        try:
            def step(done: int) -> None:
                counter.value = done

            message = ("ok", job.run(app, chunks, step))
        finally:
            app.close()
    except BaseException as exc:  # told to the parent, which then reads the chunks itself
        message = ("failed", f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(Exception):  # the parent is gone (interrupted): nothing to tell
        conn.send(message)
    with contextlib.suppress(Exception):
        conn.close()


_SQL_OR_LATER = frozenset({"sql", "opportunity", "customer"})

#: What a backtest takes from one lead: key, profile, touchpoints in order, stage, the
#: stages it ever reached.
Found = tuple[str, dict[str, Any], list[Touch], str, set[str]]
#: The same from the lead's own events, its touchpoints (None) left to the Auditor.
Folded = tuple[str, dict[str, Any], list[Touch] | None, str, set[str]]


# ------------------------------------------------------------------------- reading leads


class _Reader(Auditor):
    """The Auditor, with anonymous interests read ahead in bulk.

    ``touchpoints`` reads the interests a lead absorbed one by one. While ``collecting``, an
    interest not read ahead is noted in ``missing`` and taken as empty (the caller then reads
    the noted ones in one query and asks again); an interest asked for once more after that
    is read as the Auditor reads it, so one that cannot be read is named as before.
    """

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._bulk = Auditor(app)
        self.ahead: dict[UUID, list[Any]] = {}
        self.tried: set[UUID] = set()
        self.missing: list[UUID] = []
        self.collecting = False
        self.rows: dict[UUID, list[StoredEvent]] = {}
        self.decoder = RowDecoder(app, _READS)

    def read(self, chunk: Sequence[UUID]) -> None:
        """``preload``, with each lead's rows made events only when they are asked for
        (``events``): most leads are folded from their rows (``_fold_rows``)."""
        self._preloaded = {}
        self.rows = self.app.codec.select_many(list(chunk))

    def events(self, lead_id: UUID, kind: str = "lead") -> list[Any]:
        if lead_id not in self._preloaded:
            rows = self.rows.get(lead_id)
            if rows is not None:  # as ``preload`` keeps it
                decoded = self.decoded(rows)
                if decoded is not None:
                    self._preloaded[lead_id] = decoded
        if kind != "lead":
            found = self.ahead.get(lead_id)
            if found is not None:
                return found
            if self.collecting and lead_id not in self.tried:
                self.missing.append(lead_id)
                return []
        return super().events(lead_id, kind)

    def read_ahead(self, ids: Sequence[UUID], kind: str) -> None:
        """Read ``ids`` (interests) in one query; one that cannot be read is left to be read
        (and named) where it is asked for."""
        fresh = [i for i in dict.fromkeys(ids) if i not in self.tried]
        self.tried.update(fresh)
        self._bulk.preload(fresh)
        for aggregate_id in fresh:
            try:
                self.ahead[aggregate_id] = self._bulk.events(aggregate_id, kind)
            except PersistenceError:
                raise
            except Exception:  # damaged: read again, and named, where it is asked for
                continue

    def forget(self) -> None:
        self.ahead, self.tried, self.missing = {}, set(), []

    def fold(self, lead_id: UUID, since: datetime | None, interests: list[Absorbing]
             ) -> Folded | _Marker | None:
        """``_fold`` of the lead's events, from its rows when they can be read without
        making events (``RowDecoder``: the interests it absorbed are then noted in
        ``interests``), else from its events."""
        pairs = self._pairs(self.rows.get(lead_id))
        if pairs is not None:
            return _fold(pairs, since, interests)
        return _fold([(type(e), e.__dict__) for e in self.events(lead_id)], since)

    def _pairs(self, rows: list[StoredEvent] | None) -> list[Pair] | None:
        if not rows:
            return None
        try:
            return self.decoder.pairs(rows)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception:  # read the Auditor's way: it says what is wrong
            return None

    def read_members(self, lead_ids: Sequence[UUID]) -> None:
        """The rows of the leads merged into ``lead_ids`` (one level down), read in one
        query: ``family`` then finds them here instead of reading each alone."""
        members: list[UUID] = []
        for lead_id in lead_ids:
            try:
                events = self.events(lead_id)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception:  # unloadable: named where it is read again
                continue
            for event in events:
                member = event.__dict__.get("lead_id") if type(event) is _ABSORBED else None
                if type(member) is UUID and member not in self.rows:
                    members.append(member)
        if members:
            self.rows.update(self.app.codec.select_many(list(dict.fromkeys(members))))

    def interest_touches(self, ids: Sequence[UUID]) -> dict[UUID, list[Touch] | None]:
        """The touchpoints each interest noted, read in one query, folded from its rows
        (``_interest_touches``); None for one that must be read the Auditor's way."""
        rows = self.app.codec.select_many(list(ids))
        out: dict[UUID, list[Touch] | None] = {}
        for interest_id in ids:
            pairs = self._pairs(rows.get(interest_id))
            try:
                out[interest_id] = _interest_touches(pairs) if pairs is not None else None
            except Exception:  # whatever the fold is not sure of
                out[interest_id] = None
        return out


def _read_chunk(reader: _Reader, chunk: Sequence[UUID], since: datetime | None
                ) -> list[Found | Exception | None]:
    """What the backtest takes from each lead of ``chunk``, in order: None for a lead it
    skips (merged away, created before ``since``), the error for one that cannot be loaded."""
    reader.read(chunk)
    reader.forget()
    out: list[Found | Exception | None] = []
    gather: list[tuple[int, Folded]] = []  # leads whose touchpoints the Auditor gathers
    pending: list[tuple[int, Folded, list[Absorbing]]] = []  # and those of interests
    for lead_id in chunk:
        interests: list[Absorbing] = []
        try:
            folded = reader.fold(lead_id, since, interests)
        except PersistenceError:
            raise
        except Exception:  # whatever the fold is not sure of: the general way, below
            folded = _GENERAL
        if isinstance(folded, _Marker):
            out.append(_general(reader, lead_id, since))
        elif folded is None:
            out.append(None)
        else:
            key, profile, touches, stage, reached = folded
            if touches is None:
                gather.append((len(out), folded))
                out.append(None)
            elif interests:
                pending.append((len(out), folded, interests))
                out.append(None)
            else:
                out.append((key, profile, touches, stage, reached))
    if pending:
        _add_interests(reader, pending, gather, out)
    if gather:
        gather.sort(key=_first)
        _gather(reader, chunk, gather, out)
    return out


def _first(item: tuple[int, Folded]) -> int:
    return item[0]


def _add_interests(reader: _Reader, pending: list[tuple[int, Folded, list[Absorbing]]],
                   gather: list[tuple[int, Folded]], out: list[Found | Exception | None]
                   ) -> None:
    """The leads that absorbed anonymous interests, with the touchpoints the Auditor would
    add (``Auditor.touchpoints``: an interest's touchpoints the absorbing event names, where
    that event is, then all in time order); the interests are read in one query. A lead with
    an interest that must be read the Auditor's way goes to ``gather``."""
    found = reader.interest_touches(
        list(dict.fromkeys(i for _, _, interests in pending for _, i, _ in interests)))
    for position, folded, interests in pending:
        key, profile, touches, stage, reached = folded
        assert touches is not None
        merged: list[Touch] = []
        start = 0
        try:
            for at, interest_id, event_ids in interests:
                noted = found[interest_id]
                if noted is None:
                    raise LookupError(interest_id)
                wanted = set(event_ids)
                merged += touches[start:at]
                merged += [touch for touch in noted if touch[1] in wanted]
                start = at
        except Exception:  # the Auditor's way: it says what is wrong
            gather.append((position, folded))
            continue
        merged += touches[start:]
        merged.sort(key=_when)
        out[position] = (key, profile, merged, stage, reached)


def _general(reader: _Reader, lead_id: UUID, since: datetime | None
             ) -> Found | Exception | None:
    """One lead, read exactly as the backtest always did: its replayed aggregate and the
    Auditor's touchpoints (merged leads and absorbed interests included)."""
    try:
        lead: Any = reader.replay(reader.events(lead_id))
        if not isinstance(lead, Lead) or lead.merged_into is not None:
            return None
        if since is not None and lead.created_at < since:
            return None
        touches = _touches(reader.touchpoints(lead_id))
    except PersistenceError:
        raise
    except Exception as exc:  # a damaged lead is left out, not the whole backtest
        return exc
    key: Any = lead.primary_key
    return key, lead.profile, touches, lead.stage, set(lead.first_reached)


def _gather(reader: _Reader, chunk: Sequence[UUID], leads: list[tuple[int, Folded]],
            out: list[Found | Exception | None]) -> None:
    """The touchpoints of the leads of ``chunk`` that absorbed a lead or anonymous interest,
    as the Auditor gathers them (``touchpoints``), with the interests they name read in one
    query: a first pass notes them, a second asks again for the leads that named any."""
    reader.read_members([chunk[position] for position, _ in leads])
    reader.collecting = True
    reader.missing = []
    try:
        waiting = []
        for position, folded in leads:
            asked = len(reader.missing)
            out[position] = _with_touches(reader, chunk[position], folded)
            if len(reader.missing) > asked:
                waiting.append((position, folded))
        if waiting:
            reader.read_ahead(reader.missing, "interest")
            for position, folded in waiting:  # each interest is read ahead or tried now
                out[position] = _with_touches(reader, chunk[position], folded)
    finally:
        reader.collecting = False
        reader.missing = []


def _with_touches(reader: _Reader, lead_id: UUID, folded: Folded) -> Found | Exception:
    try:
        touches = _touches(reader.touchpoints(lead_id))
    except PersistenceError:
        raise
    except Exception as exc:  # a damaged lead is left out, not the whole backtest
        return exc
    key, profile, _, stage, reached = folded
    return key, profile, touches, stage, reached


def _touches(touchpoints: Sequence[dict[str, Any]]) -> list[Touch]:
    return [(tp["occurred_at"], tp["event_id"], tp["type"], tp["context"])
            for tp in touchpoints]


# The fold: what a backtest needs of a lead, from its events, without the aggregate.

class _Marker:
    pass


_GENERAL = _Marker()

def _event(name: str, aggregate: type = Lead) -> type:
    """A lead (or ``aggregate``) event class (the ones made by ``@event`` are not known to
    the type checker)."""
    cls: type = getattr(aggregate, name)
    return cls


_CREATED = _event("Created")
_TOUCHED = _event("TouchpointScored")
_STAGE = _event("StageChanged")
_PROFILE = _event("ProfileUpdated")
_MERGED = _event("MergedInto")
_UNMERGED = _event("Unmerged")
_ABSORBED = _event("Absorbed")
_INTEREST_ABSORBED = _event("InterestAbsorbed")
#: Events after which the Auditor gathers the touchpoints (other leads', interests').
_ABSORBING = (_ABSORBED, _INTEREST_ABSORBED)
_INTEREST_CREATED = _event("Created", Interest)
_NOTED = _event("TouchpointNoted", Interest)
_LINKED = _event("LinkedToLead", Interest)
#: An interest a lead absorbed, as the fold notes it: where its touchpoints go among the
#: lead's, its id, the ids of the records of it the lead took.
Absorbing = tuple[int, UUID, Any]
#: Events that change nothing a backtest reads (replayed, they only change other state).
_OTHERS = ("IdentityAdded", "AccountSet", "Boosted", "AccountSurged", "DispositionRecorded",
           "OwnerAssigned", "LoadRecounted", "WakeScheduled", "FirstContactSlaBreached",
           "FirstContactMade", "DealOwnerSet", "WentDormant", "ModelsScored",
           "ModelThresholdCrossed", "ModelBackfilled")


def _fields_needed(cls: type) -> frozenset[str]:
    """The fields an event of ``cls`` must hold for its replay not to fail: all its
    dataclass fields but the ones its decorated method gives a default."""
    names = {f.name for f in dataclasses.fields(cls)}
    method = (Lead.__init__ if cls is _CREATED else Interest.__init__
              if cls is _INTEREST_CREATED else decorated_funcs.get(cls))
    if method is not None:
        names -= {p.name for p in inspect.signature(method).parameters.values()
                  if p.default is not inspect.Parameter.empty}
    return frozenset(names)


_NEEDED: dict[type, frozenset[str]] = {
    cls: _fields_needed(cls)
    for cls in (_CREATED, _TOUCHED, _STAGE, _PROFILE, _MERGED, _UNMERGED, *_ABSORBING,
                *(getattr(Lead, name, None) for name in _OTHERS)) if cls is not None
}
_INTEREST_NEEDED = {cls: _fields_needed(cls) for cls in (_INTEREST_CREATED, _NOTED, _LINKED)}
_LEAD_TOPICS: dict[str, bool] = {}


def _is_lead_topic(topic: str) -> bool:
    known = _LEAD_TOPICS.get(topic)
    if known is None:
        known = _LEAD_TOPICS[topic] = resolve_topic(topic) is Lead
    return known


#: The fields ``_fold`` reads of each event class (``RowDecoder`` untags only these).
_READS: dict[type, tuple[str, ...]] = {
    _CREATED: ("originator_topic", "primary_key", "created_at"),
    _TOUCHED: ("occurred_at", "event_id", "record_type", "context"),
    _STAGE: ("to_stage",),
    _PROFILE: ("changes",),
    _MERGED: ("survivor_id",),
    _ABSORBED: ("profile",),
    _INTEREST_ABSORBED: ("interest_id", "event_ids"),
    _INTEREST_CREATED: ("originator_topic",),
    _NOTED: ("occurred_at", "event_id", "record_type", "context"),
}


def _fold(events: Sequence[Pair], since: datetime | None,
          interests: list[Absorbing] | None = None) -> Folded | _Marker | None:
    """A lead's backtest input from its events alone (each as its class and ``__dict__``),
    as replaying them gives it; None for a lead the backtest skips; no touchpoints (None)
    for one that absorbed another lead or an interest (they are the Auditor's to gather);
    ``_GENERAL`` (or any exception) for anything else the fold is not sure of.

    With ``interests``, an interest absorbed (and named by its id) is noted there instead,
    with where its touchpoints go among the lead's: the touchpoints are then left unsorted,
    for the caller to add the interest's and sort them all (``_add_interests``)."""
    needed = _NEEDED
    cls, data = events[0]
    if cls is not _CREATED or not needed[_CREATED] <= data.keys() or \
            not _is_lead_topic(data["originator_topic"]):
        return _GENERAL
    version = data["originator_version"]
    key, created_at = data["primary_key"], data["created_at"]
    stage = "new"
    reached = {"new"}
    profile: dict[str, Any] = {}
    merged = False
    absorbed = False
    touches: list[Touch] = []
    for cls, data in events[1:]:
        version += 1
        wants = needed.get(cls)
        if wants is None or data["originator_version"] != version or \
                not wants <= data.keys():
            return _GENERAL
        if cls is _TOUCHED:
            touches.append((data["occurred_at"], data["event_id"], data["record_type"],
                            data["context"]))
        elif cls is _STAGE:
            stage = data["to_stage"]
            reached.add(stage)
        elif cls is _PROFILE:
            profile.update(data["changes"])
        elif cls is _MERGED:
            merged = data["survivor_id"] is not None
        elif cls is _UNMERGED:
            merged = False
        elif cls in _ABSORBING:
            if cls is _INTEREST_ABSORBED and interests is not None and \
                    type(data.get("interest_id")) is UUID:
                interests.append((len(touches), data["interest_id"], data["event_ids"]))
                continue
            absorbed = True
            if cls is _ABSORBED:
                if type(data["profile"]) is not dict:
                    return _GENERAL
                profile = dict(data["profile"])
    if merged or (since is not None and created_at < since):
        return None
    if absorbed:
        return key, profile, None, stage, reached
    if not interests:
        touches.sort(key=_when)
    return key, profile, touches, stage, reached


def _interest_touches(events: Sequence[Pair]) -> list[Touch] | None:
    """The touchpoints an anonymous interest noted, in order, from its events as replaying
    them gives ``Interest.touchpoints``; None for anything the fold is not sure of (a
    forgotten interest's are rewritten: the Auditor reads those)."""
    needed = _INTEREST_NEEDED
    cls, data = events[0]
    if cls is not _INTEREST_CREATED or not needed[cls] <= data.keys() or \
            resolve_topic(data["originator_topic"]) is not Interest:
        return None
    version = data["originator_version"]
    touches: list[Touch] = []
    for cls, data in events[1:]:
        version += 1
        wants = needed.get(cls)
        if wants is None or data["originator_version"] != version or not wants <= data.keys():
            return None
        if cls is _NOTED:
            touches.append((data["occurred_at"], data["event_id"], data["record_type"],
                            data["context"]))
    return touches


def _when(touch: Touch) -> tuple[datetime, str]:
    return touch[0], touch[1]


# ------------------------------------------------------------------------- scoring


@dataclass
class Backtest:
    """MQL timing and predictive quality of one rule set over recorded touchpoints."""

    rules: Rules
    mql_at: dict[str, datetime | None] = field(default_factory=dict)
    _compiled: _Compiled | None = field(default=None, repr=False, compare=False)

    def simulate(self, lead_key: str, profile: dict[str, Any],
                 touchpoints: Sequence[dict[str, Any]]) -> None:
        """``run`` for touchpoints as the Auditor gives them (dicts, in order)."""
        self.run(lead_key, profile, _touches(touchpoints))

    def run(self, lead_key: str, profile: Mapping[str, Any],
            touches: Sequence[Touch]) -> None:
        """When the lead would have become MQL under these rules: the first touchpoint after
        which its score (fit + engagement, as ``leadflow.domain.scoring`` computes it) reaches
        the threshold; None when none does."""
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = _Compiled(self.rules)
        self.mql_at[lead_key] = compiled.mql_at(profile, touches)[0]


def _decay(value: float, as_of: datetime, when: datetime, half_life_s: float) -> float:
    # scoring.decayed for an as_of that is set
    if value == 0.0:
        return value
    seconds = (when - as_of).total_seconds()
    if seconds <= 0:
        return value
    return value * float(2.0 ** (-seconds / half_life_s))


class _Test:
    """A compiled engagement condition (``rules.Condition``): lower-case text tests."""

    __slots__ = ("among", "contains", "equals", "field", "prefix", "property")

    def __init__(self, field: str, equals: str | None, contains: str | None,
                 prefix: str | None, among: frozenset[str] | None) -> None:
        self.field, self.equals, self.contains = field, equals, contains
        self.prefix, self.among = prefix, among
        # ``properties.<key>``: the record's custom property (``Condition.matches``).
        self.property = field[11:] if field.startswith("properties.") else None

    def matches(self, context: Mapping[str, Any]) -> bool:
        if self.property is None:
            value = context.get(self.field)
        else:
            properties = context.get("properties")
            value = properties.get(self.property) if isinstance(properties, Mapping) else None
            if isinstance(value, bool):
                value = "true" if value else "false"
        if value is None:
            return False
        text = str(value).lower()
        if self.equals is not None:
            return text == self.equals
        if self.contains is not None:
            return self.contains in text
        if self.prefix is not None:
            return text.startswith(self.prefix)
        return self.among is not None and text in self.among


class _Rule:
    """A compiled engagement rule: what ``scoring.score_touchpoint`` reads of it."""

    __slots__ = ("cap", "expires", "id", "points", "rule", "tests")

    def __init__(self, rule: EngagementRule) -> None:
        self.id = rule.id
        self.tests = tuple(
            _Test(c.field, _lower(c.equals), _lower(c.contains), _lower(c.prefix),
                  frozenset(v.lower() for v in c.in_ or ()) if c.in_ is not None else None)
            for c in rule.when)
        self.points = rule.points  # None: banded (``rule.band_total``)
        self.rule = rule
        self.cap = rule.cap
        self.expires = (timedelta(days=rule.expires_after_days)
                        if rule.expires_after_days else None)


def _lower(text: str | None) -> str | None:
    return None if text is None else text.lower()


class _Compiled:
    """One rule set's primary model, or one named model, compiled for the backtest's
    scoring loop."""

    def __init__(self, rules: Rules | Model) -> None:
        self.rules = rules
        if isinstance(rules, Model):
            self.threshold = rules.threshold
            self.engagement, self.fit_rules = rules.engagement, rules.fit
        else:
            self.threshold = rules.scoring.mql_threshold
            self.engagement, self.fit_rules = rules.scoring.engagement, rules.scoring.fit
        self.half_life = rules.half_life_seconds
        self.by_type = {kind: tuple(_Rule(r) for r in engagement)
                        for kind, engagement in rules.engagement_by_type.items()}
        # Per profile field, its fit rules in file order (with their place in the file) and
        # what they give each value seen so far: a field's first matching rule wins.
        fields: dict[str, list[tuple[int, FitRule]]] = {}
        for index, rule in enumerate(self.fit_rules):
            fields.setdefault(rule.field, []).append((index, rule))
        self.fit_fields: list[tuple[str, tuple[tuple[int, FitRule], ...],
                                    dict[Any, tuple[int, float] | None]]] = [
            (name, tuple(ranked), {}) for name, ranked in fields.items()]

    def same_scores(self, other: _Compiled) -> bool:
        """Whether ``other`` scores every lead the same at every moment (only the thresholds
        may differ): one pass over a lead's touchpoints then serves both."""
        return (self.engagement == other.engagement and self.fit_rules == other.fit_rules
                and self.half_life == other.half_life
                and self.threshold == self.threshold and other.threshold == other.threshold)

    def fit(self, profile: Mapping[str, Any]) -> float:
        """``sum(p for _, p in scoring.fit_awards(rules, profile))``: each field's winning
        rule remembered by the field's value (and its type), the points added in file order."""
        won: list[tuple[int, float]] = []
        for name, ranked, memo in self.fit_fields:
            value = profile.get(name)
            try:
                # A float by its repr: -0.0 == 0.0, but a text rule reads "-0.0".
                key: Any = (float, repr(value)) if type(value) is float else (type(value), value)
                known = memo.get(key, _UNSEEN)
            except TypeError:  # a value that cannot be a key
                key, known = None, _UNSEEN
            if known is _UNSEEN:
                hit = next(((index, float(rule.points)) for index, rule in ranked
                            if rule.matches(profile)), None)
                if key is not None:
                    memo[key] = hit
            else:
                hit = cast(tuple[int, float] | None, known)
            if hit is not None:
                won.append(hit)
        won.sort()
        total: float = 0
        for _, points in won:
            total += points
        return total

    def mql_at(self, profile: Mapping[str, Any], touches: Sequence[Touch],
               thresholds: Sequence[float] | None = None) -> list[datetime | None]:
        """When the lead's score first reaches each of ``thresholds`` (the rule set's own by
        default): the loop of ``scoring.score_touchpoint``, ``add_decaying``, ``decayed`` and
        ``expiring_total`` over its touchpoints, operation for operation."""
        return self._scores(profile, touches, thresholds, False)[0]

    def crossing(self, profile: Mapping[str, Any], touches: Sequence[Touch]
                 ) -> tuple[datetime | None, float | None]:
        """When the lead's score first reaches the threshold, and its score after its last
        touchpoint (None without touchpoints)."""
        found, score = self._scores(profile, touches, None, True)
        return found[0], score

    def _scores(self, profile: Mapping[str, Any], touches: Sequence[Touch],
                thresholds: Sequence[float] | None, to_the_end: bool
                ) -> tuple[list[datetime | None], float | None]:
        """``mql_at``; with ``to_the_end``, the loop goes on past the last threshold reached,
        and the score after the last touchpoint comes with it."""
        if thresholds is None:
            thresholds = (self.threshold,)
        found: list[datetime | None] = [None] * len(thresholds)
        if not touches:
            return found, None
        # Lowest first: a score that reaches one threshold reaches every lower one.
        pending = sorted(range(len(thresholds)), key=thresholds.__getitem__)
        lowest = thresholds[pending[0]]
        fit = self.fit(profile)
        half_life, by_type = self.half_life, self.by_type
        value = 0.0
        as_of: datetime | None = None
        expiring: list[tuple[float, datetime, datetime]] = []
        counts: dict[str, int] = {}
        totals: dict[str, float] = {}
        for at, _, kind, context in touches:
            for rule in by_type.get(kind, ()):
                if rule.tests and not all(t.matches(context) for t in rule.tests):
                    continue
                rule_id = rule.id
                count = counts.get(rule_id, 0) + 1
                given = totals.get(rule_id, 0.0)
                points = rule.points
                if points is None:
                    points = rule.rule.band_total(count) - given
                cap = rule.cap
                if cap is not None and given + points > cap:
                    points = max(0.0, cap - given)
                points = float(points)
                counts[rule_id] = count
                totals[rule_id] = given + points
                if rule.expires is None:
                    if as_of is None:
                        value, as_of = points, at
                    else:
                        horizon = at if at > as_of else as_of  # max(as_of, at)
                        value = _decay(value, as_of, horizon, half_life) + points * float(
                            2.0 ** (-(horizon - at).total_seconds() / half_life))
                        as_of = horizon
                else:
                    expiring.append((points, at, at + rule.expires))
            if as_of is None:
                when = at
                score = fit + value
            else:
                when = as_of if as_of > at else at  # max(occurred_at, as_of)
                score = fit + _decay(value, as_of, when, half_life)
            if expiring:
                alive: float = 0
                for points, since, until in expiring:
                    if since <= when < until:
                        alive += points
                score = score + alive
            if score >= lowest:
                while pending and score >= thresholds[pending[0]]:
                    found[pending.pop(0)] = when
                if not pending:
                    if not to_the_end:
                        break
                    lowest = math.inf
                else:
                    lowest = thresholds[pending[0]]
        return found, score


_UNSEEN = object()


# ------------------------------------------------------------------------- the report


def quality(predicted: dict[str, datetime | None], outcome: set[str]) -> dict[str, float | None]:
    chosen = {k for k, v in predicted.items() if v is not None}
    hits = len(chosen & outcome)
    return {
        "precision": round(hits / len(chosen), 4) if chosen else None,
        "recall": round(hits / len(outcome), 4) if outcome else None,
    }


def compare(old: Backtest, new: Backtest, outcomes: dict[str, set[str]],
            recorded_stages: dict[str, str], *, moment: str = "mql",
            scores: Mapping[str, tuple[float | None, float | None]] | None = None
            ) -> dict[str, Any]:
    """The report: per lead, whether its ``moment`` (the MQL moment; ``crossed`` for a named
    model's first threshold crossing) comes earlier, later, never or newly under the new
    rules, counts, and each rule set's precision and recall for the recorded outcomes.

    With ``scores`` (a named model's backtest: each lead's score after its last touchpoint,
    current and new), a lead whose score changes is listed too (change ``same`` when its
    crossing does not move), with both scores, and ``scores`` sums them up.
    """
    leads = []
    summary = {"earlier": 0, "later": 0, "never": 0, "newly": 0, "same": 0}
    scored = {"changed": 0, "higher": 0, "lower": 0}
    for key in sorted(old.mql_at):
        before, after = old.mql_at[key], new.mql_at.get(key)
        if before == after:
            change = "same"
        elif after is None:
            change = "never"
        elif before is None:
            change = "newly"
        else:
            change = "earlier" if after < before else "later"
        summary[change] += 1
        row: dict[str, Any] = {"lead": key, "change": change,
                               f"{moment}_at_current": before.isoformat() if before else None,
                               f"{moment}_at_new": after.isoformat() if after else None}
        if scores is not None:
            score_before, score_after = scores.get(key, (None, None))
            moved = (score_before or 0.0) != (score_after or 0.0)
            if moved:
                scored["changed"] += 1
                scored["higher" if (score_after or 0.0) > (score_before or 0.0)
                       else "lower"] += 1
            row["score_current"] = finite(score_before)
            row["score_new"] = finite(score_after)
            if change == "same" and not moved:
                continue
        elif change == "same":
            continue
        leads.append(row)
    stage_counts = {stage: sum(1 for s in recorded_stages.values() if s == stage)
                    for stage in STAGES}
    report: dict[str, Any] = {
        "current_version": old.rules.version, "new_version": new.rules.version,
        "leads": len(old.mql_at), "changes": summary, "changed_leads": leads,
        f"{moment}_count": {"current": sum(v is not None for v in old.mql_at.values()),
                            "new": sum(v is not None for v in new.mql_at.values())},
        "recorded_stage_counts": stage_counts,
        "quality": {
            outcome: {"current": quality(old.mql_at, keys), "new": quality(new.mql_at, keys)}
            for outcome, keys in outcomes.items()
        },
    }
    if scores is not None:
        report["scores"] = scored
    return report


# ------------------------------------------------------------------------- the collector


#: The young generation's threshold during a backtest: above what one chunk of leads keeps
#: alive (their decoded events, until the chunk is done; ~100,000 objects for 500 leads).
#: CPython counts allocations net of deallocations, so with a lower threshold every chunk's
#: events are walked and promoted again and again: measured on 20,001 leads (226,235
#: records, SQLite), 1.02 s of collections in one backtest at 50,000, 0.05 s at 1,000,000.
BACKTEST_GEN0_THRESHOLD = 1_000_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """During the loop: the heap built so far frozen out of the collector's sight and young
    collections rare (``BACKTEST_GEN0_THRESHOLD``); put back as it was afterwards. As for
    the long-running commands (``leadflow.runtime.tune_gc``), ``LEADFLOW_GC_GEN0_THRESHOLD=0``
    leaves CPython's settings alone (and a larger value is taken). Cycles are still
    collected; the loop makes almost none.
    """
    from leadflow.runtime import DEFAULT_GEN0_THRESHOLD

    try:
        gen0 = int(os.environ.get("LEADFLOW_GC_GEN0_THRESHOLD", str(DEFAULT_GEN0_THRESHOLD)))
    except ValueError:
        gen0 = DEFAULT_GEN0_THRESHOLD
    before = gc.get_threshold()
    if gen0 <= 0:
        yield
        return
    gen0 = max(gen0, BACKTEST_GEN0_THRESHOLD, before[0])
    frozen = gc.get_freeze_count() > 0
    gc.freeze()
    gc.set_threshold(gen0, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if not frozen:
            gc.unfreeze()
