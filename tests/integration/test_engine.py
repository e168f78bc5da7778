"""The engine end to end on the in-memory and the SQLite store: given records -> state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from leadflow.contract import InboundRecord, RecordRejected, parse_record
from leadflow.domain import Lead
from leadflow.domain.rules import default_rules, default_rules_text, parse_rules
from leadflow.engine.app import LeadflowApp, Outcome
from leadflow.generator import generate
from leadflow.store.cache import SpillingLRUCache
from tests.conftest import T0, Records, days, make_app

US_MID = {"country": "US", "employees": 20, "title": "Engineer"}


def generated_records(seed: int) -> list[InboundRecord]:
    """A small generated stream (60 leads over 30 days), its valid records parsed."""
    records = []
    for line in generate(leads=60, days=30, seed=seed):
        try:
            records.append(parse_record(line))
        except RecordRejected:
            continue
    return records


def lead_a(rec: Records, email: str = "a@acme.io", at=T0, profile=None):  # type: ignore[no-untyped-def]
    lead = dict(profile or {})
    out = [rec("content_downloaded", email, at=at, lead=lead) for _ in range(3)]
    for _ in range(3):
        out += [rec("email_opened", email, at=at), rec("email_clicked", email, at=at)]
    out.append(rec("trial_started", email, at=at))
    return out


def test_lead_a_scores_76_becomes_mql_and_lead_b_scores_19(app: LeadflowApp,
                                                           rec: Records) -> None:
    lead_b = [rec("page_viewed", "b@beta.io", context={"url": "https://x.io/pricing"}),
              rec("email_opened", "b@beta.io"), rec("email_opened", "b@beta.io")]
    result = app.apply_batch(lead_a(rec) + lead_b)
    assert result.applied == 13 and not result.rejected
    a, b = app.lead("email:a@acme.io"), app.lead("email:b@beta.io")
    assert (a.score, a.stage) == (76, "mql")
    assert (b.score, b.stage) == (19, "new")


def test_engagement_decays_by_half_after_30_days_of_event_time(app: LeadflowApp,
                                                               rec: Records) -> None:
    app.apply_batch(lead_a(rec))
    assert app.lead("email:a@acme.io", at=T0 + days(30)).engagement == pytest.approx(38)


def test_every_score_change_records_rule_ids_and_rules_version(app: LeadflowApp,
                                                               rec: Records) -> None:
    app.apply_batch([rec("page_viewed", "b@beta.io", context={"url": "/pricing"})])
    lead_id = app.resolve("email:b@beta.io")
    scored = [e for e in app.repository.get(lead_id).collect_events()] or [
        e for e in app.events.get(lead_id) if type(e).__name__ == "TouchpointScored"]
    event = next(e for e in scored if type(e).__name__ == "TouchpointScored")
    assert event.rules_version == default_rules().version  # type: ignore[attr-defined]
    assert [a["rule"] for a in event.awards] == ["pricing-page"]  # type: ignore[attr-defined]


def test_a_re_sent_record_changes_nothing(app: LeadflowApp, rec: Records) -> None:
    first = rec("form_submitted", "c@gamma.io", event_id="same-id")
    app.apply_batch([first])
    version = app.repository.get(app.resolve("email:c@gamma.io")).version
    again = app.apply_batch([first, first])
    assert [r.outcome for r in again.results] == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert app.repository.get(app.resolve("email:c@gamma.io")).version == version
    assert app.lead("email:c@gamma.io").score == 15


def test_full_lifecycle_with_sales_dispositions_and_links(app: LeadflowApp,
                                                          rec: Records) -> None:
    email = "d@delta.io"
    app.apply_batch(lead_a(rec, email, profile=US_MID))
    view = app.lead(f"email:{email}")
    assert view.stage == "mql" and view.owner == "rep-b"  # routed on MQL by company size
    app.apply_batch([
        rec("contacted", email, at=T0 + days(0.5), actor="rep-b"),
        rec("sales_accepted", email, at=T0 + days(1), actor="rep-b", reason="BANT ok"),
        rec("converted", email, at=T0 + days(3), actor="rep-b",
            deal={"id": "D-1", "amount": "12000", "currency": "USD"}, owner="rep-c"),
        rec("deal_won", email, at=T0 + days(20), actor="rep-c"),
    ])
    view = app.lead(f"email:{email}")
    assert [t["to"] for t in view.transitions] == ["new", "mql", "sql", "opportunity",
                                                   "customer"]
    assert view.transitions[2]["reason"] == "BANT ok"
    lead = app.repository.get(view.lead_id)
    assert lead.links["deal_id"] == "D-1" and lead.links["contact_id"] == str(view.lead_id)
    assert lead.links["deal_amount"] == "12000"
    assert lead.deal_owner == "rep-c" and lead.owner == "rep-b"  # both stay visible
    assert app.rep_load().get("rep-b", 0) == 0  # a customer is no longer open work
    assert app.lead(f"email:{email}", at=T0 + days(2)).stage == "sql"


def test_side_exits_keep_their_reasons_and_a_recycled_lead_can_qualify_again(
        app: LeadflowApp, rec: Records) -> None:
    email = "e@eps.io"
    app.apply_batch(lead_a(rec, email))
    app.apply_batch([rec("recycled", email, at=T0 + days(1), actor="rep-a",
                         reason="not now")])
    view = app.lead(f"email:{email}")
    assert view.stage_now == "recycled" and view.transitions[-1]["reason"] == "not now"
    # New engagement re-qualifies it: score crosses 50 again.
    app.apply_batch([rec("demo_requested", email, at=T0 + days(2)),
                     rec("form_submitted", email, at=T0 + days(2))])
    view = app.lead(f"email:{email}")
    assert [t["to"] for t in view.transitions][-2:] == ["recycled", "mql"]
    app.apply_batch([rec("disqualified", email, at=T0 + days(3), actor="rep-a",
                         reason="competitor")])
    assert app.lead(f"email:{email}").transitions[-1]["reason"] == "competitor"


def test_backward_moves_are_legal_and_recorded(app: LeadflowApp, rec: Records) -> None:
    email = "f@phi.io"
    app.apply_batch(lead_a(rec, email))
    app.apply_batch([rec("sales_accepted", email, at=T0 + days(1), actor="rep-a"),
                     rec("recycled", email, at=T0 + days(2), actor="rep-a", reason="no budget"),
                     rec("sales_accepted", email, at=T0 + days(3), actor="rep-a")])
    stages = [(t["from"], t["to"]) for t in app.lead(f"email:{email}").transitions]
    assert stages[-3:] == [("mql", "sql"), ("sql", "recycled"), ("recycled", "sql")]


def test_a_disposition_for_an_unknown_lead_is_rejected_and_the_batch_goes_on(
        app: LeadflowApp, rec: Records) -> None:
    result = app.apply_batch([rec("deal_won", "ghost@nowhere.io"),
                              rec("form_submitted", "real@somewhere.io"),
                              rec("owner_assigned", "real@somewhere.io", owner="rep-zz")])
    assert [r.outcome for r in result.results] == [Outcome.REJECTED, Outcome.APPLIED,
                                                   Outcome.REJECTED]
    assert [r.reason for r in result.rejected] == ["unknown_lead", "unknown_rep"]
    assert app.lead("email:real@somewhere.io").score == 15


def test_two_identities_of_one_person_merge_into_the_older_lead(app: LeadflowApp,
                                                                rec: Records) -> None:
    app.apply_batch([rec("form_submitted", None, lead={"phone": "+44 20 7946 0958"})])
    app.apply_batch([rec("content_downloaded", "g@gee.io", at=T0 + days(1))])
    older = app.resolve("phone:+442079460958")
    newer = app.resolve("email:g@gee.io")
    assert older != newer
    app.apply_batch([rec("email_clicked", None, at=T0 + days(2),
                         lead={"email": "g@gee.io", "phone": "+442079460958"})])
    assert app.resolve("email:g@gee.io") == older == app.resolve("phone:+442079460958")
    view = app.lead(older)
    assert newer in view.merged_from
    expected = 15 * 2 ** (-2 / 30) + 10 * 2 ** (-1 / 30) + 5
    assert view.engagement == pytest.approx(expected)
    merged = app.repository.get(newer)
    assert merged.merged_into == older and merged.touchpoints == 1  # history kept
    # Later records for the merged identity land on the survivor; re-sends stay ignored.
    app.apply_batch([rec("email_opened", "g@gee.io", at=T0 + days(2))])
    assert app.lead(older).touchpoints == 4


def test_anonymous_touchpoints_count_once_linked_to_a_person(app: LeadflowApp,
                                                             rec: Records) -> None:
    app.apply_batch([rec("page_viewed", None, lead={"anonymous_id": "cookie-1"},
                         context={"url": "/pricing"}),
                     rec("page_viewed", None, lead={"anonymous_id": "cookie-1"},
                         context={"url": "/blog/x"})])
    with pytest.raises(Exception, match="anonymous interest"):
        app.lead("anonymous_id:cookie-1")
    app.apply_batch([rec("form_submitted", "h@aitch.io", at=T0 + days(1),
                         lead={"anonymous_id": "cookie-1"})])
    view = app.lead("email:h@aitch.io")
    assert view.engagement == pytest.approx(17 * 2 ** (-1 / 30) + 15)
    app.apply_batch([rec("email_opened", None, at=T0 + days(1),
                         lead={"anonymous_id": "cookie-1"})])
    assert app.lead("anonymous_id:cookie-1").lead_id == view.lead_id


def test_an_mql_not_accepted_is_recycled_when_its_score_decays_below_the_threshold(
        app: LeadflowApp, rec: Records) -> None:
    app.apply_batch(lead_a(rec))
    app.advance_clock(T0 + days(100))
    view = app.lead("email:a@acme.io")
    recycled = view.transitions[-1]
    assert recycled["to"] == "recycled" and recycled["reason"] == "score decayed"
    expected = 30 * math.log2(76 / 20)  # days until 76 decays to 20
    assert (recycled["at"] - T0).total_seconds() / 86400 == pytest.approx(expected, abs=1e-6)


def test_an_owner_who_makes_no_first_contact_within_the_sla_loses_the_lead(
        app: LeadflowApp, rec: Records) -> None:
    app.apply_batch(lead_a(rec, "i@eye.io", profile={"country": "DE"}))
    assert app.lead("email:i@eye.io").owner == "rep-e"
    app.advance_clock(T0 + days(1.5))
    view = app.lead("email:i@eye.io")
    assert view.owner == "rep-f"
    lead = app.repository.get(view.lead_id)
    assert lead.sla_breached_by == ["rep-e"]
    assert lead.assigned_at == T0 + days(1)  # exactly when the 24h SLA ran out
    # rep-f made no contact either: nobody left in the team, the lead goes to the pool.
    app.advance_clock(T0 + days(3))
    assert app.lead("email:i@eye.io").in_pool
    assert app.rep_load() == {"rep-e": 0, "rep-f": 0}


def test_first_contact_within_the_sla_keeps_the_owner(app: LeadflowApp, rec: Records) -> None:
    app.apply_batch(lead_a(rec, "j@jay.io", profile={"country": "DE"}))
    app.apply_batch([rec("contacted", "j@jay.io", at=T0 + days(0.5), actor="rep-e")])
    app.advance_clock(T0 + days(5))
    assert app.lead("email:j@jay.io").owner == "rep-e"


def test_silent_leads_go_dormant_after_60_days(app: LeadflowApp, rec: Records) -> None:
    app.apply_batch([rec("email_opened", "k@kay.io")])
    app.advance_clock(T0 + days(59))
    assert not app.lead("email:k@kay.io").dormant
    app.advance_clock(T0 + days(61))
    assert app.lead("email:k@kay.io").dormant
    app.apply_batch([rec("email_opened", "k@kay.io", at=T0 + days(62))])
    assert not app.lead("email:k@kay.io").dormant


def test_a_late_record_catches_up_transitions_due_before_it(app: LeadflowApp,
                                                            rec: Records) -> None:
    # The clock is never advanced: the lead's own next record brings its due recycle.
    app.apply_batch(lead_a(rec, "l@ell.io"))
    app.apply_batch([rec("email_opened", "l@ell.io", at=T0 + days(90))])
    stages = [t["to"] for t in app.lead("email:l@ell.io").transitions]
    assert stages == ["new", "mql", "recycled"]


def test_several_people_of_one_company_engaging_raise_an_account_surge(
        app: LeadflowApp, rec: Records) -> None:
    people = ["p1@bigco.com", "p2@bigco.com", "p3@bigco.com"]
    app.apply_batch([rec("content_downloaded", p, at=T0 + days(i)) for i, p in
                     enumerate(people)])
    views = [app.lead(f"email:{p}") for p in people]
    assert {v.account_id for v in views} == {views[0].account_id}
    for view in views:
        assert any(c.rule == "account-surge" for c in view.breakdown)
    # One person with many interactions is not a surge; free-mail people have no account.
    app.apply_batch([rec("email_opened", "solo@gmail.com", at=T0) for _ in range(5)])
    solo = app.lead("email:solo@gmail.com")
    assert solo.account_id is None
    assert not any(c.rule == "account-surge" for c in solo.breakdown)


def test_a_demo_request_from_a_well_fitting_lead_is_auto_qualified_to_sql(
        app: LeadflowApp, rec: Records) -> None:
    app.apply_batch([rec("demo_requested", "m@em.io",
                         lead={"title": "VP Sales", "employees": 200, "country": "US"})])
    view = app.lead("email:m@em.io")
    assert view.stage == "sql" and view.owner == "rep-c"
    assert view.transitions[-1]["actor"] == "rule:demo-with-fit"


def test_manual_assignment_and_unavailable_reps_are_respected(app: LeadflowApp,
                                                               rec: Records) -> None:
    app.set_rep_availability("rep-e", False, T0)
    app.apply_batch(lead_a(rec, "n@en.io", profile={"country": "FR"}))
    assert app.lead("email:n@en.io").owner == "rep-f"
    app.apply_batch([rec("owner_assigned", "n@en.io", at=T0 + days(0.1), owner="rep-a",
                         actor="manager-1")])
    assert app.lead("email:n@en.io").owner == "rep-a"
    assert app.rep_load()["rep-a"] == 1 and app.rep_load()["rep-f"] == 0


def test_late_touchpoints_give_the_same_state_in_any_arrival_order(store: str,
                                                                   tmp_path: Path) -> None:
    rec = Records()
    records = [rec("email_opened", "o@oh.io", at=T0 + days(i)) for i in range(10)]
    records += [rec("page_viewed", "o@oh.io", at=T0 + days(4.5), context={"url": "/pricing"})]
    forward = make_app(store, tmp_path, name="a.db")
    forward.apply_batch(sorted(records, key=lambda r: r.occurred_at))
    backward = make_app(store, tmp_path, name="b.db")
    for record in reversed(records):
        backward.apply_batch([record])
    at = T0 + days(10)
    assert forward.lead("email:o@oh.io", at=at).score == pytest.approx(
        backward.lead("email:o@oh.io", at=at).score)


def test_replay_from_the_store_gives_the_same_state_whatever_the_batch_size(
        store: str, tmp_path: Path) -> None:
    records = generated_records(seed=3)
    one = make_app(store, tmp_path, name="one.db")
    one.apply_batch(records)
    many = make_app(store, tmp_path, name="many.db")
    for i in range(0, len(records), 7):
        many.apply_batch(records[i:i + 7])
    end = max(r.occurred_at for r in records)
    one.advance_clock(end)
    many.advance_clock(end)
    ids = sorted(one.lead_ids())
    assert ids == sorted(many.lead_ids()) and len(ids) > 30
    for lead_id in ids:
        assert one.lead(lead_id, at=end).to_json() == many.lead(lead_id, at=end).to_json()
    if store == "sqlite":
        # A fresh process reconstructs every aggregate from the stored events alone.
        reopened = make_app(store, tmp_path, name="one.db")
        for lead_id in ids:
            assert reopened.lead(lead_id, at=end).to_json() == one.lead(lead_id, at=end).to_json()


def test_clock_reads_only_timer_days_never_every_lead(app: LeadflowApp, rec: Records) -> None:
    app.apply_batch([rec("email_opened", f"q{i}@cue.io", at=T0) for i in range(30)])
    app.advance_clock(T0 + days(30))
    leads = {app.resolve(f"email:q{i}@cue.io") for i in range(30)}
    loaded: list[object] = []
    original = app.repository.get

    def spy(aggregate_id, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = original(aggregate_id, *args, **kwargs)
        loaded.append(type(result).__name__)
        return result

    app.repository.get = spy  # type: ignore[method-assign]
    # A page of due leads is read in one query (those the cache lacks).
    read_together: list[object] = []
    select_many = app.codec.select_many

    def spy_many(ids):  # type: ignore[no-untyped-def]
        read_together.extend(ids)
        return select_many(ids)

    app.codec.select_many = spy_many  # type: ignore[method-assign]
    app.advance_clock(T0 + days(45))  # nothing is due: no lead is loaded
    assert "Lead" not in loaded and not read_together
    app.advance_clock(T0 + days(61))  # all 30 are due for dormancy: each loaded once
    assert loaded.count("Lead") + len(read_together) == 30
    assert set(read_together) <= leads


def test_a_rules_change_is_visible_in_the_recorded_version(tmp_path: Path, rec: Records) -> None:
    rules = parse_rules(default_rules_text().replace("points = 15\ndescription = \"contact",
                                                     "points = 20\ndescription = \"contact"))
    app = make_app("memory", tmp_path, rules=rules)
    app.apply_batch([rec("form_submitted", "r@are.io")])
    lead = app.repository.get(app.resolve("email:r@are.io"))
    assert isinstance(lead, Lead)
    assert app.lead("email:r@are.io").score == 20
    assert lead.awards[0].rule == "contact-form"
    assert rules.version != default_rules().version


def test_a_rep_working_a_pooled_lead_claims_it(app: LeadflowApp, rec: Records) -> None:
    app.apply_batch(lead_a(rec, "s@ess.io"))  # no profile: no routing rule, to the pool
    assert app.lead("email:s@ess.io").in_pool
    app.apply_batch([rec("contacted", "s@ess.io", at=T0 + days(0.2), actor="rep-c")])
    view = app.lead("email:s@ess.io")
    assert view.owner == "rep-c" and not view.in_pool
    assert app.rep_load()["rep-c"] == 1
    # Someone who is not a configured rep (a manager) does not claim by acting.
    app.apply_batch(lead_a(rec, "t@tee.io"))
    app.apply_batch([rec("contacted", "t@tee.io", at=T0 + days(0.2), actor="manager-1")])
    assert app.lead("email:t@tee.io").in_pool


def test_a_tiny_spilling_cache_gives_the_same_state_as_no_cache(store: str,
                                                                tmp_path: Path) -> None:
    """Aggregates evicted, pickled, restored and dropped many times over change nothing."""
    records = generated_records(seed=5)
    plain = make_app(store, tmp_path, name="plain.db")
    env = {"AGGREGATE_CACHE_MAXSIZE": "12", "AGGREGATE_CACHE_FASTFORWARD": "n",
           "DEEPCOPY_FROM_AGGREGATE_CACHE": "n", "LEADFLOW_AGGREGATE_SPILL_MIB": "1"}
    if store == "memory":
        env["PERSISTENCE_MODULE"] = "eventsourcing.popo"
    else:
        env |= {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(tmp_path / "spill.db")}
    spilling = LeadflowApp(env=env)
    cache = spilling.repository.cache
    assert isinstance(cache, SpillingLRUCache)
    cache.spill_bytes = 40_000  # small enough that the oldest spills are dropped too
    for i in range(0, len(records), 50):
        plain.apply_batch(records[i:i + 50])
        spilling.apply_batch(records[i:i + 50])
    stats = cache.stats()
    assert stats["restores"] > 50 and stats["drops"] > 50, stats
    ids = sorted(plain.lead_ids())
    assert ids == sorted(spilling.lead_ids()) and len(ids) > 30
    end = max(r.occurred_at for r in records)
    for lead_id in ids:
        assert spilling.lead(lead_id, at=end).to_json() == plain.lead(lead_id, at=end).to_json()
        assert spilling.verify(lead_id).ok
    assert spilling.rep_load() == plain.rep_load()
