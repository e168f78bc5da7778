"""The batch unit of work: many inbound records applied in order, saved in one transaction.

``apply_batch`` saves every aggregate the records touched, the applied records' ids, the
timer index rows and (from the Kafka consumer) the partition's tracking record together,
which is what gives the Kafka path its exactly-once effect. A record the domain refuses, or
that poisons the batch, is rejected alone with its reason; the rest is applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext, suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.application import LRUCache
from eventsourcing.persistence import StoredEvent, Tracking

# Aggregates other than the lead are read from the package where used (``domain.Account``):
# importing one defines its event classes, which `lead show` should not pay for
# (leadflow.domain).
from leadflow import domain
from leadflow.domain import (
    AggregateUnloadableError,
    Lead,
    LeadflowError,
)
from leadflow.domain.ids import singleton_id
from leadflow.engine.queries import Queries
from leadflow.engine.unit import ANONYMOUS, INFRASTRUCTURE_ERRORS, Unit
from leadflow.engine.views import Outcome, RecordResult
from leadflow.logs import get_logger
from leadflow.store.cache import SpillingLRUCache
from leadflow.store.recorders import RecordId

if TYPE_CHECKING:
    # Annotations only: the contract's pydantic models load when records are parsed, the
    # commands' results when one runs (engine/results.py).
    from leadflow.contract import InboundRecord
    from leadflow.engine.results import BatchResult

log = get_logger(__name__)  # structlog imported on the first log call

#: ``domain.Clock.create_id()``, without defining the clock's event classes.
CLOCK_ID = singleton_id("clock")

#: Pending absorptions (store/bookkeeping.py) read when a batch starts, or settled at a time
#: by ``settle_absorptions``.
ABSORB_PAGE = 2000


def record_digest(record: InboundRecord) -> bytes:
    """A digest of the record's normalised content: the same fact re-sent (other spacing,
    other UTC offset, upper-case email) has the same digest; any other content does not."""
    # The bytes ``model_dump_json`` would return as text (the same serializer, the same
    # defaults), without its keyword handling and the str round trip: ~2 µs a record.
    return hashlib.sha256(record.__pydantic_serializer__.to_json(record)).digest()[:16]


class _Poisoned(Exception):
    """Control flow inside apply_batch (a record that failed half-way); never escapes."""

    def __init__(self, result: RecordResult) -> None:
        super().__init__(result.detail)
        self.result = result


class Batches(Queries):
    """Record intake of ``LeadflowApp``: the batch and the unit of work's load and commit."""

    def apply_batch(
        self,
        records: Sequence[InboundRecord],
        tracking: Tracking | None = None,
        before_commit: Callable[[BatchResult], None] | None = None,
        owns: Callable[[str], bool] | None = None,
    ) -> BatchResult:
        """Apply records in order and save everything they changed in one transaction.

        Each record ends applied, a duplicate (same ``event_id``, same content), or rejected
        with a reason, and only the rejected record is lost for the batch:

        - the domain refuses it (unknown lead for a disposition, unknown rep): refusals come
          before any change, so the rest of the batch simply goes on;
        - its ``event_id`` was applied before with other content: ``event_id_conflict``;
        - applying it fails in any other way (a bug, an aggregate the store cannot load):
          ``apply_failed`` / ``lead_unloadable``. Its half-made changes are thrown away by
          re-applying the batch without it on freshly loaded aggregates.

        Only infrastructure failures (``INFRASTRUCTURE_ERRORS``) abort the batch: nothing is
        saved and the error is raised. ``before_commit`` sees the results before anything is
        saved (the Kafka consumer dead-letters the rejected records there, so a crash can
        never lose one). ``owns`` says which Kafka keys' leads this batch's writer owns (its
        partition's; None: all): on a shared store the batch first settles the pending
        absorptions of those leads (``settle_absorptions``).
        """
        failed: dict[int, RecordResult] = {}
        while True:
            unit = self._unit()
            applied: list[RecordId] = []
            try:
                results = self._apply_all(unit, records, failed, applied, owns)
                stored = self._encode(unit)
            except _Poisoned as poisoned:
                # Aggregates (live in the cache) may hold part of the poisoned record.
                self.forget_cached_aggregates()
                failed[poisoned.result.index] = poisoned.result
                continue
            except INFRASTRUCTURE_ERRORS:
                self.forget_cached_aggregates()
                raise
            except Exception as exc:
                # The events of some record cannot be stored (encoded): find which one.
                self.forget_cached_aggregates()
                culprit = self._unstorable_record(records, failed)
                self.forget_cached_aggregates()
                if culprit is None:
                    raise
                log.warning("record's events cannot be stored; rejected", index=culprit.index,
                            event_id=culprit.event_id, error=f"{type(exc).__name__}: {exc}")
                failed[culprit.index] = culprit
                continue
            except BaseException:
                self.forget_cached_aggregates()
                raise
            break
        if before_commit is not None:
            try:
                before_commit(results)
            except BaseException:
                self.forget_cached_aggregates()
                raise
        self._commit(unit, tracking, applied, stored)
        return results

    def _unstorable_record(self, records: Sequence[InboundRecord],
                           failed: dict[int, RecordResult]) -> RecordResult | None:
        """Re-apply the batch record by record, encoding the new events after each, to find
        the record whose events cannot be stored (rare: only then is this cost paid)."""
        unit = self._unit()
        self._prefetch(unit, records)
        known = self.record_ids.select_record_ids([r.event_id for r in records])
        encoded: dict[UUID, int] = {}
        for index, record in enumerate(records):
            if index in failed:
                continue
            try:
                self._apply_one(unit, index, record, known, [])
            except _Poisoned as poisoned:  # failed this time only: it is the one to refuse
                return poisoned.result
            try:
                for aggregate in unit.touched.values():
                    pending = aggregate.pending_events
                    for event in pending[encoded.get(aggregate.id, 0):]:
                        self.codec.encode_event(event)
                    encoded[aggregate.id] = len(pending)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:
                return RecordResult(index, record.event_id, Outcome.REJECTED, None,
                                    "apply_failed",
                                    f"its events cannot be stored: {type(exc).__name__}: {exc}",
                                    type(exc).__name__)
        return None

    def _apply_all(self, unit: Unit, records: Sequence[InboundRecord],
                   failed: dict[int, RecordResult], applied: list[RecordId],
                   owns: Callable[[str], bool] | None = None) -> BatchResult:
        from leadflow.engine.results import BatchResult

        self._prefetch(unit, records)
        unit.owns = owns
        if self.shared_store:
            self._take_up(unit, owns)
        known = self.record_ids.select_record_ids([r.event_id for r in records])
        # Every record's digest first, in one loop: the serializer and the hash stay in the
        # CPU's caches. Made between two records' decisions, a digest cost ~8.5 µs a record
        # (to_json 6.1, sha256 2.4) against ~2.6 µs in a loop of its own.
        digests = [record_digest(record) for record in records]
        results: list[RecordResult] = []
        for index, record in enumerate(records):
            result = failed.get(index)
            if result is None:
                result = self._apply_one(unit, index, record, known, applied, digests[index])
            results.append(result)
        return BatchResult(tuple(results))

    def _apply_one(self, unit: Unit, index: int, record: InboundRecord,
                   known: dict[str, RecordId], applied: list[RecordId],
                   digest: bytes | None = None) -> RecordResult:
        event_id = record.event_id
        if digest is None:
            digest = record_digest(record)
        seen = known.get(event_id)
        if seen is not None:
            if seen.digest == digest:
                return RecordResult(index, event_id, Outcome.DUPLICATE, seen.lead_id)
            where = f"lead {seen.lead_id}" if seen.lead_id else "anonymous interest"
            return RecordResult(index, event_id, Outcome.REJECTED, None, "event_id_conflict",
                                f"event_id {event_id!r} was already applied to {where} with "
                                "other content; a new fact needs a new event_id",
                                "EventIdConflict")
        try:
            lead_id, duplicate = self._decide(unit).apply(record)
        except AggregateUnloadableError as exc:
            # May strike half-way through the record (a colleague's lead in a surge).
            raise _Poisoned(RecordResult(index, event_id, Outcome.REJECTED, None, exc.reason,
                                         str(exc), type(exc.cause).__name__)) from exc
        except LeadflowError as exc:
            return RecordResult(index, event_id, Outcome.REJECTED, None, exc.reason, str(exc),
                                type(exc).__name__)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:
            raise _Poisoned(RecordResult(index, event_id, Outcome.REJECTED, None,
                                         "apply_failed", f"{type(exc).__name__}: {exc}",
                                         type(exc).__name__)) from exc
        unit.seal({"record": {"event_id": event_id, "type": record.type,
                              "occurred_at": record.occurred_at}})
        if duplicate:
            # Applied before the record-id index existed: known to the lead only.
            return RecordResult(index, event_id, Outcome.DUPLICATE, lead_id)
        # Later records of the batch with this id see it as already applied.
        known[event_id] = RecordId(event_id, digest, lead_id)
        applied.append(known[event_id])
        return RecordResult(index, event_id, Outcome.APPLIED, lead_id)

    def ingest(self, record: InboundRecord) -> RecordResult:
        """Apply one record (a batch of one); for tests and interactive use."""
        return self.apply_batch([record]).results[0]

    def settle_absorptions(self, owns: Callable[[str], bool] | None = None) -> int:
        """Let leads take up what cookie-only records queued for them (pending absorptions,
        store/bookkeeping.py), up to ``ABSORB_PAGE`` of them in one transaction: those of
        leads whose owner ``owns`` (a Kafka key -> whether this process's partitions hold
        it; None: all). Returns how many were settled (0: none of this process's left). A
        consumer calls it when it is idle; its batches settle the rest as they go."""
        if not self.shared_store:
            return 0
        unit = self._unit()
        settled = self._take_up(unit, owns, scan=True)
        if settled:
            self._commit(unit, None)
        return settled

    def _take_up(self, unit: Unit, owns: Callable[[str], bool] | None,
                 scan: bool = False) -> int:
        """Settle, in this unit, the pending absorptions of the leads this process owns: the
        leads the batch's records name by a person's key (the batch writes them anyway), and
        those whose records' Kafka key ``owns`` says its partitions hold. A lead another
        process's partition owns is left to it: settling it here would race that writer's
        batches and fail one of the two commits.

        A batch looks at the queue's first page only. ``scan`` (when idle) reads on, page by
        page, until a page holds some of this process's rows or the queue ends: the first
        page may hold only another process's rows (a lagging consumer's), and 0 must mean
        that none of this process's are left, since ``consume --until-idle`` then exits."""
        after: tuple[UUID, UUID] | None = None
        while True:
            rows = self.record_ids.select_absorptions(ABSORB_PAGE, after=after)
            settled = self._take_up_rows(unit, owns, rows) if rows else 0
            if settled or not scan or len(rows) < ABSORB_PAGE:
                return settled
            after = (rows[-1][0], rows[-1][1])

    def _take_up_rows(self, unit: Unit, owns: Callable[[str], bool] | None,
                      rows: Sequence[tuple[UUID, UUID, int, str | None]]) -> int:
        # A cookie's lead is only read by a batch of its cookie's records (they are
        # diverted): a person's key names a lead the batch writes.
        named = {i.target_id for key, i in unit.identities.items()
                 if i is not None and not i.is_interest and not key.startswith(ANONYMOUS)}
        decide = self._decide(unit)
        if owns is not None:
            # A race settled at commit queues a row without its owner: read it off the lead.
            self._load_into(unit, {lead for _, lead, _, owner in rows
                                   if owner is None and lead not in named}, revalidate=True)

        def mine(lead_id: UUID, owner: str | None) -> bool:
            if lead_id in named or owns is None:
                return True
            if owner is None:
                lead = unit.touched.get(lead_id)
                owner = decide.owner_key(lead) if isinstance(lead, Lead) else None
            return owner is None or owns(owner)

        due = [(i, lead, version) for i, lead, version, owner in rows if mine(lead, owner)]
        if not due:
            return 0
        self._load_into(unit, {i for i, _, _ in due} | {lead for _, lead, _ in due},
                        revalidate=True)
        for interest, lead, version in due:
            decide.take_up(interest, lead)
            taken = unit.touched.get(interest)
            unit.books.absorbed[(interest, lead)] = max(
                version, taken.version if taken is not None else 0)
            unit.seal({"absorb": {"interest": str(interest)}})
        return len(due)

    def _prefetch(self, unit: Unit, records: Sequence[InboundRecord]) -> None:
        """Load, in two queries, the aggregates the batch is about to look up one by one.

        First the identity indexes and accounts the records name, then the leads and
        interests those indexes point at. Aggregates already cached cost no query; ids with
        no stored events are remembered as absent, so creating them costs none either.
        Whatever this misses (merge chains, surge colleagues) is still loaded on demand.
        """
        keys, accounts = self._decide(unit).batch_candidates(records)
        # On a shared store, what the caches hold is read again unless no one else can have
        # committed since they were last as stored (engine/unit.py CacheMarks).
        fresh = not unit.trusted
        unit.prefetch_identities(keys, fresh=fresh)
        # The clock too: every lead a batch settles is caught up to its position, which the
        # commit checks is still the stored one (store/timers.py check_reads).
        self._load_into(unit, accounts | {i.target_id for i in unit.identities.values()
                                          if i is not None} | {CLOCK_ID}, revalidate=fresh)
        # The accounts of the leads just loaded: a record reaching its lead by a cookie, a
        # phone or a CRM id names no company, yet its touchpoint engages the lead's account.
        # Loaded here in one query, not one by one (each with its engagement rows) later.
        touched = unit.touched
        owned = {a for lead in touched.values()
                 if (a := getattr(lead, "account_id", None)) is not None and a not in touched}
        if owned:
            self._load_into(unit, owned, revalidate=fresh)
        unit.fill_accounts([a for a in touched.values() if isinstance(a, domain.Account)])

    def _load_into(self, unit: Unit, ids: set[UUID], revalidate: bool = False) -> None:
        cache = self.repository.cache
        wanted: list[UUID] = []
        cached: list[UUID] = []
        for aggregate_id in ids:
            if aggregate_id in unit.touched or aggregate_id in unit.absent:
                continue
            if cache is not None and (aggregate_id in cache.cache or (
                    isinstance(cache, SpillingLRUCache) and aggregate_id in cache.spilled)):
                # Through the repository, so the cache's configured semantics hold.
                unit.touched[aggregate_id] = self.repository.get(aggregate_id)
                cached.append(aggregate_id)
            else:
                wanted.append(aggregate_id)
        if revalidate and cached and cache is not None:
            # Another writer may have appended to cached aggregates since they were cached
            # (a lead reached from two partitions). Deciding on a stale copy would fail the
            # commit (optimistic concurrency) and cost the whole batch a redo: one query
            # finds them, and they are read again now instead.
            touched = unit.touched
            for aggregate_id in self.record_ids.select_moved_on(
                    [(i, touched[i].version) for i in cached]):
                del touched[aggregate_id]
                with suppress(KeyError):
                    cache.get(aggregate_id, evict=True)
                self.vault.forget([aggregate_id])
                wanted.append(aggregate_id)
        if not wanted:
            return
        stored = self.codec.select_many(wanted)
        unit.absent.update(i for i in wanted if not stored.get(i))
        for aggregate_id, aggregate, exc in self._replayed(stored, wanted):
            if exc is not None:
                # A version gap or an undecodable payload (the store was edited outside
                # leadflow): only the records that need this aggregate are refused.
                unit.unloadable[aggregate_id] = exc
                continue
            unit.touched[aggregate_id] = aggregate
            if cache is not None:
                cache.put(aggregate_id, aggregate)

    def _encode(self, unit: Unit) -> list[StoredEvent]:
        # Accounts first: a lead's touchpoint counts as its account's engagement in the read
        # models, so the account a record creates must be there before the lead's row.
        aggregates = sorted(unit.touched.values(),
                            key=lambda a: not isinstance(a, domain.Account))
        cuts = unit.cuts
        return self.codec.stored_many([(a, cuts.get(a.id, ())) for a in aggregates], unit.cause)

    def _commit(self, unit: Unit, tracking: Tracking | None,
                record_ids: Sequence[RecordId] = (),
                stored: list[StoredEvent] | None = None) -> None:
        """Store every pending event of the unit, the tracking record and the applied
        records' ids in one transaction.

        This is ``Application.save`` without its per-call overheads: events are collected
        straight from the aggregates and encoded once, and the recorder gets them in one call.
        """
        if stored is None:
            stored = self._encode(unit)
        unit.close_books()
        # Data keys made for new leads and interests are stored with their first rows.
        unit.books.new_data_keys.update(self.vault.new_keys())
        if not stored and tracking is None and not unit.timers and not unit.books:
            return
        mark = self.cache_marks.next() if unit.shared else None
        timers = unit.timers
        skipped: dict[UUID, datetime] = {}
        versions: dict[UUID, int] = {}
        touched = unit.touched
        if unit.timers_exact:
            # The clock's timers replace rows: each only if its lead is still as the clock
            # read it (store/timers.py timer_writes): loaded, or known to have no events.
            # (A lead that cannot be loaded has its row dropped whatever its version.)
            absent = unit.absent
            versions = {lead: a.version if a is not None else 0 for lead in timers
                        if (a := touched.get(lead)) is not None or lead in absent}
        else:
            timers, skipped = self.timer_hints.split(unit.timers)
        # Each settled lead was caught up to the clock's position as the unit read it: none
        # may be due at or before the position stored now (store/timers.py check_reads).
        earliest = min((due for due in unit.timers.values() if due is not None), default=None)
        try:
            self.recorder.insert_events(stored, tracking=tracking, record_ids=record_ids,
                                        timers=timers, timers_exact=unit.timers_exact,
                                        timers_skipped=skipped, timers_versions=versions,
                                        timers_epoch=unit.timers_epoch, books=unit.books,
                                        earliest_due=earliest,
                                        clock_guard=unit.clock_guard,
                                        writer_mark=(unit.seen[0], mark) if mark else None)
        except BaseException:
            # The cached aggregates this unit touched hold its uncommitted changes, or are
            # stale (a write conflict: another writer appended to them); so may its identity
            # rows. Only those are forgotten: everything else in the cache is as committed,
            # and any of it another writer changed meanwhile fails the next commit that
            # writes it (optimistic concurrency) and is forgotten then. Wiping the whole
            # cache here made every conflict of two consumers reload their working sets.
            self.forget_unit(unit)
            raise
        self.timer_hints.committed(timers, unit.timers_exact)
        if mark is not None:
            self.cache_marks.committed(unit, mark, len(stored))
        self.vault.committed()
        self.vault.shredded(unit.books.dropped_data_keys)
        self.directory.remember(i for i in unit.identities.values() if i is not None)
        cache = self.repository.cache
        if cache is not None and not self.repository.fastforward:
            # Most of them are there already, read from the cache by this unit (which made
            # them the most recently used): put only the others (created, loaded from the
            # store, or evicted since). A put under the cache's lock for each of a thousand
            # aggregates cost ~2 µs a record.
            entries: dict[UUID, Any] = cache.cache
            lru = isinstance(cache, LRUCache)
            for aggregate_id, aggregate in unit.touched.items():
                entry = entries.get(aggregate_id)
                # (LRUCache keeps [previous, next, key, value] links; Cache the values.)
                if (entry[3] if lru and entry is not None else entry) is not aggregate:
                    cache.put(aggregate_id, aggregate)

    def forget_unit(self, unit: Unit) -> None:
        """Forget what one failed unit of work read or changed: its aggregates (cached, and
        their data keys) and its identity rows."""
        self.vault.rolled_back()
        self.vault.forget(unit.touched)
        cache = self.repository.cache
        if cache is not None:
            for aggregate_id in unit.touched:
                with suppress(KeyError):
                    cache.get(aggregate_id, evict=True)
        directory = self.directory.cache
        for key in unit.identities:
            directory.pop(key, None)

    def forget_cached_aggregates(self) -> None:
        """Drop every cached aggregate and identity row (after a failed batch, or when another
        writer moved on)."""
        self.directory.clear()
        self.vault.rolled_back()
        self.vault.clear()
        cache = self.repository.cache
        if cache is None:
            return
        if isinstance(cache, SpillingLRUCache):
            cache.clear_all()
            return
        with getattr(cache, "lock", nullcontext()):
            cache.cache.clear()
            if isinstance(cache, LRUCache):
                cache.clear()
                cache.full = False
