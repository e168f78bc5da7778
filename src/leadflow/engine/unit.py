"""The batch unit of work: the aggregates one batch (or command) has loaded or created,
saved together in one transaction at its end."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Repository
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import PersistenceError

# Accounts and the router are read from the package where used (``domain.Account``): the
# application imports this module, and importing an aggregate defines its event classes,
# which `lead show` should not pay for (leadflow.domain).
from leadflow import domain
from leadflow.domain import AggregateUnloadableError
from leadflow.store.bookkeeping import Books, routing_state
from leadflow.store.fold import Cause
from leadflow.store.recorders import RecordIdIndex

A = TypeVar("A", bound=Aggregate)

ANONYMOUS = "anonymous_id:"  # a cookie's identity key prefix (domain/ids.py identity_key)

#: Failures of the database or the machine, not of a record: they abort the batch and are
#: raised (the consumer retries, then stops loudly). Any other exception while applying a
#: record is that record's fault ("poison") and only costs that record. psycopg's errors
#: need no entry: eventsourcing's PostgreSQL datastore, through which every statement of
#: the store goes, turns each into a PersistenceError — and not importing psycopg keeps
#: the embedded store's commands (``lead show``) quick to start.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    PersistenceError, sqlite3.Error, OSError, MemoryError)


_KINDS = {"Lead": "lead", "IdentityIndex": "identity index", "Interest": "interest",
          "Account": "account", "Router": "router", "Clock": "clock",
          "TimerBucket": "timer bucket", "RuleBook": "rule book"}


@contextmanager
def unloadable(aggregate_id: UUID, kind: str = "lead") -> Iterator[None]:
    """Stored events that cannot be decoded or replayed: AggregateUnloadableError.

    Infrastructure failures (the database is gone), an aggregate that does not exist and
    leadflow's own errors pass through.
    """
    try:
        yield
    except (AggregateNotFoundError, AggregateUnloadableError):
        raise
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        raise AggregateUnloadableError(aggregate_id, kind, exc) from exc


class Identity:
    """An identity key's row of the identity index: the lead (or interest) it belongs to."""

    __slots__ = ("is_interest", "key", "target_id")

    def __init__(self, key: str, target_id: UUID, is_interest: bool) -> None:
        self.key = key
        self.target_id = target_id
        self.is_interest = is_interest


#: Identity rows the directory keeps (~280 bytes each). Unbounded, it held every identity
#: key seen: 164,062 (~44 MiB) at the end of the default stream.
DIRECTORY_MAX = 100_000


class Directory:
    """The process's cache of the identity index, over the store's ``leadflow_identities``.

    The table is keyed by ``hasher(key)`` (a keyed hash, store/personal.py), never by the
    email or phone; the engine speaks identity keys, this class translates.
    Only committed rows are cached (``remember`` after a commit); ``clear`` when a batch
    failed or another writer may have moved a key.
    """

    def __init__(self, store: RecordIdIndex, hasher: Callable[[str], str]) -> None:
        self.store = store
        self.hasher = hasher
        self.cache: dict[str, Identity] = {}

    def lookup(self, keys: Iterable[str], fresh: bool = False) -> dict[str, Identity]:
        """The rows of ``keys`` (a key without one is absent). ``fresh``: read them all from
        the store, as another writer may have moved or deleted cached ones."""
        cache = self.cache
        found = {} if fresh else {k: cache[k] for k in keys if k in cache}
        missing = {self.hasher(k): k for k in keys if k not in found}
        if missing:
            for hashed, (target, interest) in self.store.select_identities(
                    list(missing)).items():
                key = missing[hashed]
                found[key] = cache[key] = Identity(key, target, interest)
            if fresh:
                for key in missing.values():
                    if key not in found:
                        cache.pop(key, None)  # deleted (``forget``) by another process
        return found

    def remember(self, identities: Iterable[Identity]) -> None:
        cache = self.cache
        if len(cache) >= DIRECTORY_MAX:
            # Bounded: it starts over, as the vault's caches do. A batch looks up all its
            # keys the cache lacks in one query, which it makes anyway for its new keys.
            cache.clear()
        cache.update((i.key, i) for i in identities)

    def clear(self) -> None:
        self.cache.clear()


