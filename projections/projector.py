"""The projector: follows the event store and maintains the analyst read models.

Each page of notifications is applied in ONE transaction that also moves the tracking
position, so a crash never double-counts and a restart resumes exactly where it stopped.
Rows are changed set-wise (load the touched leads, change them in memory, upsert them all).
``rebuild`` replays from the first event into fresh tables and swaps them in at once.

The event store is immutable, so whatever got into it must be projectable forever: payloads
orjson refuses (``Infinity``, ``NaN``, numbers beyond a double, lone surrogates) are read
again by Python's json; every row passes through the converters of ``db.clean_rows`` before
it is written (non-finite or out-of-range numbers become NULL, text loses what PostgreSQL
cannot hold), identically on SQLite and PostgreSQL. An event that still cannot be projected
stops the projector with ``ProjectionFailedError`` naming it; its page is not committed.
"""

from __future__ import annotations

import json
import math
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from types import SimpleNamespace
from typing import Any

import orjson
import structlog
from eventsourcing.persistence import JSONTranscoder, Notification, Transcoding
from eventsourcing.utils import get_topic

from leadflow.engine.app import INFRASTRUCTURE_ERRORS, LeadflowApp
from leadflow.domain import Account, Lead
from leadflow.projections.admin import analyst_roles, grant_select
from leadflow.projections.db import (
    ProjectionDB,
    RowRejected,
    clean_rows,
    clean_text,
    from_db,
    to_int,
    to_real,
    to_text,
)
from leadflow.projections.schema import (
    FUNNEL,
    RELAXED,
    TABLES,
    columns,
    drop_views_ddl,
    tables_ddl,
    views_ddl,
)
from leadflow.store.recorders import SCHEMA_LOCK_KEY

log = structlog.get_logger(__name__)

TRACKING_NAME = "analytics"
VIEWS_NAME = "views-checksum"
OPEN_STAGES = frozenset({"new", "mql", "sql", "opportunity"})
RANK = {stage: i for i, stage in enumerate(FUNNEL)}
TS_COLUMNS = ("created_at", "stage_at", "contacted_at", "engagement_as_of", "last_touch_at",
              "reached_mql_at", "reached_sql_at", "reached_opportunity_at",
              "reached_customer_at", "disqualified_at", "recycled_at", "lost_at")
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

# The events the read models follow, by stored topic: (is an account event, event name).
_LEAD_EVENTS = ("Created", "IdentityAdded", "ProfileUpdated", "AccountSet", "TouchpointScored",
                "Boosted", "StageChanged", "OwnerAssigned", "FirstContactMade", "DealOwnerSet",
                "WentDormant", "MergedInto", "Absorbed", "InterestAbsorbed", "Unmerged",
                "StateRestored")
_ACCOUNT_EVENTS = ("Created", "Engaged", "Surged")
KINDS: dict[str, tuple[bool, str]] = {
    **{get_topic(getattr(Lead, name)): (False, name) for name in _LEAD_EVENTS},
    **{get_topic(getattr(Account, name)): (True, name) for name in _ACCOUNT_EVENTS},
}
TOPICS = list(KINDS)


class ProjectionFailedError(RuntimeError):
    """A stored event the projector cannot project: the one line names it and why.

    Raised by ``process_page`` (whose page is then not committed: the tracking position stays
    before the event) and by ``rebuild`` (the live tables stay as they were).
    """

    def __init__(self, notification_id: int, originator_id: Any, topic: str | None,
                 reason: str) -> None:
        self.notification_id = notification_id
        self.originator_id = str(originator_id)
        self.topic = topic
        self.reason = " ".join(str(reason).split())[:500]
        super().__init__(notification_id, self.originator_id, topic, self.reason)

    def __str__(self) -> str:
        kind = "account" if self.topic and KINDS.get(self.topic, (False,))[0] else "lead"
        name = self.topic.rpartition(":")[2] if self.topic else "event"
        return (f"cannot project event {self.notification_id} ({name} of {kind} "
                f"{self.originator_id}): {self.reason}")


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_JSON = json.JSONDecoder(parse_int=lambda digits: int(digits) if len(digits) <= 4000
                         else float(digits), strict=False)


