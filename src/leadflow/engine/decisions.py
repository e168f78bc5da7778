"""Record processing: what one inbound record does to the leads, one small method per decision.

A ``RecordProcessor`` works on one batch's unit of work with the live rules: it resolves the
record's identities to leads (creating, merging, linking anonymous interest), updates the
profile and account, scores touchpoints, qualifies (MQL threshold, auto-SQL), routes, applies
sales dispositions, and schedules the lead's next time-driven check. Refusals (unknown lead,
unknown rep) are raised before anything changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast
from uuid import UUID

# The other aggregates are read from the package where used (``domain.Account``): importing
# one defines its event classes, which `lead show` should not pay for (leadflow.domain).
from leadflow import domain
from leadflow.domain import Lead, UnknownLeadError, UnknownRepError
from leadflow.domain.ids import identity_key
from leadflow.domain.vocabulary import DISPOSITION_TYPES
from leadflow.engine.identities import IdentityDecisions, normalise_company

if TYPE_CHECKING:
    # Annotations only: the contract's pydantic models load when records are parsed.
    from leadflow.contract import InboundRecord



def _identity_keys(rec: InboundRecord) -> tuple[list[str], str | None]:
    """The record's person identity keys (email, phone, external id) and anonymous key."""
    ref = rec.lead
    person = [identity_key(kind, value) for kind, value in
              (("email", ref.email), ("phone", ref.phone), ("external_id", ref.external_id))
              if value]
    anonymous = identity_key("anonymous_id", ref.anonymous_id) if ref.anonymous_id else None
    return person, anonymous


class RecordProcessor(IdentityDecisions):
    """Decisions for one batch: ``apply(record)`` per record, on ``unit`` with ``rules``.

    The record's flow is here; who the record is about is decided by ``IdentityDecisions``
    (engine/identities.py), its lead's stage, owner and timers by ``StageDecisions``
    (engine/stages.py)."""

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
                account_keys.add("company:" + normalise_company(ref.company))
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

    def refuse_if_unknown(self, rec: InboundRecord, keys: Sequence[str],
                          leads: Sequence[Lead]) -> None:
        if rec.type in DISPOSITION_TYPES and not leads:
            raise UnknownLeadError(
                f"{rec.type} for unknown lead ({', '.join(keys)}): dispositions need a lead "
                "created by an earlier touchpoint"
            )
        if rec.type == "owner_assigned" and self.rules.routing.rep(cast(str, rec.owner)) is None:
            raise UnknownRepError(f"owner_assigned names unknown rep {rec.owner!r}")

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
                               rec.context.as_dict(), self.rules,
                               rec.actor)
        self.qualify(lead, at, rec.type)
        self.account_signal(lead, at)