class TimerHints:
    """What each lead's timer row is known to be no later than, so that a batch need not
    write a timer that would not move the row (store/recorders.py RecordIdIndex: a batch's
    timers only move rows earlier; most touchpoints move a lead's next check later).

    A row moves later, or goes, only in a commit that replaces timers (the clock's), and
    such commits count up the store's ``TIMERS_EPOCH`` row: what is known here holds while
    that row holds what it held when it was learnt. A unit reads it when it begins
    (``begin``); timers skipped because of it are written after all if the row moved by
    the time the unit commits (the recorder checks, under the commit's lock).
    """

    #: Leads remembered at most (then all forgotten, and learnt again by writing each
    #: lead's row once more): ~150 bytes each, so ~40 MB at most.
    LIMIT = 1 << 18

    def __init__(self) -> None:
        self.epoch: object = _UNREAD
        self.known: dict[UUID, datetime] = {}

    def begin(self, epoch: str | None) -> None:
        if epoch != self.epoch or len(self.known) > self.LIMIT:
            self.known.clear()
            self.epoch = epoch

    def split(self, timers: dict[UUID, datetime | None],
              ) -> tuple[dict[UUID, datetime | None], dict[UUID, datetime]]:
        """(timers to write, timers the rows are already no later than). A ``None`` (no
        check due) goes to the recorder, which leaves the row as it is (``timer_writes``)."""
        known = self.known
        write: dict[UUID, datetime | None] = {}
        skip: dict[UUID, datetime] = {}
        for lead_id, at in timers.items():
            held = known.get(lead_id)
            if at is not None and held is not None and held <= at:
                skip[lead_id] = at
            else:
                write[lead_id] = at
        return write, skip

    def committed(self, written: dict[UUID, datetime | None], exact: bool) -> None:
        if exact:  # rows moved later or went: the epoch moved too
            self.known.clear()
            self.epoch = _UNREAD
            return
        for lead_id, at in written.items():
            if at is not None:
                self.known[lead_id] = at  # the row is now min(what it was, at)


_UNREAD = object()


class CacheMarks:
    """Whether this process's caches (aggregates, identity rows, data keys) are as stored, on
    a store several processes write (``RecordIdIndex.shared``).

    There, a batch used to re-read what it took from the caches (a moved-on probe of every
    cached aggregate it was about to use, its identity rows afresh), since another writer may
    have committed meanwhile: ~6 µs of the consumer's CPU a record, and PostgreSQL's time,
    paid also by a consumer that writes alone. Every commit now leaves a writer mark in the
    store (``store.recorders.WRITER_MARK``), this process's own only when no one else
    committed since its unit of work read the mark. A unit that starts by reading back what
    this process's last commit left (its mark, and the events table's highest notification id
    moved on by exactly that commit's rows, for writers of versions that leave no mark), made
    by a unit that could trust the caches, can trust them too: nothing was committed since
    they were last known to be as stored. Anything else (another writer's mark, a mark left by
    a race, more notification ids, a cache that was not empty at the first read) and batches
    re-read as before, for as long as the process keeps its caches. That is the price of
    certainty: a stale identity row can send a cookie's visit to the wrong place without any
    conflict to reveal it (tests/integration/test_write_conflicts.py).
    """

    def __init__(self) -> None:
        self.token = uuid4().hex
        self.count = 0
        # What this process's last commit left, if it was made by a unit that trusted the
        # caches (so the caches were as stored at that commit); None: not known to be.
        self.valid_at: tuple[str, int] | None = None

    def trusts(self, seen: tuple[str | None, int | None], caches_empty: bool) -> bool:
        """Whether a unit that read ``seen`` (``RecordIdIndex.writer_mark``) may use the
        caches as they are."""
        return caches_empty or (self.valid_at is not None and seen == self.valid_at)

    def next(self) -> str:
        self.count += 1
        return f"{self.token}:{self.count}"

    def committed(self, unit: Unit, mark: str, rows: int) -> None:
        """``unit`` committed ``rows`` events and left ``mark``."""
        last = unit.seen[1]
        self.valid_at = (mark, (last or 0) + rows) if unit.trusted else None


