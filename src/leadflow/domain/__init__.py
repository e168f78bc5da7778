"""The pure domain: aggregates, scoring, rules and routing. No I/O, no clock, no environment.

One module per aggregate (``lead``, ``interest``, ``identity_index``, ``account``, ``router``,
``clock``, ``rulebook``, ``duplicates``), the vocabulary (stages and record types) written once in
``vocabulary``, the domain's errors in ``errors``, id derivation in ``ids``. Modules here
import nothing of leadflow outside ``domain``.

Stored events name their class by topic (``module:qualname``). The aggregates lived in one
``leadflow.domain`` module until they got a module each; their topics stay
``leadflow.domain:<Class>`` so every store written before keeps loading, and this package
re-exports each aggregate under that name (``stable_topics``).
"""

from __future__ import annotations

import inspect

from eventsourcing.domain import Aggregate

from leadflow.domain.account import Account
from leadflow.domain.clock import Clock, TimerBucket, day_of
from leadflow.domain.duplicates import DuplicatePair
from leadflow.domain.errors import (
    AggregateUnloadableError,
    LeadflowError,
    LeadForgottenError,
    LeadMergedError,
    PersonalDataError,
    UnknownLeadError,
    UnknownRepError,
)
from leadflow.domain.identity_index import IdentityIndex
from leadflow.domain.interest import Interest
from leadflow.domain.lead import Lead
from leadflow.domain.router import Router
from leadflow.domain.rulebook import RuleBook
from leadflow.domain.vocabulary import (
    DISPOSITION_TYPES,
    DORMANCY_STAGES,
    QUALIFIABLE_STAGES,
    RECORD_TYPES,
    SLA_STAGES,
    STAGE_RANK,
    STAGES,
    TOUCHPOINT_TYPES,
    WORKING_STAGES,
)

#: The module name in every stored topic of the aggregates below (see the docstring).
TOPIC_MODULE = "leadflow.domain"

AGGREGATES: tuple[type[Aggregate], ...] = (Lead, Interest, IdentityIndex, Account, Router,
                                           Clock, TimerBucket, RuleBook, DuplicatePair)


def stable_topics(aggregate: type[Aggregate], module: str = TOPIC_MODULE) -> None:
    """Give the aggregate class and each of its event classes the topic
    ``<module>:<qualname>``, whatever module defines them now.

    eventsourcing takes a class's topic from its ``TOPIC`` attribute when there is one; it is
    set on each class itself (never inherited), so events keep their own names.
    """
    classes = [aggregate] + [member for _, member in inspect.getmembers(aggregate)
                             if inspect.isclass(member) and issubclass(member, Aggregate.Event)
                             and member.__qualname__.startswith(aggregate.__qualname__ + ".")]
    for cls in classes:
        type.__setattr__(cls, "TOPIC", f"{module}:{cls.__qualname__}")


for _aggregate in AGGREGATES:
    stable_topics(_aggregate)

__all__ = [
    "AGGREGATES", "DISPOSITION_TYPES", "DORMANCY_STAGES", "QUALIFIABLE_STAGES", "RECORD_TYPES",
    "SLA_STAGES", "STAGES", "STAGE_RANK", "TOPIC_MODULE", "TOUCHPOINT_TYPES", "WORKING_STAGES",
    "Account", "AggregateUnloadableError", "Clock", "DuplicatePair", "IdentityIndex",
    "Interest", "Lead", "LeadForgottenError", "LeadMergedError", "LeadflowError",
    "PersonalDataError", "Router", "RuleBook", "TimerBucket", "UnknownLeadError",
    "UnknownRepError", "day_of", "stable_topics",
]
