"""Record processing: what one inbound record does to the leads, one small method per decision.

A ``RecordProcessor`` works on one batch's unit of work with the live rules: it resolves the
record's identities to leads (creating, merging, linking anonymous interest), updates the
profile and account, scores touchpoints, qualifies (MQL threshold, auto-SQL), routes, applies
sales dispositions, and schedules the lead's next time-driven check. Refusals (unknown lead,
unknown rep) are raised before anything changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

# The other aggregates are read from the package where used (``domain.Account``): importing
# one defines its event classes, which `lead show` should not pay for (leadflow.domain).
from leadflow import domain
from leadflow.domain import (
    STAGE_RANK,
    WORKING_STAGES,
    Lead,
    UnknownLeadError,
    UnknownRepError,
)
from leadflow.domain.ids import identity_key
from leadflow.domain.rules import Rules
from leadflow.domain.vocabulary import DISPOSITION_TYPES
from leadflow.engine.unit import Identity, Unit

if TYPE_CHECKING:
    # Annotations only: the contract's pydantic models load when records are parsed.
    from leadflow.contract import InboundRecord

# Guard against a rules file that would make a lead bounce between owners forever.
_MAX_TRANSITIONS_PER_CATCH_UP = 64


def _identity_keys(rec: InboundRecord) -> tuple[list[str], str | None]:
    """The record's person identity keys (email, phone, external id) and anonymous key."""
    ref = rec.lead
    person = [identity_key(kind, value) for kind, value in
              (("email", ref.email), ("phone", ref.phone), ("external_id", ref.external_id))
              if value]
    anonymous = identity_key("anonymous_id", ref.anonymous_id) if ref.anonymous_id else None
    return person, anonymous


