"""Stored topics are part of the store's format: moving a class must not change them."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

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


# In a fresh process: import the package, resolve every stored topic (as reading a store
# does), and report which aggregate modules were loaded before and after.
RESOLVE_FRESH = """
import json, sys
import leadflow.domain
from eventsourcing.utils import get_topic, resolve_topic
def loaded():
    return sorted(m for m in sys.modules if m.startswith("leadflow.domain.") and m not in (
        "leadflow.domain.errors", "leadflow.domain.topics", "leadflow.domain.vocabulary",
        "leadflow.domain.ids"))
before = loaded()
resolved = {topic: get_topic(resolve_topic(topic)) for topic in json.loads(sys.argv[1])}
print(json.dumps({"before": before, "after": loaded(), "resolved": resolved}))
"""


def test_stored_topics_resolve_in_a_process_that_had_not_imported_their_aggregates() -> None:
    # leadflow.domain imports each aggregate on first use: resolving a stored topic (the
    # library imports the topic's module and reads the attribute) must import it then.
    done = subprocess.run([sys.executable, "-c", RESOLVE_FRESH, json.dumps(STORED_TOPICS)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["before"] == []
    assert {f"leadflow.domain.{m}" for m in ("account", "clock", "duplicates", "identity_index",
                                             "interest", "lead", "router", "rulebook")
            } <= set(result["after"])
    assert result["resolved"] == {topic: topic for topic in STORED_TOPICS}


def test_an_aggregate_imported_from_its_own_module_keeps_its_stored_topics() -> None:
    # Its module sets the topics as the class is defined, not the package on first access.
    code = ("from eventsourcing.utils import get_topic\n"
            "from leadflow.domain.interest import Interest\n"
            "print(get_topic(Interest), get_topic(Interest.Created))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["leadflow.domain:Interest", "leadflow.domain:Interest.Created"]
