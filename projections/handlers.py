"""The per-event handlers: what each stored event changes in the read-model rows.

``PageChanges`` applies events in order to rows held in memory: the ``lead_state``,
``lead_model_state`` and ``account_state`` rows they touch, the ``stage_transitions`` and
``score_ledger`` rows they append and the ``funnel_daily`` counts they add. Nothing here reads
or writes the database; ``writer.Page`` loads the rows a page touches and writes the changes
back. Here are the lead and account events' handlers; the named models' are in
``handlers_models``, the rows a page holds and the steps all handlers share in ``changes``,
the columns and how values are written into them in ``rows``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from leadflow.projections.events import KINDS, award_rows, fields, touchpoint_fields
from leadflow.projections.handlers_models import _ModelChanges
from leadflow.projections.rows import (
    _REACHED,
    INT_HI,
    INT_LO,
    LEAD_COLUMNS,
    RANK,
    _forget_row,
    _json_list,
    _plus,
    free_text,
    segment_of,
)
from leadflow.projections.schema import FUNNEL

_CREATED_FIELDS = ("created_at", "source", "campaign", "landing_page")


class EventFailed(Exception):
    """``PageChanges.apply_all``: the event whose handler raised (the ``__cause__``)."""

    def __init__(self, nid: int, topic: str, event: Any) -> None:
        super().__init__(nid, topic)
        self.nid = nid
        self.topic = topic
        self.event = event


class PageChanges(_ModelChanges):
    """The changes a run of events makes to the read-model rows, held in memory."""

    def apply(self, nid: int, topic: str, event: Any) -> None:
        # One dict lookup per event finds what to do (no name built, no getattr).
        kind, handler = self._dispatch[topic]
        self.last_event[lead_id := str(event.originator_id)] = nid
        if kind is not None:
            if kind == "Created":
                self._created(nid, lead_id, event)
                return
            row = self.leads.get(lead_id)
            if row is None:
                raise RuntimeError(f"projection has no row for lead {lead_id} (event {nid})")
            if handler is not None:
                handler(self, nid, row, event)
            return
        self._account(nid, lead_id, KINDS[topic][1], event)

    def apply_all(self, events: Iterable[tuple[int, str, Any]]) -> None:
        """``apply`` each event in order: the same steps, inline in one loop (a page holds
        thousands of events, and the call and lookups per event were a tenth of applying the
        frequent ones). An event that raises is named by ``EventFailed``, raised from the
        handler's error."""
        dispatch, leads, last_event = self._dispatch, self.leads, self.last_event
        for nid, topic, event in events:
            try:
                kind, handler = dispatch[topic]
                lead_id = event.originator_id
                if type(lead_id) is not str:
                    lead_id = str(lead_id)
                last_event[lead_id] = nid
                if kind is not None:
                    if kind == "Created":
                        self._created(nid, lead_id, event)
                        continue
                    row = leads.get(lead_id)
                    if row is None:
                        raise RuntimeError(f"projection has no row for lead {lead_id} "
                                           f"(event {nid})")
                    if handler is not None:
                        handler(self, nid, row, event)
                    continue
                self._account(nid, lead_id, KINDS[topic][1], event)
            except Exception as exc:
                raise EventFailed(nid, topic, event) from exc

    def _created(self, nid: int, lead_id: str, e: Any) -> None:
        # Fields read in the order the row names them (the first missing one is the error).
        key = e.primary_key
        # A forgotten person's Created event reads with no identity (store/personal.py).
        identities = _json_list([key] if key is not None else [])
        created_at, source, campaign, landing_page = fields(e, _CREATED_FIELDS)
        landing_page = free_text(landing_page)
        account_id = e.account_id
        row: dict[str, Any] = dict.fromkeys(LEAD_COLUMNS)
        row.update(
            lead_id=lead_id, primary_key=key, identities=identities, created_at=created_at,
            source=source, campaign=campaign, landing_page=landing_page,
            account_id=str(account_id) if account_id else None, stage="new",
            stage_at=created_at, in_pool=False, fit=0.0, fit_awards="{}",
            engagement_value=0.0, half_life_days=self.half_life_days, touchpoints=0,
            dormant=False,
        )
        row["segment"] = segment_of(row)
        self.leads[lead_id] = row
        self.before.setdefault(lead_id, None)
        self.transitions.append((nid, self.seq("t", nid), lead_id, None, "new", created_at,
                                 None, source, campaign, "system", None))
        self._count("new", created_at, row)

    def _on_IdentityAdded(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        identities = json.loads(row["identities"])
        if e.key is not None and e.key not in identities:
            identities.append(e.key)
        row["identities"] = _json_list(identities)

    def _on_ProfileUpdated(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        for key in ("country", "company", "industry", "employees", "title"):
            if key in e.changes:
                row[key] = e.changes[key]
        row["segment"] = segment_of(row)
        self._set_fit(nid, row, e, e.fit, e.fit_awards)

    def _on_AccountSet(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        row["account_id"] = str(e.account_id)

    def _on_TouchpointScored(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        # The most frequent event: its fields read in one call, ``_touch`` and ``_plus``
        # inline for the common case.
        awards, rules_version, value, as_of, at = touchpoint_fields(e)
        self._awards(nid, row, awards, "engagement", rules_version)
        row["engagement_value"] = value
        row["engagement_as_of"] = as_of
        count = row["touchpoints"]
        row["touchpoints"] = count + 1 if type(count) is int and INT_LO <= count < INT_HI \
            else _plus(count, 1)
        if at is not None and (row["last_touch_at"] is None or at > row["last_touch_at"]):
            row["last_touch_at"] = at
            row["dormant"] = False
        account_id = row["account_id"]
        account = self.accounts.get(account_id) if account_id else None
        if account is not None:
            # An engagement of the account: a touchpoint of one of its people.
            count = account["engagements"]
            account["engagements"] = count + 1 if type(count) is int \
                and INT_LO <= count < INT_HI else _plus(count, 1)
            if at is not None and (account["last_engaged_at"] is None
                                   or at > account["last_engaged_at"]):
                account["last_engaged_at"] = at

    def _on_AccountSurged(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        # A surge is recorded on the lead whose record set it off (stores before format 3:
        # as an Account.Surged event, handled in _account).
        account_id = str(e.account_id)
        account = self.accounts.get(account_id)
        if account is not None:
            self._surge(nid, account_id, account, e)

    def _on_Boosted(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        self._awards(nid, row, award_rows(e, "awards"), "boost", e.rules_version)
        row["engagement_value"] = e.engagement_value
        row["engagement_as_of"] = e.engagement_as_of

    def _on_InterestAbsorbed(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        self._awards(nid, row, award_rows(e, "awards"), "engagement", e.rules_version)
        row["engagement_value"] = e.engagement_value
        row["engagement_as_of"] = e.engagement_as_of
        row["touchpoints"] = _plus(row["touchpoints"], len(e.event_ids))
        if e.last_touch_at and (row["last_touch_at"] is None
                                or e.last_touch_at > row["last_touch_at"]):
            row["last_touch_at"] = e.last_touch_at

    def _on_StageChanged(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        to, at, reason = e.to_stage, e.occurred_at, free_text(e.reason)
        row["stage"], row["stage_at"], row["stage_reason"] = to, at, reason
        self.transitions.append((nid, self.seq("t", nid), row["lead_id"], e.from_stage, to,
                                 at, row["owner"], row["source"], row["campaign"], e.actor,
                                 reason))
        self._count(to, at, row)
        if to in RANK:
            for column in _REACHED[to]:
                if row[column] is None:
                    row[column] = at
        if to in ("disqualified", "recycled", "lost"):
            row[f"{to}_at"], row[f"{to}_reason"] = at, reason
        if to in ("recycled", "disqualified"):
            row.update(owner=None, team=None, in_pool=False, contacted_at=None)
        links = e.links or {}
        if links.get("deal_id"):
            row["deal_id"] = links["deal_id"]
        if links.get("deal_amount") is not None:
            row["deal_amount"] = links["deal_amount"]  # text; the writer makes it a number
        if links.get("deal_currency"):
            row["deal_currency"] = links["deal_currency"]

    def _on_OwnerAssigned(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        row.update(owner=e.owner, team=e.team, in_pool=e.owner is None, contacted_at=None)

    def _on_FirstContactMade(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        row["contacted_at"] = e.occurred_at

    def _on_DealOwnerSet(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        row["deal_owner"] = e.owner

    def _on_WentDormant(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        row["dormant"] = True

    def _on_MergedInto(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        row["merged_into"] = str(e.survivor_id)

    def _on_Absorbed(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        identities = json.loads(row["identities"])
        identities += [k for k in e.identity_keys if k not in identities]
        row["identities"] = _json_list(identities)
        row["engagement_value"] = e.engagement_value
        row["engagement_as_of"] = e.engagement_as_of
        for key in ("country", "company", "industry", "employees", "title"):
            row[key] = e.profile.get(key, row[key])
        row["segment"] = segment_of(row)
        self._set_fit(nid, row, e, e.fit, e.fit_awards)
        row["touchpoints"] = _plus(row["touchpoints"], e.touchpoints)
        row["last_touch_at"] = e.last_touch_at
        if e.last_touch_at is not None:
            row["dormant"] = False

    def _on_Forgotten(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        """The person was erased: their personal columns are emptied (here and on every
        lead merged into theirs); the rows stay in every count."""
        ids = {row["lead_id"], *map(str, e.data_keys)}
        for lead_id in ids:
            other = self.leads.get(lead_id)
            if other is not None:
                _forget_row(other)
            # Their transitions' reasons so far: those of this page here, the stored ones by
            # the writer (``forgotten``: up to this event).
            self.forgotten[lead_id] = nid
        self.transitions = [(*t[:10], None) if t[2] in ids else t for t in self.transitions]
        # The named models' rows hold scores and rule ids only: nothing to empty there.

    def _on_Unmerged(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        row["merged_into"] = None

    def _on_StateRestored(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        """An unmerge recomputed the lead from its own events: take that state wholesale."""
        state = e.state
        row["identities"] = json.dumps(state["identity_keys"])
        for key in ("country", "company", "industry", "employees", "title"):
            row[key] = state["profile"].get(key)
        row["segment"] = segment_of(row)
        cause = SimpleNamespace(event_id=f"unmerge:{e.released_lead}", rules_version="unmerge",
                                occurred_at=e.occurred_at)
        self._set_fit(nid, row, cause, state["fit"], state["fit_awards"])
        row.update(
            engagement_value=state["eng_value"], engagement_as_of=state["eng_as_of"],
            touchpoints=state["touchpoints"], last_touch_at=state["last_touch_at"],
            dormant=state["dormant"], stage=state["stage"], stage_at=state["stage_at"],
            stage_reason=free_text(state["stage_reason"]), owner=state["owner"],
            team=state["team"],
            in_pool=state["in_pool"], contacted_at=state["contacted_at"],
            deal_owner=state["deal_owner"],
            account_id=str(state["account_id"]) if state["account_id"] else None,
        )
        first: dict[str, datetime] = state["first_reached"]
        for stage in FUNNEL[1:]:
            times = [first[s] for s in FUNNEL[RANK[stage]:] if s in first]
            row[f"reached_{stage}_at"] = min(times) if times else None
        if "_models" in state:  # the named models' state, recomputed too
            self._restore_models(nid, row["lead_id"], cause, state["_models"])
            self._release(nid, row["lead_id"], state["_models"])

    def _account(self, nid: int, account_id: str, kind: str, e: Any) -> None:
        if kind == "Created":
            self.accounts[account_id] = {
                "account_id": account_id, "account_key": e.account_key, "name": e.name,
                "engagements": 0, "surges": 0, "last_engaged_at": None,
                "last_surge_at": None, "surge_window_days": None,
            }
            return
        if kind == "Surged":
            self._surge(nid, account_id, self.accounts[account_id], e)

    def _surge(self, nid: int, account_id: str, row: dict[str, Any], e: Any) -> None:
        # (A parallel rebuild's part also notes each surge: projections/parallel.py.)
        row["surges"] += 1
        row["last_surge_at"] = e.occurred_at
        row["surge_window_days"] = e.window_days
