"""The backtest (`leadflow rescore`) gives exactly the report it gave before it was made fast.

``reference_backtest`` below is the former implementation, kept as it was: every lead
replayed as a whole aggregate, its touchpoints gathered by the Auditor and scored with
``leadflow.domain.scoring``. The fast one (a fold of the events, compiled rules, worker
processes) must give the same report, to the last MQL moment and precision figure, on a
generated store, for rule sets that use every kind of rule, with ``since``, with leads that
absorbed others or were unmerged, with damaged leads, and with and without workers.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import PersistenceError

from leadflow.contract import RecordRejected, parse_record
from leadflow.domain import Lead, scoring
from leadflow.domain.rules import Rules, default_rules, default_rules_text, parse_rules
from leadflow.domain.scoring import Award
from leadflow.engine import backtest, backtest_read, backtest_score
from leadflow.engine.app import LeadflowApp
from leadflow.engine.auditor import Auditor, stored_lead_ids
from leadflow.engine.backtest import compare, run_backtest
from leadflow.engine.backtest_rows import RowDecoder
from leadflow.generator import generate
from tests.conftest import make_app

# ----------------------------------------------------------------- the former implementation


@dataclass
class ReferenceBacktest:
    rules: Rules
    mql_at: dict[str, datetime | None] = field(default_factory=dict)

    def simulate(self, lead_key: str, profile: dict[str, Any],
                 touchpoints: Sequence[dict[str, Any]]) -> None:
        fit = sum(p for _, p in scoring.fit_awards(self.rules, profile))
        value, as_of = 0.0, None
        expiring: list[Award] = []
        counts: dict[str, int] = {}
        totals: dict[str, float] = {}
        half_life = self.rules.half_life_seconds
        for tp in touchpoints:
            for award in scoring.score_touchpoint(self.rules, tp["type"], tp["context"],
                                                  tp["occurred_at"], tp["event_id"], counts,
                                                  totals):
                counts[award.rule] = counts.get(award.rule, 0) + 1
                totals[award.rule] = totals.get(award.rule, 0.0) + award.points
                if award.expires_at is None:
                    value, as_of = scoring.add_decaying(value, as_of, award.points, award.at,
                                                        half_life)
                else:
                    expiring.append(award)
            when = max(tp["occurred_at"], as_of) if as_of else tp["occurred_at"]
            score = fit + scoring.decayed(value, as_of, when, half_life) + \
                scoring.expiring_total(expiring, when)
            if score >= self.rules.scoring.mql_threshold:
                self.mql_at[lead_key] = when
                return
        self.mql_at[lead_key] = None


def reference_backtest(app: LeadflowApp, candidate: Rules,
                       since: datetime | None = None) -> dict[str, Any]:
    auditor = Auditor(app)
    old, new = ReferenceBacktest(app.rules), ReferenceBacktest(candidate)
    outcomes: dict[str, set[str]] = {"sql": set(), "customer": set()}
    stages: dict[str, str] = {}
    lead_ids, unreadable = stored_lead_ids(app)
    unloadable = [str(p["lead_id"]) for p in unreadable]
    for done, lead_id in enumerate(lead_ids, 1):
        if (done - 1) % 500 == 0:
            auditor.preload(lead_ids[done - 1:done - 1 + 500])
        try:
            lead: Any = auditor.replay(auditor.events(lead_id))
            if not isinstance(lead, Lead) or lead.merged_into is not None:
                continue
            if since is not None and lead.created_at < since:
                continue
            touchpoints = auditor.touchpoints(lead_id)
        except PersistenceError:
            raise
        except Exception:
            unloadable.append(str(lead_id))
            continue
        key: Any = lead.primary_key
        old.simulate(key, lead.profile, touchpoints)
        new.simulate(key, lead.profile, touchpoints)
        reached = set(lead.first_reached)
        if reached & {"sql", "opportunity", "customer"}:
            outcomes["sql"].add(key)
        if "customer" in reached:
            outcomes["customer"].add(key)
        stages[key] = lead.stage
    result = compare(old, new, outcomes, stages)  # type: ignore[arg-type]
    result["unloadable_leads"] = unloadable
    return result


# ----------------------------------------------------------------- stores and rule sets

LEADS, DAYS, SEED = 400, 90, 3

#: Every kind of engagement rule (bands, caps, expiry, each condition test, negative and
#: fractional points), a different half-life, and fit rules of each kind.
EVERY_KIND = """
label = "every-kind"
[scoring]
mql_threshold = 38.5
recycle_threshold = 10
half_life_days = 9.5
[[scoring.engagement]]
id = "opens-banded"
type = "email_opened"
bands = [{ min = 1, max = 2, points = 3 }, { min = 3, max = 5, points = 9.5 },
         { min = 7, points = 4 }]
