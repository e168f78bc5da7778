"""The floor: a lean consumer on leadflow's real store, contract and security, for the bench.

    LEADFLOW_DATABASE_URL=postgresql://… LEADFLOW_KAFKA_TOPIC=… python bench/floor.py

Not the engine, and not a product path: a measuring stick for issue 12's consumer targets.
It answers "how fast can a consumer be on this machine, this stack and this store, if the
decision layer were nearly free?", so the gap between it and `leadflow consume` is the
engine's decision layer, not Kafka, pydantic, PostgreSQL or the store's guarantees.

Kept, as the engine does them (the same code where it says so):
- the consumer: kafka-python with `consumers.clients.touchpoint_consumer`'s settings, polls
  of `max_poll_records`, one batch per partition, the tracked offset as the position;
- contract v1 validation (`contract.parse_record`, pydantic) and the record digest
  (`engine.batch.record_digest`); rejects are counted (the engine dead-letters them);
- duplicates: the record-id index read for each batch, and each lead's applied ids;
- identities: HMAC lookup keys (`Vault.lookup`), the identity table read for the keys a
  batch does not know and written for new ones; anonymous visitors kept apart from people
  (the engine's `Interest`), so a lead stays on the partition of its account's key;
- scoring: the built-in rules' `scoring.score_touchpoint` (bands, caps, expiry), the
  engagement value decayed with the rules' half-life, MQL at the threshold, an owner by
  rotation, the account's engagement row, the lead's timer row;
- personal values sealed per person (`Vault.seal`: AES-GCM, data keys wrapped and stored);
- one stored row per record, JSON by orjson, with its keyed chain link (`store.chain.seal`);
- one transaction per batch through the engine's recorder (`insert_events` with the
  tracking row, record ids, timers and bookkeeping: the same statements, locks and indexes);
- write conflicts (two processes) forget what the batch touched and retry it.

Left out (what the floor does not pay for): the aggregates and their events (built,
applied, folded, encoded through the library's format), the unit of work and its caches,
time-driven transitions (clock catch-up, SLA, dormancy), profiles, merges, interest
absorption, dispositions and later stages, surges, named models, routing rules and capacity,
poison isolation and dead letters.

``--aggregates`` runs ``AggregateFloor``: the same consumer with the engine's ``Lead``
aggregates and codec in place of the dicts and rows, and no other decision (see the class):
what an engine on the library's aggregates pays before it decides anything.

Prints one JSON line: records, rows, rejects, duplicates, conflicts, loads, wall and CPU.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import orjson  # noqa: E402
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking  # noqa: E402
from kafka import TopicPartition  # noqa: E402
from kafka.consumer.subscription_state import ConsumerRebalanceListener  # noqa: E402

from leadflow.config import Settings  # noqa: E402
from leadflow.consumers.clients import touchpoint_consumer  # noqa: E402
from leadflow.consumers.settings import KafkaSettings  # noqa: E402
from leadflow.consumers.touchpoints import tracking_name  # noqa: E402
from leadflow.contract import InboundRecord, RecordRejected, parse_record  # noqa: E402
from leadflow.domain import scoring  # noqa: E402
from leadflow.domain.events import create  # noqa: E402
from leadflow.domain.ids import identity_key  # noqa: E402
from leadflow.domain.lead import Lead  # noqa: E402
from leadflow.engine.app import LeadflowApp  # noqa: E402
from leadflow.engine.batch import record_digest  # noqa: E402
from leadflow.runtime import collector_paused, tune_gc  # noqa: E402
from leadflow.store import chain  # noqa: E402
from leadflow.store.bookkeeping import Books  # noqa: E402
from leadflow.store.recorders import RecordId  # noqa: E402

NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")
TOPIC = "leadflow.floor:Lead.Recorded"
REPS = ("rep-1", "rep-2", "rep-3", "rep-4")
FREE_MAIL = frozenset({"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "icloud.com"})
ATTEMPTS = 10


def _plain_keys(record: InboundRecord) -> list[str]:
    """The record's identity keys as the engine keeps them (sealed in its events), a person's,
    else its cookie's (``Floor.keys`` hashes them into lookup keys)."""
    ref = record.lead
    keys = [identity_key(kind, value) for kind, value in (
        ("email", ref.email), ("phone", ref.phone), ("external_id", ref.external_id))
        if value]
    if not keys and ref.anonymous_id:
        keys = [identity_key("anonymous_id", ref.anonymous_id)]
    return keys


