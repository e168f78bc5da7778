"""The projection handlers: given stored events, the read-model rows they produce.

Events are given as the projector reads them from the store: a notification id, the stored
topic and the JSON payload eventsourcing wrote (``{"_type_", "_data_"}`` tags for times and
UUIDs), wrapped in ``EventData``. ``PageChanges`` holds the rows in memory, so the handlers
run without a database; the last test writes pages to SQLite to check what only the writer
derives (owner load, counts added across pages).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex
from eventsourcing.utils import get_topic

from leadflow.domain import Account, Lead
from leadflow.projections.db import ProjectionDB, from_db
from leadflow.projections.events import KINDS, EventData, load_payload
from leadflow.projections.handlers import LEAD_COLUMNS, PageChanges
from leadflow.projections.schema import columns, tables_ddl
from leadflow.projections.writer import Page
from tests.conftest import T0, days

LEAD = UUID("00000000-0000-4000-8000-00000000000a")
OTHER = UUID("00000000-0000-4000-8000-00000000000b")
ACCOUNT = UUID("00000000-0000-4000-8000-0000000000ac")
HALF_LIFE = 30.0

_TRANSCODER = JSONTranscoder()
for _transcoding in (UUIDAsHex(), DatetimeAsISO(), DecimalAsStr()):  # as Application does
    _TRANSCODER.register(_transcoding)

Stored = tuple[int, str, EventData]


class Store:
    """Numbers events as the event store does and stores them as its JSON payloads."""

    def __init__(self) -> None:
        self.nid = 0

    def __call__(self, event: str, of: UUID = LEAD, /, **fields: Any) -> Stored:
        aggregate = Account if of == ACCOUNT else Lead
        self.nid += 1
        state = _TRANSCODER.encode({"timestamp": T0, **fields})
        return self.nid, get_topic(getattr(aggregate, event)), EventData(
            of, load_payload(state), _TRANSCODER.names)

    def created(self, of: UUID = LEAD, /, **fields: Any) -> Stored:
        return self("Created", of, **{
            "primary_key": f"email:{of.hex[-2:]}@example.com", "created_at": T0,
            "source": "ads", "campaign": "spring", "landing_page": "/lp", "account_id": None,
            "chain": "c0", **fields})

    def stage(self, to: str, at: datetime, of: UUID = LEAD, /, **fields: Any) -> Stored:
        return self("StageChanged", of, **{
            "from_stage": "?", "to_stage": to, "occurred_at": at, "actor": "rule:test",
            "reason": f"to {to}", "event_id": None, "links": {}, **fields})


def project(*events: Stored, into: PageChanges | None = None) -> PageChanges:
    changes = into if into is not None else PageChanges(HALF_LIFE)
    for nid, topic, event in events:
        changes.apply(nid, topic, event)
    return changes


def named(table: str, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    names = [c.name for c in columns()[table]]
    return [dict(zip(names, row, strict=True)) for row in rows]


def award(rule: str, points: float, at: datetime, event_id: str = "evt-1",
          expires_at: datetime | None = None) -> dict[str, Any]:
    return {"rule": rule, "points": points, "at": at, "event_id": event_id,
            "expires_at": expires_at}


@pytest.fixture
def store() -> Store:
    return Store()


# ---------------------------------------------------------------- leads


def test_a_created_lead_is_a_new_row_with_one_transition_and_one_funnel_entry(
        store: Store) -> None:
    changes = project(store.created(source="ads", campaign="spring"))

    row = changes.leads[str(LEAD)]
    assert set(row) == set(LEAD_COLUMNS)
    assert row["lead_id"] == str(LEAD) and row["primary_key"] == "email:0a@example.com"
    assert json.loads(row["identities"]) == ["email:0a@example.com"]
    assert (row["stage"], row["stage_at"], row["created_at"]) == ("new", T0, T0)
    assert row["created_at"].tzinfo is not None
    assert (row["source"], row["campaign"], row["landing_page"]) == ("ads", "spring", "/lp")
    assert row["segment"] == "??/size?"
    assert (row["fit"], json.loads(row["fit_awards"])) == (0.0, {})
    assert (row["engagement_value"], row["half_life_days"], row["touchpoints"]) == (
        0.0, HALF_LIFE, 0)
    assert row["in_pool"] is False and row["dormant"] is False
    assert row["account_id"] is None and row["owner"] is None
    assert named("stage_transitions", changes.transitions) == [{
        "notification_id": 1, "seq": 0, "lead_id": str(LEAD), "from_stage": None,
        "to_stage": "new",
        "occurred_at": T0, "owner": None, "source": "ads", "campaign": "spring",
        "actor": "system", "reason": None}]
    assert changes.funnel == {(T0.date().isoformat(), "new", "ads", "spring"): 1}
    assert changes.ledger == []
    assert changes.before == {str(LEAD): None}


def test_a_lead_created_with_an_account_and_without_a_campaign_counts_under_an_empty_one(
        store: Store) -> None:
    changes = project(store.created(account_id=ACCOUNT, campaign=None))

    assert changes.leads[str(LEAD)]["account_id"] == str(ACCOUNT)
    assert changes.funnel == {(T0.date().isoformat(), "new", "ads", ""): 1}


def test_an_event_for_a_lead_the_projection_has_no_row_for_names_the_lead_and_event(
        store: Store) -> None:
    with pytest.raises(RuntimeError, match=rf"no row for lead {LEAD} \(event 1\)"):
        project(store("WentDormant", occurred_at=T0, silent_days=60.0))


def test_identity_keys_are_added_once_and_the_account_is_set(store: Store) -> None:
    changes = project(
        store.created(),
        store("IdentityAdded", key="phone:+4930123", occurred_at=T0),
        store("IdentityAdded", key="phone:+4930123", occurred_at=T0),
        store("AccountSet", account_id=ACCOUNT, occurred_at=T0),
    )

    row = changes.leads[str(LEAD)]
    assert json.loads(row["identities"]) == ["email:0a@example.com", "phone:+4930123"]
    assert row["account_id"] == str(ACCOUNT)


def test_a_profile_update_fills_the_profile_moves_the_segment_and_ledgers_each_fit_change(
        store: Store) -> None:
    at = T0 + days(1)
    changes = project(
        store.created(),
        store("ProfileUpdated", changes={"country": "US", "employees": 200, "title": "VP"},
              fit=25.0, fit_awards=[["title-vp", 15.0], ["size-mid", 10.0]], occurred_at=T0,
              event_id="evt-p1", rules_version="r1"),
        store("ProfileUpdated", changes={"employees": 20}, fit=20.0,
              fit_awards=[["title-vp", 15.0], ["size-small", 5.0]], occurred_at=at,
              event_id="evt-p2", rules_version="r2"),
    )

    row = changes.leads[str(LEAD)]
    assert (row["country"], row["employees"], row["title"]) == ("US", 20, "VP")
    assert row["segment"] == "US/11-50"
    assert row["fit"] == 20.0
    assert json.loads(row["fit_awards"]) == {"size-small": 5.0, "title-vp": 15.0}
    fit = [(r["notification_id"], r["seq"], r["rule"], r["points"], r["event_id"],
            r["rules_version"], r["occurred_at"], r["kind"], r["expires_at"])
           for r in named("score_ledger", changes.ledger)]
    assert fit == [
        (2, 0, "size-mid", 10.0, "evt-p1", "r1", T0, "fit", None),
        (2, 1, "title-vp", 15.0, "evt-p1", "r1", T0, "fit", None),
        (3, 0, "size-mid", -10.0, "evt-p2", "r2", at, "fit", None),  # unchanged: no row
        (3, 1, "size-small", 5.0, "evt-p2", "r2", at, "fit", None),
    ]


def test_fit_points_that_are_no_finite_number_are_null_in_fit_awards_and_nan_in_the_ledger(
        store: Store) -> None:
    changes = project(
        store.created(),
        store("ProfileUpdated", changes={}, fit=0.0, fit_awards=[["odd", math.inf]],
              occurred_at=T0, event_id="evt-p", rules_version="r1"),
    )

    assert json.loads(changes.leads[str(LEAD)]["fit_awards"]) == {"odd": None}
    [entry] = named("score_ledger", changes.ledger)
    assert entry["rule"] == "odd" and math.isnan(entry["points"])


def test_a_scored_touchpoint_ledgers_its_awards_counts_a_touch_and_wakes_a_dormant_lead(
        store: Store) -> None:
    at, expires = T0 + days(2), T0 + days(92)
    changes = project(
        store.created(),
        store("WentDormant", occurred_at=T0, silent_days=60.0),
        store("TouchpointScored", event_id="evt-t", record_type="email_clicked",
              occurred_at=at, context={}, rules_version="r1", engagement_value=25.0,
              engagement_as_of=at, awards=[award("click", 10.0, at, "evt-t"),
                                           award("click-bonus", 15.0, at, "evt-t", expires)]),
    )

    row = changes.leads[str(LEAD)]
    assert (row["engagement_value"], row["engagement_as_of"]) == (25.0, at)
    assert (row["touchpoints"], row["last_touch_at"], row["dormant"]) == (1, at, False)
    assert named("score_ledger", changes.ledger) == [
        {"notification_id": 3, "seq": 0, "lead_id": str(LEAD), "event_id": "evt-t",
         "kind": "engagement", "rule": "click", "rules_version": "r1", "points": 10.0,
         "occurred_at": at, "expires_at": None, "model": None},
        {"notification_id": 3, "seq": 1, "lead_id": str(LEAD), "event_id": "evt-t",
         "kind": "engagement", "rule": "click-bonus", "rules_version": "r1", "points": 15.0,
         "occurred_at": at, "expires_at": expires, "model": None},
    ]


def test_a_touchpoint_older_than_the_last_touch_counts_but_leaves_the_last_touch(
        store: Store) -> None:
    late, early = T0 + days(5), T0 + days(1)
    touch = {"record_type": "page_viewed", "context": {}, "rules_version": "r1",
             "engagement_value": 1.0, "awards": []}
    changes = project(
        store.created(),
        store("TouchpointScored", event_id="e1", occurred_at=late, engagement_as_of=late,
              **touch),
        store("WentDormant", occurred_at=late, silent_days=60.0),
        store("TouchpointScored", event_id="e2", occurred_at=early, engagement_as_of=late,
              **touch),
    )

    row = changes.leads[str(LEAD)]
    assert (row["touchpoints"], row["last_touch_at"], row["dormant"]) == (2, late, True)


def test_a_boost_ledgers_boost_awards_without_counting_a_touch(store: Store) -> None:
    at = T0 + days(3)
    changes = project(
        store.created(),
        store("Boosted", awards=[award("account-surge", 10.0, at, "account:x")],
              engagement_value=10.0, engagement_as_of=at, occurred_at=at, cause="account:x",
              rules_version="r1"),
    )

    row = changes.leads[str(LEAD)]
    assert (row["engagement_value"], row["engagement_as_of"]) == (10.0, at)
    assert (row["touchpoints"], row["last_touch_at"]) == (0, None)
    assert [(r["kind"], r["rule"], r["points"], r["event_id"])
            for r in named("score_ledger", changes.ledger)] == [
        ("boost", "account-surge", 10.0, "account:x")]


def test_absorbed_interest_counts_each_of_its_touchpoints_and_keeps_the_latest_touch(
        store: Store) -> None:
    latest = T0 + days(4)
    interest = {"anonymous_id": "anon-1", "rules_version": "r1", "engagement_value": 8.0,
                "awards": [award("pricing-page", 8.0, T0, "a1")]}
    changes = project(
        store.created(),
        store("InterestAbsorbed", event_ids=["a1", "a2", "a3"], last_touch_at=latest,
              occurred_at=latest, engagement_as_of=latest, **interest),
        store("InterestAbsorbed", event_ids=["a4"], last_touch_at=T0, occurred_at=latest,
              engagement_as_of=latest, **interest),
    )

    row = changes.leads[str(LEAD)]
    assert (row["touchpoints"], row["last_touch_at"]) == (4, latest)
    assert (row["engagement_value"], row["engagement_as_of"]) == (8.0, latest)
    assert [(r["notification_id"], r["kind"], r["rule"])
            for r in named("score_ledger", changes.ledger)] == [
        (2, "engagement", "pricing-page"), (3, "engagement", "pricing-page")]


# ---------------------------------------------------------------- lifecycle


def test_reaching_a_stage_marks_every_funnel_stage_before_it_reached_once(
        store: Store) -> None:
    sql_at, opp_at = T0 + days(2), T0 + days(9)
    changes = project(
        store.created(),
        store.stage("sql", sql_at, from_stage="new", actor="rep-a", reason="accepted"),
        store.stage("opportunity", opp_at, from_stage="sql"),
    )

    row = changes.leads[str(LEAD)]
    assert (row["stage"], row["stage_at"], row["stage_reason"]) == (
        "opportunity", opp_at, "to opportunity")
    assert (row["reached_mql_at"], row["reached_sql_at"]) == (sql_at, sql_at)
    assert (row["reached_opportunity_at"], row["reached_customer_at"]) == (opp_at, None)
    assert named("stage_transitions", changes.transitions)[1] == {
        "notification_id": 2, "seq": 0, "lead_id": str(LEAD), "from_stage": "new",
        "to_stage": "sql",
        "occurred_at": sql_at, "owner": None, "source": "ads", "campaign": "spring",
        "actor": "rep-a", "reason": "accepted"}
    assert changes.funnel == {  # the stage entered only, not the ones passed
        (T0.date().isoformat(), "new", "ads", "spring"): 1,
        (sql_at.date().isoformat(), "sql", "ads", "spring"): 1,
        (opp_at.date().isoformat(), "opportunity", "ads", "spring"): 1,
    }


def test_an_owner_shows_on_later_transitions_and_recycling_returns_the_lead_unowned(
        store: Store) -> None:
    mql_at, contact_at, recycled_at = T0 + days(1), T0 + days(2), T0 + days(30)
    changes = project(
        store.created(),
        store.stage("mql", mql_at),
        store("OwnerAssigned", owner="rep-a", team="emea", rule="r", strategy="round_robin",
              previous_owner=None, occurred_at=mql_at, actor="rule:assign", reason="mql"),
        store("FirstContactMade", by="rep-a", occurred_at=contact_at),
    )
    row = changes.leads[str(LEAD)]
    assert (row["owner"], row["team"], row["in_pool"], row["contacted_at"]) == (
        "rep-a", "emea", False, contact_at)

    project(store.stage("recycled", recycled_at, reason="no budget"), into=changes)

    assert named("stage_transitions", changes.transitions)[-1]["owner"] == "rep-a"
    assert (row["owner"], row["team"], row["in_pool"], row["contacted_at"]) == (
        None, None, False, None)
    assert (row["recycled_at"], row["recycled_reason"]) == (recycled_at, "no budget")
    assert row["disqualified_at"] is None and row["lost_at"] is None


def test_an_assignment_without_an_owner_puts_the_lead_in_its_team_pool(store: Store) -> None:
    changes = project(
        store.created(),
        store("FirstContactMade", by="rep-a", occurred_at=T0),
        store("OwnerAssigned", owner=None, team="emea", rule="r", strategy="pool",
              previous_owner="rep-a", occurred_at=T0, actor="rule:assign", reason="pool"),
    )

    row = changes.leads[str(LEAD)]
    assert (row["owner"], row["team"], row["in_pool"], row["contacted_at"]) == (
        None, "emea", True, None)


def test_disqualifying_records_its_time_and_reason_and_clears_the_owner(store: Store) -> None:
    at = T0 + days(3)
    changes = project(
        store.created(),
        store("OwnerAssigned", owner="rep-a", team="emea", rule="r", strategy="round_robin",
              previous_owner=None, occurred_at=T0, actor="rule:assign", reason="new"),
        store.stage("disqualified", at, reason="student"),
    )

    row = changes.leads[str(LEAD)]
    assert (row["disqualified_at"], row["disqualified_reason"]) == (at, "student")
    assert (row["owner"], row["team"]) == (None, None)
    assert row["reached_mql_at"] is None  # not a funnel stage: passes none


def test_a_deal_keeps_its_links_through_a_loss_that_records_its_time_and_reason(
        store: Store) -> None:
    opp_at, lost_at = T0 + days(5), T0 + days(20)
    changes = project(
        store.created(),
        store.stage("opportunity", opp_at,
                    links={"deal_id": "D1", "deal_amount": "1000", "deal_currency": "USD"}),
        store("DealOwnerSet", owner="rep-b", occurred_at=opp_at),
        store.stage("lost", lost_at, reason="price", links={}),
    )

    row = changes.leads[str(LEAD)]
    assert (row["deal_id"], row["deal_amount"], row["deal_currency"]) == ("D1", "1000", "USD")
    assert row["deal_owner"] == "rep-b"
    assert (row["stage"], row["lost_at"], row["lost_reason"]) == ("lost", lost_at, "price")


def test_a_dormant_lead_is_marked_dormant(store: Store) -> None:
    changes = project(store.created(), store("WentDormant", occurred_at=T0, silent_days=60.0))

    assert changes.leads[str(LEAD)]["dormant"] is True


# ---------------------------------------------------------------- merges


def test_a_merge_marks_the_duplicate_and_the_survivor_takes_its_identities_touches_and_fit(
        store: Store) -> None:
    at, last_touch = T0 + days(6), T0 + days(4)
    changes = project(
        store.created(LEAD),
        store.created(OTHER),
        store("WentDormant", LEAD, occurred_at=T0, silent_days=60.0),
        store("MergedInto", OTHER, survivor_id=LEAD, occurred_at=at, event_id="evt-m"),
        store("Absorbed", LEAD, lead_id=OTHER, identity_keys=["email:0b@example.com"],
              awards=[], engagement_value=12.0, engagement_as_of=at,
              profile={"country": "DE", "employees": 5}, fit=10.0,
              fit_awards=[["size-small", 10.0]], seen=["e1"], touchpoints=3,
              last_touch_at=last_touch, occurred_at=at, event_id="evt-m",
              rules_version="r1"),
    )

    survivor, duplicate = changes.leads[str(LEAD)], changes.leads[str(OTHER)]
    assert duplicate["merged_into"] == str(LEAD)
    assert json.loads(survivor["identities"]) == ["email:0a@example.com", "email:0b@example.com"]
    assert (survivor["country"], survivor["employees"], survivor["segment"]) == (
        "DE", 5, "DE/1-10")
    assert (survivor["engagement_value"], survivor["touchpoints"]) == (12.0, 3)
    assert (survivor["last_touch_at"], survivor["dormant"]) == (last_touch, False)
    assert (survivor["fit"], json.loads(survivor["fit_awards"])) == (10.0, {"size-small": 10.0})
    assert [(r["lead_id"], r["kind"], r["rule"], r["points"], r["event_id"])
            for r in named("score_ledger", changes.ledger)] == [
        (str(LEAD), "fit", "size-small", 10.0, "evt-m")]

    project(store("Unmerged", OTHER, survivor_id=LEAD, occurred_at=at, actor="ops"),
            into=changes)
    assert duplicate["merged_into"] is None


def test_a_restored_state_replaces_the_row_and_reached_times_come_from_first_reached(
        store: Store) -> None:
    sql_at, mql_at, at = T0 + days(2), T0 + days(3), T0 + days(10)
    changes = project(
        store.created(),
        store.stage("sql", T0 + days(1)),
        store("ProfileUpdated", changes={"country": "FR"}, fit=15.0,
              fit_awards=[["title-vp", 15.0]], occurred_at=T0, event_id="e", rules_version="r"),
    )
    state = {
        "identity_keys": ["email:0a@example.com"], "profile": {"country": "US"},
        "fit": 5.0, "fit_awards": [["size-small", 5.0]], "eng_value": 3.0, "eng_as_of": at,
        "touchpoints": 7, "last_touch_at": mql_at, "dormant": True, "stage": "mql",
        "stage_at": mql_at, "stage_reason": "score", "owner": "rep-c", "team": "na",
        "in_pool": False, "contacted_at": None, "deal_owner": None, "account_id": ACCOUNT,
        # Straight to SQL, recycled, back at MQL: SQL passed MQL before MQL was entered.
        "first_reached": {"new": T0, "sql": sql_at, "recycled": at, "mql": mql_at},
    }
    project(store("StateRestored", state=state, released_lead=OTHER, occurred_at=at,
                  actor="ops"), into=changes)

    row = changes.leads[str(LEAD)]
    assert (row["stage"], row["stage_at"], row["stage_reason"]) == ("mql", mql_at, "score")
    assert (row["owner"], row["team"], row["account_id"]) == ("rep-c", "na", str(ACCOUNT))
    assert (row["country"], row["segment"]) == ("US", "US/size?")
    assert (row["engagement_value"], row["engagement_as_of"]) == (3.0, at)
    assert (row["touchpoints"], row["last_touch_at"], row["dormant"]) == (7, mql_at, True)
    assert (row["reached_mql_at"], row["reached_sql_at"]) == (sql_at, sql_at)
    assert row["reached_opportunity_at"] is None
    assert [(r["notification_id"], r["rule"], r["points"], r["event_id"], r["rules_version"])
            for r in named("score_ledger", changes.ledger)][-2:] == [
        (4, "size-small", 5.0, f"unmerge:{OTHER}", "unmerge"),
        (4, "title-vp", -15.0, f"unmerge:{OTHER}", "unmerge"),
    ]


# ---------------------------------------------------------------- accounts


def test_an_account_row_counts_its_peoples_touchpoints_and_surges(store: Store) -> None:
    engaged, earlier, surged = T0 + days(2), T0 + days(1), T0 + days(3)

    def touch(event_id: str, at: datetime, of: UUID = LEAD) -> Stored:
        return store("TouchpointScored", of, event_id=event_id, record_type="email_opened",
                     occurred_at=at, context={}, awards=[], engagement_value=0.0,
                     engagement_as_of=at, score=0.0, rules_version="v1")

    changes = project(
        store("Created", ACCOUNT, account_key="domain:acme.io", name="Acme", occurred_at=T0),
        store.created(), store.created(OTHER),
        touch("before", T0),  # not yet in the account: not its engagement
        store("AccountSet", LEAD, account_id=ACCOUNT, occurred_at=T0),
        store("AccountSet", OTHER, account_id=ACCOUNT, occurred_at=T0),
        touch("t1", engaged), touch("t2", earlier, OTHER),
        store("Surged", ACCOUNT, occurred_at=surged, lead_ids=[LEAD, OTHER], window_days=14.0),
    )

    assert changes.accounts == {str(ACCOUNT): {
        "account_id": str(ACCOUNT), "account_key": "domain:acme.io", "name": "Acme",
        "engagements": 2, "surges": 1, "last_engaged_at": engaged, "last_surge_at": surged,
        "surge_window_days": 14.0}}
    assert changes.last_event[str(ACCOUNT)] == 9


def test_a_surge_recorded_on_the_lead_that_set_it_off_counts_on_its_account(
        store: Store) -> None:
    surged = T0 + days(3)
    changes = project(
        store("Created", ACCOUNT, account_key="domain:acme.io", name="Acme", occurred_at=T0),
        store.created(),
        store("AccountSet", LEAD, account_id=ACCOUNT, occurred_at=T0),
        store("AccountSurged", LEAD, account_id=ACCOUNT, lead_ids=[LEAD, OTHER],
              window_days=14.0, occurred_at=surged),
    )
    account = changes.accounts[str(ACCOUNT)]
    assert (account["surges"], account["last_surge_at"], account["surge_window_days"]) == (
        1, surged, 14.0)


# ---------------------------------------------------------------- hostile values


def test_a_count_that_stops_being_an_integer_the_column_holds_stays_null(
        store: Store) -> None:
    at = T0 + days(1)
    changes = project(
        store.created(),
        store("Absorbed", lead_id=OTHER, identity_keys=[], awards=[], engagement_value=0.0,
              engagement_as_of=at, profile={}, fit=0.0, fit_awards=[], seen=[],
              touchpoints=10**40, last_touch_at=None, occurred_at=at, event_id="e",
              rules_version="r"),
        store("TouchpointScored", event_id="e2", record_type="page_viewed", occurred_at=at,
              context={}, rules_version="r", engagement_value=1.0, engagement_as_of=at,
              awards=[]),
    )

    assert changes.leads[str(LEAD)]["touchpoints"] is None


def test_stored_text_loses_nul_before_it_reaches_a_row_or_a_funnel_key(store: Store) -> None:
    changes = project(store.created(source="a\x00ds"))

    assert changes.leads[str(LEAD)]["source"] == "a\ufffdds"
    assert list(changes.funnel) == [(T0.date().isoformat(), "new", "a\ufffdds", "spring")]


# ---------------------------------------------------------------- named models


def scored(store: Store, models: dict[str, Any], at: datetime, event_id: str | None,
           nid: int | None = None) -> Stored:
    """A ModelsScored event (in the stored row ``nid``, when given: an envelope's events
    share one notification id)."""
    number, topic, event = store("ModelsScored", models=models, occurred_at=at,
                                 event_id=event_id, rules_version="r-m")
    return (nid if nid is not None else number), topic, event


def test_each_models_points_go_to_the_ledger_under_its_id_and_its_state_to_its_row(
        store: Store) -> None:
    at, expires = T0 + days(1), T0 + days(8)
    changes = PageChanges(HALF_LIFE, {"b": (10.0, 20.0), "emea": (30.0, 30.0)})
    project(
        store.created(),
        scored(store, {"b": {"fit": 5.0, "fit_awards": [["b-big", 5.0]]}}, T0, "evt-1"),
        scored(store, {"b": {"awards": [award("b-page", 12.0, at, "evt-2")],
                             "engagement_value": 12.0, "engagement_as_of": at},
                       "emea": {"awards": [award("demo", 30.0, at, "evt-2", expires)],
                                "engagement_value": 0.0, "engagement_as_of": at}},
               at, "evt-2"),
        store("ModelThresholdCrossed", model="b", direction="up", score=22.0, threshold=20.0,
              occurred_at=at, rules_version="r-m"),
        into=changes)

    b, emea = changes.models[str(LEAD)]["b"], changes.models[str(LEAD)]["emea"]
    assert (b["fit"], json.loads(b["fit_awards"])) == (5.0, {"b-big": 5.0})
    assert (b["engagement_value"], b["engagement_as_of"], b["half_life_days"]) == (12.0, at, 10.0)
    assert (b["threshold"], b["above"], b["crossed_at"]) == (20.0, True, at)
    assert (emea["engagement_value"], emea["above"], emea["crossed_at"]) == (0.0, False, None)
    assert [(r["model"], r["kind"], r["rule"], r["points"], r["event_id"], r["expires_at"])
            for r in named("score_ledger", changes.ledger)] == [
        ("b", "fit", "b-big", 5.0, "evt-1", None),
        ("b", "engagement", "b-page", 12.0, "evt-2", None),
        ("emea", "engagement", "demo", 30.0, "evt-2", expires)]
    lead = changes.leads[str(LEAD)]  # the primary model's row is untouched
    assert (lead["fit"], lead["engagement_value"]) == (0.0, 0.0)


def test_a_merges_carried_model_points_are_recorded_on_the_survivor_as_its_state_holds_them(
        store: Store) -> None:
    at = T0 + days(2)
    changes = project(store.created(LEAD), store.created(OTHER))
    nid, topic, absorbed = store("Absorbed", LEAD, lead_id=OTHER, identity_keys=[], awards=[],
                                 engagement_value=0.0, engagement_as_of=at, profile={},
                                 fit=0.0, fit_awards=[], seen=[], touchpoints=1,
                                 last_touch_at=at, occurred_at=at, event_id="evt-3",
                                 rules_version="r1")
    carried = {"b": {"awards": [award("b-page", 12.0, T0, "evt-2")],
                     "engagement_value": 20.0, "engagement_as_of": T0 + days(1)}}
    own = {"b": {"awards": [award("b-page", 12.0, at, "evt-3")],
                 "engagement_value": 30.0, "engagement_as_of": at}}
    # One stored row: the merge (Absorbed, then the model points it brings), then the
    # merging record's own points: the survivor's state holds both, so do its rows.
    project((nid, topic, absorbed), scored(store, carried, at, "evt-3", nid),
            scored(store, own, at, "evt-3", nid), into=changes)

    assert [(r["lead_id"], r["rule"], r["event_id"], r["seq"])
            for r in named("score_ledger", changes.ledger)] == [
        (str(LEAD), "b-page", "evt-2", 0), (str(LEAD), "b-page", "evt-3", 1)]
    assert changes.models[str(LEAD)]["b"]["engagement_value"] == 30.0


def test_an_unmerge_restores_each_models_state_and_empties_a_model_the_lead_lost(
        store: Store) -> None:
    at = T0 + days(3)
    changes = project(
        store.created(),
        # A backfill after a merge gave the lead the merged lead's record e9's points too.
        scored(store, {"b": {"fit": 5.0, "fit_awards": [["b-big", 5.0]],
                             "awards": [award("b-page", 12.0, T0, "e1"),
                                        award("b-page", 12.0, T0, "e9")],
                             "engagement_value": 24.0, "engagement_as_of": T0},
                       "emea": {"engagement_value": 4.0, "engagement_as_of": T0}}, T0, "e1"),
        store("ModelThresholdCrossed", model="b", direction="up", score=29.0, threshold=20.0,
              occurred_at=T0, rules_version="r-m"))
    state = {
        "identity_keys": [], "profile": {}, "fit": 0.0, "fit_awards": [], "eng_value": 0.0,
        "eng_as_of": None, "touchpoints": 1, "last_touch_at": None, "dormant": False,
        "stage": "new", "stage_at": T0, "stage_reason": None, "owner": None, "team": None,
        "in_pool": False, "contacted_at": None, "deal_owner": None, "account_id": None,
        "first_reached": {"new": T0},
        "_models": {"b": {"fit": 0.0, "fit_awards": [], "value": 12.0, "as_of": T0,
                          "awards": [award("b-page", 12.0, T0, "e1")], "counts": {},
                          "totals": {}, "above": False,
                          "crossed_at": None}},
    }
    project(store("StateRestored", state=state, released_lead=OTHER, occurred_at=at,
                  actor="ops"), into=changes)

    b, emea = changes.models[str(LEAD)]["b"], changes.models[str(LEAD)]["emea"]
    assert (b["fit"], b["engagement_value"], b["above"], b["crossed_at"]) == (
        0.0, 12.0, False, None)
    assert (emea["engagement_value"], emea["engagement_as_of"]) == (0.0, None)
    # Of the engagement rows, the lead's own record's stay (as Lead.refold_models keeps
    # them); the fit change of the restore is recorded.
    assert [(r["model"], r["rule"], r["points"], r["event_id"])
            for r in named("score_ledger", changes.ledger) if r["model"]] == [
        ("b", "b-page", 12.0, "e1"), ("b", "b-big", 5.0, "e1"),
        ("b", "b-big", -5.0, f"unmerge:{OTHER}")]
    assert changes.released == [(str(LEAD), 4, frozenset({("b", "e1")}))]


# ---------------------------------------------------------------- written to SQLite


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[ProjectionDB]:
    db = ProjectionDB(f"sqlite:///{tmp_path / 'read-models.db'}")
    db.executescript(tables_ddl("sqlite"))
    try:
        yield db
    finally:
        db.close()


def write_page(db: ProjectionDB, *events: Stored) -> None:
    """One page as the projector applies it: load the rows it touches, apply, write."""
    page = Page(db, "", HALF_LIFE)
    page.load({str(e.originator_id) for _, topic, e in events if not KINDS[topic][0]}, set())
    project(*events, into=page)
    with db.transaction():
        page.write()


def assign(store: Store, of: UUID, owner: str, at: datetime) -> Stored:
    return store("OwnerAssigned", of, owner=owner, team="emea", rule="r",
                 strategy="round_robin", previous_owner=None, occurred_at=at,
                 actor="rule:assign", reason="mql")


def test_pages_written_to_sqlite_add_up_funnel_counts_and_owner_load_across_pages(
        sqlite: ProjectionDB, store: Store) -> None:
    day = T0 + days(1)
    funnel = ("SELECT day, stage, source, campaign, entries FROM funnel_daily "
              "ORDER BY day, stage")
    write_page(sqlite, store.created(LEAD), store.created(OTHER),
               store.stage("mql", day, LEAD), assign(store, LEAD, "rep-a", day))
    assert sqlite.query("SELECT * FROM owner_load") == [
        {"owner": "rep-a", "stage": "mql", "open_leads": 1}]

    # The leads are read back from the table, changed and counted on top of what is there.
    write_page(sqlite, store.stage("mql", day, OTHER), assign(store, OTHER, "rep-a", day))
    assert sqlite.query("SELECT * FROM owner_load") == [
        {"owner": "rep-a", "stage": "mql", "open_leads": 2}]
    assert sqlite.query(funnel) == [
        {"day": T0.date().isoformat(), "stage": "new", "source": "ads", "campaign": "spring",
         "entries": 2},
        {"day": day.date().isoformat(), "stage": "mql", "source": "ads", "campaign": "spring",
         "entries": 2}]

    write_page(sqlite, store.stage("customer", day, LEAD))
    assert sqlite.query("SELECT * FROM owner_load") == [  # a customer is no open lead
        {"owner": "rep-a", "stage": "mql", "open_leads": 1}]

    write_page(sqlite, store.stage("disqualified", day, OTHER))
    assert sqlite.query("SELECT * FROM owner_load") == []  # an emptied bucket is removed

    lead = sqlite.query("SELECT * FROM lead_state WHERE lead_id = %s", [str(LEAD)])[0]
    assert (lead["stage"], lead["owner"], lead["touchpoints"]) == ("customer", "rep-a", 0)
    assert (from_db(lead["reached_mql_at"]), from_db(lead["reached_customer_at"])) == (day, day)
    assert [r["to_stage"] for r in sqlite.query(
        "SELECT to_stage FROM stage_transitions WHERE lead_id = %s "
        "ORDER BY notification_id", [str(LEAD)])] == ["new", "mql", "customer"]


def test_an_email_or_phone_typed_into_a_reason_or_landing_page_is_masked_in_every_row(
        store: Store) -> None:
    at = T0 + days(2)
    changes = project(
        store.created(landing_page="/lp?email=anna.smith%40acme.io&utm_source=ads"),
        store.stage("lost", at, reason="Anna (anna.smith@acme.io, +44 20 7946 0958) chose X"),
    )

    row = changes.leads[str(LEAD)]
    masked = "Anna (a***@acme.io, +44********58) chose X"
    assert row["landing_page"] == "/lp?email=a***@acme.io&utm_source=ads"
    assert (row["stage_reason"], row["lost_reason"]) == (masked, masked)
    assert named("stage_transitions", changes.transitions)[-1]["reason"] == masked


def test_a_lead_is_written_as_a_row_without_personal_data_and_one_with_it(
        sqlite: ProjectionDB, store: Store) -> None:
    write_page(sqlite, store.created(LEAD),
               store("IdentityAdded", LEAD, key="phone:+442079460958"),
               store("ProfileUpdated", LEAD, changes={"title": "CEO", "country": "GB"},
                     fit=5.0, fit_awards=[["country-target", 5.0]], rules_version="v1",
                     event_id="e1", occurred_at=T0))
    # Read back and changed again: the personal columns survive a page that does not set them.
    write_page(sqlite, store.stage("mql", T0 + days(1), LEAD))

    state = sqlite.query("SELECT * FROM lead_state")
    personal = sqlite.query("SELECT * FROM lead_personal")
    assert not {"primary_key", "identities", "title"} & set(state[0])
    assert (state[0]["stage"], state[0]["country"]) == ("mql", "GB")
    assert personal == [{"lead_id": str(LEAD), "primary_key": "email:0a@example.com",
                         "identities": '["email:0a@example.com", "phone:+442079460958"]',
                         "title": "CEO"}]
