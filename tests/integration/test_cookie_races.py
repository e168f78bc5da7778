"""Cookie races between two writers of one PostgreSQL store (two consumers of a group).

A cookie-only visit is keyed by its cookie, the form that links the cookie to a person by the
person's company: two writers meet on the cookie. None of these races fails a commit any
more; each leaves a pending absorption that the lead takes up, and the lead ends as one
writer applying the records in order leaves it. Each test lets one writer decide a batch and
makes the other commit in between (from ``before_commit``), as two consumers racing would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from leadflow.config import Settings
from leadflow.consumers.publish import partition_key
from leadflow.consumers.relay import partition_for
from leadflow.contract import InboundRecord
from leadflow.engine.app import LeadflowApp
from leadflow.engine.auditor import Auditor
from leadflow.engine.batch import ABSORB_PAGE
from tests.conftest import T0, Records, days
from tests.integration.conftest import meanwhile, two_writers
from tests.integration.kafka_helpers import Pipeline, applied_event_ids, reference_app

pytestmark = pytest.mark.integration

COOKIE = {"anonymous_id": "cookie-7"}
CARL = "email:carl@gamma.io"


@pytest.fixture
def writers(pg_url: str) -> Iterator[tuple[LeadflowApp, LeadflowApp]]:
    """The cookie's writer and the person's writer, on one store."""
    with two_writers(pg_url) as pair:
        yield pair


def COOKIES(key: str) -> bool:  # noqa: N802 - read as a constant: the partitions' keys
    """The Kafka keys the cookie's writer owns: the anonymous ones (a person's lead is keyed
    by its company, as ``publish`` keys it, and another writer owns it)."""
    return key.startswith("anonymous_id:")


def outcome(app: LeadflowApp, key: str, at: datetime) -> tuple[Any, ...]:
    view = app.lead(key, at=at)
    return view.stage, view.owner, round(view.score, 9), view.touchpoints, view.last_touch_at


def in_order(records: list[InboundRecord], key: str, at: datetime) -> tuple[Any, ...]:
    """The lead as one writer applying the records in order leaves it."""
    return outcome(reference_app(records), key, at)


def pending(app: LeadflowApp) -> list[tuple[Any, ...]]:
    return app.record_ids.select_absorptions(100)


@pytest.mark.parametrize("first", ["visit", "link"])
def test_two_writers_registering_one_cookie_both_commit_and_the_lead_takes_up_the_visit(
        writers: tuple[LeadflowApp, LeadflowApp], rec: Records, first: str) -> None:
    visits, people = writers
    visit = rec("page_viewed", None, at=T0, lead=COOKIE, context={"url": "https://x.io/pricing"})
    link = rec("form_submitted", "carl@gamma.io", at=T0 + days(1), lead=COOKIE)
    # Neither has seen the cookie: the visit registers it for an anonymous interest, the form
    # for Carl's new lead. The second to commit settles it instead of failing.
    if first == "visit":
        done = people.apply_batch([link], before_commit=meanwhile(
            lambda: visits.apply_batch([visit])))
    else:
        done = visits.apply_batch([visit], before_commit=meanwhile(
            lambda: people.apply_batch([link])))
    assert done.applied == 1
    carl = people.lead(CARL)
    [(_, lead, _, owner)] = pending(people)
    assert lead == carl.lead_id and owner is None  # known only to the lead's own events
    assert carl.touchpoints == 1
    # The link wins: the cookie is Carl's, whichever writer committed first.
    assert people.lead("anonymous_id:cookie-7").lead_id == carl.lead_id
    assert people.settle_absorptions() == 1
    assert not pending(people)
    end = T0 + days(2)
    assert outcome(people, CARL, end) == in_order([visit, link], CARL, end)
    assert not people.verify(carl.lead_id).problems
    # Each record stored once: the visit on the interest, the form on the lead.
    assert sorted(applied_event_ids(people)) == sorted([visit.event_id, link.event_id])


@pytest.mark.parametrize("first", ["visit", "link"])
def test_a_visit_noted_while_another_writer_links_its_cookie_is_not_lost(
        writers: tuple[LeadflowApp, LeadflowApp], rec: Records, first: str) -> None:
    visits, people = writers
    earlier = rec("page_viewed", None, at=T0, lead=COOKIE)
    visit = rec("page_viewed", None, at=T0 + days(1), lead=COOKIE,
                context={"url": "https://x.io/pricing"})
    link = rec("form_submitted", "carl@gamma.io", at=T0 + days(2), lead=COOKIE)
    visits.apply_batch([earlier])
    # The visit goes on the cookie's interest, which the form absorbs into Carl's lead: the
    # form's writer took the interest as it was before the visit, or the visit's writer
    # read the cookie before the form moved it. Neither writes a row the other does, so no
    # conflict would reveal it: the commit that comes second queues the visit for Carl.
    if first == "visit":
        people.apply_batch([link], before_commit=meanwhile(lambda: visits.apply_batch([visit])))
    else:
        visits.apply_batch([visit], before_commit=meanwhile(lambda: people.apply_batch([link])))
    assert people.lead(CARL).touchpoints == 2
    assert len(pending(people)) == 1
    # Carl's writer takes it up with its next batch of Carl's records.
    later = rec("email_opened", "carl@gamma.io", at=T0 + days(3))
    assert people.apply_batch([later]).applied == 1
    assert not pending(people)
    end = T0 + days(4)
    assert outcome(people, CARL, end) == in_order([earlier, visit, link, later], CARL, end)
    assert not people.verify(people.resolve(CARL)).problems


def test_a_visit_for_a_cookie_another_writer_linked_waits_for_the_leads_owner(
        writers: tuple[LeadflowApp, LeadflowApp], rec: Records) -> None:
    visits, people = writers
    link = rec("form_submitted", "carl@gamma.io", at=T0, lead=COOKIE)
    people.apply_batch([link])
    carl = people.resolve(CARL)
    version: int = people.repository.get(carl).version
    # The cookie's writer does not write Carl's lead (the person's writer owns it): the
    # visit is noted on an interest and queued under the Kafka key of Carl's records.
    visit = rec("page_viewed", None, at=T0 + days(1), lead=COOKIE)
    [result] = visits.apply_batch([visit], owns=COOKIES).results
    assert result.outcome.value == "applied" and result.lead_id is None
    assert visits.repository.get(carl).version == version
    [(interest, lead, _, owner)] = pending(visits)
    assert (lead, owner) == (carl, "domain:gamma.io")
    # Only a process whose partitions hold that key takes it up.
    assert visits.settle_absorptions(owns=lambda key: key != "domain:gamma.io") == 0
    assert people.settle_absorptions(owns=lambda key: key == "domain:gamma.io") == 1
    assert not pending(people)
    # A writer that owns Carl's key (a sole consumer holds every partition; ingest owns every
    # lead) writes such a visit on the lead at once, as an embedded store does.
    again = rec("page_viewed", None, at=T0 + days(1.05), lead=COOKIE)
    [direct] = people.apply_batch([again]).results
    assert direct.lead_id == carl and not pending(people)
    end = T0 + days(2)
    assert outcome(people, CARL, end) == in_order([link, visit, again], CARL, end)
    # The lead's history says what took the visit up: the queued interest, on its own row.
    [row] = [r for r in Auditor(people).history(carl) if "InterestAbsorbed" in r.events]
    assert row.cause == {"kind": "absorb", "interest": str(interest)}


def cookie_stream(rec: Records, people: int) -> list[InboundRecord]:
    """Each person browses with a cookie, fills a form carrying it (the link), then browses
    once more: the visits and the forms travel on different partitions."""
    records: list[InboundRecord] = []
    for i in range(people):
        cookie = {"anonymous_id": f"cookie-{i}"}
        at = T0 + days(i % 5)
        records += [rec("page_viewed", None, at=at, lead=cookie),
                    rec("page_viewed", None, at=at + days(0.1), lead=cookie),
                    rec("form_submitted", f"p{i}@co{i}.io", at=at + days(1), lead=cookie),
                    rec("page_viewed", None, at=at + days(2), lead=cookie),
                    rec("email_opened", f"p{i}@co{i}.io", at=at + days(3))]
    records.sort(key=lambda r: r.occurred_at)
    return records


def publish_stream(pipe: Pipeline, records: list[InboundRecord], tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r.model_dump(mode="json", exclude_none=True)) + "\n"
                            for r in records))
    published = pipe.run("publish", str(path))
    assert published.returncode == 0, published.stderr


def assert_as_in_order(app: LeadflowApp, records: list[InboundRecord], people: int) -> None:
    """Each person's lead as one writer applying the records in order leaves it."""
    end = T0 + days(10)
    reference = reference_app(records)
    for i in range(people):
        key = f"email:p{i}@co{i}.io"
        assert outcome(app, key, end) == outcome(reference, key, end), key


