"""The per-event handlers: what each stored event changes in the read-model rows.

``PageChanges`` applies events in order to rows held in memory: the ``lead_state``,
``lead_model_state`` and ``account_state`` rows they touch, the ``stage_transitions`` and
``score_ledger`` rows they append and the ``funnel_daily`` counts they add. Nothing here reads
or writes the database; ``writer.Page`` loads the rows a page touches and writes the changes
back.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from leadflow.domain.privacy import public_url
from leadflow.projections.db import INT_RANGE, clean_text, to_int, to_real, to_text
from leadflow.projections.events import (
    KINDS,
    award_rows,
    awards_rows,
    fields,
    touchpoint_fields,
)
from leadflow.projections.schema import FUNNEL
from leadflow.redaction import mask_text

INT_LO, INT_HI = INT_RANGE
_CREATED_FIELDS = ("created_at", "source", "campaign", "landing_page")
RANK = {stage: i for i, stage in enumerate(FUNNEL)}
#: The "reached" columns a stage sets: reaching it means passing every funnel stage before it.
_REACHED = {stage: tuple(f"reached_{s}_at" for s in FUNNEL[1:RANK[stage] + 1])
            for stage in FUNNEL}
LEAD_COLUMNS = (
    "lead_id", "primary_key", "identities", "created_at", "source", "campaign", "landing_page",
    "country", "company", "industry", "employees", "title", "segment", "account_id", "stage",
    "stage_at", "stage_reason", "owner", "team", "in_pool", "deal_owner", "contacted_at", "fit",
    "fit_awards", "engagement_value", "engagement_as_of", "half_life_days", "last_touch_at",
    "touchpoints", "dormant", "reached_mql_at", "reached_sql_at", "reached_opportunity_at",
    "reached_customer_at", "disqualified_at", "disqualified_reason", "recycled_at",
    "recycled_reason", "lost_at", "lost_reason", "deal_id", "deal_amount", "deal_currency",
    "merged_into",
)
ACCOUNT_COLUMNS = ("account_id", "account_key", "name", "engagements", "surges",
                   "last_engaged_at", "last_surge_at", "surge_window_days")
#: A named model's state on a lead (``[models.<id>]``; the primary model's is in the lead's
#: own row).
MODEL_COLUMNS = ("lead_id", "model", "fit", "fit_awards", "engagement_value",
                 "engagement_as_of", "half_life_days", "threshold", "above", "crossed_at")
#: The events that change a lead's named-model rows (a page loads them for these leads only).
MODEL_EVENTS = frozenset({"ModelsScored", "ModelThresholdCrossed", "ModelBackfilled",
                          "StateRestored"})


#: Texts already masked (landing pages and reasons repeat across leads), and fit_awards
#: texts already read: bounded like events' parsed times.
_MASKED: dict[str, str] = {}
_FIT_READ: dict[str, dict[str, float]] = {}
_CACHE_MAX = 1 << 14
#: ``json.dumps(..., sort_keys=True)``, without making an encoder per call.
_SORTED_JSON = json.JSONEncoder(sort_keys=True).encode
#: Text that ``json.dumps`` writes as it is between its quotes: printable ASCII but the quote
#: and the backslash (it escapes those, control characters and, by default, all non-ASCII).
_PLAIN = re.compile(r'[ !#-\[\]-~]*').fullmatch


def _json_list(items: Any) -> str:
    """``json.dumps(items)``: a list of plain texts (identity keys) written directly, as the
    encoder writes it (its Python entry point costs several times the writing)."""
    if type(items) is not list:
        return json.dumps(items)
    for item in items:
        if type(item) is not str or _PLAIN(item) is None:
            return json.dumps(items)
    return '["' + '", "'.join(items) + '"]' if items else "[]"


def _fit_json(points: dict[str, float]) -> str:
    """A fit_awards text: ``json.dumps`` of the points by rule with sorted keys, a point
    that is no finite number as null. ``points`` are floats (``_number``): with plain rule
    ids the text is written directly, each float as the encoder writes it (its repr)."""
    parts = []
    for rule in sorted(points):
        if _PLAIN(rule) is None:
            return _SORTED_JSON({r: p if math.isfinite(p) else None
                                 for r, p in points.items()})
        point = points[rule]
        parts.append(f'"{rule}": {float.__repr__(point) if math.isfinite(point) else "null"}')
    return "{" + ", ".join(parts) + "}"


def free_text(value: Any) -> Any:
    """A reason or URL as the analysts' tables hold it: a person's email or phone typed into
    it (a rep's note, ``?email=`` in a landing page) masked, since those tables are read
    without access to personal data. The event store keeps the text as it came."""
    if not isinstance(value, str):
        return value
    masked = _MASKED.get(value)
    if masked is None:
        masked = mask_text(value)
        if len(_MASKED) >= _CACHE_MAX:
            _MASKED.clear()
        _MASKED[value] = masked
    return masked


def _forget_row(row: dict[str, Any]) -> None:
    # As a rebuild reads the person's events: identities, title, URL query and the typed
    # reasons were sealed with the deleted key (domain/privacy.py).
    row.update(primary_key=None, identities="[]", title=None,
               landing_page=public_url(row["landing_page"]) if row["landing_page"] else None,
               stage_reason=None, disqualified_reason=None, recycled_reason=None,
               lost_reason=None)


def size_band(employees: Any) -> str:
    employees = to_int(employees)  # as the column holds it (a 400-digit number is NULL)
    if employees is None:
        return "size?"
    if employees <= 10:
        return "1-10"
    if employees <= 50:
        return "11-50"
    if employees <= 250:
        return "51-250"
    return "251+"


def segment_of(row: dict[str, Any]) -> str:
    """Geography x company size: the segments seed 003 reports on by default."""
    return f"{to_text(row.get('country')) or '??'}/{size_band(row.get('employees'))}"


class EventFailed(Exception):
    """``PageChanges.apply_all``: the event whose handler raised (the ``__cause__``)."""

    def __init__(self, nid: int, topic: str, event: Any) -> None:
        super().__init__(nid, topic)
        self.nid = nid
        self.topic = topic
        self.event = event


class PageChanges:
    """The changes a run of events makes to the read-model rows, held in memory."""

    def __init__(self, half_life_days: float,
                 models: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.half_life_days = half_life_days
        #: Each named model of the rules in force: (half-life in days, threshold).
        self.model_rules = dict(models or {})
        self.leads: dict[str, dict[str, Any]] = {}
        # Each lead's named-model rows, by model id.
        self.models: dict[str, dict[str, dict[str, Any]]] = {}
        # (lead, model) -> the notification id of its latest backfill: the model's ledger rows
        # before it are superseded (``writer.Page`` leaves them out and deletes them).
        self.superseded: dict[tuple[str, str], int] = {}
        # (lead, notification id, the (model, record) pairs whose points the lead kept) of
        # each unmerge: the named models' engagement rows before it of other records go
        # (``writer.Page`` deletes the stored ones; this page's are left out here).
        self.released: list[tuple[str, int, frozenset[tuple[str, str]]]] = []
        # Each lead's (owner, stage) before this run (None: counted in no owner's load).
        self.before: dict[str, tuple[str, str] | None] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.transitions: list[tuple[Any, ...]] = []
        self.ledger: list[tuple[Any, ...]] = []
        # Leads forgotten in this page -> the Forgotten event's notification id.
        self.forgotten: dict[str, int] = {}
        self.funnel: Counter[tuple[str, str, str, str]] = Counter()
        # The newest event applied to each lead and account row, to name it if the row
        # cannot be written.
        self.last_event: dict[str, int] = {}
        # Rows one stored event already gave each append-only table: an envelope (one row
        # per record, store/fold.py) holds several events of one notification id.
        self._seqs: dict[tuple[str, int], int] = {}
        self._dispatch = self._dispatch_table()

    def seq(self, table: str, nid: int) -> int:
        """The next row number of ``table`` for notification ``nid`` (0, 1, ...)."""
        key = (table, nid)
        seq = self._seqs.get(key, 0)
        self._seqs[key] = seq + 1
        return seq

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
        self._account(lead_id, KINDS[topic][1], event)

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
                self._account(lead_id, KINDS[topic][1], event)
            except Exception as exc:
                raise EventFailed(nid, topic, event) from exc

    @classmethod
    def _dispatch_table(cls) -> dict[str, tuple[str | None, Any]]:
        """Each followed topic's (lead event name, or None for an account event; handler).

        The handlers are the class's functions (called with the instance), so the table
        holds no bound method: a page's changes make no reference cycle.
        """
        return {topic: (None, None) if is_account
                else (kind, getattr(cls, f"_on_{kind}", None))
                for topic, (is_account, kind) in KINDS.items()}

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

    def _count(self, stage: str, at: datetime, row: dict[str, Any]) -> None:
        self.funnel[(at.date().isoformat(), stage, row["source"] or "", row["campaign"] or "")] += 1

    def _on_IdentityAdded(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        identities = json.loads(row["identities"])
        if e.key is not None and e.key not in identities:
            identities.append(e.key)
        row["identities"] = _json_list(identities)

    def _set_fit(self, nid: int, row: dict[str, Any], e: Any, fit: float,
                 awards: Iterable[Sequence[Any]], model: str | None = None) -> None:
        """A lead's fit (``row``: its lead row, or its row of the named ``model``), with a
        ledger row per rule whose points changed."""
        # Points that are no finite number are null in fit_awards (which stays strict JSON)
        # and NaN here, so their ledger deltas are NULL.
        old = _fit_points(row["fit_awards"])
        new = {str(r): _number(p) for r, p in awards}
        for rule in sorted(set(old) | set(new)):
            delta = new.get(rule, 0.0) - old.get(rule, 0.0)
            if delta:
                self.ledger.append((nid, self.seq("l", nid), row["lead_id"], e.event_id, "fit",
                                    rule, e.rules_version, delta, e.occurred_at, None, model))
        row["fit"] = fit
        row["fit_awards"] = _fit_json(new)

    def _on_ProfileUpdated(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        for key in ("country", "company", "industry", "employees", "title"):
            if key in e.changes:
                row[key] = e.changes[key]
        row["segment"] = segment_of(row)
        self._set_fit(nid, row, e, e.fit, e.fit_awards)

    def _on_AccountSet(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        row["account_id"] = str(e.account_id)

    def _awards(self, nid: int, row: dict[str, Any], awards: Iterable[tuple[Any, ...]],
                kind: str, rules_version: str, model: str | None = None) -> None:
        """A ledger row per award (``events.award_rows``: (event_id, rule, points, at,
        expires_at) each)."""
        key = ("l", nid)  # the ledger's row numbers of this notification, as ``seq`` counts
        seq = first = self._seqs.get(key, 0)
        lead_id, append = row["lead_id"], self.ledger.append
        for event_id, rule, points, at, expires_at in awards:
            append((nid, seq, lead_id, event_id, kind, rule, rules_version, points, at,
                    expires_at, model))
            seq += 1
        if seq != first:
            self._seqs[key] = seq

    def _touch(self, row: dict[str, Any], at: datetime | None) -> None:
        if at is not None and (row["last_touch_at"] is None or at > row["last_touch_at"]):
            row["last_touch_at"] = at
            row["dormant"] = False

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
        account = self.accounts.get(str(e.account_id))
        if account is not None:
            self._surge(account, e)

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

    # ----- named models (``[models.<id>]``)

    def model_row(self, lead_id: str, model: str) -> dict[str, Any]:
        """The lead's row of ``model``, made empty on its first event (half-life and threshold
        from the rules in force, as ``lead_state.half_life_days``)."""
        rows = self.models.get(lead_id)
        if rows is None:
            rows = self.models[lead_id] = {}
        row = rows.get(model)
        if row is None:
            half_life, threshold = self.model_rules.get(model, (None, None))
            row = rows[model] = {
                "lead_id": lead_id, "model": model, "fit": 0.0, "fit_awards": "{}",
                "engagement_value": 0.0, "engagement_as_of": None, "half_life_days": half_life,
                "threshold": threshold, "above": False, "crossed_at": None}
        return row

    def _on_ModelsScored(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        """A record's (or a merge's) points and fit in the named models. A merge brings the
        merged lead's points into the survivor's state, and so into its rows: a lead's rows
        of a named model are always the points its state holds (the merged lead keeps its
        own, which ``score_ledger_resolved`` leaves out, as it does the fit rows)."""
        lead_id = row["lead_id"]
        event_id, version = e.event_id, e.rules_version
        for key, change in e.models.items():
            model = _model_id(key)
            state = self.model_row(lead_id, model)
            awards = change.get("awards")
            if awards:
                self._awards(nid, row, awards_rows(awards), "engagement", version, model)
            if "engagement_value" in change:
                state["engagement_value"] = change["engagement_value"]
                state["engagement_as_of"] = change["engagement_as_of"]
            if "fit" in change:
                cause = e if event_id is not None else SimpleNamespace(
                    event_id=f"rules:{version}", rules_version=version,
                    occurred_at=e.occurred_at)
                self._set_fit(nid, state, cause, change["fit"], change["fit_awards"], model)

    def _on_ModelThresholdCrossed(self, nid: int, row: dict[str, Any],  # noqa: N802
                                  e: Any) -> None:
        state = self.model_row(row["lead_id"], _model_id(e.model))
        state["above"] = e.direction == "up"
        state["crossed_at"] = e.occurred_at
        state["threshold"] = e.threshold  # the one crossed (the rules' may have changed)

    def _on_ModelBackfilled(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        """A rules publication re-scored the model over the lead's history: its state is
        replaced, and its ledger rows become the backfill's (the earlier ones explain a
        score the model no longer gives)."""
        lead_id, model = row["lead_id"], _model_id(e.model)
        state = self.model_row(lead_id, model)
        self.superseded[(lead_id, model)] = nid
        if model in self.model_rules:  # the publication may have changed them
            state["half_life_days"], state["threshold"] = self.model_rules[model]
        self._awards(nid, row, award_rows(e, "awards"), "engagement", e.rules_version, model)
        state["fit"], state["fit_awards"] = 0.0, "{}"
        cause = SimpleNamespace(event_id=f"backfill:{e.rules_version}",
                                rules_version=e.rules_version, occurred_at=e.occurred_at)
        self._set_fit(nid, state, cause, e.fit, e.fit_awards, model)
        last = e.crossings[-1] if e.crossings else None
        state.update(engagement_value=e.engagement_value,
                     engagement_as_of=e.engagement_as_of,
                     above=last is not None and last["direction"] == "up",
                     crossed_at=last["at"] if last is not None else None)

    def _restore_models(self, nid: int, lead_id: str, cause: Any,
                        states: Mapping[str, Mapping[str, Any]]) -> None:
        """An unmerge's recomputed named models: a model the lead no longer has is emptied."""
        by_id = {_model_id(key): state for key, state in states.items()}
        for model in sorted({*self.models.get(lead_id, ()), *by_id}):
            state = by_id.get(model) or {}
            target = self.model_row(lead_id, model)
            self._set_fit(nid, target, cause, state.get("fit", 0.0),
                          state.get("fit_awards", ()), model)
            target.update(engagement_value=state.get("value", 0.0),
                          engagement_as_of=state.get("as_of"),
                          above=bool(state.get("above", False)),
                          crossed_at=state.get("crossed_at"))

    def _release(self, nid: int, lead_id: str,
                 states: Mapping[str, Mapping[str, Any]]) -> None:
        """An unmerge's recomputed named models hold the points of the lead's own records
        only (the merge's points are dropped, and ``Lead.refold_models`` keeps of a backfill
        after the merge, which scored the merged lead's records too, the lead's own): its
        engagement rows of a model go unless their record's points are in the model's
        recomputed state."""
        # As the columns hold them (a record without an id keeps no row: none is its own).
        kept = frozenset((_model_id(key), event_id) for key, state in states.items()
                         for award in state.get("awards", ())
                         if (event_id := to_text(award.get("event_id"))) is not None)
        self.released.append((lead_id, nid, kept))
        self.ledger = [r for r in self.ledger if r[2] != lead_id or r[10] is None
                       or r[4] == "fit" or (r[10], to_text(r[3])) in kept]

    def _account(self, account_id: str, kind: str, e: Any) -> None:
        if kind == "Created":
            self.accounts[account_id] = {
                "account_id": account_id, "account_key": e.account_key, "name": e.name,
                "engagements": 0, "surges": 0, "last_engaged_at": None,
                "last_surge_at": None, "surge_window_days": None,
            }
            return
        if kind == "Surged":
            self._surge(self.accounts[account_id], e)

    @staticmethod
    def _surge(row: dict[str, Any], e: Any) -> None:
        row["surges"] += 1
        row["last_surge_at"] = e.occurred_at
        row["surge_window_days"] = e.window_days


def _model_id(value: Any) -> str:
    """A model id as the column holds it (ids are keys of stored objects, which the reading
    of stored events leaves as they are)."""
    return clean_text(value if isinstance(value, str) else str(value))


def _fit_points(text: str) -> dict[str, float]:
    """A fit_awards text's points by rule (``_number`` each). Shared between the rows
    holding the same text: callers only read it."""
    points = _FIT_READ.get(text)
    if points is None:
        points = {r: _number(p) for r, p in json.loads(text).items()}
        if len(_FIT_READ) >= _CACHE_MAX:
            _FIT_READ.clear()
        _FIT_READ[text] = points
    return points


def _number(value: Any) -> float:
    """A finite float, or NaN for what is none (inf, NaN, null, 1e400, text)."""
    number = to_real(value)
    return math.nan if number is None else number


def _plus(count: Any, more: Any) -> int | None:
    """A count plus more, as the INTEGER column holds it: NULL once either is no integer
    in range (and from then on), the same whether the count was just read back or not."""
    a, b = to_int(count), to_int(more)
    return None if a is None or b is None else to_int(a + b)
