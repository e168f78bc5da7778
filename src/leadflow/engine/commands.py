"""The engine's commands other than record intake: the clock, merges, forgetting, rules.

Each loads what it needs into a unit of work, decides with the record processor's rules
(engine/decisions.py) and commits once (``Batches._commit``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast
from uuid import UUID

from eventsourcing.persistence import IntegrityError

# Aggregates other than the lead are read from the package where used (``domain.Account``):
# importing one defines its event classes, which `lead show` should not pay for
# (leadflow.domain).
from leadflow import domain
from leadflow.domain import (
    AggregateUnloadableError,
    Lead,
    LeadForgottenError,
    PersonalDataError,
    UnknownLeadError,
    UnknownRepError,
)
from leadflow.domain.ids import rule_book_id
from leadflow.domain.rules import Rules
from leadflow.engine.batch import Batches
from leadflow.engine.unit import Unit
from leadflow.engine.unmerge import unmerge
from leadflow.logs import get_logger

if TYPE_CHECKING:
    # Annotations only: the commands' results load when one runs (engine/results.py).
    from leadflow.engine.results import ClockResult, ForgetResult

log = get_logger(__name__)  # structlog imported on the first log call

#: Timer index rows read (and committed) at a time by ``advance_clock``.
CLOCK_PAGE = 1000
#: Times ``advance_clock`` takes a day (or a page of one lead) again after write conflicts
#: with other writers before it gives up (the command can be run again).
CLOCK_RETRIES = 8


class _ClockTally:
    """What ``advance_clock`` did so far."""

    def __init__(self) -> None:
        self.woken = 0
        self.events = 0
        self.unloadable: dict[UUID, None] = {}


class Commands(Batches):
    """Commands of ``LeadflowApp`` that are not record intake."""

    def advance_clock(
        self, to: datetime, progress: Callable[[str, int], None] | None = None
    ) -> ClockResult:
        """Record every time-driven transition due up to event time ``to``, at its exact time.

        Only the timer index rows due between the clock's position and ``to`` are read, never
        every lead. Days are taken in order, each day's leads in (due time, lead id) order,
        so replays decide alike; work is committed page by page and the clock moves past a
        day once all of it is done.

        Consumers may write meanwhile. The clock re-arms a lead's row only if the lead is still
        as the clock read it, and moves past a day only once no row is due in it (both
        checked in the commit, store/timers.py); a lead another writer changed is looked at
        again, as stored. A page whose commit meets another writer's (a lead both appended
        to) is taken again, in halves.
        """
        from leadflow.engine.results import ClockResult

        unit = self._clock_unit()
        start = self._decide(unit).clock().position
        if start is not None and to <= start:
            return ClockResult(start, 0, 0, ())
        tally = _ClockTally()
        position = start
        while True:
            first = self.indexes.select_due(position, to, None, 1)
            day = domain.day_of(first[0][0]) if first else None
            until = to if day is None else min(
                to, datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
                - timedelta(microseconds=1))
            for attempt in range(CLOCK_RETRIES + 1):
                self._clock_pages(position, until, tally, fresh=attempt > 0)
                if self._clock_moves(position, until, tally):
                    break
                # A row due in the day (a lead changed by another writer while the clock
                # looked at it): the day's remaining rows are looked at again.
                log.info("timers changed while the clock advanced; looking again",
                         until=until.isoformat(), attempt=attempt + 1)
            else:
                raise IntegrityError(f"the clock could not move past {until.isoformat()}: "
                                     f"timers kept changing ({CLOCK_RETRIES + 1} tries)")
            if progress and day is not None:
                progress(day, tally.woken)
            position = until
            if until >= to:
                break
        return ClockResult(to, tally.woken, tally.events, tuple(tally.unloadable))

    def _clock_pages(self, position: datetime | None, until: datetime,
                     tally: _ClockTally, fresh: bool = False) -> None:
        """Wake every lead whose row is due in ``(position, until]``, a page at a time
        (``fresh``: reading again every cached lead another writer changed)."""
        cursor = None
        size = CLOCK_PAGE
        conflicts = 0  # in a row, on a page of one lead
        while True:
            unit = self._clock_unit()
            asked = size
            page = self.indexes.select_due(position, until, cursor, asked)
            if not page:
                return
            # The page's leads in one query, and as stored: on a shared store (or when
            # looking again), a lead another writer changed since it was cached is read again.
            self._load_into(unit, {lead_id for _, lead_id in page},
                            revalidate=fresh or not unit.trusted)
            woken = 0
            unloadable: list[UUID] = []
            for _, lead_id in page:
                processed = self._wake(unit, lead_id, until)
                if processed is None:
                    unloadable.append(lead_id)
                woken += processed or 0
            events = unit.pending()
            try:
                self._commit(unit, None)
            except IntegrityError as exc:
                # Another writer appended to a lead of the page (the unit was forgotten):
                # the page again, smaller, on the leads as they are now.
                conflicts += asked == 1
                if conflicts > CLOCK_RETRIES:
                    raise
                log.info("write conflict while the clock advanced; page taken again",
                         leads=len(page), error=str(exc))
                size = max(1, asked // 2)
                continue
            conflicts = 0
            size = min(CLOCK_PAGE, asked * 2)
            tally.woken += woken
            tally.events += events
            tally.unloadable.update(dict.fromkeys(unloadable))
            if len(page) < asked:
                return
            cursor = page[-1]

    def _clock_moves(self, position: datetime | None, until: datetime,
                     tally: _ClockTally) -> bool:
        """Move the clock to ``until``: False if a row is still due before it."""
        unit = self._unit()
        clock = self._decide(unit).clock()
        if clock.position is not None and clock.position >= until:
            return True  # another clock moved it
        clock.advance(until)
        unit.clock_guard = (position, until)
        events = unit.pending()
        try:
            self._commit(unit, None)
        except IntegrityError:
            return False
        tally.events += events
        return True

    def _wake(self, unit: Unit, lead_id: UUID, until: datetime) -> int | None:
        """Do a lead's transitions due by ``until``: 1 if it was woken, 0 if it needs nothing
        (merged away, gone), None if its stored events cannot be loaded."""
        try:
            lead = unit.get(Lead, lead_id)
        except AggregateUnloadableError as exc:
            # A lead damaged by hand must not stop time for every other lead.
            log.error("lead cannot be loaded; its time-driven transitions skipped",
                      lead_id=str(lead_id), error=str(exc))
            # Its row goes (the clock moves on; it would otherwise hold the clock back):
            # `db migrate` sets it again from the lead's events once they are repaired.
            unit.timers[lead_id] = None
            return None
        if lead is None or lead.merged_into is not None:
            unit.timers[lead_id] = None
            return 0
        decide = self._decide(unit)
        version = lead.version
        decide.catch_up(lead, until)
        decide.settle(lead, until, clock_position=until)
        unit.seal({"clock": until})
        # A timer may come early (a hint: store/recorders.py RecordIdIndex); the lead was
        # woken only if something was due.
        return int(lead.version != version)

    def _clock_unit(self) -> Unit:
        """A unit whose timers replace the stored ones: the clock sets each lead it looked
        at to its true next due time, which may be later than the hint that woke it."""
        unit = self._unit()
        unit.timers_exact = True
        return unit

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
        # All of theirs, wherever they sit in the queue (its first page may be others').
        for interest, queued_for, version, _ in self.record_ids.select_absorptions(
                None, leads=sorted(ids, key=str)):
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

    def set_rep_availability(self, rep: str, available: bool, at: datetime) -> None:
        if self.rules.routing.rep(rep) is None:
            raise UnknownRepError(f"unknown rep {rep!r}")
        unit = self._unit()
        unit.cause = {"command": "rep availability"}
        self._decide(unit).router().set_availability(rep, available, at)
        self._commit(unit, None)