def test_two_consumer_processes_settle_cookie_races_without_a_write_conflict(
        pipe: Pipeline, rec: Records, tmp_path: Path) -> None:
    pipe.create_topics(partitions=2)
    records = cookie_stream(rec, 24)
    # People whose visits and forms travel on different partitions: two writers race.
    crossing = {r.lead.email for r in records if r.lead.email and r.lead.anonymous_id
                and partition_for(partition_key(r).encode(), 2)
                != partition_for(f"anonymous_id:{r.lead.anonymous_id}".encode(), 2)}
    assert len(crossing) >= 6
    publish_stream(pipe, records, tmp_path)
    # The clock is the one aggregate every first batch would create: made before the race.
    pipe.app().advance_clock(T0 - days(1))
    logs = [tmp_path / f"c{n}.log" for n in (1, 2)]
    # Small polls: many batches on each side, so the visits, the forms and the later visits
    # interleave across the two writers.
    consumers = [pipe.start("consume", "--until-idle", log=log,
                            LEADFLOW_KAFKA_MAX_POLL_RECORDS="4") for log in logs]
    for consumer in consumers:
        assert consumer.wait(timeout=300) == 0
    text = "".join(log.read_text() for log in logs)
    assert "write conflict" not in text
    app = pipe.app()
    assert not pending(app)
    assert_as_in_order(app, records, 24)
    for i in range(24):
        assert app.lead(f"anonymous_id:cookie-{i}").lead_id == app.resolve(f"email:p{i}@co{i}.io")
    ids = applied_event_ids(app)
    assert {r.event_id for r in records} <= set(ids)
    verified = pipe.run("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with psycopg.connect(pipe.pg_url) as conn:
        stored = conn.execute("SELECT count(*) FROM leadflow_record_ids").fetchone()
    assert stored is not None and stored[0] == len(records)


def test_a_sole_consumer_writes_every_cookie_visit_on_its_lead_at_once(
        pipe: Pipeline, rec: Records, tmp_path: Path) -> None:
    # One process holds both partitions: its batches never race each other, so nothing is
    # diverted or queued (a queue it would re-read every batch as the store grows).
    pipe.create_topics(partitions=2)
    records = cookie_stream(rec, 12)
    publish_stream(pipe, records, tmp_path)
    log = tmp_path / "c.log"
    consumer = pipe.start("consume", "--until-idle", log=log,
                          LEADFLOW_KAFKA_MAX_POLL_RECORDS="4")
    assert consumer.wait(timeout=300) == 0
    [done] = [json.loads(line) for line in log.read_text().splitlines()
              if '"caught up; exiting"' in line]
    assert done["absorptions"] == 0 and done["applied"] == len(records)
    app = pipe.app()
    assert not pending(app)
    assert_as_in_order(app, records, 12)
    for i in range(12):
        key = f"email:p{i}@co{i}.io"
        causes = [row.cause.get("kind") for row in Auditor(app).history(app.resolve(key))]
        assert "absorb" not in causes, key


def test_forgetting_a_person_shreds_what_their_cookie_left_queued_for_them(
        writers: tuple[LeadflowApp, LeadflowApp], rec: Records, pg_url: str) -> None:
    visits, people = writers
    people.apply_batch([rec("form_submitted", "carl@gamma.io", at=T0, lead=COOKIE)])
    visits.apply_batch([rec("page_viewed", None, at=T0 + days(1), lead=COOKIE,
                            context={"url": "https://x.io/?ref=carl"})], owns=COOKIES)
    [(interest, _, _, _)] = pending(people)
    assert people.vault.has_key(interest)
    people.forget(CARL, "erasure request", "dpo@x.io", T0 + days(2))
    # The visit's interest has its own data key: erased with Carl's, and no longer queued.
    assert not pending(people)
    fresh = LeadflowApp(env=dict(Settings(database_url=pg_url).eventsourcing_env({})))
    try:
        assert not fresh.vault.has_key(interest)
    finally:
        fresh.close()


def queue_ahead(pg_url: str, rows: int) -> None:
    """Queue ``rows`` absorptions for leads another process owns (a lagging consumer's), in
    front of every other row of the queue's (interest, lead) order."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO leadflow_absorptions (interest_id, lead_id, version, owner) "
            "SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, "
            "gen_random_uuid(), 1, 'domain:lagging.io' FROM generate_series(1, %s) AS n",
            (rows,))


def queued(pg_url: str, lead_id: Any = None) -> list[tuple[Any, ...]]:
    """The queue's rows (for one lead), read from the table itself."""
    with psycopg.connect(pg_url) as conn:
        return conn.execute(
            "SELECT interest_id, lead_id, version, owner FROM leadflow_absorptions "
            "WHERE %s::uuid IS NULL OR lead_id = %s::uuid", (lead_id, lead_id)).fetchall()


def test_an_idle_writer_settles_its_queue_behind_a_page_of_another_writers(
        writers: tuple[LeadflowApp, LeadflowApp], rec: Records, pg_url: str) -> None:
    visits, people = writers
    people.apply_batch([rec("form_submitted", "carl@gamma.io", at=T0, lead=COOKIE)])
    carl = people.resolve(CARL)
    visits.apply_batch([rec("page_viewed", None, at=T0 + days(1), lead=COOKIE)], owns=COOKIES)
    assert len(queued(pg_url, carl)) == 1
    # A full page of the queue (and more) ahead of Carl's row, none of it Carl's writer's.
    queue_ahead(pg_url, ABSORB_PAGE + 1)
    gamma = "domain:gamma.io"
    # 0 would tell `consume --until-idle` that nothing of this process's is queued: it
    # exited with Carl's visit still waiting (it read only the queue's first page).
    assert people.settle_absorptions(owns=lambda key: key == gamma) == 1
    assert not queued(pg_url, carl)
    assert people.lead(CARL).touchpoints == 2
    assert people.settle_absorptions(owns=lambda key: key == gamma) == 0
    # The other process's rows are left to it.
    assert len(queued(pg_url)) == ABSORB_PAGE + 1


def test_forgetting_a_person_shreds_their_queued_visits_wherever_they_sit_in_the_queue(
        writers: tuple[LeadflowApp, LeadflowApp], rec: Records, pg_url: str) -> None:
    visits, people = writers
    people.apply_batch([rec("form_submitted", "carl@gamma.io", at=T0, lead=COOKIE)])
    carl = people.resolve(CARL)
    visits.apply_batch([rec("page_viewed", None, at=T0 + days(1), lead=COOKIE,
                            context={"url": "https://x.io/?ref=carl"})], owns=COOKIES)
    [(interest, _, _, _)] = queued(pg_url, carl)
    queue_ahead(pg_url, ABSORB_PAGE + 1)
    people.forget(CARL, "erasure request", "dpo@x.io", T0 + days(2))
    # Erased in the forget's own transaction, not when Carl's writer next takes it up.
    assert not queued(pg_url, carl)
    fresh = LeadflowApp(env=dict(Settings(database_url=pg_url).eventsourcing_env({})))
    try:
        assert not fresh.vault.has_key(interest)
    finally:
        fresh.close()
    assert len(queued(pg_url)) == ABSORB_PAGE + 1
