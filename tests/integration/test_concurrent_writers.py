"""Two writers on one store (two consumers of a group): the bookkeeping tables keep them
correct. Each test lets writer B decide a batch, then makes writer A commit in between (from
B's ``before_commit``), as two consumers racing would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eventsourcing.persistence import IntegrityError

from leadflow.engine.app import LeadflowApp
from tests.conftest import T0, Records, days
from tests.integration.conftest import meanwhile, two_writers


@pytest.fixture
def writers(db_url: str) -> Iterator[tuple[LeadflowApp, LeadflowApp]]:
    with two_writers(db_url) as pair:
        yield pair


def test_a_key_registered_by_another_writer_meanwhile_fails_the_batch_which_then_retries(
        writers: tuple[LeadflowApp, LeadflowApp], rec: Records) -> None:
    a, b = writers
    by_a = rec("form_submitted", "anna@acme.io", lead={"phone": "+14155550100"})
    # B sees neither key yet: a phone-only person, a new lead keyed by the phone.
    by_b = rec("email_opened", None, at=T0 + days(1), lead={"phone": "+1 415 555 0100",
                                                             "external_id": "crm-7"})
    with pytest.raises(IntegrityError):
        b.apply_batch([by_b], before_commit=meanwhile(lambda: a.apply_batch([by_a])))
    b.forget_cached_aggregates()  # what the consumer does before it retries the batch
    assert b.apply_batch([by_b]).results[0].outcome.value == "applied"
    # One person, one lead: B's retry found the phone on A's lead and added the CRM id.
    lead = b.lead("email:anna@acme.io")
    assert b.lead("external_id:crm-7").lead_id == lead.lead_id
    assert lead.touchpoints == 2
    assert a.lead("phone:+14155550100").lead_id == lead.lead_id


def test_rep_load_is_exact_whatever_order_two_writers_commit_in(
        writers: tuple[LeadflowApp, LeadflowApp], rec: Records) -> None:
    a, b = writers
    # The store's first batch creates the shared router and clock (two first batches at once
    # conflict once, and one is retried); here it runs alone.
    # Demo requests from a good fit are auto-qualified and routed.
    hot = {"title": "VP Sales", "employees": 400, "country": "US"}
    first = [rec("demo_requested", "first@x.io", lead=hot)]
    b.apply_batch(first)
    # Each writer routes its own leads.
    mine_a = [rec("demo_requested", f"a{i}@a{i}.io", lead=hot) for i in range(3)]
    mine_b = [rec("demo_requested", f"b{i}@b{i}.io", lead=hot) for i in range(4)]
    b.apply_batch(mine_b, before_commit=meanwhile(lambda: a.apply_batch(mine_a)))
    everyone = first + mine_a + mine_b
    assert {b.lead(f"email:{r.lead.email}").stage_now for r in everyone} == {"sql"}
    working: dict[str, int] = {}
    for r in everyone:
        owner = b.lead(f"email:{r.lead.email}").owner
        if owner is not None:
            working[owner] = working.get(owner, 0) + 1
    # Neither writer's load changes overwrote the other's: the counters are the sum.
    assert sum(working.values()) == 8
    assert {k: v for k, v in b.rep_load().items() if v} == working
    assert a.rep_load() == b.rep_load()