[[scoring.engagement]]
id = "clicks-capped"
type = "email_clicked"
points = 6.25
cap = 20
[[scoring.engagement]]
id = "pricing"
type = "page_viewed"
when = [{ field = "url", contains = "PRICING" }]
points = 11
cap = 30
[[scoring.engagement]]
id = "any-page"
type = "page_viewed"
when = [{ field = "url", prefix = "HTTPS://" }]
points = 1.5
[[scoring.engagement]]
id = "sales-form"
type = "form_submitted"
when = [{ field = "form_id", in = ["Contact-Sales", "how-to-buy"] }]
points = 30
expires_after_days = 10
[[scoring.engagement]]
id = "a-form"
type = "form_submitted"
when = [{ field = "form_id", equals = "NEWSLETTER" }]
points = 4
[[scoring.engagement]]
id = "event"
type = "event_attended"
points = 7.25
expires_after_days = 3.5
[[scoring.engagement]]
id = "call"
type = "call_logged"
points = 12
expires_after_days = 20
[[scoring.engagement]]
id = "unsubscribe"
type = "unsubscribed"
points = -20
[[scoring.engagement]]
id = "trial"
type = "trial_started"
points = 25
[[scoring.fit]]
id = "exec"
field = "title"
contains_any = ["chief", "vp", "vice president"]
points = 12
[[scoring.fit]]
id = "manager"
field = "title"
contains_any = ["manager", "head"]
points = 6
[[scoring.fit]]
id = "europe"
field = "country"
in = ["de", "FR", "gb"]
points = 3.5
[[scoring.fit]]
id = "mid-size"
field = "employees"
min = 50
max = 1000
points = 7
"""


def candidates() -> dict[str, Rules]:
    return {
        "threshold-45": parse_rules(default_rules_text().replace(
            "mql_threshold = 50", "mql_threshold = 45", 1)),
        "every-kind": parse_rules(EVERY_KIND),
        "same": default_rules(),
    }


def ingest_generated(app: LeadflowApp) -> None:
    records = []
    for line in generate(LEADS, DAYS, SEED):
        try:
            records.append(parse_record(line, now=datetime(2030, 1, 1, tzinfo=UTC)))
        except RecordRejected:
            continue
    for start in range(0, len(records), 500):
        app.apply_batch(records[start:start + 500])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store of a generated stream, one lead of it unmerged again."""
    path = tmp_path_factory.mktemp("backtest")
    app = make_app("sqlite", path)
    try:
        ingest_generated(app)
        auditor = Auditor(app)
        merged = [lead for lead in (auditor.replay(auditor.events(i))
                                    for i in stored_lead_ids(app)[0])
                  if lead.merged_into is not None]
        assert len(merged) >= 2, "the generated stream merges leads"
        app.unmerge(merged[0].primary_key, datetime(2030, 1, 1, tzinfo=UTC), "test")
    finally:
        app.close()
    return path


@pytest.fixture
def app(store: Path) -> Iterator[LeadflowApp]:
    application = make_app("sqlite", store)
    yield application
    application.close()


def one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backtest, "_workers", lambda app, leads: 1)


def three_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 37 leads dealt to this process and two workers: a dozen chunks each.
    monkeypatch.setattr(backtest, "MIN_LEADS_PER_WORKER", 10)
    monkeypatch.setattr(backtest, "_cpus", lambda: 3)
    monkeypatch.setattr(backtest, "PRELOAD", 37)


PROCESSES: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "one-process": one_process, "three-processes": three_processes}


# ----------------------------------------------------------------- the same report


