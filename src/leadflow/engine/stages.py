"""Lifecycle decisions on one lead: qualification, dispositions, routing and time.

``StageDecisions`` holds the rules and the batch's unit of work (see engine/decisions.py):
the MQL threshold and auto-SQL, sales dispositions, routing and the reps' load, and the
time-driven transitions (decay, first-contact SLA, dormancy) with the timer index row each
lead leaves behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

# The other aggregates are read from the package where used (``domain.Account``): importing
# one defines its event classes, which `lead show` should not pay for (leadflow.domain).
from leadflow import domain
from leadflow.domain import WORKING_STAGES, Lead
from leadflow.domain.rules import Rules
from leadflow.engine.unit import Unit

if TYPE_CHECKING:
    # Annotations only: the contract's pydantic models load when records are parsed.
    from leadflow.contract import InboundRecord

# Guard against a rules file that would make a lead bounce between owners forever.
_MAX_TRANSITIONS_PER_CATCH_UP = 64


class StageDecisions:
    """Decisions about a lead's stage, owner and time-driven transitions."""

    def __init__(self, rules: Rules, unit: Unit) -> None:
        self.rules = rules
        self.unit = unit

    def live_lead(self, lead_id: UUID) -> Lead:
        for _ in range(32):
            lead = self.unit.get(Lead, lead_id)
            if lead is None:
                raise RuntimeError(f"identity index points at missing lead {lead_id}")
            if lead.merged_into is None:
                return lead
            lead_id = lead.merged_into
        raise RuntimeError(f"merge chain too long at lead {lead_id}")

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
