"""The domain's vocabulary: lifecycle stages and the record types, each written once."""

from __future__ import annotations

from typing import Literal, get_args

STAGES = ("new", "mql", "sql", "opportunity", "customer", "disqualified", "recycled", "lost")
# Funnel order; side exits rank below the funnel so "more advanced" is well defined.
STAGE_RANK = {"disqualified": -2, "lost": -1, "new": 0, "recycled": 0, "mql": 1, "sql": 2,
              "opportunity": 3, "customer": 4}
# Stages in which a rep is working the lead (counts towards the rep's load).
WORKING_STAGES = frozenset({"new", "mql", "sql", "opportunity"})
# Stages a score crossing the MQL threshold can qualify from (a recycled lead re-qualifies).
QUALIFIABLE_STAGES = frozenset({"new", "recycled"})
# Stages where silence makes a lead dormant (a "zombie", seed 000).
DORMANCY_STAGES = frozenset({"new", "mql", "sql", "recycled"})
# Stages where the first-contact SLA applies.
SLA_STAGES = frozenset({"new", "mql", "sql"})

# Inbound record types (the contract's `type`): what happened, and what sales decided.
TouchpointType = Literal[
    "form_submitted",
    "email_opened",
    "email_clicked",
    "page_viewed",
    "content_downloaded",
    "call_logged",
    "demo_requested",
    "trial_started",
    "event_attended",
    "unsubscribed",
]
DispositionType = Literal[
    "sales_accepted",
    "disqualified",
    "recycled",
    "converted",
    "deal_won",
    "deal_lost",
    "owner_assigned",
    "contacted",
]
# A person told us who they are (a tracker's `identify`, a CRM sync): the record links its
# identities and updates the profile, and is neither an engagement nor a sales decision.
ProfileType = Literal["identified"]
RecordType = Literal[TouchpointType, DispositionType, ProfileType]

TOUCHPOINT_TYPES: frozenset[str] = frozenset(get_args(TouchpointType))
DISPOSITION_TYPES: frozenset[str] = frozenset(get_args(DispositionType))
PROFILE_TYPES: frozenset[str] = frozenset(get_args(ProfileType))
RECORD_TYPES: frozenset[str] = TOUCHPOINT_TYPES | DISPOSITION_TYPES | PROFILE_TYPES

# The store's metadata key naming the notification id up to which only lead rows were
# chained (set by ``db migrate`` when it brings an older store to format 4; 0 for a store
# born chained). Here, not in store/audit.py which reads it, so that opening a store (the
# format check in engine/store_format.py) does not import the whole-store audit.
CHAINED_SINCE = "chained_since"