@pytest.mark.parametrize("processes", list(PROCESSES))
@pytest.mark.parametrize("name", list(candidates()))
def test_the_report_is_exactly_the_former_ones(app: LeadflowApp, name: str, processes: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    candidate = candidates()[name]
    expected = reference_backtest(app, candidate)
    PROCESSES[processes](monkeypatch)
    assert run_backtest(app, candidate) == expected
    if name != "same":
        assert expected["changed_leads"], "the candidate changes something"
    assert expected["leads"] > LEADS * 0.9 and not expected["unloadable_leads"]


@pytest.mark.parametrize("processes", list(PROCESSES))
def test_the_report_since_a_moment_is_the_former_one(app: LeadflowApp, processes: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    since = datetime(2026, 2, 10, tzinfo=UTC)
    candidate = candidates()["every-kind"]
    expected = reference_backtest(app, candidate, since)
    PROCESSES[processes](monkeypatch)
    assert run_backtest(app, candidate, since=since) == expected
    assert 0 < expected["leads"] < reference_backtest(app, candidate)["leads"]


def test_the_current_rules_of_the_app_are_the_baseline(store: Path) -> None:
    current = parse_rules(EVERY_KIND)
    application = make_app("sqlite", store, rules=current)
    try:
        expected = reference_backtest(application, default_rules())
        assert run_backtest(application, default_rules()) == expected
        assert expected["current_version"] == current.version
    finally:
        application.close()


def test_the_store_has_the_leads_the_fold_leaves_to_the_auditor(app: LeadflowApp) -> None:
    # Leads that absorbed another lead or anonymous interest, and a lead restored by an
    # unmerge (StateRestored), are all in the store the reports are compared on.
    auditor = Auditor(app)
    names: set[str] = set()
    for lead_id in stored_lead_ids(app)[0]:
        names.update(type(e).__name__ for e in auditor.events(lead_id))
    assert {"Absorbed", "InterestAbsorbed", "StateRestored", "MergedInto",
            "Unmerged"} <= names


def test_progress_reaches_the_total(app: LeadflowApp, monkeypatch: pytest.MonkeyPatch) -> None:
    three_processes(monkeypatch)
    calls: list[tuple[int, int]] = []
    run_backtest(app, default_rules(), progress=lambda done, total: calls.append((done, total)))
    total = len(stored_lead_ids(app)[0])
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))


def test_the_workers_read_their_chunks(app: LeadflowApp,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    three_processes(monkeypatch)
    received: list[int] = []
    wait = backtest._Helper.wait

    def spy(helper: Any, tick: Callable[[], None]) -> Any:
        got = wait(helper, tick)
        received.append(-1 if got is None else sum(len(chunk) for chunk in got))
        return got

    monkeypatch.setattr(backtest._Helper, "wait", spy)
    candidate = candidates()["every-kind"]
    assert run_backtest(app, candidate) == reference_backtest(app, candidate)
    assert len(received) == 2 and all(n > 100 for n in received)


def test_a_worker_that_fails_has_its_part_read_in_the_main_process(
        app: LeadflowApp, monkeypatch: pytest.MonkeyPatch) -> None:
    candidate = candidates()["every-kind"]
    expected = reference_backtest(app, candidate)
    three_processes(monkeypatch)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no database for the worker")

    monkeypatch.setattr(backtest, "LeadflowApp", broken)  # in the forked workers only
    assert run_backtest(app, candidate) == expected


def test_workers_only_for_a_store_other_processes_can_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backtest, "_cpus", lambda: 4)
    memory = make_app("memory", tmp_path)
    file = make_app("sqlite", tmp_path)
    try:
        assert backtest._workers(memory, 100_000) == 1
        assert backtest._workers(file, 100_000) == 4
        assert backtest._workers(file, backtest.MIN_LEADS_PER_WORKER * 2) == 2
        assert backtest._workers(file, 10) == 1
    finally:
        memory.close()
        file.close()


def test_the_report_on_an_in_memory_store_is_the_former_one(tmp_path: Path) -> None:
    application = make_app("memory", tmp_path)
    try:
        ingest_generated(application)
        candidate = candidates()["every-kind"]
        assert run_backtest(application, candidate) == reference_backtest(application,
                                                                          candidate)
    finally:
        application.close()


def reference_scores(rules: Rules, profile: dict[str, Any],
                     touchpoints: Sequence[dict[str, Any]]) -> list[tuple[datetime, float]]:
    """The lead's score after each touchpoint, as the former ``simulate`` computed it."""
    fit = sum(p for _, p in scoring.fit_awards(rules, profile))
    value, as_of = 0.0, None
    expiring: list[Award] = []
    counts: dict[str, int] = {}
    totals: dict[str, float] = {}
    out = []
    for tp in touchpoints:
        for award in scoring.score_touchpoint(rules, tp["type"], tp["context"],
                                              tp["occurred_at"], tp["event_id"], counts, totals):
            counts[award.rule] = counts.get(award.rule, 0) + 1
            totals[award.rule] = totals.get(award.rule, 0.0) + award.points
            if award.expires_at is None:
                value, as_of = scoring.add_decaying(value, as_of, award.points, award.at,
                                                    rules.half_life_seconds)
            else:
                expiring.append(award)
        when = max(tp["occurred_at"], as_of) if as_of else tp["occurred_at"]
        out.append((when, fit + scoring.decayed(value, as_of, when, rules.half_life_seconds)
                    + scoring.expiring_total(expiring, when)))
    return out