class RecordProcessor:
    """Decisions for one batch: ``apply(record)`` per record, on ``unit`` with ``rules``."""

    def __init__(self, rules: Rules, unit: Unit) -> None:
        self.rules = rules
        self.unit = unit

    def batch_candidates(self, records: Sequence[InboundRecord]) -> tuple[list[str], set[UUID]]:
        """What the batch will look up: identity keys, and likely accounts."""
        # Once per record of every batch: the kinds are spelt out and the account keys
        # gathered as strings first (one id per distinct key), as identity_key and
        # Account.create_id make them.
        keys: list[str] = []
        account_keys: set[str] = set()
        free_mail = self.rules.free_mail
        append = keys.append
        for rec in records:
            ref = rec.lead
            email, phone, external_id, anonymous_id = (
                ref.email, ref.phone, ref.external_id, ref.anonymous_id)
            if email:
                append(identity_key("email", email))
            if phone:
                append(identity_key("phone", phone))
            if external_id:
                append(identity_key("external_id", external_id))
            if anonymous_id:
                append(identity_key("anonymous_id", anonymous_id))
            if email:
                email_domain = email.rsplit("@", 1)[-1]
                if email_domain not in free_mail:
                    account_keys.add(f"domain:{email_domain}")
            if ref.company:
                account_keys.add("company:" + _normalise_company(ref.company))
        return keys, {domain.Account.create_id(key) for key in account_keys}

    def apply(self, rec: InboundRecord) -> tuple[UUID | None, bool]:
        """Apply one record: (the lead it landed on, or None for anonymous interest;
        whether it was a duplicate already recorded there)."""
        person_keys, anon_key = _identity_keys(rec)
        keys = person_keys + ([anon_key] if anon_key else [])
        indexes = {k: self.unit.identity(k) for k in keys}
        leads = self.known_leads(keys, indexes)
        if not leads and not person_keys:
            return self.apply_anonymous(rec, cast(str, anon_key), indexes)
        # Refusals come before any change, so a refused record leaves nothing behind.
        self.refuse_if_unknown(rec, keys, leads)
        if any(rec.event_id in lead.seen for lead in leads):
            return leads[0].id, True
        if not person_keys and self.unit.shared and rec.is_touchpoint \
                and not leads[0].pending_events and not self.owned(leads[0]):
            return self.divert(rec, cast(str, anon_key), leads[0])
        interest = self.interest_of(indexes.get(anon_key) if anon_key else None)
        if interest is not None and rec.event_id in interest.seen:
            return None, True
        lead, created = self.lead_for(rec, person_keys, leads)
        self.link_identities(lead, keys, indexes, interest, rec.occurred_at)
        self.update_profile(lead, rec, created)
        if rec.is_touchpoint:
            self.touch(lead, rec)
        elif rec.type in DISPOSITION_TYPES:
            self.disposition(lead, rec)
            self.check_models(lead)  # a merge may have brought points
        else:  # identified: the profile changed, and fit with it; no engagement to score
            self.qualify(lead, rec.occurred_at, None)
        self.settle(lead, rec.occurred_at)
        return lead.id, False

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

    def refuse_if_unknown(self, rec: InboundRecord, keys: Sequence[str],
                          leads: Sequence[Lead]) -> None:
        if rec.type in DISPOSITION_TYPES and not leads:
            raise UnknownLeadError(
                f"{rec.type} for unknown lead ({', '.join(keys)}): dispositions need a lead "
                "created by an earlier touchpoint"
            )
        if rec.type == "owner_assigned" and self.rules.routing.rep(cast(str, rec.owner)) is None:
            raise UnknownRepError(f"owner_assigned names unknown rep {rec.owner!r}")

    def interest_of(self, anon_index: Identity | None) -> domain.Interest | None:
        if anon_index is None or not anon_index.is_interest:
            return None
        return self.unit.get(domain.Interest, anon_index.target_id)

    def lead_for(self, rec: InboundRecord, person_keys: Sequence[str],
                 leads: list[Lead]) -> tuple[Lead, bool]:
        """A new lead, or the oldest of the known ones with the others merged into it."""
        at = rec.occurred_at
        if not leads:
            return self.unit.add(Lead(
                primary_key=person_keys[0], created_at=at, source=rec.context.source,
                campaign=rec.context.campaign, landing_page=rec.context.landing_page,
                account_id=None, origin=rec.event_id,
            )), True
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

    def update_profile(self, lead: Lead, rec: InboundRecord, created: bool) -> None:
        at = rec.occurred_at
        profile = rec.lead.profile()
        if profile:
            lead.update_profile(profile, at, rec.event_id, self.rules)
        if lead.account_id is None:
            self.attach_account(lead, at)
        if created and self.rules.routing.assign_on == "created":
            self.route(lead, at, "rule:assign-on-created", "new lead")

    def touch(self, lead: Lead, rec: InboundRecord) -> None:
        """Score a touchpoint, then qualify and look for an account surge."""
        at = rec.occurred_at
        lead.record_touchpoint(rec.event_id, rec.type, at,
                               rec.context.model_dump(exclude_none=True), self.rules,
                               rec.actor)
        self.qualify(lead, at, rec.type)
        self.account_signal(lead, at)

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
            interest = self.unit.add(domain.Interest(anonymous_id=anonymous_id,
                                                     occurred_at=at, origin=rec.event_id))
            self.unit.register(key, interest.id, True)
        if rec.event_id in interest.seen:
            return None, True
        interest.note(rec.event_id, rec.type, at, rec.context.model_dump(exclude_none=True))
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
            interest = self.unit.add(domain.Interest(anonymous_id=key.split(":", 1)[1],
                                                     occurred_at=rec.occurred_at,
                                                     origin=rec.event_id))
            self.unit.diverted[key] = interest
            self.unit.later[interest.id] = (lead.id, self.owner_key(lead))
        elif rec.event_id in interest.seen:
            return None, True
        interest.note(rec.event_id, rec.type, rec.occurred_at,
                      rec.context.model_dump(exclude_none=True))
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

    def live_lead(self, lead_id: UUID) -> Lead:
        for _ in range(32):
            lead = self.unit.get(Lead, lead_id)
            if lead is None:
                raise RuntimeError(f"identity index points at missing lead {lead_id}")
            if lead.merged_into is None:
                return lead
            lead_id = lead.merged_into
        raise RuntimeError(f"merge chain too long at lead {lead_id}")

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

    def attach_account(self, lead: Lead, at: datetime) -> None:
        key = self.account_key(lead)
        if key is None:
            return
        account = self.unit.get(domain.Account, domain.Account.create_id(key))
        if account is None:
            account = self.unit.add(domain.Account(
                account_key=key, name=lead.profile.get("company"), occurred_at=at))
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
            return "company:" + _normalise_company(str(company))
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

    def check_models(self, lead: Lead) -> None:
        """The named models' threshold crossings after new points (a record, a merge).
        Only the primary model (``[scoring]``) moves the lifecycle."""
        if self.rules.models:
            lead.check_models(self.rules, lead.horizon)

    def qualify(self, lead: Lead, at: datetime, record_type: str | None) -> None:
        rules = self.rules
        self.check_models(lead)
        when = lead.horizon
        score = lead.score_at(when, rules.half_life_seconds)
        threshold = rules.scoring.mql_threshold
        if lead.stage in ("new", "recycled") and score >= threshold:
            lead.change_stage("mql", when, "rule:mql-threshold",
                              f"score {score:.1f} reached {threshold:g}")
            if rules.routing.assign_on == "mql" and lead.owner is None and not lead.in_pool:
                self.route(lead, when, "rule:assign-on-mql", "became MQL")
        if record_type is None:
            return
        for auto in rules.lifecycle.auto_sql:
            if (auto.type == record_type and lead.fit >= auto.min_fit
                    and score >= auto.min_score and lead.stage in ("new", "recycled", "mql")):
                lead.change_stage("sql", at, f"rule:{auto.id}",
                                  f"{record_type} with fit {lead.fit:g} >= {auto.min_fit:g}")
                if rules.routing.assign_on != "manual" and lead.owner is None \
                        and not lead.in_pool:
                    self.route(lead, at, f"rule:{auto.id}", "auto-qualified")
                break

    def disposition(self, lead: Lead, rec: InboundRecord) -> None:
        at = rec.occurred_at
        actor = rec.actor or "unknown"
        deal = rec.deal.model_dump(mode="json", exclude_none=True) if rec.deal else None
        lead.record_disposition(rec.event_id, rec.type, at, rec.actor, rec.reason, deal,
                                rec.owner)
        kind = rec.type
        if (kind in ("contacted", "sales_accepted", "converted") and lead.owner is None
                and rec.actor and self.rules.routing.rep(rec.actor) is not None):
            # "First who takes it": a rep working an unowned lead (pooled, or never routed)
            # claims it, so the work is attributed and counted in the rep's load.
            lead.assign_owner(rec.actor, None, "claim", "pool_claim" if lead.in_pool else "claim",
                              at, rec.actor, f"{kind} by {rec.actor}")
            self.sync_load(lead, at)
        if kind == "sales_accepted":
            if lead.stage not in ("sql", "opportunity", "customer"):
                lead.change_stage("sql", at, actor, rec.reason or "accepted by sales",
                                  rec.event_id)
        elif kind in ("disqualified", "recycled", "deal_lost"):
            target = {"disqualified": "disqualified", "recycled": "recycled",
                      "deal_lost": "lost"}[kind]
            lead.change_stage(target, at, actor, rec.reason or "unspecified", rec.event_id)
        elif kind == "converted":
            assert rec.deal is not None  # the contract requires a deal
            links: dict[str, Any] | None = {
                "contact_id": str(lead.id),
                "account_id": str(lead.account_id) if lead.account_id else None,
                "deal_id": rec.deal.id,
                "deal_amount": str(rec.deal.amount) if rec.deal.amount is not None else None,
                "deal_currency": rec.deal.currency,
            }
            lead.change_stage("opportunity", at, actor, rec.reason or "converted",
                              rec.event_id, links)
            if rec.owner:
                lead.set_deal_owner(rec.owner, at)
        elif kind == "deal_won":
            links = {"deal_id": rec.deal.id} if rec.deal else None
            lead.change_stage("customer", at, actor, rec.reason or "deal won", rec.event_id,
                              links)
        elif kind == "owner_assigned":
            owner = cast(str, rec.owner)
            lead.assign_owner(owner, None, "manual", "manual", at, actor,
                              rec.reason or "manual assignment")
        elif kind == "contacted":
            lead.make_first_contact(rec.actor, at)
        self.sync_load(lead, at)

    def route(self, lead: Lead, at: datetime, actor: str, reason: str,
               exclude: Iterable[str] = ()) -> None:
        # Imported here: the application imports this module, and lead show routes nothing.
        from leadflow.domain.routing import choose_owner

        router = self.router()
        decision = choose_owner(
            self.rules.routing, lead.profile, lead.score_at(at, self.rules.half_life_seconds),
            load=router.load, cursors=router.cursors, availability=router.availability,
            exclude=set(exclude),
        )
        if decision.team is not None and decision.cursor is not None:
            self.unit.advance_cursor(router, decision.team, decision.cursor)
        lead.assign_owner(decision.owner, decision.team, decision.rule, decision.strategy, at,
                          actor, reason)
        self.sync_load(lead, at)

    def sync_load(self, lead: Lead, at: datetime) -> None:
        """Keep the router's per-rep load equal to the leads each rep is working."""
        desired = lead.owner if (lead.merged_into is None and lead.owner
                                 and lead.stage in WORKING_STAGES) else None
        if lead.load_rep == desired:
            return
        router = self.router()
        if lead.load_rep is not None:
            self.unit.release(router, lead.load_rep)
        if desired is not None:
            self.unit.take(router, desired)
        lead.recount_load(desired, at)

    def catch_up(self, lead: Lead, until: datetime) -> tuple[datetime, str] | None:
        """Record, at their exact times, the time-driven transitions due by ``until``; return
        the lead's next due transition after them (None: none)."""
        rules = self.rules
        for _ in range(_MAX_TRANSITIONS_PER_CATCH_UP):
            due = lead.next_due(rules)
            if due is None or due[0] > until:
                return due
            at, kind = due
            if kind == "decay":
                lead.change_stage("recycled", at, "rule:recycle-on-decay", "score decayed")
                self.sync_load(lead, at)
            elif kind.startswith("model:"):
                # A named model's score decayed below its threshold (the lifecycle follows
                # the primary model only: nothing else changes).
                lead.cross_model_threshold(kind[6:], "down", at, rules)
            elif kind == "sla":
                breached = cast(str, lead.owner)
                lead.note_sla_breach(breached, at)
                self.route(
                    lead, at, "rule:first-contact-sla",
                    f"no first contact by {breached} within "
                    f"{rules.routing.first_contact_sla_hours:g}h",
                    exclude=lead.sla_breached_by,
                )
            else:
                lead.go_dormant(at, rules.lifecycle.dormant_after_days)
        return lead.next_due(rules)

    def settle(self, lead: Lead, at: datetime,
                clock_position: datetime | None = None) -> None:
        """Record the lead's next due transition in the timer index (after doing, now, any that
        a late record made due before the clock's position)."""
        if clock_position is None:
            clock_position = self.clock().position
        if clock_position is not None:
            # A late record can make a transition due before the clock's position: do it now.
            due = self.catch_up(lead, clock_position)
        else:
            due = lead.next_due(self.rules)
        # Bookkeeping, not an event: the timer index row is written with the batch's events.
        self.unit.timers[lead.id] = due[0] if due is not None else None

    def router(self) -> domain.Router:
        return self.unit.router()

    def clock(self) -> domain.Clock:
        clock = self.unit.get(domain.Clock, domain.Clock.create_id())
        return clock if clock is not None else self.unit.add(domain.Clock())


_COMPANY_SUFFIXES = ("inc", "llc", "ltd", "gmbh", "ag", "corp", "co", "sa", "plc", "ooo", "oao")


@lru_cache(maxsize=65536)  # a character walk; every batch asks again for the same companies
def _normalise_company(name: str) -> str:
    words = "".join(ch.lower() if ch.isalnum() else " " for ch in name).split()
    while words and words[-1] in _COMPANY_SUFFIXES:
        words.pop()
    return " ".join(words)