class Unit:
    """The aggregates one batch has loaded or created; saved together at the end, with the
    bookkeeping (identity index, account engagements, routing counters) they changed."""

    def __init__(self, repository: Repository[UUID], directory: Directory) -> None:
        self.repository = repository
        self.directory = directory
        self.store = directory.store
        self.books = Books()
        # Identity rows this unit looked up (None: no such key) or registered.
        self.identities: dict[str, Identity | None] = {}
        self._router_fresh = False
        self.touched: dict[UUID, Aggregate] = {}
        self.absent: set[UUID] = set()
        # Aggregates whose stored events cannot be loaded, with the reason (see _load_into).
        self.unloadable: dict[UUID, BaseException] = {}
        # Each settled lead's next time-driven check (None: none), for the timer index.
        self.timers: dict[UUID, datetime | None] = {}
        # Whether they replace the stored timers (the clock re-arming what it looked at),
        # or only move them earlier (store/recorders.py RecordIdIndex).
        self.timers_exact = False
        # The store's TIMERS_EPOCH when the unit began (TimerHints).
        self.timers_epoch: str | None = None
        # The clock moving from its position to a time: committed only if no timer row is
        # due in between (store/timers.py check_reads).
        self.clock_guard: tuple[datetime | None, datetime] | None = None
        # Where each aggregate's pending events end for one cause (a record), and why: each
        # cause's events are stored as one row (store/fold.py).
        self.cuts: dict[UUID, list[tuple[int, Cause]]] = {}
        # The cause of events after the last cut (a clock step, a command).
        self.cause: Cause | None = None
        self.used: dict[UUID, Aggregate] = {}
        # Several processes write the store: cookie races are settled at commit (see
        # store/bookkeeping.py), from what the unit did to interests.
        self.shared = self.store.shared
        self.noted: dict[UUID, str] = {}  # interest -> its cookie: noted on
        self.linked: dict[UUID, tuple[str, UUID]] = {}  # interest -> (cookie, lead): absorbed
        # interest -> (lead that must take it up, Kafka key of the lead's own records)
        self.later: dict[UUID, tuple[UUID, str | None]] = {}
        self.diverted: dict[str, domain.Interest] = {}  # cookie -> this unit's interest
        # Which Kafka keys' leads this unit's writer owns (its partitions'; None: every lead,
        # as for a writer without partitions or one holding them all): a cookie-only visit
        # is diverted only from a lead another writer owns (decisions.py ``divert``).
        self.owns: Callable[[str], bool] | None = None
        # What a shared store's commits had left when the unit began (its writer mark and
        # highest notification id), and whether the process's caches could be trusted then
        # (``CacheMarks``); False: read afresh what the caches hold.
        self.seen: tuple[str | None, int | None] = (None, None)
        self.trusted = not self.shared

    def seal(self, cause: Cause) -> None:
        """The events triggered since the last seal were caused by ``cause``."""
        cuts = self.cuts
        # Only what was handed out since the last seal can have new events (every change
        # goes through an aggregate got from this unit); scanning all of ``touched`` per
        # record would cost O(batch) each time.
        for aggregate in self.used.values():
            count = len(aggregate.pending_events)
            if count:
                mine = cuts.get(aggregate.id)
                if mine is None:
                    cuts[aggregate.id] = [(count, cause)]
                elif count > mine[-1][0]:
                    mine.append((count, cause))
        self.used.clear()

    def get(self, cls: type[A], aggregate_id: UUID) -> A | None:
        found = self.touched.get(aggregate_id)
        if found is None:
            if aggregate_id in self.absent:
                return None
            kind = _KINDS.get(cls.__name__, cls.__name__)
            if aggregate_id in self.unloadable:
                raise AggregateUnloadableError(aggregate_id, kind, self.unloadable[aggregate_id])
            try:
                with unloadable(aggregate_id, kind):  # a damaged store: named, not a crash
                    found = self.repository.get(aggregate_id)
            except AggregateNotFoundError:
                self.absent.add(aggregate_id)
                return None
            except AggregateUnloadableError as exc:
                self.unloadable[aggregate_id] = exc.cause
                raise
            self.touched[aggregate_id] = found
            if isinstance(found, domain.Account):
                self.fill_accounts([found])
        self.used[aggregate_id] = found
        if not isinstance(found, cls):
            raise TypeError(f"aggregate {aggregate_id} is a {type(found).__name__}, "
                            f"not a {cls.__name__}")
        return found

    # ----------------------------------------------------------------- identity index

    def prefetch_identities(self, keys: Iterable[str], fresh: bool = False) -> None:
        wanted = [k for k in dict.fromkeys(keys) if k not in self.identities]
        if wanted:
            found = self.directory.lookup(wanted, fresh)
            for key in wanted:
                self.identities[key] = found.get(key)

    def identity(self, key: str) -> Identity | None:
        if key not in self.identities:
            self.prefetch_identities([key])
        return self.identities[key]

    def register(self, key: str, target_id: UUID, is_interest: bool) -> Identity:
        identity = Identity(key, target_id, is_interest)
        self.identities[key] = identity
        hashed = self.directory.hasher(key)
        self.books.new_identities[hashed] = (target_id, is_interest)
        if key.startswith(ANONYMOUS):
            self.books.cookies.add(hashed)
        return identity

    def repoint(self, identity: Identity, target_id: UUID, is_interest: bool) -> Identity:
        """Point a key elsewhere; returns its new row. The row is replaced, not changed in
        place: the directory's cache holds committed rows only, whatever happens to this
        unit afterwards."""
        if identity.target_id == target_id and identity.is_interest == is_interest:
            return identity
        key = identity.key
        moved = self.identities[key] = Identity(key, target_id, is_interest)
        books = self.books
        hashed = self.directory.hasher(key)
        if hashed in books.new_identities:
            books.new_identities[hashed] = (target_id, is_interest)
        else:
            books.moved_identities[hashed] = (target_id, is_interest)
        return moved

    def drop_identity(self, key: str) -> None:
        """Delete an identity's row (``forget``): its key will find nothing, ever again."""
        self.identities[key] = None
        self.directory.cache.pop(key, None)
        self.books.dropped_identities.add(self.directory.hasher(key))

    # ----------------------------------------------------------------- cookie races

    def close_books(self) -> None:
        """Give the bookkeeping what the unit did to interests, at the versions it left them
        (a shared store settles cookie races from it at commit)."""
        if not (self.noted or self.linked or self.later):
            return
        books, touched, hasher = self.books, self.touched, self.directory.hasher
        for interest, key in self.noted.items():
            books.noted[interest] = (hasher(key), touched[interest].version)
        for interest, (key, lead) in self.linked.items():
            books.linked[interest] = (hasher(key), lead, touched[interest].version)
        for interest, (lead, owner) in self.later.items():
            books.absorptions[(interest, lead)] = (touched[interest].version, owner)

    # ----------------------------------------------------------------- accounts, routing

    def fill_accounts(self, accounts: Sequence[domain.Account]) -> None:
        """Give loaded accounts their engagements from the store (bookkeeping, not events)."""
        todo = [a for a in accounts if not a.engagements_loaded]
        if todo:
            found = self.store.select_engagements([a.id for a in todo])
            for account in todo:
                account.load_engagements(found.get(account.id, {}))

    def engage(self, account: domain.Account, lead_id: UUID, at: datetime) -> None:
        if account.engage(lead_id, at):
            self.books.engagements[(account.id, lead_id)] = at

    def surged(self, account: domain.Account) -> None:
        """Keep the account's latest surge (``detect_surge`` set it) in the store."""
        from leadflow.domain.account import SURGE_ROW

        if account.last_surge_at is not None:
            self.books.engagements[(account.id, SURGE_ROW)] = account.last_surge_at

    def router(self) -> domain.Router:
        """The router, its load and rotation read from the store once per unit (another
        writer may have changed them)."""
        router = self.get(domain.Router, domain.Router.create_id())
        if router is None:
            router = self.add(domain.Router())
        if not self._router_fresh:
            load, cursors = routing_state(self.store.select_counters())
            router.load, router.cursors = load, cursors
            self._router_fresh = True
        return router

    def take(self, router: domain.Router, rep: str) -> None:
        router.load[rep] = router.load.get(rep, 0) + 1
        self.books.load[rep] = self.books.load.get(rep, 0) + 1

    def release(self, router: domain.Router, rep: str) -> None:
        if router.load.get(rep, 0) > 0:
            router.load[rep] -= 1
            self.books.load[rep] = self.books.load.get(rep, 0) - 1

    def advance_cursor(self, router: domain.Router, team: str, cursor: int) -> None:
        if router.cursors.get(team) != cursor:
            router.cursors[team] = cursor
            self.books.cursors[team] = cursor

    def add(self, aggregate: A) -> A:
        self.touched[aggregate.id] = aggregate
        self.used[aggregate.id] = aggregate
        self.absent.discard(aggregate.id)
        return aggregate

    def pending(self) -> int:
        return sum(len(a.pending_events) for a in self.touched.values())