@pytest.mark.parametrize("name", ["threshold-45", "every-kind"])
def test_every_score_is_bit_for_bit_the_domains(app: LeadflowApp, name: str) -> None:
    # With a threshold at exactly each score a lead ever had, the first moment each is
    # reached is the same: a score off by the least bit would reach one of them later.
    rules = candidates()[name]
    compiled = backtest_score.Compiled(rules)
    auditor = Auditor(app)
    checked = 0
    for lead_id in stored_lead_ids(app)[0]:
        lead: Any = auditor.replay(auditor.events(lead_id))
        if lead.merged_into is not None:
            continue
        touchpoints = auditor.touchpoints(lead_id)
        scores = reference_scores(rules, lead.profile, touchpoints)
        thresholds = sorted({score for _, score in scores}, reverse=True)
        expected = [next((when for when, score in scores if score >= threshold), None)
                    for threshold in thresholds]
        touches = [(tp["occurred_at"], tp["event_id"], tp["type"], tp["context"])
                   for tp in touchpoints]
        assert compiled.mql_at(lead.profile, touches, thresholds) == expected
        checked += len(thresholds)
    assert checked > LEADS * 5


# ----------------------------------------------------------------- damaged leads


def damage(store: Path, tmp_path: Path) -> Path:
    """A copy of the store with leads damaged by hand: a row deleted from the middle, a
    payload that is no JSON, one that lacks its fields, and a deleted anonymous interest."""
    copy = tmp_path / "leadflow.db"
    with sqlite3.connect(store / "leadflow.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    conn = sqlite3.connect(copy)
    try:
        table = "stored_events"
        rows = conn.execute(
            f"SELECT originator_id, originator_version, topic FROM {table} "
            "WHERE topic LIKE '%Lead.TouchpointScored' ORDER BY originator_id, "
            "originator_version").fetchall()
        by_lead: dict[str, list[int]] = {}
        for oid, version, _ in rows:
            by_lead.setdefault(oid, []).append(version)
        damaged = [oid for oid, versions in by_lead.items() if len(versions) >= 3][:3]
        assert len(damaged) == 3
        first, second, third = damaged
        conn.execute(f"DELETE FROM {table} WHERE originator_id = ? AND originator_version = ?",
                     [first, by_lead[first][1]])
        conn.execute(f"UPDATE {table} SET state = ? WHERE originator_id = ? AND "
                     "originator_version = ?", [b"\x00 not json", second, by_lead[second][1]])
        conn.execute(f"UPDATE {table} SET state = ? WHERE originator_id = ? AND "
                     "originator_version = ?",
                     [b'{"timestamp": {"_type_": "datetime_iso", "_data_": '
                      b'"2026-03-02T09:00:00+00:00"}}', third, by_lead[third][1]])
        interest = conn.execute(f"SELECT originator_id FROM {table} WHERE topic LIKE "
                                "'%Interest.Opened' LIMIT 1").fetchone()[0]
        conn.execute(f"DELETE FROM {table} WHERE originator_id = ?", [interest])
        conn.commit()
    finally:
        conn.close()
    return tmp_path


@pytest.mark.parametrize("processes", list(PROCESSES))
def test_damaged_leads_are_left_out_as_before(store: Path, tmp_path: Path, processes: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    application = make_app("sqlite", damage(store, tmp_path))
    try:
        candidate = candidates()["every-kind"]
        expected = reference_backtest(application, candidate)
        assert len(expected["unloadable_leads"]) == 3
        PROCESSES[processes](monkeypatch)
        assert run_backtest(application, candidate) == expected
    finally:
        application.close()


# ----------------------------------------------------------------- rows read without events


def test_the_row_decoder_reads_each_field_the_fold_reads_as_the_events_hold_it(
        app: LeadflowApp) -> None:
    # Every lead of the store and every interest one absorbed: the same events in the same
    # order, and each field the fold reads equal, of the same type, to the event's.
    decoder = RowDecoder(app, backtest_read.READS)
    auditor = Auditor(app)
    lead_ids = stored_lead_ids(app)[0]
    interests = {e.interest_id for i in lead_ids for e in auditor.events(i)
                 if type(e).__name__ == "InterestAbsorbed"}
    assert interests, "the generated stream has leads that absorbed an interest"
    compared = 0
    for aggregate_id in [*lead_ids, *interests]:
        events = list(app.events.get(aggregate_id))
        pairs = decoder.pairs(app.codec.select_many([aggregate_id])[aggregate_id])
        assert pairs is not None
        assert [cls for cls, _ in pairs] == [type(e) for e in events]
        for (cls, state), event in zip(pairs, events, strict=True):
            assert state["originator_version"] == event.originator_version
            assert state.keys() >= {k for k in event.__dict__ if k != "chain"}
            for name in backtest_read.READS.get(cls, ()):
                value = event.__dict__.get(name)
                assert state.get(name) == value and type(state.get(name)) is type(value)
                compared += 1
    assert compared > LEADS * 10


def edit_rows(store: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None],
              count: int = 2) -> tuple[Path, list[str]]:
    """A copy of the store with ``edit`` applied to the JSON of one TouchpointScored row of
    each of ``count`` leads, written back as the library's ``json`` writes (NaN and all);
    the edited leads' ids."""
    copy = tmp_path / "leadflow.db"
    with sqlite3.connect(store / "leadflow.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    conn = sqlite3.connect(copy)
    try:
        rows = conn.execute(
            "SELECT originator_id, originator_version, state FROM stored_events WHERE topic "
            "LIKE '%Lead.TouchpointScored' ORDER BY originator_id, originator_version"
        ).fetchall()
        edited: list[str] = []
        for oid, version, state in rows:
            if oid in edited:
                continue
            data = json.loads(state)
            edit(data)
            conn.execute("UPDATE stored_events SET state = ? WHERE originator_id = ? AND "
                         "originator_version = ?",
                         [json.dumps(data, separators=(",", ":")).encode(), oid, version])
            edited.append(oid)
            if len(edited) == count:
                break
        conn.commit()
    finally:
        conn.close()
    return tmp_path, [str(UUID(oid)) for oid in edited]


@pytest.mark.parametrize("processes", list(PROCESSES))
def test_rows_orjson_refuses_are_read_as_before(store: Path, tmp_path: Path, processes: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A number that is not finite, in a field the fold does not read: json reads it, orjson
    # does not; those leads are read the Auditor's way, and scored.
    def nan(data: dict[str, Any]) -> None:
        data["engagement_value"] = math.nan

    path, edited = edit_rows(store, tmp_path, nan)
    application = make_app("sqlite", path)
    try:
        candidate = candidates()["every-kind"]
        expected = reference_backtest(application, candidate)
        assert not set(edited) & set(expected["unloadable_leads"])
        PROCESSES[processes](monkeypatch)
        assert run_backtest(application, candidate) == expected
    finally:
        application.close()


def test_a_tag_of_an_unknown_type_leaves_the_lead_out_as_before(
        store: Path, tmp_path: Path) -> None:
    # In a field the fold does not read: the library's decoder refuses the row, so the lead
    # is left out as unloadable; the decoder does not read past it.
    def tagged(data: dict[str, Any]) -> None:
        data["rules_version"] = {"_type_": "no_such_type", "_data_": "x"}

    path, edited = edit_rows(store, tmp_path, tagged)
    application = make_app("sqlite", path)
    try:
        candidate = candidates()["every-kind"]
        expected = reference_backtest(application, candidate)
        assert set(edited) <= set(expected["unloadable_leads"])
        assert run_backtest(application, candidate) == expected
    finally:
        application.close()



def test_interests_whose_data_keys_are_gone_are_read_as_before(store: Path,
                                                              tmp_path: Path) -> None:
    # As after `leadflow forget`: the interests' personal values can no longer be opened and
    # keep their placeholders, wherever their rows are read.
    copy = tmp_path / "leadflow.db"
    with sqlite3.connect(store / "leadflow.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    application = make_app("sqlite", tmp_path)
    try:
        auditor = Auditor(application)
        interests = [e.interest_id for i in stored_lead_ids(application)[0]
                     for e in auditor.events(i) if type(e).__name__ == "InterestAbsorbed"]
        with sqlite3.connect(copy) as conn:
            deleted = sum(conn.execute("DELETE FROM leadflow_data_keys WHERE aggregate_id = ?",
                                       [i.hex]).rowcount for i in interests[:10])
        assert deleted == 10
        application.codec.vault.clear()
        candidate = candidates()["every-kind"]
        expected = reference_backtest(application, candidate)
        assert run_backtest(application, candidate) == expected
        assert expected["leads"] > LEADS * 0.9 and not expected["unloadable_leads"]
    finally:
        application.close()
