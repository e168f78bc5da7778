"""Identity decisions: which lead a record is about, merges, anonymous interest, accounts.

``IdentityDecisions`` resolves a record's identities to live leads (following merges), picks
or creates the lead and merges the others into it, points identities at it (absorbing what
an anonymous cookie did before), diverts cookie-only visits on a store several writers
share, and keeps each lead's account and its surges.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING
from uuid import UUID

# The other aggregates are read from the package where used (``domain.Account``): importing
# one defines its event classes, which `lead show` should not pay for (leadflow.domain).
from leadflow import domain
from leadflow.domain import STAGE_RANK, Lead, UnknownLeadError
from leadflow.domain.events import create
from leadflow.domain.vocabulary import DISPOSITION_TYPES
from leadflow.engine.stages import StageDecisions
from leadflow.engine.unit import Identity

if TYPE_CHECKING:
    # Annotations only: the contract's pydantic models load when records are parsed.
    from leadflow.contract import InboundRecord


class IdentityDecisions(StageDecisions):
    """Decisions about who a record is: leads, merges, interest and accounts."""

    def known_leads(self, keys: Sequence[str],
                    indexes: dict[str, Identity | None]) -> list[Lead]:
        """The live leads the record's identities already point at, in key order."""
        leads: list[Lead] = []
        for key in keys:
            index = indexes[key]
            if index is not None and not index.is_interest:
                lead = self.live_lead(index.target_id)
                if all(lead.id != other.id for other in leads):
                    leads.append(lead)
        return leads

    def interest_of(self, anon_index: Identity | None) -> domain.Interest | None:
        if anon_index is None or not anon_index.is_interest:
            return None
        return self.unit.get(domain.Interest, anon_index.target_id)

    def lead_for(self, rec: InboundRecord, person_keys: Sequence[str],
                 leads: list[Lead]) -> tuple[Lead, bool]:
        """A new lead, or the oldest of the known ones with the others merged into it."""
        at = rec.occurred_at
        if not leads:
            return self.unit.add(create(
                Lead, primary_key=person_keys[0], created_at=at, source=rec.context.source,
                campaign=rec.context.campaign, landing_page=rec.context.landing_page,
                account_id=None, origin=rec.event_id,
            )), True
        if len(leads) > 1:  # most records name one lead: no key (str of a UUID) to make
            leads.sort(key=lambda candidate: (candidate.created_at, str(candidate.id)))
        lead = leads[0]
        self.catch_up(lead, at)
        for other in leads[1:]:
            self.catch_up(other, at)
            self.merge(lead, other, at, rec.event_id)
        return lead, False

    def link_identities(self, lead: Lead, keys: Sequence[str],
                        indexes: dict[str, Identity | None], interest: domain.Interest | None,
                        at: datetime) -> None:
        """Point every identity of the record at the lead (absorbing anonymous interest)."""
        for key in keys:
            index = indexes[key]
            if index is None:
                self.unit.register(key, lead.id, False)
            elif index.is_interest:
                if interest is not None:
                    # Recorded once, on the lead (InterestAbsorbed names the anonymous id and
                    # its records); the identity row below points the cookie at the lead, so
                    # the interest is never consulted again and needs no event of its own.
                    lead.absorb_interest(interest.anonymous_id, interest.touchpoints, at,
                                         self.rules, interest_id=interest.id)
                    if self.unit.shared:  # another writer may note on it meanwhile
                        self.unit.linked[interest.id] = (key, lead.id)
                self.unit.repoint(index, lead.id, False)  # anonymous interest now a person
            elif index.target_id != lead.id:
                self.unit.repoint(index, lead.id, False)  # merged
            lead.add_identity(key, at)

    def merge(self, survivor: Lead, loser: Lead, at: datetime,
               event_id: str) -> None:
        """Two identities of one person: the older lead absorbs the newer one."""
        survivor.absorb(loser, at, event_id, self.rules)
        loser.merge_into(survivor.id, at, event_id)
        self.unit.timers[loser.id] = None  # a merged lead has no time-driven checks of its own
        for key in loser.identity_keys:
            index = self.unit.identity(key)
            if index is not None:
                self.unit.repoint(index, survivor.id, False)
        if STAGE_RANK[loser.stage] > STAGE_RANK[survivor.stage]:
            survivor.change_stage(loser.stage, at, "system:merge",
                                  f"merged with lead {loser.id} at stage {loser.stage}")
        if survivor.owner is None and loser.owner is not None:
            survivor.assign_owner(loser.owner, loser.team, "merge", "merge", at,
                                  "system:merge", f"owner of merged lead {loser.id}")
        if survivor.account_id is None and loser.account_id is not None:
            survivor.set_account(loser.account_id, at)
        self.sync_load(loser, at)
        self.sync_load(survivor, at)

    def apply_anonymous(self, rec: InboundRecord, key: str,
                         indexes: dict[str, Identity | None]) -> tuple[None, bool]:
        if rec.type in DISPOSITION_TYPES:
            raise UnknownLeadError(
                f"{rec.type} for anonymous visitor {key}: dispositions need a known person"
            )
        index = indexes[key]
        at = rec.occurred_at
        anonymous_id = key.split(":", 1)[1]
        interest = self.unit.get(domain.Interest, index.target_id) if index is not None \
            else None
        if interest is None:
            interest = self.unit.add(create(domain.Interest, anonymous_id=anonymous_id,
                                            occurred_at=at, origin=rec.event_id))
            self.unit.register(key, interest.id, True)
        if rec.event_id in interest.seen:
            return None, True
        interest.note(rec.event_id, rec.type, at, rec.context.as_dict())
        if self.unit.shared:  # another writer may link the cookie meanwhile
            self.unit.noted[interest.id] = key
        return None, False

    def owned(self, lead: Lead) -> bool:
        """Whether this unit's writer owns the lead (its records' Kafka key is one of the
        writer's partitions): a sole consumer, or ``ingest``, owns every lead and never
        diverts, so one writer applies a cookie visit to the lead at once, as on SQLite."""
        owns = self.unit.owns
        if owns is None:
            return True
        key = self.owner_key(lead)
        return key is None or owns(key)

    def divert(self, rec: InboundRecord, key: str, lead: Lead) -> tuple[None, bool]:
        """A cookie-only touchpoint for a cookie that belongs to a lead, on a store several
        processes write: noted on an interest of this batch, which the lead takes up later
        (``take_up``), instead of on the lead. The record is keyed by its cookie, the lead
        by its company: writing the lead here would race the writer that owns it."""
        interest = self.unit.diverted.get(key)
        if interest is None:
            interest = self.unit.add(create(domain.Interest, anonymous_id=key.split(":", 1)[1],
                                            occurred_at=rec.occurred_at, origin=rec.event_id))
            self.unit.diverted[key] = interest
            self.unit.later[interest.id] = (lead.id, self.owner_key(lead))
        elif rec.event_id in interest.seen:
            return None, True
        interest.note(rec.event_id, rec.type, rec.occurred_at,
                      rec.context.as_dict())
        return None, False

    def take_up(self, interest_id: UUID, lead_id: UUID) -> None:
        """A lead takes up the touchpoints of a queued interest it has not seen yet (a
        pending absorption, store/bookkeeping.py), scored at their own times as absorbing
        an interest always is; then qualifies and schedules its next check."""
        interest = self.unit.get(domain.Interest, interest_id)
        found = self.unit.get(Lead, lead_id)
        if interest is None or found is None:
            return
        lead = self.live_lead(found.id)
        if lead.forgotten:
            # The person was erased meanwhile: what their cookie left goes with them.
            self.unit.books.dropped_data_keys.add(interest.id)
            return
        unseen = [tp for tp in interest.touchpoints if tp["event_id"] not in lead.seen]
        if not unseen:
            return
        at = max(tp["occurred_at"] for tp in unseen)
        self.catch_up(lead, at)
        lead.absorb_interest(interest.anonymous_id, unseen, at, self.rules,
                             interest_id=None if interest.id in lead.interests else interest.id)
        self.qualify(lead, at, None)
        self.settle(lead, at)

    def attach_account(self, lead: Lead, at: datetime) -> None:
        key = self.account_key(lead)
        if key is None:
            return
        account = self.unit.get(domain.Account, domain.Account.create_id(key))
        if account is None:
            account = self.unit.add(create(
                domain.Account, account_key=key, name=lead.profile.get("company"),
                occurred_at=at))
            # A new account has no engagement rows to read: they are written in the
            # transaction that stores an account's events, and this unit found none (another
            # writer creating it meanwhile fails this unit's commit, which is then redone).
            account.engagements_loaded = True
        lead.set_account(account.id, at)

    def company_domain(self, lead: Lead) -> str | None:
        """The lead's first company (not free-mail) email domain."""
        for key in lead.identity_keys:
            if key.startswith("email:"):
                email_domain = key.rsplit("@", 1)[-1]
                if email_domain not in self.rules.free_mail:
                    return email_domain
        return None

    def owner_key(self, lead: Lead) -> str | None:
        """The Kafka key the lead's own records carry (as ``publish`` keys them,
        consumers/publish.py): its company's domain, else its main identity. The partition
        of that key owns the lead: its writer settles what is queued for the lead."""
        email_domain = self.company_domain(lead)
        return f"domain:{email_domain}" if email_domain else lead.primary_key

    def account_key(self, lead: Lead) -> str | None:
        email_domain = self.company_domain(lead)
        if email_domain:
            return f"domain:{email_domain}"
        company = lead.profile.get("company")
        if company:
            return "company:" + normalise_company(str(company))
        return None

    def account_signal(self, lead: Lead, at: datetime) -> None:
        if lead.account_id is None:
            return
        account = self.unit.get(domain.Account, lead.account_id)
        if account is None:
            return
        cfg = self.rules.accounts
        self.unit.engage(account, lead.id, at)
        window = timedelta(days=cfg.surge_window_days)
        people = account.detect_surge(at, cfg.surge_min_people, window)
        if people:
            self.unit.surged(account)
            lead.note_account_surge(account.id, people, window.total_seconds() / 86400, at)
        for person_id in people:
            person = self.live_lead(person_id)
            if person is not lead:
                self.catch_up(person, at)
            person.boost("account-surge", cfg.surge_points, at, f"account:{account.id}",
                         self.rules)
            self.qualify(person, at, None)
            if person is not lead:
                self.settle(person, at)


_COMPANY_SUFFIXES = ("inc", "llc", "ltd", "gmbh", "ag", "corp", "co", "sa", "plc", "ooo", "oao")


@lru_cache(maxsize=65536)  # a character walk; every batch asks again for the same companies
def normalise_company(name: str) -> str:
    words = "".join(ch.lower() if ch.isalnum() else " " for ch in name).split()
    while words and words[-1] in _COMPANY_SUFFIXES:
        words.pop()
    return " ".join(words)