def load_payload(state: bytes | str) -> dict[str, Any]:
    """A stored payload's JSON object: orjson, else Python's json for what orjson refuses.

    Python's json reads ``Infinity``/``NaN`` (which its encoder wrote) as floats, integers
    beyond a double exactly (beyond 4000 digits, as infinity), lone surrogates, raw control
    characters; bytes that are no UTF-8 become U+FFFD. What is still no JSON object raises.
    """
    try:
        data = orjson.loads(state)
    except orjson.JSONDecodeError:
        text = state if isinstance(state, str) else bytes(state).decode("utf-8", "replace")
        data = _JSON.decode(text)
    if type(data) is not dict:
        raise ValueError(f"payload is a JSON {type(data).__name__}, not an object")
    return data


class EventData:
    """A stored event's fields, read straight from its JSON without building the event.

    orjson parses the payload; eventsourcing's ``{"_type_", "_data_"}`` values (datetimes,
    UUIDs) are turned back into objects only for the fields a handler reads. This is what
    lets a rebuild skip the library's per-event decoding and object construction. Text comes
    out without the characters PostgreSQL text cannot hold (see ``db.clean_text``), so keys
    the handlers aggregate by (source, owner) are already what the tables will hold; times
    without a zone are taken as UTC.
    """

    __slots__ = ("_data", "_names", "originator_id")

    def __init__(self, originator_id: Any, data: dict[str, Any],
                 names: dict[str, Transcoding]) -> None:
        self.originator_id = originator_id
        self._data = data
        self._names = names

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        return self._untag(value)

    def _untag(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return value if value.isascii() and "\x00" not in value else clean_text(value)
        if kind is dict:
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                decoded = self._names[value["_type_"]].decode(self._untag(value["_data_"]))
                if isinstance(decoded, datetime) and decoded.tzinfo is None:
                    return decoded.replace(tzinfo=UTC)
                return decoded
            return {k: self._untag(v) for k, v in value.items()}  # keys reach no column
        if kind is list:
            return [self._untag(v) for v in value]
        return value


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


@dataclass
class ProjectionStats:
    pages: int = 0
    events: int = 0
    position: int = 0


class _Page:
    """The changes one page of events makes, applied to the database together."""

    def __init__(self, db: ProjectionDB, suffix: str, half_life_days: float) -> None:
        self.db = db
        self.s = suffix
        self.half_life_days = half_life_days
        self.leads: dict[str, dict[str, Any]] = {}
        self.before: dict[str, tuple[str, str] | None] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.transitions: list[tuple[Any, ...]] = []
        self.ledger: list[tuple[Any, ...]] = []
        self.funnel: Counter[tuple[str, str, str, str]] = Counter()
        # The newest event applied to each lead and account row, to name it if the row
        # cannot be written.
        self.last_event: dict[str, int] = {}

    def load(self, lead_ids: set[str], account_ids: set[str]) -> None:
        for chunk in _chunks(sorted(lead_ids), 500):
            marks = ",".join(["%s"] * len(chunk))
            for row in self.db.query(
                    f"SELECT * FROM lead_state{self.s} WHERE lead_id IN ({marks})", chunk):
                for col in TS_COLUMNS:
                    row[col] = from_db(row[col])
                row["in_pool"] = bool(row["in_pool"])
                row["dormant"] = bool(row["dormant"])
                self.leads[row["lead_id"]] = row
                self.before[row["lead_id"]] = _load_key(row)
        for chunk in _chunks(sorted(account_ids), 500):
            marks = ",".join(["%s"] * len(chunk))
            for row in self.db.query(
                    f"SELECT * FROM account_state{self.s} WHERE account_id IN ({marks})", chunk):
                row["last_engaged_at"] = from_db(row["last_engaged_at"])
                row["last_surge_at"] = from_db(row["last_surge_at"])
                self.accounts[row["account_id"]] = row

    # ----------------------------------------------------------------- handlers

    def apply(self, nid: int, topic: str, event: Any) -> None:
        is_account, kind = KINDS[topic]
        self.last_event[lead_id := str(event.originator_id)] = nid
        if is_account:
            self._account(lead_id, kind, event)
            return
        if kind == "Created":
            self._created(nid, lead_id, event)
            return
        row = self.leads.get(lead_id)
        if row is None:
            raise RuntimeError(f"projection has no row for lead {lead_id} (event {nid})")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(nid, row, event)

    def _created(self, nid: int, lead_id: str, e: Any) -> None:
        row: dict[str, Any] = dict.fromkeys(LEAD_COLUMNS)
        row.update(
            lead_id=lead_id, primary_key=e.primary_key, identities=json.dumps([e.primary_key]),
            created_at=e.created_at, source=e.source, campaign=e.campaign,
            landing_page=e.landing_page,
            account_id=str(e.account_id) if e.account_id else None, stage="new",
            stage_at=e.created_at, in_pool=False, fit=0.0, fit_awards="{}",
            engagement_value=0.0, half_life_days=self.half_life_days, touchpoints=0,
            dormant=False,
        )
        row["segment"] = segment_of(row)
        self.leads[lead_id] = row
        self.before.setdefault(lead_id, None)
        self.transitions.append((nid, lead_id, None, "new", e.created_at, None, e.source,
                                 e.campaign, "system", None))
        self._count("new", e.created_at, row)

    def _count(self, stage: str, at: datetime, row: dict[str, Any]) -> None:
        self.funnel[(at.date().isoformat(), stage, row["source"] or "", row["campaign"] or "")] += 1

    def _on_IdentityAdded(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        identities = json.loads(row["identities"])
        if e.key not in identities:
            identities.append(e.key)
        row["identities"] = json.dumps(identities)

    def _set_fit(self, nid: int, row: dict[str, Any], e: Any, fit: float,
                 awards: Iterable[Sequence[Any]]) -> None:
        # Points that are no finite number are null in fit_awards (which stays strict JSON)
        # and NaN here, so their ledger deltas are NULL.
        old = {r: _number(p) for r, p in json.loads(row["fit_awards"]).items()}
        new = {str(r): _number(p) for r, p in awards}
        seq = 0  # this event's ledger rows so far (they are the newest ones)
        for entry in reversed(self.ledger):
            if entry[0] != nid:
                break
            seq += 1
        for rule in sorted(set(old) | set(new)):
            delta = new.get(rule, 0.0) - old.get(rule, 0.0)
            if delta:
                self.ledger.append((nid, seq, row["lead_id"], e.event_id, "fit", rule,
                                    e.rules_version, delta, e.occurred_at, None))
                seq += 1
        row["fit"] = fit
        row["fit_awards"] = json.dumps({r: p if math.isfinite(p) else None
                                        for r, p in new.items()}, sort_keys=True)

    def _on_ProfileUpdated(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        for key in ("country", "company", "industry", "employees", "title"):
            if key in e.changes:
                row[key] = e.changes[key]
        row["segment"] = segment_of(row)
        self._set_fit(nid, row, e, e.fit, e.fit_awards)

    def _on_AccountSet(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        row["account_id"] = str(e.account_id)

    def _awards(self, nid: int, row: dict[str, Any], awards: list[dict[str, Any]], kind: str,
                rules_version: str) -> None:
        for seq, award in enumerate(awards):
            self.ledger.append((nid, seq, row["lead_id"], award["event_id"], kind,
                                award["rule"], rules_version, award["points"], award["at"],
                                award.get("expires_at")))

    def _touch(self, row: dict[str, Any], at: datetime | None) -> None:
        if at is not None and (row["last_touch_at"] is None or at > row["last_touch_at"]):
            row["last_touch_at"] = at
            row["dormant"] = False

    def _on_TouchpointScored(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        self._awards(nid, row, e.awards, "engagement", e.rules_version)
        row["engagement_value"] = e.engagement_value
        row["engagement_as_of"] = e.engagement_as_of
        row["touchpoints"] = _plus(row["touchpoints"], 1)
        self._touch(row, e.occurred_at)

    def _on_Boosted(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        self._awards(nid, row, e.awards, "boost", e.rules_version)
        row["engagement_value"] = e.engagement_value
        row["engagement_as_of"] = e.engagement_as_of

    def _on_InterestAbsorbed(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        self._awards(nid, row, e.awards, "engagement", e.rules_version)
        row["engagement_value"] = e.engagement_value
        row["engagement_as_of"] = e.engagement_as_of
        row["touchpoints"] = _plus(row["touchpoints"], len(e.event_ids))
        if e.last_touch_at and (row["last_touch_at"] is None
                                or e.last_touch_at > row["last_touch_at"]):
            row["last_touch_at"] = e.last_touch_at

    def _on_StageChanged(self, nid: int, row: dict[str, Any], e: Any) -> None:  # noqa: N802
        to, at = e.to_stage, e.occurred_at
        row["stage"], row["stage_at"], row["stage_reason"] = to, at, e.reason
        self.transitions.append((nid, row["lead_id"], e.from_stage, to, at, row["owner"],
                                 row["source"], row["campaign"], e.actor, e.reason))
        self._count(to, at, row)
        if to in RANK:
            # Reaching a stage means passing every funnel stage before it.
            for stage in FUNNEL[1:RANK[to] + 1]:
                if row[f"reached_{stage}_at"] is None:
                    row[f"reached_{stage}_at"] = at
        if to in ("disqualified", "recycled", "lost"):
            row[f"{to}_at"], row[f"{to}_reason"] = at, e.reason
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
        row["identities"] = json.dumps(identities)
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
            stage_reason=state["stage_reason"], owner=state["owner"], team=state["team"],
            in_pool=state["in_pool"], contacted_at=state["contacted_at"],
            deal_owner=state["deal_owner"],
            account_id=str(state["account_id"]) if state["account_id"] else None,
        )
        first: dict[str, datetime] = state["first_reached"]
        for stage in FUNNEL[1:]:
            times = [first[s] for s in FUNNEL[RANK[stage]:] if s in first]
            row[f"reached_{stage}_at"] = min(times) if times else None

    def _account(self, account_id: str, kind: str, e: Any) -> None:
        if kind == "Created":
            self.accounts[account_id] = {
                "account_id": account_id, "account_key": e.account_key, "name": e.name,
                "engagements": 0, "surges": 0, "last_engaged_at": None,
                "last_surge_at": None, "surge_window_days": None,
            }
            return
        row = self.accounts[account_id]
        if kind == "Engaged":
            row["engagements"] += 1
            if row["last_engaged_at"] is None or e.occurred_at > row["last_engaged_at"]:
                row["last_engaged_at"] = e.occurred_at
        else:
            row["surges"] += 1
            row["last_surge_at"] = e.occurred_at
            row["surge_window_days"] = e.window_days

    # ----------------------------------------------------------------- writing

    def _rows(self, table: str, rows: Iterable[Sequence[Any]],
              names: tuple[str, ...] | None = None) -> list[list[Any]]:
        """The rows as the table's columns hold them, the same on SQLite and PostgreSQL.

        Every value written to a read model passes here (see ``db.clean_rows``). A NULL left
        in a NOT NULL column names the event behind the row.
        """
        try:
            return clean_rows(table, _kinds(table, names), rows)
        except RowRejected as exc:
            raise self._rejected(table, exc) from exc

    def _rejected(self, table: str, exc: RowRejected) -> _RowFailed:
        row, names = exc.row, [c.name for c in columns()[table]]
        if table in ("lead_state", "account_state"):
            oid = str(row[0])
            return _RowFailed(self.last_event.get(oid, 0), oid, str(exc))
        if table in ("stage_transitions", "score_ledger"):
            lead = row[names.index("lead_id")]
            return _RowFailed(int(row[0]), lead, str(exc))
        return _RowFailed(max(self.last_event.values(), default=0), "?", str(exc))

    def _upsert(self, table: str, columns: tuple[str, ...],
                rows: Iterable[dict[str, Any]]) -> None:
        """Insert or replace whole rows keyed by the first column."""
        key = columns[0]
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        self.db.executemany(
            f"INSERT INTO {table}{self.s} ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}",
            self._rows(table, ([row[c] for c in columns] for row in rows), columns),
        )

    def _copy(self, table: str, columns: tuple[str, ...],
              rows: Iterable[dict[str, Any]]) -> None:
        self.db.copy_rows(f"{table}{self.s}",
                          self._rows(table, ([row[c] for c in columns] for row in rows),
                                     columns),
                          columns)

    def _counts(self, table: str, counts: Counter[Any]) -> list[list[Any]]:
        """Keyed counts as rows, keys merged once converted (two stored spellings that the
        column holds alike are one row, as a fresh COPY needs)."""
        kinds = [(name, kind, True) for name, kind, _ in _kinds(table, None)[:-1]]
        merged: Counter[tuple[Any, ...]] = Counter()
        for key, n in zip(clean_rows(table, kinds, counts), counts.values(), strict=True):
            merged[tuple(key)] += n
        return self._rows(table, [[*key, n] for key, n in sorted(
            merged.items(), key=lambda item: tuple(str(v) for v in item[0])) if n])

    def write(self) -> None:
        self.write_appends()
        self.write_state()

    def write_appends(self) -> None:
        """The append-only rows (transitions, ledger), by COPY on PostgreSQL."""
        self.db.copy_rows(f"stage_transitions{self.s}",
                          self._rows("stage_transitions", self.transitions))
        self.db.copy_rows(f"score_ledger{self.s}", self._rows("score_ledger", self.ledger))
        self.transitions, self.ledger = [], []

    def write_state(self, fresh: bool = False) -> None:
        """The keyed rows: leads, accounts, funnel counts and owner load.

        ``fresh``: the tables are empty (a rebuild), so rows are copied, not upserted.
        """
        s, db = self.s, self.db
        if fresh:
            self._copy("lead_state", LEAD_COLUMNS, self.leads.values())
            self._copy("account_state", ACCOUNT_COLUMNS, self.accounts.values())
            db.copy_rows(f"funnel_daily{s}", self._counts("funnel_daily", self.funnel))
            open_load: Counter[tuple[str, str]] = Counter(
                key for key in map(_load_key, self.leads.values()) if key is not None)
            db.copy_rows(f"owner_load{s}", self._counts("owner_load", open_load))
            return
        self._upsert("lead_state", LEAD_COLUMNS, self.leads.values())
        db.executemany(
            f"INSERT INTO funnel_daily{s} VALUES (%s, %s, %s, %s, %s) "
            f"ON CONFLICT (day, stage, source, campaign) DO UPDATE "
            f"SET entries = funnel_daily{s}.entries + excluded.entries",
            self._counts("funnel_daily", self.funnel),
        )
        load: Counter[tuple[str, str]] = Counter()
        for lead_id, row in self.leads.items():
            old, new = self.before.get(lead_id), _load_key(row)
            if old != new:
                if old is not None:
                    load[old] -= 1
                if new is not None:
                    load[new] += 1
        db.executemany(
            f"INSERT INTO owner_load{s} VALUES (%s, %s, %s) ON CONFLICT (owner, stage) "
            f"DO UPDATE SET open_leads = owner_load{s}.open_leads + excluded.open_leads",
            self._counts("owner_load", load),
        )
        # A bucket that empties is removed, so page boundaries never show in the rows.
        db.execute(f"DELETE FROM owner_load{s} WHERE open_leads = 0")
        self._upsert("account_state", ACCOUNT_COLUMNS, self.accounts.values())


class _RowFailed(Exception):
    """A row that cannot be written; the projector names the event (with its topic)."""

    def __init__(self, notification_id: int, originator_id: Any, reason: str) -> None:
        super().__init__(reason)
        self.notification_id = notification_id
        self.originator_id = originator_id
        self.reason = reason


@cache
def _kinds(table: str, names: tuple[str, ...] | None) -> tuple[tuple[str, str, bool], ...]:
    """(name, kind, nullable) of ``names`` (default: every column) of ``table``, in order."""
    spec = {c.name: c for c in columns()[table]}
    order = names if names is not None else tuple(spec)
    return tuple((spec[n].name, spec[n].kind, spec[n].nullable) for n in order)


def _number(value: Any) -> float:
    """A finite float, or NaN for what is none (inf, NaN, null, 1e400, text)."""
    number = to_real(value)
    return math.nan if number is None else number


def _plus(count: Any, more: Any) -> int | None:
    """A count plus more, as the INTEGER column holds it: NULL once either is no integer
    in range (and from then on), the same whether the count was just read back or not."""
    a, b = to_int(count), to_int(more)
    return None if a is None or b is None else to_int(a + b)


def _load_key(row: dict[str, Any]) -> tuple[str, str] | None:
    if row["owner"] and row["merged_into"] is None and row["stage"] in OPEN_STAGES:
        return (row["owner"], row["stage"])
    return None


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Projector:
    """Maintains the read models of one leadflow database."""

    def __init__(self, app: LeadflowApp, db: ProjectionDB, page_size: int = 2000) -> None:
        self.app = app
        self.db = db
        self.page_size = page_size
        self.stats = ProjectionStats()
        self._stop = threading.Event()

    def stop(self, *_: object) -> None:
        self._stop.set()

    # ----------------------------------------------------------------- schema

    def setup(self) -> None:
        """Create tables and views if missing (idempotent)."""
        views = views_ddl(self.db.dialect)
        # The view definitions' checksum is kept beside the positions, so views are replaced
        # only when an upgraded leadflow brings new ones (not on every `funnel` or `report`:
        # on PostgreSQL dropping a view waits for, and blocks, the analysts reading it).
        views_version = zlib.crc32(views.encode())
        with self.db.transaction():
            self._lock_schema()
            self.db.executescript(tables_ddl(self.db.dialect))
            swapped = self._relax_not_null()
            if swapped or self.position(VIEWS_NAME) != views_version:
                readers = analyst_roles(self.db) if self.db.dialect == "postgres" else []
                self.db.executescript(drop_views_ddl())
                self.db.executescript(views)
                if readers:
                    grant_select(self.db, readers)
                self.db.execute(
                    "INSERT INTO projection_tracking VALUES (%s, %s) ON CONFLICT (name) "
                    "DO UPDATE SET position = excluded.position", [VIEWS_NAME, views_version])
            self.db.execute(
                "INSERT INTO projection_tracking VALUES (%s, 0) ON CONFLICT (name) DO NOTHING",
                [TRACKING_NAME])

    def _relax_not_null(self) -> bool:
        """Drop NOT NULL from the ``RELAXED`` columns of tables made by an older leadflow.

        PostgreSQL alters the columns in place; SQLite cannot, so the table is copied into a
        new one and swapped in (its views dropped first; returns True: recreate them).
        Runs once: afterwards the columns are nullable and nothing is done.
        """
        if self.db.dialect == "postgres":
            rows = self.db.query(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND is_nullable = 'NO' "
                "AND table_name = ANY(%s) AND column_name = ANY(%s)",
                [list(RELAXED), sorted({c for cols in RELAXED.values() for c in cols})])
            for row in rows:
                if row["column_name"] in RELAXED.get(row["table_name"], ()):
                    self.db.execute(f"ALTER TABLE {row['table_name']} "
                                    f"ALTER COLUMN {row['column_name']} DROP NOT NULL")
            return False
        stale = [table for table, cols in RELAXED.items()
                 if any(r["name"] in cols and r["notnull"]
                        for r in self.db.query(f"PRAGMA table_info({table})"))]
        if not stale:
            return False
        self.db.executescript(drop_views_ddl())
        suffix = "_relaxed"
        fresh = {part.split()[5]: part for part in tables_ddl("sqlite", suffix).split("\n;\n")
                 if part.strip().startswith("CREATE TABLE")}
        for table in stale:
            log.info("relaxing NOT NULL of stored-value columns", table=table)
            self.db.execute(f"DROP TABLE IF EXISTS {table}{suffix}")
            self.db.execute(fresh[f"{table}{suffix}"])
            self.db.execute(f"INSERT INTO {table}{suffix} SELECT * FROM {table}")
            self.db.execute(f"DROP TABLE {table}")
            self.db.execute(f"ALTER TABLE {table}{suffix} RENAME TO {table}")
        self.db.executescript(tables_ddl("sqlite"))  # the indexes, under their final names
        return True

    def _lock_schema(self) -> None:
        """Serialise this transaction's DDL with every other leadflow process's.

        Two sessions creating or replacing the same table, view or type at once fail
        ("tuple concurrently updated", a duplicate type), and `project` is often started
        beside `funnel`, `report` or a consumer. SQLite's BEGIN IMMEDIATE already serialises.
        """
        if self.db.dialect == "postgres":
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK_KEY])

    def position(self, name: str = TRACKING_NAME) -> int:
        rows = self.db.query("SELECT position FROM projection_tracking WHERE name = %s", [name])
        return int(rows[0]["position"]) if rows else 0

    def max_notification_id(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)

    # ----------------------------------------------------------------- processing

    def _select(self, after: int) -> Sequence[Notification]:
        try:
            return self.app.recorder.select_notifications(after + 1, self.page_size,
                                                          topics=TOPICS)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:
            # The recorder itself cannot read a row (an originator id that is no UUID, written
            # by hand): name the position, as for an event a handler cannot take.
            raise ProjectionFailedError(after + 1, "(unreadable row)", None,
                                        f"the event store cannot read the events after "
                                        f"{after}: {_reason(exc)}") from exc

    def process_page(self, name: str = TRACKING_NAME, suffix: str = "") -> int:
        """Apply the next page after ``name``'s position; returns how many events.

        Raises ``ProjectionFailedError`` for an event that cannot be projected; nothing of
        its page is committed, so the position stays before it.
        """
        try:
            with self.db.transaction():
                lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""
                rows = self.db.query(
                    f"SELECT position FROM projection_tracking WHERE name = %s{lock}", [name])
                position = int(rows[0]["position"]) if rows else 0
                notifications = self._select(position)
                if not notifications:
                    return 0
                page = _Page(self.db, suffix, self.app.rules.scoring.half_life_days)
                events = self._decode(notifications)
                page.load({str(e.originator_id) for _, t, e in events if not KINDS[t][0]},
                          {str(e.originator_id) for _, t, e in events if KINDS[t][0]})
                self._apply(page, events)
                page.write()
                last = notifications[-1].id
                self.db.execute(
                    "INSERT INTO projection_tracking VALUES (%s, %s) ON CONFLICT (name) "
                    "DO UPDATE SET position = excluded.position", [name, last])
        except _RowFailed as exc:
            raise self._failed(exc) from exc
        self.stats.pages += 1
        self.stats.events += len(events)
        self.stats.position = last
        return len(events)

    def _decode(self, notifications: Sequence[Notification]) -> list[tuple[int, str, Any]]:
        """The page's events; the first that cannot be decoded raises ProjectionFailedError."""
        mapper = self.app.mapper
        transcoder = mapper.transcoder
        out: list[tuple[int, str, Any]] = []
        n: Notification | None = None
        try:
            if not isinstance(transcoder, JSONTranscoder):
                for n in notifications:
                    out.append((n.id, n.topic, mapper.to_domain_event(n)))
                return out
            names = transcoder.names
            cipher, compressor = mapper.cipher, mapper.compressor
            for n in notifications:
                state = n.state
                if cipher:
                    state = cipher.decrypt(state)
                if compressor:
                    state = compressor.decompress(state)
                try:
                    data = orjson.loads(state)
                except orjson.JSONDecodeError:
                    data = load_payload(state)
                if type(data) is not dict:
                    data = load_payload(state)  # raises: no JSON object
                out.append((n.id, n.topic, EventData(n.originator_id, data, names)))
        except Exception as exc:
            assert n is not None
            raise ProjectionFailedError(n.id, n.originator_id, n.topic,
                                        f"payload cannot be decoded: {_reason(exc)}") from exc
        return out

    @staticmethod
    def _apply(page: _Page, events: list[tuple[int, str, Any]]) -> None:
        """Apply events in order; the first a handler fails on raises ProjectionFailedError."""
        for nid, topic, event in events:
            try:
                page.apply(nid, topic, event)
            except Exception as exc:
                raise ProjectionFailedError(nid, event.originator_id, topic,
                                            _reason(exc)) from exc

    def _failed(self, exc: _RowFailed) -> ProjectionFailedError:
        """The error for a row that cannot be written, naming the event behind it."""
        found = self.app.recorder.select_notifications(exc.notification_id, 1) \
            if exc.notification_id else []
        topic = found[0].topic if found and found[0].id == exc.notification_id else None
        return ProjectionFailedError(exc.notification_id, exc.originator_id, topic, exc.reason)

    def run(self, until_idle: bool = False,
            progress: Callable[[int, int], None] | None = None, idle_wait: float = 1.0) -> \
            ProjectionStats:
        """Follow the event store; LISTEN/NOTIFY wakes it on PostgreSQL, polling on SQLite."""
        self.setup()
        listener = self._listen() if not until_idle else None
        try:
            while not self._stop.is_set():
                done = self.process_page()
                if progress:
                    progress(self.stats.position, self.max_notification_id())
                if done:
                    continue
                if until_idle:
                    break
                self._wait(listener, idle_wait)
        finally:
            if listener is not None:
                listener.close()
        return self.stats

    def _listen(self) -> Any:
        if self.db.dialect != "postgres":
            return None
        import psycopg

        conn = psycopg.connect(self.db.url, autocommit=True)
        channel = getattr(self.app.recorder, "channel_name", None)
        if channel is None:
            conn.close()
            return None
        conn.execute(f'LISTEN "{channel}"')
        return conn

    def _wait(self, listener: Any, seconds: float) -> None:
        if listener is None:
            self._stop.wait(seconds)
            return
        for _ in listener.notifies(timeout=seconds, stop_after=1):
            break

    # ----------------------------------------------------------------- rebuild

    def rebuild(self, progress: Callable[[int, int], None] | None = None,
                page_size: int = 20_000) -> ProjectionStats:
        """Replay every event into fresh tables, then swap them in in one transaction.

        The replay keeps the read models' keyed rows (leads, accounts, funnel counts) in
        memory and writes each of them once, by COPY, at the end; the append-only rows
        (transitions, ledger) are copied page by page. Nothing is read back from the tables
        while replaying. A rebuild that stops half-way leaves the live tables untouched; the
        next one starts from scratch. An event that cannot be projected raises
        ``ProjectionFailedError`` (and the live tables stay as they were).
        """
        self.setup()
        suffix = "_rebuild"
        with self.db.transaction():
            self._lock_schema()
            for table in TABLES:
                self.db.execute(f"DROP TABLE IF EXISTS {table}{suffix}")
            self.db.executescript(_without_indexes(tables_ddl(self.db.dialect, suffix)))
        total = self.max_notification_id()
        started = time.monotonic()
        state = _Page(self.db, suffix, self.app.rules.scoring.half_life_days)
        try:
            position = self._replay(state, page_size, total, progress)
            if self._stop.is_set():
                raise RebuildInterrupted(f"rebuild stopped at event {position}; the live "
                                         "tables are unchanged")
            self._swap(state, position)
        except _RowFailed as exc:
            raise self._failed(exc) from exc
        log.info("rebuild swapped in", events=self.stats.events, position=position,
                 seconds=round(time.monotonic() - started, 2))
        return self.stats

    def _replay(self, state: _Page, page_size: int, total: int,
                progress: Callable[[int, int], None] | None) -> int:
        position = 0
        while not self._stop.is_set():
            notifications = self.app.recorder.select_notifications(
                position + 1, page_size, topics=TOPICS)
            if not notifications:
                break
            events = self._decode(notifications)
            self._apply(state, events)
            with self.db.transaction():
                state.write_appends()
            position = notifications[-1].id
            self.stats.pages += 1
            self.stats.events += len(events)
            self.stats.position = position
            if progress:
                progress(position, total)
        return position

    def _swap(self, state: _Page, position: int) -> None:
        with self.db.transaction():
            state.write_state(fresh=True)
            self._lock_schema()  # after the bulk write: hold it only for the swap's DDL
            readers = analyst_roles(self.db) if self.db.dialect == "postgres" else []
            self.db.executescript(drop_views_ddl())
            for table in TABLES:
                self.db.execute(f"DROP TABLE {table}")
                self.db.execute(f"ALTER TABLE {table}{state.s} RENAME TO {table}")
            self.db.executescript(tables_ddl(self.db.dialect))  # indexes, final names
            self.db.executescript(views_ddl(self.db.dialect))
            if readers:
                grant_select(self.db, readers)  # new tables: the analysts keep their access
            self.db.execute("UPDATE projection_tracking SET position = %s WHERE name = %s",
                            [position, TRACKING_NAME])


class RebuildInterrupted(RuntimeError):
    """A stop signal arrived during a rebuild; the fresh tables were not swapped in."""


def _without_indexes(ddl: str) -> str:
    # Fresh tables fill faster without secondary indexes; they are built at the swap.
    return "\n;\n".join(part for part in ddl.split("\n;\n")
                        if not part.strip().startswith("CREATE INDEX"))
