"""Rules backtesting: replay each lead's recorded touchpoints under two rule sets.

``run_backtest`` is what `leadflow rescore` computes: for every live lead, when it would
have become MQL under the current rules and under a candidate, compared with what the
recorded history says happened next (SQL, customer). It only reads the store; publishing a
candidate is ``LeadflowApp.publish_rules``.

How it stays fast (issue 12: ~10,000 -> see the README's Performance section). Each lead's
rows are read in bulk (``backtest_read.LeadReader.read``: one query per ``PRELOAD`` leads)
and, instead of replaying a whole ``Lead`` aggregate, folded into the few things a backtest
needs (``backtest_read._fold``): its key, creation time, profile, stage, the stages it
reached, whether it is merged away, and its touchpoints. The fold reads the rows as parsed by
orjson, with only the fields it reads decoded (``backtest_rows.RowDecoder``), not as domain
events; the anonymous interests the leads absorbed are read in one query per chunk and
folded the same way (``backtest_read._add_interests``). Anything the fold does not know for
sure (a row the decoder is unsure of, an event class it does not handle, a missing field, a
version gap, a lead that absorbed another lead) goes the general way, exactly as before: the
rows made events as the Auditor's ``preload`` makes them, its replay and ``touchpoints``,
with the interests read ahead in bulk (``LeadReader``). The scoring itself runs on rules
compiled once per rule set (``backtest_score.Compiled``), with the same arithmetic, in the
same order, as ``leadflow.domain.scoring``, so every score and MQL moment is bit-for-bit the
one the domain's functions give (tests/unit/test_backtest_fast.py compares both on generated
stores).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, cast
from uuid import UUID

import structlog

from leadflow.domain import STAGES
from leadflow.domain.rules import Rules
from leadflow.engine.app import LeadflowApp
from leadflow.engine.auditor import stored_lead_ids
from leadflow.engine.backtest_read import Found, LeadReader, Touch, as_touches, read_chunk
from leadflow.engine.backtest_score import Compiled
from leadflow.engine.views import finite

log = structlog.get_logger(__name__)

#: Leads whose events are read in one query during a backtest.
PRELOAD = 500



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
        old, new = Compiled(self.current), Compiled(self.candidate)
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
        old = Compiled(current) if current is not None else None
        new = Compiled(self.candidate.models[self.model])

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
        reader = LeadReader(app)
        results: list[list[Result]] = []
        done = 0
        for chunk in chunks:
            out: list[Result] = []
            results.append(out)
            for lead_id, found in zip(chunk, read_chunk(reader, chunk, self.since),
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

# ------------------------------------------------------------------------- the report


@dataclass
class Backtest:
    """MQL timing and predictive quality of one rule set over recorded touchpoints."""

    rules: Rules
    mql_at: dict[str, datetime | None] = field(default_factory=dict)
    _compiled: Compiled | None = field(default=None, repr=False, compare=False)

    def simulate(self, lead_key: str, profile: dict[str, Any],
                 touchpoints: Sequence[dict[str, Any]]) -> None:
        """``run`` for touchpoints as the Auditor gives them (dicts, in order)."""
        self.run(lead_key, profile, as_touches(touchpoints))

    def run(self, lead_key: str, profile: Mapping[str, Any],
            touches: Sequence[Touch]) -> None:
        """When the lead would have become MQL under these rules: the first touchpoint after
        which its score (fit + engagement, as ``leadflow.domain.scoring`` computes it) reaches
        the threshold; None when none does."""
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = Compiled(self.rules)
        self.mql_at[lead_key] = compiled.mql_at(profile, touches)[0]




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
