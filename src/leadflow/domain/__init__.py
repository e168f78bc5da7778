"""The pure domain: aggregates, scoring, rules and routing. No I/O, no clock, no environment.

One module per aggregate (``lead``, ``interest``, ``identity_index``, ``account``, ``router``,
``clock``, ``rulebook``, ``duplicates``), the vocabulary (stages and record types) written once in
``vocabulary``, the domain's errors in ``errors``, id derivation in ``ids``. Modules here
import nothing of leadflow outside ``domain``.

Stored events name their class by topic (``module:qualname``). The aggregates lived in one
``leadflow.domain`` module until they got a module each; their topics stay
``leadflow.domain:<Class>`` so every store written before keeps loading, and this package
re-exports each aggregate under that name (``topics.stable_topics``).

The aggregates are imported on first use, not with the package: eventsourcing builds a
dataclass for every event class as its aggregate is defined (about 5 ms an aggregate here, 25
for the lead), and a short command such as ``lead show`` needs the lead and the rule book
only (start-up, issue 15). ``from leadflow.domain import Account`` imports ``account`` then;
so does resolving a stored topic, ``leadflow.domain:Account.Created`` (eventsourcing's
``resolve_topic`` imports this package and reads the attribute).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leadflow.domain.errors import (
    AggregateUnloadableError,
    LeadflowError,
    LeadForgottenError,
    LeadMergedError,
    PersonalDataError,
    UnknownLeadError,
    UnknownRepError,
)
from leadflow.domain.topics import TOPIC_MODULE, stable_topics
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

if TYPE_CHECKING:
    from eventsourcing.domain import Aggregate

    from leadflow.domain.account import Account
    from leadflow.domain.clock import Clock, TimerBucket, day_of
    from leadflow.domain.duplicates import DuplicatePair
    from leadflow.domain.identity_index import IdentityIndex
    from leadflow.domain.interest import Interest
    from leadflow.domain.lead import Lead
    from leadflow.domain.router import Router
    from leadflow.domain.rulebook import RuleBook

    AGGREGATES: tuple[type[Aggregate], ...]

#: The module of each name imported on first use.
_LAZY = {"Account": "account", "Clock": "clock", "TimerBucket": "clock", "day_of": "clock",
         "DuplicatePair": "duplicates", "IdentityIndex": "identity_index",
         "Interest": "interest", "Lead": "lead", "Router": "router", "RuleBook": "rulebook"}

#: Every aggregate, in the order ``AGGREGATES`` lists them (all imported when it is read).
_AGGREGATE_NAMES = ("Lead", "Interest", "IdentityIndex", "Account", "Router", "Clock",
                    "TimerBucket", "RuleBook", "DuplicatePair")


def __getattr__(name: str) -> Any:
    """Import an aggregate's module when one of its names is first read (PEP 562); the name
    is then kept in the package, so later reads cost a plain lookup."""
    if name == "AGGREGATES":
        value: Any = tuple(__getattr__(n) for n in _AGGREGATE_NAMES)
    elif name in _LAZY:
        # __import__ rather than importlib.import_module: the import statement's own path,
        # so ``python -X importtime`` lists the module (import_module's is not timed).
        value = getattr(__import__(f"{__name__}.{_LAZY[name]}", fromlist=[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "AGGREGATES", "DISPOSITION_TYPES", "DORMANCY_STAGES", "QUALIFIABLE_STAGES", "RECORD_TYPES",
    "SLA_STAGES", "STAGES", "STAGE_RANK", "TOPIC_MODULE", "TOUCHPOINT_TYPES", "WORKING_STAGES",
    "Account", "AggregateUnloadableError", "Clock", "DuplicatePair", "IdentityIndex",
    "Interest", "Lead", "LeadForgottenError", "LeadMergedError", "LeadflowError",
    "PersonalDataError", "Router", "RuleBook", "TimerBucket", "UnknownLeadError",
    "UnknownRepError", "day_of", "stable_topics",
]
