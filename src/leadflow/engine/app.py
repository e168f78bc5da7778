"""The command API: one method per use case, load -> decide -> save.

``LeadflowApp`` is an ``eventsourcing.Application``. Its batch method applies many inbound
records in order and saves every touched aggregate in ONE transaction, optionally together
with a tracking record (a Kafka topic-partition offset), which is what gives the Kafka path
its exactly-once effect. Queries return frozen DTOs, never live aggregates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext, suppress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    LRUCache,
)
from eventsourcing.persistence import (
    EventStore,
    JSONTranscoder,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    Transcoder,
)
from eventsourcing.popo import POPOFactory
from eventsourcing.utils import get_topic

# Aggregates other than the lead are read from the package where used (``domain.Account``):
# importing one defines its event classes, which `lead show` should not pay for
# (leadflow.domain).
from leadflow import domain
from leadflow.domain import (
    AggregateUnloadableError,
    Lead,
    LeadflowError,
    LeadForgottenError,
    PersonalDataError,
    UnknownLeadError,
    UnknownRepError,
)
from leadflow.domain.ids import rule_book_id
from leadflow.domain.rules import Rules, default_rules
from leadflow.domain.scoring import Award
from leadflow.engine.decisions import RecordProcessor
from leadflow.engine.migration import (
    StoreCipherError,
    StoreVersionError,
    check_cipher,
    check_store_version,
    migrate,
)
from leadflow.engine.unit import ANONYMOUS, INFRASTRUCTURE_ERRORS, Directory, Unit, unloadable
from leadflow.engine.unmerge import NotMergedError, unmerge
from leadflow.engine.views import (
    LeadView,
    ModelScore,
    Outcome,
    RecordResult,
    RuleContribution,
)
from leadflow.logs import get_logger
from leadflow.store.bookkeeping import routing_state
from leadflow.store.cache import SpillingLRUCache
from leadflow.store.codec import EventCodec
from leadflow.store.fold import OPENED, FoldingEventStore, envelope_topics
from leadflow.store.keys import keyring_from_env
from leadflow.store.personal import Vault, master_keys_from_env, personal_data_plain
from leadflow.store.recorders import (
    LeadflowPOPOProcessRecorder,
    RecordId,
    RecordIdIndex,
    recorder_topic_for,
)
from leadflow.store.transcoder import OrjsonTranscoder

if TYPE_CHECKING:
    # Annotations only: the contract's pydantic models load when records are parsed, the
    # chain module when something is written or verified (store/codec.py), the commands'
    # results when one runs (engine/results.py).
    from leadflow.contract import InboundRecord
    from leadflow.engine.results import BatchResult, ClockResult, ForgetResult, MigrationResult
    from leadflow.store.chain import LeadVerification

log = get_logger(__name__)  # structlog imported on the first log call

#: Timer index rows read (and committed) at a time by ``advance_clock``.
CLOCK_PAGE = 1000
#: Pending absorptions (store/bookkeeping.py) read when a batch starts, or settled at a time
#: by ``settle_absorptions``.
ABSORB_PAGE = 2000

def record_digest(record: InboundRecord) -> bytes:
    """A digest of the record's normalised content: the same fact re-sent (other spacing,
    other UTC offset, upper-case email) has the same digest; any other content does not."""
    return hashlib.sha256(record.model_dump_json().encode()).digest()[:16]


class _Poisoned(Exception):
    """Control flow inside apply_batch (a record that failed half-way); never escapes."""

    def __init__(self, result: RecordResult) -> None:
        super().__init__(result.detail)
        self.result = result


class LeadflowApp(Application[UUID]):
    """Lead lifecycle engine: scoring with decay, lifecycle, routing, identity."""

    name = "leadflow"
    # No snapshots: the library looks a snapshot up before every aggregate it loads, which
    # doubled the queries of each cache miss; the shared Router and Clock are loaded once per
    # process and then live in the aggregate cache.

    def __init__(self, env: dict[str, str] | None = None, rules: Rules | None = None,
                 *, migrating: bool = False) -> None:
        # The audit key signs every row's chain link (store/keys.py); never in the database.
        # Read before connecting, so a store without one is refused before anything opens.
        config = self.construct_env(self.name, env)
        persistence = config.get("PERSISTENCE_MODULE") or "eventsourcing.popo"
        self.keyring = keyring_from_env(config, config.get("SQLITE_DBNAME"), persistence)
        # The master key wraps each person's data key (store/personal.py); same rules.
        self.master_keys = master_keys_from_env(config, config.get("SQLITE_DBNAME"),
                                                persistence)
        self.personal_plain = personal_data_plain(config)
        super().__init__(env)
        self.rules = rules or default_rules()
        self.codec = EventCodec(self.mapper, self.recorder, self.keyring, self.vault)
        self.directory = Directory(self.indexes, self.vault.lookup)
        if not migrating:
            self._check_store_version()
        cache = self.repository.cache
        spill_mib = int(self.env.get("LEADFLOW_AGGREGATE_SPILL_MIB") or 0)
        if isinstance(cache, LRUCache) and spill_mib > 0:
            # Evicted aggregates are pickled rather than dropped (see cache.py).
            self.repository.cache = SpillingLRUCache(cache.maxsize, spill_mib << 20)

    def _unit(self) -> Unit:
        return Unit(self.repository, self.directory)

    def _check_store_version(self) -> None:
        try:
            check_store_version(self.indexes)
            check_cipher(self.indexes, self.mapper.cipher)
        except (StoreVersionError, StoreCipherError):
            self.close()
            raise

    def migrate(self, progress: Callable[[int, int], None] | None = None) -> MigrationResult:
        """Bring the store to this format (see ``engine.migration.migrate``)."""
        return migrate(self, progress)

    def construct_transcoder(self) -> Transcoder:
        # The library's JSON format, written with orjson (store/transcoder.py).
        transcoder = super().construct_transcoder()
        if type(transcoder) is not JSONTranscoder:
            return transcoder  # a transcoder chosen in the configuration is kept
        fast = OrjsonTranscoder()
        for transcoding in transcoder.types.values():
            fast.register(transcoding)
        return fast

    def construct_event_store(self) -> EventStore[UUID]:
        # Reads envelopes (one row per cause, store/fold.py) as the events they hold, with
        # personal values decrypted by the vault (made here: it needs the recorder).
        self.vault = Vault(self.master_keys, self.recorder, plain=self.personal_plain)
        return FoldingEventStore(self.mapper, self.recorder, self.vault)

    def construct_recorder(self) -> ProcessRecorder:
        # A process recorder can commit a tracking position with the events (Kafka offsets);
        # leadflow's recorders also keep the record-id index in the same transaction.
        factory = self.factory
        if isinstance(factory, POPOFactory):
            return LeadflowPOPOProcessRecorder()
        topic = recorder_topic_for(type(factory).__module__)
        if topic is not None and not factory.env.get(factory.PROCESS_RECORDER_TOPIC):
            factory.env[factory.PROCESS_RECORDER_TOPIC] = topic
        return factory.process_recorder()

    @property
    def indexes(self) -> RecordIdIndex:
        return self.record_ids

    @property
    def record_ids(self) -> RecordIdIndex:
        recorder = self.recorder
        if not isinstance(recorder, RecordIdIndex):
            raise TypeError(f"{type(recorder).__name__} keeps no record-id index: configure "
                            "one of leadflow.store.recorders's recorders (PROCESS_RECORDER_TOPIC)")
        return recorder

    @property
    def shared_store(self) -> bool:
        """Several processes write the store (see ``RecordIdIndex.shared``)."""
        return self.record_ids.shared

    @property
    def process_recorder(self) -> ProcessRecorder:
        return cast(ProcessRecorder, self.recorder)

    # ------------------------------------------------------------------ commands

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
        results: list[RecordResult] = []
        for index, record in enumerate(records):
            result = failed.get(index)
            if result is None:
                result = self._apply_one(unit, index, record, known, applied)
            results.append(result)
        return BatchResult(tuple(results))

    def settle_absorptions(self, owns: Callable[[str], bool] | None = None) -> int:
        """Let leads take up what cookie-only records queued for them (pending absorptions,
        store/bookkeeping.py), up to ``ABSORB_PAGE`` of them in one transaction: those of
        leads whose owner ``owns`` (a Kafka key -> whether this process's partitions hold
        it; None: all). Returns how many were settled (0: none of this process's left). A
        consumer calls it when it is idle; its batches settle the rest as they go."""
        if not self.shared_store:
            return 0
        unit = self._unit()
        settled = self._take_up(unit, owns)
        if settled:
            self._commit(unit, None)
        return settled

    def _take_up(self, unit: Unit, owns: Callable[[str], bool] | None) -> int:
        """Settle, in this unit, the pending absorptions of the leads this process owns: the
        leads the batch's records name by a person's key (the batch writes them anyway), and
        those whose records' Kafka key ``owns`` says its partitions hold. A lead another
        process's partition owns is left to it: settling it here would race that writer's
        batches and fail one of the two commits."""
        rows = self.record_ids.select_absorptions(ABSORB_PAGE)
        if not rows:
            return 0
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

    def ingest(self, record: InboundRecord) -> RecordResult:
        """Apply one record (a batch of one); for tests and interactive use."""
        return self.apply_batch([record]).results[0]

    def advance_clock(
        self, to: datetime, progress: Callable[[str, int], None] | None = None
    ) -> ClockResult:
        """Record every time-driven transition due up to event time ``to``, at its exact time.

        Only the timer index rows due between the clock's position and ``to`` are read, never
        every lead. Days are taken in order, each day's leads in (due time, lead id) order,
        so replays decide alike; work is committed page by page and the clock moves past a
        day once all of it is done.
        """
        from leadflow.engine.results import ClockResult

        unit = self._unit()
        clock = self._decide(unit).clock()
        start = clock.position
        if start is not None and to <= start:
            return ClockResult(start, 0, 0, ())
        woken = events = 0
        unloadable: list[UUID] = []
        while True:
            position = clock.position
            first = self.indexes.select_due(position, to, None, 1)
            if not first:
                break
            day = domain.day_of(first[0][0])
            until = min(to, datetime.fromisoformat(day).replace(tzinfo=UTC)
                        + timedelta(days=1) - timedelta(microseconds=1))
            cursor = None
            while True:
                page = self.indexes.select_due(position, until, cursor, CLOCK_PAGE)
                for _, lead_id in page:
                    processed = self._wake(unit, lead_id, until)
                    if processed is None:
                        unloadable.append(lead_id)
                    woken += processed or 0
                if page:
                    cursor = page[-1]
                if len(page) < CLOCK_PAGE:
                    break
                events += unit.pending()
                self._commit(unit, None)
                unit = self._unit()
            clock = self._decide(unit).clock()
            clock.advance(until)
            events += unit.pending()
            self._commit(unit, None)
            if progress:
                progress(day, woken)
            unit = self._unit()
            clock = self._decide(unit).clock()
        if clock.position is None or to > clock.position:
            clock.advance(to)
            events += unit.pending()
            self._commit(unit, None)
        return ClockResult(to, woken, events, tuple(unloadable))

    def _wake(self, unit: Unit, lead_id: UUID, until: datetime) -> int | None:
        """Do a lead's transitions due by ``until``: 1 if it was woken, 0 if it needs nothing
        (merged away, gone), None if its stored events cannot be loaded."""
        try:
            lead = unit.get(Lead, lead_id)
        except AggregateUnloadableError as exc:
            # A lead damaged by hand must not stop time for every other lead.
            log.error("lead cannot be loaded; its time-driven transitions skipped",
                      lead_id=str(lead_id), error=str(exc))
            return None
        if lead is None or lead.merged_into is not None:
            unit.timers[lead_id] = None
            return 0
        decide = self._decide(unit)
        decide.catch_up(lead, until)
        decide.settle(lead, until, clock_position=until)
        unit.seal({"clock": until})
        return 1

    def unmerge(self, key: str, at: datetime, actor: str) -> tuple[UUID, UUID]:
        """Undo the merge that brought identity ``key``'s lead into another lead.

        The merged lead comes back with its own history; the survivor's state is recomputed
        from its own events without those the merge caused; the identities point back.
        Returns (survivor id, restored lead id).
        """
        unit = self._unit()
        # The cause is stored readable: it names no identity (that is personal data).
        unit.cause = {"command": "unmerge", "actor": actor}
        survivor, restored = unmerge(self._decide(unit), key, at, actor,
                                     lambda lead_id: list(self.events.get(lead_id)))
        self._commit(unit, None)
        return survivor, restored

    def merge(self, key_a: str | UUID, key_b: str | UUID, reason: str, actor: str,
              at: datetime) -> tuple[UUID, UUID]:
        """Merge two leads on a person's decision (``leadflow merge``).

        As an automatic merge (``RecordProcessor.merge``): the older lead absorbs the newer
        one, identities are repointed, the rep load synced, in one transaction; undone by
        ``unmerge``. The rows' cause names the command, actor and reason, and the pair's
        ``DuplicatePair`` records the decision. Returns (survivor id, merged lead id).
        """
        from leadflow.domain.duplicates import SameLeadError

        ids = self.resolve(key_a), self.resolve(key_b)
        if ids[0] == ids[1]:
            raise SameLeadError(f"{key_a} and {key_b} are one lead already ({ids[0]})")
        unit = self._unit()
        # Readable, as forget's: the reason must name no person (the help says so).
        unit.cause = {"command": "merge", "actor": actor, "reason": reason}
        leads = [cast(Lead, unit.get(Lead, i)) for i in ids]  # resolve found them
        for lead in leads:
            if lead.forgotten:
                raise LeadForgottenError(f"lead {lead.id} is forgotten: nothing to merge")
        survivor, loser = sorted(leads, key=lambda lead: (lead.created_at, str(lead.id)))
        pair = unit.get(domain.DuplicatePair, domain.DuplicatePair.create_id(*ids)) \
            or unit.add(domain.DuplicatePair(*ids))
        decide = self._decide(unit)
        decide.catch_up(survivor, at)
        decide.catch_up(loser, at)
        decide.merge(survivor, loser, at, f"merge:{pair.id}")
        pair.confirm(survivor.id, loser.id, actor, reason, at)
        decide.qualify(survivor, at, None)
        decide.settle(survivor, at)
        self._commit(unit, None)
        log.info("leads merged by a person", survivor=str(survivor.id), merged=str(loser.id),
                 actor=actor)
        return survivor.id, loser.id

    def reject_duplicate(self, key_a: str | UUID, key_b: str | UUID, reason: str,
                         actor: str, at: datetime) -> tuple[UUID, UUID]:
        """Record that two leads are two people (``leadflow dedupe reject``): the pair is
        not suggested again. Returns the pair's lead ids."""
        from leadflow.domain.duplicates import SameLeadError

        ids = self.resolve(key_a), self.resolve(key_b)
        if ids[0] == ids[1]:
            raise SameLeadError(f"{key_a} and {key_b} are one lead ({ids[0]})")
        unit = self._unit()
        unit.cause = {"command": "dedupe reject", "actor": actor, "reason": reason}
        pair = unit.get(domain.DuplicatePair, domain.DuplicatePair.create_id(*ids)) \
            or unit.add(domain.DuplicatePair(*ids))
        pair.reject(actor, reason, at)
        self._commit(unit, None)
        return pair.lead_a, pair.lead_b

    def forget(self, key_or_id: str | UUID, reason: str, actor: str,
               at: datetime) -> ForgetResult:
        """Erase a person (GDPR art. 17): crypto-shred their lead.

        One transaction: the data keys of the lead, of every lead merged into it and of the
        anonymous interests they absorbed are deleted, their identity rows too, and a
        ``Forgotten`` event (who, when, why: nothing personal) is recorded on the lead. The
        stored rows are not touched, so the chain still verifies; the lead keeps its stage,
        score and owner in every count. A new record with the same email starts a new lead.
        """
        from leadflow.engine.results import ForgetResult

        if self.vault.plain:
            raise PersonalDataError(
                "personal data in this store is not encrypted (LEADFLOW_PERSONAL_DATA=plain): "
                "nothing can be shredded")
        if isinstance(key_or_id, str) and key_or_id.startswith("anonymous_id:"):
            index = self.directory.lookup([key_or_id]).get(key_or_id)
            if index is not None and index.is_interest:
                return self._forget_interest(key_or_id, index.target_id, reason, actor, at)
        lead_id = self.resolve(key_or_id)
        unit = self._unit()
        unit.cause = {"command": "forget", "actor": actor}
        lead = unit.get(Lead, lead_id)
        assert lead is not None  # resolve found it
        if lead.forgotten:
            raise LeadForgottenError(f"lead {lead_id} is already forgotten")
        members = self._family(unit, lead)
        keys = sorted({k for m in members for k in m.identity_keys})
        shredded = sorted({m.id for m in members}
                          | {i for m in members for i in getattr(m, "interests", [])},
                          key=str)
        unreadable = [str(m.id) for m in members if not self.vault.has_key(m.id)]
        if unreadable:
            raise PersonalDataError(
                f"lead(s) {', '.join(unreadable)} were stored before per-person encryption "
                "(store format < 5, or LEADFLOW_PERSONAL_DATA=plain): their personal values "
                "sit readable in immutable rows and cannot be shredded; nothing was changed")
        # Touchpoints their cookie left that the lead has not taken up yet go with them.
        ids = {m.id for m in members}
        for interest, queued_for, version, _ in self.record_ids.select_absorptions(ABSORB_PAGE):
            if queued_for in ids:
                shredded.append(interest)
                unit.books.absorbed[(interest, queued_for)] = version
        for key in keys:
            unit.drop_identity(key)
        unit.books.dropped_data_keys.update(shredded)
        lead.forget(at, actor, reason, shredded)
        self._commit(unit, None)
        self.recorder_erase_freed_pages()
        log.info("person forgotten", lead_id=str(lead_id), leads=len(members),
                 data_keys=len(shredded), identities=len(keys))
        return ForgetResult(lead_id, tuple(m.id for m in members), len(shredded), len(keys))

    def _forget_interest(self, key: str, interest_id: UUID, reason: str, actor: str,
                         at: datetime) -> ForgetResult:
        """An anonymous visitor never linked to a person: their cookie id and the URL
        queries they left are shredded with the interest's data key."""
        from leadflow.engine.results import ForgetResult

        unit = self._unit()
        unit.cause = {"command": "forget", "actor": actor}
        interest = unit.get(domain.Interest, interest_id)
        if interest is None:
            raise UnknownLeadError(f"no anonymous interest {interest_id}")
        if not self.vault.has_key(interest_id):
            raise PersonalDataError(
                f"anonymous interest {interest_id} was stored before per-person encryption: "
                "its values cannot be shredded; nothing was changed")
        unit.drop_identity(key)
        unit.books.dropped_data_keys.add(interest_id)
        interest.forget(at, actor, reason)
        self._commit(unit, None)
        self.recorder_erase_freed_pages()
        log.info("anonymous visitor forgotten", interest_id=str(interest_id))
        return ForgetResult(interest_id, (), 1, 1)

    def _family(self, unit: Unit, lead: Lead) -> list[Lead]:
        """The lead and every lead merged into it, at any depth."""
        members: list[Lead] = []
        todo = [lead.id]
        seen: set[UUID] = set()
        while todo:
            member_id = todo.pop()
            if member_id in seen:
                continue
            seen.add(member_id)
            member = unit.get(Lead, member_id)
            if member is None:
                continue
            members.append(member)
            todo += member.merged_from
        return members

    def recorder_erase_freed_pages(self) -> None:
        """SQLite keeps deleted rows' bytes in free pages and in its write-ahead log until
        they are reused: the data keys ``forget`` deleted are overwritten (``secure_delete``
        zeroed them as they were deleted) and the log truncated. PostgreSQL: the README's
        Privacy section says what VACUUM and backups do."""
        datastore = getattr(self.recorder, "datastore", None)
        if datastore is None or hasattr(datastore, "schema"):
            return
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def publish_rules(self, rules: Rules, text: str, at: datetime, actor: str) -> bool:
        """Record a rules version for live scoring from now on (history is not rewritten)."""
        unit = self._unit()
        unit.cause = {"command": "publish rules", "actor": actor}
        book = unit.get(domain.RuleBook, rule_book_id()) or unit.add(domain.RuleBook())
        before = book.current
        book.publish(rules.version, rules.label, text, at, actor)
        self._commit(unit, None)
        self.rules = rules
        return book.current is not before

    def published_rules(self) -> dict[str, Any] | None:
        try:
            # By id: the RuleBook class is imported only if there is one to replay.
            book: Any = self.repository.get(rule_book_id())
        except AggregateNotFoundError:
            return None
        return dict(book.current) if book.current else None

    def set_rep_availability(self, rep: str, available: bool, at: datetime) -> None:
        if self.rules.routing.rep(rep) is None:
            raise UnknownRepError(f"unknown rep {rep!r}")
        unit = self._unit()
        unit.cause = {"command": "rep availability"}
        self._decide(unit).router().set_availability(rep, available, at)
        self._commit(unit, None)

    # ------------------------------------------------------------------ queries

    def resolve(self, key_or_id: str | UUID) -> UUID:
        """The live lead for an identity key (``email:…``) or lead id, following merges."""
        if isinstance(key_or_id, UUID):
            lead_id = key_or_id
        else:
            try:
                lead_id = UUID(key_or_id)
            except ValueError:
                index = self.directory.lookup([key_or_id]).get(key_or_id)
                if index is None:
                    raise UnknownLeadError(f"no lead known by {key_or_id!r}") from None
                if index.is_interest:
                    raise UnknownLeadError(
                        f"{key_or_id!r} is anonymous interest, not yet linked to a person"
                    ) from None
                lead_id = index.target_id
        for _ in range(32):
            lead: Lead = self._get_lead(lead_id)
            if lead.merged_into is None:
                return lead.id
            lead_id = lead.merged_into
        raise UnknownLeadError(f"merge chain too long from {key_or_id!r}")

    def _load(self, aggregate_id: UUID, kind: str) -> Any:
        """``repository.get``, with a damaged store named (AggregateUnloadableError)."""
        with unloadable(aggregate_id, kind):
            return self.repository.get(aggregate_id)

    def _get_lead(self, lead_id: UUID) -> Lead:
        try:
            lead: Any = self._load(lead_id, "lead")
        except AggregateNotFoundError:
            raise UnknownLeadError(f"no lead with id {lead_id}") from None
        if not isinstance(lead, Lead):
            raise UnknownLeadError(f"{lead_id} is not a lead")
        return lead

    def lead(self, key_or_id: str | UUID, at: datetime | None = None) -> LeadView:
        """Stage, owner and score breakdown of a lead at event time ``at``."""
        lead = self._get_lead(self.resolve(key_or_id))
        when = at or lead.horizon
        half_life = self.rules.half_life_seconds
        breakdown = _breakdown(lead.fit_awards, lead.awards, when, half_life)
        engagement = lead.engagement_at(when, half_life)
        models = _model_scores(lead, self.rules, when) if self.rules.models else {}
        return LeadView(
            lead_id=lead.id, primary_key=lead.primary_key,
            identities=tuple(lead.identity_keys), at=when, stage=lead.stage_on(when),
            stage_now=lead.stage, owner=lead.owner_on(when) if at else lead.owner,
            team=lead.team, in_pool=lead.in_pool, fit=lead.fit, engagement=engagement,
            score=lead.fit + engagement, breakdown=tuple(breakdown),
            created_at=lead.created_at, source=lead.source, campaign=lead.campaign,
            account_id=lead.account_id, dormant=lead.dormant, touchpoints=lead.touchpoints,
            last_touch_at=lead.last_touch_at, merged_from=tuple(lead.merged_from),
            transitions=tuple(dict(t) for t in lead.transitions), profile=dict(lead.profile),
            forgotten=getattr(lead, "forgotten", False), models=models,
        )

    def lead_ids(self, batch: int = 1000) -> Iterator[UUID]:
        """Every lead ever created (merged ones included), from the notification log."""
        created = get_topic(Lead.Created)
        for notification in self.notifications([created, created.rsplit(".", 1)[0] + OPENED],
                                               batch):
            yield UUID(str(notification.originator_id))

    def notifications(self, topics: Sequence[str], batch: int = 1000) -> Iterator[Any]:
        """Every stored row with one of ``topics``, in recorded order, read in pages."""
        start = 1
        while True:
            page = self.recorder.select_notifications(start, batch, topics=list(topics))
            if not page:
                return
            yield from page
            start = page[-1].id + 1

    def replay_leads(self, lead_ids: list[UUID]) -> list[Lead]:
        """Many leads replayed from their stored events in one query (personal values
        opened), for bulk readers such as duplicate suggestions; not cached. Leads whose
        events cannot be loaded are left out (``verify`` names them)."""
        out: list[Lead] = []
        stored = self.codec.select_many(lead_ids)
        for aggregate_id, lead, exc in self._replayed(stored, list(stored)):
            if exc is not None:
                log.warning("lead cannot be loaded; left out", lead_id=str(aggregate_id),
                            error=f"{type(exc).__name__}: {exc}")
            elif isinstance(lead, Lead):
                out.append(lead)
        return out

    def _replayed(self, stored: dict[UUID, list[StoredEvent]], ids: Sequence[UUID]
                  ) -> Iterator[tuple[UUID, Any, Exception | None]]:
        """Each of ``ids`` with stored rows, replayed: (id, aggregate, None), or (id, None,
        why) when its rows cannot be decoded or replayed (a store edited outside leadflow).
        Failures of the database or the machine are raised."""
        expand = self.codec.expander.expand
        for aggregate_id in ids:
            rows = stored.get(aggregate_id)
            if not rows:
                continue
            aggregate: Any = None
            try:
                for row in rows:
                    for event in expand(row):
                        aggregate = event.mutate(aggregate)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:
                yield aggregate_id, None, exc
                continue
            yield aggregate_id, aggregate, None

    def duplicate_decisions(self, batch: int = 1000) -> list[dict[str, Any]]:
        """What people decided about pairs of leads (``dedupe reject``, ``merge``), one
        entry per pair: its leads, and the standing rejection and last confirmation (who,
        when, why), from the ``DuplicatePair`` events."""
        prefix = get_topic(domain.DuplicatePair)
        topics = [*envelope_topics(prefix), *(get_topic(getattr(domain.DuplicatePair, name))
                                              for name in ("Created", "Rejected", "Confirmed"))]
        pairs: dict[UUID, Any] = {}
        for notification in self.notifications(topics, batch):
            for item in self.codec.expander.expand(notification):
                pairs[item.originator_id] = item.mutate(pairs.get(item.originator_id))
        return [{"lead_a": p.lead_a, "lead_b": p.lead_b, "rejected": p.rejected,
                 "confirmed": p.confirmed} for p in pairs.values()]

    def rejected_pairs(self) -> list[tuple[UUID, UUID]]:
        """Pairs of leads people said are two people (``dedupe reject``), still standing."""
        return [(d["lead_a"], d["lead_b"]) for d in self.duplicate_decisions()
                if d["rejected"] is not None]

    def rep_load(self) -> dict[str, int]:
        """Leads each rep is working, from the store's routing counters (a rep who had leads
        and has none now is listed with 0)."""
        return routing_state(self.indexes.select_counters())[0]

    def clock_position(self) -> datetime | None:
        try:
            clock: Any = self.repository.get(domain.Clock.create_id())
        except AggregateNotFoundError:
            return None
        assert isinstance(clock, domain.Clock)
        return clock.position

    # ------------------------------------------------------------------ internals

    def _prefetch(self, unit: Unit, records: Sequence[InboundRecord]) -> None:
        """Load, in two queries, the aggregates the batch is about to look up one by one.

        First the identity indexes and accounts the records name, then the leads and
        interests those indexes point at. Aggregates already cached cost no query; ids with
        no stored events are remembered as absent, so creating them costs none either.
        Whatever this misses (merge chains, surge colleagues) is still loaded on demand.
        """
        keys, accounts = self._decide(unit).batch_candidates(records)
        shared = self.shared_store
        unit.prefetch_identities(keys, fresh=shared)
        self._load_into(unit, accounts | {i.target_id for i in unit.identities.values()
                                          if i is not None}, revalidate=shared)
        unit.fill_accounts([a for a in unit.touched.values() if isinstance(a, domain.Account)])

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

    def verify(self, aggregate_id: UUID) -> LeadVerification:
        """Recompute an aggregate's keyed chain from its stored rows (no cache, no domain)."""
        return self.codec.verify(aggregate_id)

    def _encode(self, unit: Unit) -> list[StoredEvent]:
        stored: list[StoredEvent] = []
        # Accounts first: a lead's touchpoint counts as its account's engagement in the read
        # models, so the account a record creates must be there before the lead's row.
        aggregates = sorted(unit.touched.values(),
                            key=lambda a: not isinstance(a, domain.Account))
        for aggregate in aggregates:
            stored += self.codec.stored(aggregate, unit.cuts.get(aggregate.id, ()),
                                        unit.cause)
        return stored

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
        try:
            self.recorder.insert_events(stored, tracking=tracking, record_ids=record_ids,
                                        timers=unit.timers, books=unit.books)
        except BaseException:
            # The cached aggregates this unit touched hold its uncommitted changes, or are
            # stale (a write conflict: another writer appended to them); so may its identity
            # rows. Only those are forgotten: everything else in the cache is as committed,
            # and any of it another writer changed meanwhile fails the next commit that
            # writes it (optimistic concurrency) and is forgotten then. Wiping the whole
            # cache here made every conflict of two consumers reload their working sets.
            self.forget_unit(unit)
            raise
        self.vault.committed()
        self.vault.shredded(unit.books.dropped_data_keys)
        self.directory.remember(i for i in unit.identities.values() if i is not None)
        cache = self.repository.cache
        if cache is not None and not self.repository.fastforward:
            for aggregate_id, aggregate in unit.touched.items():
                cache.put(aggregate_id, aggregate)

    def _decide(self, unit: Unit) -> RecordProcessor:
        return RecordProcessor(self.rules, unit)

    def _apply_one(self, unit: Unit, index: int, record: InboundRecord,
                   known: dict[str, RecordId], applied: list[RecordId]) -> RecordResult:
        event_id = record.event_id
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


def _breakdown(fit_awards: Iterable[tuple[str, float]], awards: Iterable[Award],
               when: datetime, half_life: float) -> list[RuleContribution]:
    """A score's contributions at ``when``: each fit rule, then each engagement rule's points
    and decayed value (largest first), for the primary model and the named ones alike."""
    per_rule: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for award in awards:
        if award.at > when:
            continue
        entry = per_rule.setdefault(award.rule, [0.0, 0.0])
        entry[0] += award.points
        entry[1] += award.value_at(when, half_life)
        counts[award.rule] = counts.get(award.rule, 0) + 1
    breakdown = [RuleContribution(rule, "fit", points, points, 1) for rule, points in fit_awards]
    breakdown += [RuleContribution(rule, "engagement", v[0], v[1], counts[rule])
                  for rule, v in sorted(per_rule.items(), key=lambda kv: -kv[1][1])]
    return breakdown


def _model_scores(lead: Lead, rules: Rules, when: datetime) -> dict[str, ModelScore]:
    """Each named model's score of ``lead`` at event time ``when``, with its breakdown."""
    scores: dict[str, ModelScore] = {}
    for model_id, model in rules.models.items():
        state = lead.model_states.get(model_id)
        half_life = model.half_life_seconds
        breakdown = _breakdown(
            [(str(rule), float(points)) for rule, points in state["fit_awards"]]
            if state else [],
            [Award.from_dict(data) for data in state["awards"]] if state else [],
            when, half_life)
        fit = float(state["fit"]) if state else 0.0
        engagement = lead.model_engagement_at(model_id, when, half_life)
        scores[model_id] = ModelScore(fit=fit, engagement=engagement, score=fit + engagement,
                                      threshold=model.threshold, breakdown=tuple(breakdown))
    return scores


# The commands' results (BatchResult, ClockResult, ...) are in leadflow.engine.results.
__all__ = ["INFRASTRUCTURE_ERRORS", "LeadView", "LeadflowApp", "NotMergedError", "Outcome",
           "RecordResult", "RuleContribution", "StoreVersionError", "record_digest"]
