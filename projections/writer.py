"""Loading the rows a page of events touches, and writing its changes back in one go.

``Page`` is a ``handlers.PageChanges`` that reads the ``lead_state`` (with its
``lead_personal``), ``lead_model_state`` and ``account_state`` rows it will change before the
handlers run, and afterwards writes every changed row: leads (split between the two lead
tables), their named models' rows, accounts, transitions, ledger, funnel counts and owner
load. Every value passes through the converters of ``db.clean_rows``, identically on SQLite
and PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from leadflow.projections.db import ProjectionDB, RowRejected, clean_rows, from_db
from leadflow.projections.handlers import PageChanges
from leadflow.projections.rows import ACCOUNT_COLUMNS, LEAD_COLUMNS, MODEL_COLUMNS
from leadflow.projections.schema import PERSONAL_COLUMNS, columns

OPEN_STAGES = frozenset({"new", "mql", "sql", "opportunity"})
# A lead's row in memory holds every column; lead_state gets the ones without personal data,
# lead_personal the rest, both keyed by lead_id.
STATE_COLUMNS = tuple(c for c in LEAD_COLUMNS if c not in PERSONAL_COLUMNS)
PERSONAL_ROW = ("lead_id", *PERSONAL_COLUMNS)
TS_COLUMNS = ("created_at", "stage_at", "contacted_at", "engagement_as_of", "last_touch_at",
              "reached_mql_at", "reached_sql_at", "reached_opportunity_at",
              "reached_customer_at", "disqualified_at", "recycled_at", "lost_at")


class Page(PageChanges):
    """The changes one page of events makes, applied to the database together."""

    def __init__(self, db: ProjectionDB, suffix: str, half_life_days: float,
                 models: Mapping[str, tuple[float, float]] | None = None,
                 replaying: bool = False) -> None:
        super().__init__(half_life_days, models)
        self.db = db
        self.s = suffix
        # A rebuild's replay: ledger rows a backfill supersedes or an unmerge releases are
        # deleted once, set-wise, when the state is written (its fresh tables have no index
        # to find them by lead).
        self.replaying = replaying
        # Scratch tables' suffix: a parallel rebuild's parts each have their own.
        self.scratch = suffix
        self.other_load: Counter[tuple[str, str]] = Counter()

    def load(self, lead_ids: set[str], account_ids: set[str],
             model_leads: Iterable[str] = ()) -> None:
        """The rows the page's events change: ``model_leads`` are the leads whose named
        models' rows they change (none in a store without models: no query)."""
        account_ids = set(account_ids)
        for chunk in _chunks(sorted(lead_ids), 500):
            marks = ",".join(["%s"] * len(chunk))
            for row in self.db.query(
                    f"SELECT * FROM lead_state{self.s} WHERE lead_id IN ({marks})", chunk):
                for col in TS_COLUMNS:
                    row[col] = from_db(row[col])
                row["in_pool"] = bool(row["in_pool"])
                row["dormant"] = bool(row["dormant"])
                row.update(dict.fromkeys(PERSONAL_COLUMNS))
                self.leads[row["lead_id"]] = row
                self.before[row["lead_id"]] = _load_key(row)
                if row["account_id"]:  # its touchpoints count as the account's engagements
                    account_ids.add(row["account_id"])
            for row in self.db.query(
                    f"SELECT * FROM lead_personal{self.s} WHERE lead_id IN ({marks})", chunk):
                if row["lead_id"] in self.leads:
                    self.leads[row["lead_id"]].update(row)
        for chunk in _chunks(sorted(account_ids), 500):
            marks = ",".join(["%s"] * len(chunk))
            for row in self.db.query(
                    f"SELECT * FROM account_state{self.s} WHERE account_id IN ({marks})", chunk):
                row["last_engaged_at"] = from_db(row["last_engaged_at"])
                row["last_surge_at"] = from_db(row["last_surge_at"])
                self.accounts[row["account_id"]] = row
        for chunk in _chunks(sorted(model_leads), 500):
            marks = ",".join(["%s"] * len(chunk))
            for row in self.db.query(f"SELECT * FROM lead_model_state{self.s} "
                                     f"WHERE lead_id IN ({marks})", chunk):
                row["engagement_as_of"] = from_db(row["engagement_as_of"])
                row["crossed_at"] = from_db(row["crossed_at"])
                row["above"] = bool(row["above"])
                self.models.setdefault(row["lead_id"], {})[row["model"]] = row

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

    def _rejected(self, table: str, exc: RowRejected) -> RowFailed:
        row, names = exc.row, [c.name for c in columns()[table]]
        if table in ("lead_state", "lead_personal", "account_state", "lead_model_state"):
            oid = str(row[0])
            return RowFailed(self.last_event.get(oid, 0), oid, str(exc))
        if table in ("stage_transitions", "score_ledger"):
            lead = row[names.index("lead_id")]
            return RowFailed(int(row[0]), lead, str(exc))
        return RowFailed(max(self.last_event.values(), default=0), "?", str(exc))

    def _upsert(self, table: str, columns: tuple[str, ...],
                rows: Iterable[dict[str, Any]], keys: int = 1) -> None:
        """Insert or replace whole rows keyed by the first ``keys`` columns."""
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[keys:])
        self.db.executemany(
            f"INSERT INTO {table}{self.s} ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({', '.join(columns[:keys])}) DO UPDATE SET {updates}",
            self._rows(table, ([row[c] for c in columns] for row in rows), columns),
        )

    def _copy(self, table: str, columns: tuple[str, ...],
              rows: Iterable[dict[str, Any]]) -> None:
        self.db.copy_rows(f"{table}{self.s}",
                          self._rows(table, ([row[c] for c in columns] for row in rows),
                                     columns),
                          columns, [kind for _, kind, _ in _kinds(table, columns)])

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
        self.copy_appends(self.take_appends())
        if self.superseded and not self.replaying:
            self.db.executemany(f"DELETE FROM score_ledger{self.s} WHERE lead_id = %s "
                                "AND model = %s AND notification_id < %s",
                                [[lead, model, nid] for (lead, model), nid
                                 in sorted(self.superseded.items())])
            self.superseded = {}
        if self.released and not self.replaying:
            self._delete_released_by_lead()
        self.forget_reasons(self.take_forgotten())

    def take_appends(self) -> list[tuple[str, list[list[Any]]]]:
        """The append-only rows so far, as their tables hold them (a row that cannot be
        written raises ``RowFailed`` here), by table; taken out of the page."""
        ledger = self.ledger
        if self.superseded:  # a named model's rows before its latest backfill
            latest = self.superseded
            ledger = [r for r in ledger if r[10] is None or latest.get((r[2], r[10]), 0) <= r[0]]
        out = [(table, self._rows(table, rows)) for table, rows
               in (("stage_transitions", self.transitions), ("score_ledger", ledger))]
        self.transitions, self.ledger = [], []
        return out

    def copy_appends(self, appends: list[tuple[str, list[list[Any]]]]) -> None:
        """Append ``take_appends``' rows, by COPY on PostgreSQL."""
        for table, rows in appends:
            self.db.copy_rows(f"{table}{self.s}", rows,
                              kinds=[kind for _, kind, _ in _kinds(table, None)])

    def take_forgotten(self) -> list[tuple[str, int]]:
        """The leads forgotten so far, with their Forgotten events; taken out of the page."""
        forgotten, self.forgotten = sorted(self.forgotten.items()), {}
        return forgotten

    def forget_reasons(self, forgotten: list[tuple[str, int]]) -> None:
        """A forgotten person's earlier transitions: their reasons were sealed with the
        deleted key, so a rebuild reads none (handlers._forget_row does the lead's row)."""
        for lead_id, nid in forgotten:
            self.db.execute(f"UPDATE stage_transitions{self.s} SET reason = NULL "
                            "WHERE lead_id = %s AND notification_id < %s", [lead_id, nid])

    def write_state(self, fresh: bool = False) -> None:
        """The keyed rows: leads, accounts, funnel counts and owner load.

        ``fresh``: the tables are empty (a rebuild), so rows are copied, not upserted.
        """
        if fresh:
            self.write_leads()
            self.copy_totals()
            return
        s, db = self.s, self.db
        self._delete_dropped()
        self._upsert("lead_state", STATE_COLUMNS, self.leads.values())
        self._upsert("lead_personal", PERSONAL_ROW, self.leads.values())
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
        self._upsert("lead_model_state", MODEL_COLUMNS, self._model_rows(), keys=2)

    def write_leads(self) -> None:
        """A rebuild's lead rows (and their named models' rows) into its empty tables, once
        the ledger rows of earlier pages that a backfill superseded or an unmerge released
        are deleted."""
        self._delete_dropped()
        self._copy("lead_state", STATE_COLUMNS, self.leads.values())
        self._copy("lead_personal", PERSONAL_ROW, self.leads.values())
        self._copy("lead_model_state", MODEL_COLUMNS, self._model_rows())

    def open_load(self) -> Counter[tuple[str, str]]:
        """Open leads by (owner, stage) among this page's leads."""
        return Counter(key for key in map(_load_key, self.leads.values()) if key is not None)

    def copy_totals(self) -> None:
        """A rebuild's rows that sum over leads (accounts, funnel counts, owner load) into
        its empty tables; ``other_load`` adds the open leads a parallel rebuild's other parts
        hold (projections/parallel.py)."""
        self._copy("account_state", ACCOUNT_COLUMNS, self.accounts.values())
        self.db.copy_rows(f"funnel_daily{self.s}", self._counts("funnel_daily", self.funnel))
        self.db.copy_rows(f"owner_load{self.s}",
                          self._counts("owner_load", self.open_load() + self.other_load))

    def _delete_dropped(self) -> None:
        """The ledger rows of earlier pages a backfill superseded or an unmerge released."""
        if self.superseded:
            self._delete_superseded()
        if self.released:
            self._delete_released()

    def _delete_superseded(self) -> None:
        """Delete the ledger rows of the replay's earlier pages that a later backfill of
        their lead's model superseded, in one statement over a table of the backfills."""
        table = f"ledger_superseded{self.scratch}"
        self.db.execute(f"DROP TABLE IF EXISTS {table}")
        self.db.execute(f"CREATE TABLE {table} (lead_id TEXT NOT NULL, model TEXT NOT NULL, "
                        "nid BIGINT NOT NULL, PRIMARY KEY (lead_id, model))")
        self.db.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)",
                            [[lead, model, nid] for (lead, model), nid
                             in sorted(self.superseded.items())])
        ledger = f"score_ledger{self.s}"
        self.db.execute(f"DELETE FROM {ledger} WHERE model IS NOT NULL AND EXISTS ("
                        f"SELECT 1 FROM {table} x WHERE x.lead_id = {ledger}.lead_id "
                        f"AND x.model = {ledger}.model AND {ledger}.notification_id < x.nid)")
        self.db.execute(f"DROP TABLE {table}")
        self.superseded = {}

    def _delete_released_by_lead(self) -> None:
        """Delete the stored named-model engagement rows each unmerge of this page released
        (of records the lead no longer holds), found by the ledger's lead index."""
        ledger = f"score_ledger{self.s}"
        for lead_id, nid, kept in self.released:
            rows = self.db.query(f"SELECT notification_id, seq, model, event_id FROM {ledger} "
                                 "WHERE lead_id = %s AND model IS NOT NULL AND kind <> 'fit' "
                                 "AND notification_id < %s", [lead_id, nid])
            self.db.executemany(f"DELETE FROM {ledger} WHERE notification_id = %s AND seq = %s",
                                [[r["notification_id"], r["seq"]] for r in rows
                                 if (r["model"], r["event_id"]) not in kept])
        self.released = []

    def _delete_released(self) -> None:
        """Delete the ledger rows of the replay's earlier pages that a later unmerge of their
        lead released, in one statement over tables of the unmerges and the (model, record)
        pairs each lead kept."""
        restores, kept = f"ledger_released{self.scratch}", f"ledger_kept{self.scratch}"
        for table, ddl in ((restores, "PRIMARY KEY (lead_id, nid)"),
                           (kept, "model TEXT NOT NULL, event_id TEXT NOT NULL, "
                                  "PRIMARY KEY (lead_id, nid, model, event_id)")):
            self.db.execute(f"DROP TABLE IF EXISTS {table}")
            self.db.execute(f"CREATE TABLE {table} (lead_id TEXT NOT NULL, nid BIGINT NOT NULL, "
                            f"{ddl})")
        self.db.executemany(f"INSERT INTO {restores} VALUES (%s, %s)",
                            [[lead, nid] for lead, nid, _ in self.released])
        self.db.executemany(f"INSERT INTO {kept} VALUES (%s, %s, %s, %s)",
                            [[lead, nid, model, event_id] for lead, nid, pairs in self.released
                             for model, event_id in sorted(pairs)])
        ledger = f"score_ledger{self.s}"
        self.db.execute(
            f"DELETE FROM {ledger} WHERE (notification_id, seq) IN ("
            f"SELECT e.notification_id, e.seq FROM {restores} r JOIN {ledger} e "
            "ON e.lead_id = r.lead_id AND e.notification_id < r.nid "
            "WHERE e.model IS NOT NULL AND e.kind <> 'fit' AND NOT EXISTS ("
            f"SELECT 1 FROM {kept} k WHERE k.lead_id = r.lead_id AND k.nid = r.nid "
            "AND k.model = e.model AND k.event_id = e.event_id))")
        for table in (restores, kept):
            self.db.execute(f"DROP TABLE {table}")
        self.released = []

    def _model_rows(self) -> Iterable[dict[str, Any]]:
        return (row for rows in self.models.values() for row in rows.values())


class RowFailed(Exception):
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


def _load_key(row: dict[str, Any]) -> tuple[str, str] | None:
    if row["owner"] and row["merged_into"] is None and row["stage"] in OPEN_STAGES:
        return (row["owner"], row["stage"])
    return None


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
