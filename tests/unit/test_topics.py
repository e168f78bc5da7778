"""Stored topics are part of the store's format: moving a class must not change them."""

from __future__ import annotations

import inspect

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic, resolve_topic

from leadflow.domain import AGGREGATES

# Every topic a store written by leadflow holds (aggregates and their events).
STORED_TOPICS = [
    "leadflow.domain:Account",
    "leadflow.domain:Account.Created",
    "leadflow.domain:Account.Engaged",
    "leadflow.domain:Account.Event",
    "leadflow.domain:Account.Surged",
    "leadflow.domain:Clock",
    "leadflow.domain:Clock.Advanced",
    "leadflow.domain:Clock.Created",
    "leadflow.domain:Clock.DayOpened",
    "leadflow.domain:Clock.Event",
    "leadflow.domain:DuplicatePair",
    "leadflow.domain:DuplicatePair.Confirmed",
    "leadflow.domain:DuplicatePair.Created",
    "leadflow.domain:DuplicatePair.Event",
    "leadflow.domain:DuplicatePair.Rejected",
    "leadflow.domain:IdentityIndex",
    "leadflow.domain:IdentityIndex.Created",
    "leadflow.domain:IdentityIndex.Event",
    "leadflow.domain:IdentityIndex.Registered",
    "leadflow.domain:IdentityIndex.Repointed",
    "leadflow.domain:Interest",
    "leadflow.domain:Interest.Created",
    "leadflow.domain:Interest.Event",
    "leadflow.domain:Interest.Forgotten",
    "leadflow.domain:Interest.LinkedToLead",
    "leadflow.domain:Interest.TouchpointNoted",
    "leadflow.domain:Lead",
    "leadflow.domain:Lead.Absorbed",
    "leadflow.domain:Lead.AccountSet",
    "leadflow.domain:Lead.AccountSurged",
    "leadflow.domain:Lead.Boosted",
    "leadflow.domain:Lead.Created",
    "leadflow.domain:Lead.DealOwnerSet",
    "leadflow.domain:Lead.DispositionRecorded",
    "leadflow.domain:Lead.Event",
    "leadflow.domain:Lead.FirstContactMade",
    "leadflow.domain:Lead.FirstContactSlaBreached",
    "leadflow.domain:Lead.Forgotten",
    "leadflow.domain:Lead.IdentityAdded",
    "leadflow.domain:Lead.InterestAbsorbed",
    "leadflow.domain:Lead.LoadRecounted",
    "leadflow.domain:Lead.MergedInto",
    "leadflow.domain:Lead.ModelBackfilled",
    "leadflow.domain:Lead.ModelThresholdCrossed",
    "leadflow.domain:Lead.ModelsScored",
    "leadflow.domain:Lead.OwnerAssigned",
    "leadflow.domain:Lead.ProfileUpdated",
    "leadflow.domain:Lead.StageChanged",
    "leadflow.domain:Lead.StateRestored",
    "leadflow.domain:Lead.TouchpointScored",
    "leadflow.domain:Lead.Unmerged",
    "leadflow.domain:Lead.WakeScheduled",
    "leadflow.domain:Lead.WentDormant",
    "leadflow.domain:Router",
    "leadflow.domain:Router.AvailabilitySet",
    "leadflow.domain:Router.Created",
    "leadflow.domain:Router.CursorAdvanced",
    "leadflow.domain:Router.Event",
    "leadflow.domain:Router.LeadReleased",
    "leadflow.domain:Router.LeadTaken",
    "leadflow.domain:RuleBook",
    "leadflow.domain:RuleBook.Created",
    "leadflow.domain:RuleBook.Event",
    "leadflow.domain:RuleBook.Published",
    "leadflow.domain:TimerBucket",
    "leadflow.domain:TimerBucket.Created",
    "leadflow.domain:TimerBucket.Event",
    "leadflow.domain:TimerBucket.WakeSet",
]


def test_every_aggregate_and_event_keeps_the_topic_stores_were_written_with() -> None:
    topics = []
    for aggregate in AGGREGATES:
        topics.append(get_topic(aggregate))
        topics += [get_topic(member) for _, member in inspect.getmembers(aggregate)
                   if inspect.isclass(member) and issubclass(member, Aggregate.Event)
                   and member.__qualname__.startswith(aggregate.__qualname__ + ".")]
    assert sorted(topics) == STORED_TOPICS


def test_every_stored_topic_resolves_to_its_class() -> None:
    for topic in STORED_TOPICS:
        assert get_topic(resolve_topic(topic)) == topic
