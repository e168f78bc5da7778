"""The timer index holds hints: a lead's row is never later than its next due transition,
possibly earlier (store/recorders.py RecordIdIndex).

A batch only moves a lead's row earlier; the clock, finding nothing due at an early hint,
sets the row to the lead's true next due time. Transitions happen at the same exact times as
with rows rewritten on every touchpoint. On the in-memory store, SQLite and a real
PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError

from leadflow.config import Settings
from leadflow.contract import InboundRecord
from leadflow.engine.app import LeadflowApp
from leadflow.engine.auditor import Auditor
from tests.conftest import T0, Records, days
from tests.integration.conftest import meanwhile, two_writers


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lf.db'}"
    return str(request.getfixturevalue("pg_url"))


def opened(url: str) -> LeadflowApp:
    return LeadflowApp(env=dict(Settings(database_url=url).eventsourcing_env({})))


@pytest.fixture
def app(url: str) -> Iterator[LeadflowApp]:
    application = opened(url)
    yield application
    application.close()


def rows(app: LeadflowApp) -> list[tuple[datetime, UUID]]:
    return app.indexes.select_due(None, T0 + days(10_000), None, 100)


def routing_batch(rec: Records, email: str, at: datetime) -> list[InboundRecord]:
    """Records that qualify a new German lead and route it to rep-e (24-hour SLA)."""
    batch = [rec("content_downloaded", email, at=at, lead={"country": "DE"})
             for _ in range(3)]
    for _ in range(3):
        batch += [rec("email_opened", email, at=at), rec("email_clicked", email, at=at)]
    batch.append(rec("trial_started", email, at=at))
    return batch


def went_dormant(app: LeadflowApp, lead_id: UUID) -> datetime | None:
    [row] = [r for r in Auditor(app).history(lead_id) if "WentDormant" in r.events]
    return row.occurred_at


def test_a_touchpoint_leaves_an_earlier_timer_and_the_clock_rearms_it(
        app: LeadflowApp, rec: Records) -> None:
    touches = [T0 + days(10 * i) for i in range(6)]  # the last at day 50
    for at in touches:
        app.apply_batch([rec("email_opened", "dee@dee.io", at=at)])
    lead_id = app.resolve("email:dee@dee.io")
    # Dormancy is due 60 days after the last touchpoint (day 110); the row still holds
    # the first touchpoint's, day 60: each later one pushed the true time later.
    assert rows(app) == [(T0 + days(60), lead_id)]
    version = app.repository.get(lead_id).version
    woke = app.advance_clock(T0 + days(61))
    assert woke.woken == 0 and app.repository.get(lead_id).version == version
    assert not app.lead(lead_id).dormant
    assert rows(app) == [(T0 + days(110), lead_id)]  # re-armed at the true time
    woke = app.advance_clock(T0 + days(120))
    assert woke.woken == 1
    assert app.lead(lead_id).dormant
    assert went_dormant(app, lead_id) == T0 + days(110)  # at its exact time


def test_a_transition_brought_forward_moves_the_row_earlier(
        app: LeadflowApp, rec: Records) -> None:
    app.apply_batch([rec("email_opened", "eve@eye.io", at=T0)])
    lead_id = app.resolve("email:eve@eye.io")
    assert rows(app) == [(T0 + days(60), lead_id)]
    # Routed to an owner an hour later: the 24-hour first-contact SLA is due long before.
    assigned = T0 + days(1 / 24)
    app.apply_batch(routing_batch(rec, "eve@eye.io", assigned))
    assert app.lead(lead_id).owner == "rep-e"
    assert rows(app) == [(assigned + days(1), lead_id)]
    app.advance_clock(T0 + days(2))
    assert app.lead(lead_id).owner == "rep-f"
    # Rerouted exactly when the SLA ran out, not at the dormancy hint.
    assert app.repository.get(lead_id).assigned_at == assigned + days(1)


def test_hints_give_the_transitions_that_exact_timers_give(url: str, rec: Records) -> None:
    """The same records in one batch (each lead's row written once, exact) and one by one
    (rows left early), the clock advanced in steps: the same transitions at the same
    times."""
    people = [f"p{i}@acme{i % 3}.io" for i in range(9)]
    records = [rec("email_opened" if (i + d) % 2 else "page_viewed", person,
                   at=T0 + days(d * 7 + i))
               for d in range(8) for i, person in enumerate(people)]
    one_batch = opened("memory:")
    one_by_one = opened(url)
    try:
        one_batch.apply_batch(records)
        for record in records:
            one_by_one.apply_batch([record])
        for step in range(1, 12):
            one_by_one.advance_clock(T0 + days(step * 15))
        one_batch.advance_clock(T0 + days(165))
        for person in people:
            key = f"email:{person}"
            assert one_by_one.lead(key).transitions == one_batch.lead(key).transitions
            assert one_by_one.lead(key).dormant
            # Dormant from the same moment: 60 days after the person's last touchpoint.
            last = max(r.occurred_at for r in records if r.lead.email == person)
            for app in (one_by_one, one_batch):
                assert went_dormant(app, app.resolve(key)) == last + days(60)
    finally:
        one_batch.close()
        one_by_one.close()


def opened_three_times(app: LeadflowApp, rec: Records, email: str) -> UUID:
    """A lead whose timer row holds its first email's dormancy (day 60): it was written
    once, and the later emails (days 10 and 20) only pushed the true time later."""
    for at in (T0, T0 + days(10), T0 + days(20)):
        app.apply_batch([rec("email_opened", email, at=at)])
    return app.resolve(f"email:{email}")


def rerouted_when_the_sla_runs_out(consumer: LeadflowApp, clock: LeadflowApp,
                                   lead_id: UUID) -> None:
    """The lead routed on day 70 has its row at its SLA (day 71), and is rerouted then."""
    assert rows(consumer) == [(T0 + days(71), lead_id)]
    clock.advance_clock(T0 + days(71.5))
    assert clock.lead(lead_id).owner == "rep-f"


def at_first_commit(app: LeadflowApp, monkeypatch: pytest.MonkeyPatch,
                    action: Callable[[], object]) -> list[int]:
    """Run ``action`` (another writer's commit) once, when ``app`` first commits: after it
    decided, before it stores anything. The list it returns is not empty once it ran."""
    commit = app._commit
    ran: list[int] = []

    def commit_after(*args: Any, **kwargs: Any) -> None:
        if not ran:
            ran.append(1)
            action()
        commit(*args, **kwargs)

    monkeypatch.setattr(app, "_commit", commit_after)
    return ran


def test_a_batch_writes_no_timer_a_row_is_already_early_enough_for(
        app: LeadflowApp, rec: Records) -> None:
    written: list[dict[UUID, datetime | None]] = []
    recorder = app.recorder
    real = recorder.insert_events

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        written.append(dict(kwargs.get("timers") or {}))
        return real(*args, **kwargs)

    recorder.insert_events = spy  # type: ignore[method-assign]
    for i in range(5):
        app.apply_batch([rec("email_opened", "fay@eff.io", at=T0 + days(i))])
    lead_id = app.resolve("email:fay@eff.io")
    # Written once, by the first batch; the later ones only pushed the due time later.
    assert written == [{lead_id: T0 + days(60)}, {}, {}, {}, {}]
    app.advance_clock(T0 + days(61))  # the clock re-arms it exactly (day 64)...
    assert rows(app) == [(T0 + days(64), lead_id)]
    written.clear()
    app.apply_batch(routing_batch(rec, "fay@eff.io", T0 + days(62)))
    # ...after which what was known is not trusted: the SLA (day 63) is written.
    assert written == [{lead_id: T0 + days(63)}]
    app.advance_clock(T0 + days(63.5))
    assert app.lead(lead_id).owner == "rep-f"


def test_a_clock_in_another_process_makes_a_writer_write_its_timers_again(
        pg_url: str, rec: Records) -> None:
    with two_writers(pg_url) as (consumer, clock):
        lead_id = opened_three_times(consumer, rec, "gus@gee.io")
        assert rows(consumer) == [(T0 + days(60), lead_id)]
        clock.advance_clock(T0 + days(61))  # nothing due: re-armed at day 80
        assert rows(consumer) == [(T0 + days(80), lead_id)]
        # Routed on day 70: the SLA is due on day 71, later than what the consumer last
        # wrote (day 60) but earlier than the row now holds.
        consumer.apply_batch(routing_batch(rec, "gus@gee.io", T0 + days(70)))
        rerouted_when_the_sla_runs_out(consumer, clock, lead_id)


def test_a_clock_committing_while_a_batch_decides_makes_it_write_its_timers(
        pg_url: str, rec: Records) -> None:
    with two_writers(pg_url) as (consumer, clock):
        lead_id = opened_three_times(consumer, rec, "hal@aitch.io")
        # The clock re-arms the row (day 80) after the batch read the epoch, before it
        # commits: the batch's skipped SLA timer (day 71) is written all the same.
        consumer.apply_batch(routing_batch(rec, "hal@aitch.io", T0 + days(70)),
                             before_commit=meanwhile(
                                 lambda: clock.advance_clock(T0 + days(61))))
        rerouted_when_the_sla_runs_out(consumer, clock, lead_id)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store two processes can write: SQLite's file, or a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_a_record_committed_while_the_clock_decides_is_not_hidden_by_its_timer(
        shared_url: str, rec: Records, monkeypatch: pytest.MonkeyPatch) -> None:
    with two_writers(shared_url) as (consumer, clock):
        lead_id = opened_three_times(consumer, rec, "ivy@eye.io")
        # The clock finds nothing due at the day-60 hint and would re-arm the row at the
        # lead's dormancy (day 80); before it commits, the consumer routes the lead on day
        # 70, whose 24-hour SLA is due on day 71.
        routed = at_first_commit(clock, monkeypatch, lambda: consumer.apply_batch(
            routing_batch(rec, "ivy@eye.io", T0 + days(70))))
        clock.advance_clock(T0 + days(61))
        assert routed
        # The clock's commit found the lead moved on since it read it, and looked again.
        rerouted_when_the_sla_runs_out(consumer, clock, lead_id)


def test_a_batch_whose_lead_falls_due_behind_a_clock_that_moved_on_is_a_conflict(
        shared_url: str, rec: Records) -> None:
    with two_writers(shared_url) as (consumer, clock):
        lead_id = opened_three_times(consumer, rec, "joy@jay.io")
        batch = routing_batch(rec, "joy@jay.io", T0 + days(70))
        # The batch routes the lead on day 70 (the SLA due on day 71), caught up to the clock
        # as it read it; before it commits, the clock moves to day 72: its timer would be
        # behind the clock, which never looks back, and the SLA would never run out.
        with pytest.raises(IntegrityError, match="not after the clock's position"):
            consumer.apply_batch(batch, before_commit=meanwhile(
                lambda: clock.advance_clock(T0 + days(72))))
        assert consumer.lead(lead_id).owner is None  # nothing of the batch was stored
        consumer.apply_batch(batch)  # taken again, as the Kafka consumer does
        # As if the batch had come after the clock, on one writer: caught up to day 72.
        reference = opened("memory:")
        try:
            reference_id = opened_three_times(reference, rec, "joy@jay.io")
            reference.advance_clock(T0 + days(72))
            reference.apply_batch(routing_batch(rec, "joy@jay.io", T0 + days(70)))
            got, want = consumer.lead(lead_id), reference.lead(reference_id)
            assert (got.stage_now, got.owner) == (want.stage_now, want.owner)
            assert ([(r.occurred_at, r.events) for r in Auditor(consumer).history(lead_id)]
                    == [(r.occurred_at, r.events)
                        for r in Auditor(reference).history(reference_id)])
            assert [due for due, _ in rows(consumer)] == [due for due, _ in rows(reference)]
            assert all(due > T0 + days(72) for due, _ in rows(consumer))
        finally:
            reference.close()


def test_a_clock_page_that_meets_another_writers_commit_is_taken_again(
        shared_url: str, rec: Records, monkeypatch: pytest.MonkeyPatch) -> None:
    with two_writers(shared_url) as (consumer, clock):
        consumer.apply_batch([rec("email_opened", "kim@kay.io", at=T0)])
        lead_id = consumer.resolve("email:kim@kay.io")
        # The clock finds the lead dormant (day 60) and is about to store it; the consumer
        # stores an email the lead opened on day 50 first.
        opened = at_first_commit(clock, monkeypatch, lambda: consumer.apply_batch(
            [rec("email_opened", "kim@kay.io", at=T0 + days(50))]))
        result = clock.advance_clock(T0 + days(61))
        assert opened
        # The page was taken again on the lead as stored: not dormant, due on day 110.
        assert result.woken == 0
        assert not consumer.lead(lead_id).dormant
        assert rows(consumer) == [(T0 + days(110), lead_id)]
        assert clock.clock_position() == T0 + days(61)
