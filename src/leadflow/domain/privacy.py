"""Which fields of which events are a person's personal data.

A domain decision, kept in one place: the store (store/personal.py) encrypts exactly these
values with the person's data key before an event is stored, and ``leadflow forget``
makes them unreadable forever by deleting that key. Everything else stays readable for
projections and audits: types, times, points, rules, stages, owners, sources, campaigns,
the company (an account is a company, not a person) and reasons.

Paths are dotted (``changes.first_name``: the ``first_name`` entry of the ``changes``
dict). A path ending in ``~`` is a URL: its scheme, host and path stay readable (page
rules such as ``/pricing`` match them, before and after a forget) and only its query and
fragment, where trackers put emails and ids, are personal.

Judgements, stated: the job title is personal (with the company it names one person);
company, industry, size, revenue and country are facts about the company. Reasons (of a
disposition, a stage change, an owner change) are free text a rep or a CRM typed, so they
are sealed too: after a forget, the lead's lost/disqualified reasons read as empty while
its counts stay. A record's custom ``context.properties`` are sealed whole (a producer may
put anything there). Form and content ids name a form or an asset, event ids are the
producer's keys: they stay readable. Not sealed, a stated limit: the transition reasons
inside an unmerge's ``StateRestored`` snapshot (its ``transitions`` list).
"""

from __future__ import annotations

#: Profile fields that are personal (the others describe the company).
PERSONAL_PROFILE_FIELDS: tuple[str, ...] = ("first_name", "last_name", "title")

_PROFILE = PERSONAL_PROFILE_FIELDS
# Custom properties (issue 16) are whatever a producer sends: sealed whole, as they may
# carry anything; scoring already happened when the record was applied.
_CONTEXT = ("url~", "landing_page~", "properties")

#: Event (``Aggregate.Event`` qualname) -> the paths of its personal values.
PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "Lead.Created": ("primary_key", "landing_page~"),
    "Lead.IdentityAdded": ("key",),
    "Lead.ProfileUpdated": tuple(f"changes.{f}" for f in _PROFILE),
    "Lead.TouchpointScored": tuple(f"context.{f}" for f in _CONTEXT),
    "Lead.Absorbed": ("identity_keys", *(f"profile.{f}" for f in _PROFILE)),
    "Lead.InterestAbsorbed": ("anonymous_id",),
    "Lead.DispositionRecorded": ("reason",),
    "Lead.StageChanged": ("reason",),
    "Lead.OwnerAssigned": ("reason",),
    "Lead.StateRestored": ("state.primary_key", "state.identity_keys", "state.landing_page~",
                           "state.stage_reason", *(f"state.profile.{f}" for f in _PROFILE)),
    "Interest.Created": ("anonymous_id",),
    "Interest.TouchpointNoted": tuple(f"context.{f}" for f in _CONTEXT),
}


def public_url(url: str) -> str:
    """A URL without its query and fragment: what stays readable of it."""
    cut = len(url)
    for mark in ("?", "#"):
        at = url.find(mark)
        if at != -1:
            cut = min(cut, at)
    return url[:cut]