class _Lead:
    __slots__ = ("account", "as_of", "counts", "head", "id", "owner", "seen", "stage",
                 "totals", "value", "version")

    def __init__(self, lead_id: uuid.UUID) -> None:
        self.id = lead_id
        self.version = 0
        self.head = chain.genesis(lead_id)
        self.counts: dict[str, int] = {}
        self.totals: dict[str, float] = {}
        self.value = 0.0
        self.as_of: datetime | None = None
        self.stage = "new"
        self.owner: str | None = None
        self.seen: set[str] = set()
        self.account: uuid.UUID | None = None


class Floor:
    def __init__(self, app: LeadflowApp, settings: KafkaSettings, *,
                 subscribe: bool = True) -> None:
        self.app = app
        self.recorder: Any = app.recorder
        self.settings = settings
        # bench/gap.py applies batches in process, without Kafka.
        self.consumer: Any = touchpoint_consumer(settings) if subscribe else None
        self.leads: dict[uuid.UUID, _Lead] = {}
        self.directory: dict[str, uuid.UUID] = {}  # lookup key -> lead id
        self.turn = 0
        self.half_life_s = app.rules.scoring.half_life_days * 86400.0
        self.mql = app.rules.scoring.mql_threshold
        self.stats = {"records": 0, "rows": 0, "rejected": 0, "duplicates": 0,
                      "conflicts": 0, "loads": 0, "batches": 0}

    def run(self) -> dict[str, Any]:
        floor = self

        class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
                pass  # what another process changes meanwhile fails our commit: retried

            def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
                for tp in assigned:
                    tracked = floor.recorder.max_tracking_id(tracking_name(tp.topic,
                                                                           tp.partition))
                    if tracked is None:
                        floor.consumer.seek_to_beginning(tp)
                    else:
                        floor.consumer.seek(tp, tracked + 1)

        topic = self.settings.topic
        self.consumer.subscribe([topic], listener=Rebalance())
        self.consumer.partitions_for_topic(topic)
        started, cpu = time.perf_counter(), time.process_time()
        idle = 0
        while True:
            polled = self.consumer.poll(timeout_ms=500,
                                        max_records=self.settings.max_poll_records)
            with collector_paused():
                for tp, records in polled.items():
                    self.process(tp, records)
            if polled:
                idle = 0
                continue
            idle += 1
            assignment = self.consumer.assignment()
            if assignment:
                ends = self.consumer.end_offsets(list(assignment))
                if all(self.consumer.position(tp) >= ends[tp] for tp in assignment):
                    break
            elif idle > 20:  # the other process holds every partition and is done
                break
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        self.consumer.close(autocommit=False)
        records = self.stats["records"]
        return {**self.stats, "wall_seconds": round(wall, 3),
                "records_per_s": round(records / wall, 1) if wall else None,
                "cpu_us_per_record": round(cpu / records * 1e6, 1) if records else None}

    def process(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        for _ in range(ATTEMPTS):
            if self.apply(tp, records):
                return
        raise RuntimeError(f"{tp}: {ATTEMPTS} write conflicts in a row")

    def parse(self, records: Sequence[Any]) -> list[InboundRecord]:
        now = datetime.now(UTC)
        parsed = []
        for record in records:
            try:
                parsed.append(parse_record(record.value, now=now,
                                           max_future_skew=timedelta(minutes=5)))
            except RecordRejected:
                self.stats["rejected"] += 1
        return parsed

    def keys(self, parsed: Sequence[InboundRecord]) -> list[list[str]]:
        """Each record's identity lookup keys (a person's, else its cookie's); the identity
        table is read once for those the batch does not know yet."""
        lookup = self.app.vault.lookup
        out: list[list[str]] = []
        unknown: set[str] = set()
        for record in parsed:
            hashed = [lookup(key) for key in _plain_keys(record)]
            out.append(hashed)
            unknown.update(h for h in hashed if h not in self.directory)
        if unknown:
            for key, (target, _) in self.recorder.select_identities(list(unknown)).items():
                self.directory[key] = target
        return out

    def lead(self, hashed: list[str]) -> tuple[_Lead, bool]:
        lead_id = next((self.directory[h] for h in hashed if h in self.directory), None)
        if lead_id is None:
            lead_id = uuid.uuid5(NAMESPACE, hashed[0])
            lead = self.leads[lead_id] = _Lead(lead_id)
            return lead, True
        found = self.leads.get(lead_id)
        if found is None:
            found = self.leads[lead_id] = _Lead(lead_id)
            newest = self.recorder.select_events(lead_id, desc=True, limit=1)
            if newest:  # another process's lead: its version and chain head
                found.version = newest[0].originator_version
                found.head = chain.unseal(bytes(newest[0].state))[1] or found.head
                self.stats["loads"] += 1
        return found, False

    def apply(self, tp: TopicPartition, records: Sequence[Any]) -> bool:
        """One batch: read what it needs, decide its rows, commit them (False: a write
        conflict, the batch's leads and identities forgotten)."""
        parsed = self.parse(records)
        digests = [record_digest(record) for record in parsed]
        applied = self.recorder.select_record_ids([record.event_id for record in parsed])
        hashed_keys = self.keys(parsed)
        books = Books()
        timers: dict[uuid.UUID, datetime | None] = {}
        ids: list[RecordId] = []
        stored = self.decide(parsed, digests, applied, hashed_keys, books, timers, ids)
        vault = self.app.vault
        books.new_data_keys.update(vault.new_keys())
        try:
            self.recorder.insert_events(
                stored, tracking=Tracking(tracking_name(tp.topic, tp.partition),
                                          records[-1].offset),
                record_ids=ids, timers=timers, books=books)
        except IntegrityError:
            self.stats["conflicts"] += 1
            vault.rolled_back()
            self.forget([uuid.UUID(str(row.originator_id)) for row in stored])
            for hashed in hashed_keys:
                for h in hashed:
                    self.directory.pop(h, None)
            return False
        vault.committed()
        self.stats["records"] += len(records)
        self.stats["rows"] += len(stored)
        self.stats["batches"] += 1
        return True

    def forget(self, lead_ids: Sequence[uuid.UUID]) -> None:
        """A write conflict: what this process knew of the batch's leads may be stale."""
        for lead_id in lead_ids:
            self.leads.pop(lead_id, None)

    def decide(self, parsed: Sequence[InboundRecord], digests: Sequence[bytes],
               applied: Any, hashed_keys: Sequence[list[str]], books: Books,
               timers: dict[uuid.UUID, datetime | None], ids: list[RecordId]
               ) -> list[StoredEvent]:
        """The batch's rows, one a record not applied before (``AggregateFloor`` overrides
        it)."""
        vault, keyring = self.app.vault, self.app.codec.keyring
        stored: list[StoredEvent] = []
        stamp = datetime.now(UTC)
        for record, digest, hashed in zip(parsed, digests, hashed_keys, strict=True):
            if record.event_id in applied or not hashed:
                self.stats["duplicates"] += record.event_id in applied
                continue
            lead, new = self.lead(hashed)
            if record.event_id in lead.seen:
                self.stats["duplicates"] += 1
                continue
            lead.seen.add(record.event_id)
            for h in hashed:
                if h not in self.directory:
                    self.directory[h] = lead.id
                    books.new_identities[h] = (lead.id, False)
            at = record.occurred_at
            context = record.context.model_dump(exclude_none=True)
            state: dict[str, Any] = {"event_id": record.event_id, "record_type": record.type,
                                     "occurred_at": at, "context": context}
            if new:
                created: dict[str, Any] = {"primary_key": hashed[0],
                                           "landing_page": context.get("page_url")}
                vault.seal("Lead.Created", lead.id, created, first=True)
                state["created"] = created
                email = record.lead.email
                if email and "@" in email and email.rsplit("@", 1)[1] not in FREE_MAIL:
                    lead.account = uuid.uuid5(NAMESPACE, email.rsplit("@", 1)[1])
            if record.is_touchpoint:
                self.score(lead, record, context, at, state)
                if lead.account is not None:
                    books.engagements[(lead.account, lead.id)] = at
                    if lead.owner is not None and "owner" in state:
                        books.load[lead.owner] = books.load.get(lead.owner, 0) + 1
                timers[lead.id] = at + timedelta(days=30)
            state["timestamp"] = stamp
            vault.seal("Lead.TouchpointScored", lead.id, state, first=new)
            lead.version += 1
            sealed, lead.head = chain.seal(keyring, lead.head, lead.id, lead.version, TOPIC,
                                           orjson.dumps(state))
            stored.append(StoredEvent(lead.id, lead.version, TOPIC, sealed))
            ids.append(RecordId(record.event_id, digest, lead.id))
        return stored

    def score(self, lead: _Lead, record: InboundRecord, context: dict[str, Any],
              at: datetime, state: dict[str, Any]) -> None:
        rules = self.app.rules
        awards = scoring.score_touchpoint(rules, record.type, context, at, record.event_id,
                                          lead.counts, lead.totals)
        value = lead.value
        if lead.as_of is not None and at > lead.as_of:
            value *= math.exp(-math.log(2) * (at - lead.as_of).total_seconds()
                              / self.half_life_s)
        for award in awards:
            lead.counts[award.rule] = lead.counts.get(award.rule, 0) + 1
            lead.totals[award.rule] = lead.totals.get(award.rule, 0.0) + award.points
            value += award.points
        if lead.as_of is None or at > lead.as_of:
            lead.as_of = at
        lead.value = value
        state["awards"] = [award.to_dict() for award in awards]
        state["score"] = value
        state["rules_version"] = rules.version
        if value >= self.mql and lead.stage == "new":
            lead.stage = "mql"
            lead.owner = REPS[self.turn % len(REPS)]
            self.turn += 1
            state["stage"] = {"to": "mql", "reason": "rule:mql-threshold"}
            state["owner"] = lead.owner


class AggregateFloor(Floor):
    """The floor with the engine's ``Lead`` aggregates and codec in place of its dicts: each
    lead an eventsourcing aggregate, its created event, its touchpoints through
    ``Lead.record_touchpoint`` (the engine's scoring and event), cut per record and encoded
    by the engine's codec (the library's JSON format, envelopes, sealed personal values,
    chain links), each new identity named by ``IdentityAdded`` (``verify`` holds the identity
    rows to the events). Nothing else is decided: no account, owner, qualification or timers
    beyond the touch. What an engine built on the library's aggregates (DESIGN.md: the aggregates
    decide) pays before it decides anything: ``--aggregates``, and ``bench/gap.py
    aggregates`` in process."""

    def __init__(self, app: LeadflowApp, settings: KafkaSettings, *,
                 subscribe: bool = True) -> None:
        super().__init__(app, settings, subscribe=subscribe)
        self.aggregates: dict[uuid.UUID, Lead] = {}

    def forget(self, lead_ids: Sequence[uuid.UUID]) -> None:
        super().forget(lead_ids)
        for lead_id in lead_ids:
            self.aggregates.pop(lead_id, None)
        self.app.vault.forget(lead_ids)  # another writer may have stored a key meanwhile

    def load(self, hashed_keys: Sequence[list[str]]) -> None:
        """The leads another process wrote (their identities read from the store), replayed
        from their rows as the engine replays them, all of a batch's in one query."""
        wanted = {lead_id for hashed in hashed_keys for h in hashed
                  if (lead_id := self.directory.get(h)) is not None
                  and lead_id not in self.aggregates}
        if not wanted:
            return
        stored = self.app.codec.select_many(sorted(wanted, key=lambda i: i.int))
        for lead_id, lead, exc in self.app._replayed(stored, list(stored)):
            if exc is not None:
                raise exc
            self.aggregates[lead_id] = lead
            self.stats["loads"] += 1

    def decide(self, parsed: Sequence[InboundRecord], digests: Sequence[bytes],
               applied: Any, hashed_keys: Sequence[list[str]], books: Books,
               timers: dict[uuid.UUID, datetime | None], ids: list[RecordId]
               ) -> list[StoredEvent]:
        rules = self.app.rules
        self.load(hashed_keys)
        touched: dict[uuid.UUID, Lead] = {}
        cuts: dict[uuid.UUID, list[tuple[int, dict[str, Any]]]] = {}
        seen: set[str] = set()
        for record, digest, hashed in zip(parsed, digests, hashed_keys, strict=True):
            if not hashed:
                continue
            if record.event_id in applied or record.event_id in seen:
                self.stats["duplicates"] += 1
                continue
            seen.add(record.event_id)
            lead_id = next((self.directory[h] for h in hashed if h in self.directory), None)
            lead = self.aggregates.get(lead_id) if lead_id is not None else None
            if lead is not None and record.event_id in lead.seen:
                self.stats["duplicates"] += 1  # before anything changes, as the engine does
                continue
            at = record.occurred_at
            # A lead's events name each identity whose row points at it (as the engine's
            # do: `verify` checks the rows against them), the plain key, sealed.
            plain = (_plain_keys(record) if lead is None
                     or any(h not in self.directory for h in hashed) else [])
            if lead is None:
                lead = create(
                    Lead, primary_key=plain[0], created_at=at, source=None, campaign=None,
                    landing_page=None, account_id=None, origin=record.event_id)
                self.aggregates[lead.id] = lead
            for h, key in zip(hashed, plain or hashed, strict=True):
                if h not in self.directory:
                    self.directory[h] = lead.id
                    books.new_identities[h] = (lead.id, False)
                    lead.add_identity(key, at)
            if record.is_touchpoint:
                lead.record_touchpoint(record.event_id, record.type, at,
                                       record.context.model_dump(exclude_none=True), rules)
                timers[lead.id] = at
            touched[lead.id] = lead
            count = len(lead.pending_events)
            mine = cuts.setdefault(lead.id, [])
            if count and (not mine or count > mine[-1][0]):
                mine.append((count, {"record": {"event_id": record.event_id,
                                                "type": record.type, "occurred_at": at}}))
            ids.append(RecordId(record.event_id, digest, lead.id))
        stored: list[StoredEvent] = self.app.codec.stored_many(
            [(a, cuts.get(a.id, ())) for a in touched.values()])
        return stored


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Configured as `leadflow consume` is: LEADFLOW_DATABASE_URL (PostgreSQL), "
               "LEADFLOW_KAFKA_BOOTSTRAP, LEADFLOW_KAFKA_TOPIC, LEADFLOW_KAFKA_GROUP, "
               "LEADFLOW_AUDIT_KEY, LEADFLOW_MASTER_KEY. Exits once caught up; prints one "
               "JSON line.")
    parser.add_argument("--aggregates", action="store_true",
                        help="the floor with the engine's Lead aggregates and codec "
                             "(AggregateFloor)")
    args = parser.parse_args()
    settings = Settings.from_env()
    if not settings.database_url.startswith(("postgresql://", "postgres://")):
        print("bench/floor.py: LEADFLOW_DATABASE_URL must name a PostgreSQL database (the "
              "floor measures the production store)", file=sys.stderr)
        return 2
    tune_gc()
    app = LeadflowApp(env=settings.eventsourcing_env({}))
    try:
        floor = (AggregateFloor if args.aggregates else Floor)(app, KafkaSettings.from_env())
        figures = floor.run()
    finally:
        app.close()
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LEADFLOW_LOG_LEVEL", "WARNING")
    sys.exit(main())
