"""The topics stored events name their classes by (``module:qualname``).

The aggregates lived in one ``leadflow.domain`` module until they got a module each; their
topics stay ``leadflow.domain:<Class>`` so every store written before keeps loading. Each
aggregate's module calls ``stable_topics`` on its class as it is defined, so the topic is
right whichever way the class is first imported; ``leadflow.domain`` resolves the names
(``resolve_topic`` imports the package and reads the attribute, which imports the module).
"""

from __future__ import annotations

import inspect

from eventsourcing.domain import Aggregate

#: The module name in every stored topic of the aggregates (see the docstring).
TOPIC_MODULE = "leadflow.domain"


def stable_topics(aggregate: type[Aggregate], module: str = TOPIC_MODULE) -> None:
    """Give the aggregate class and each of its event classes the topic
    ``<module>:<qualname>``, whatever module defines them now.

    eventsourcing takes a class's topic from its ``TOPIC`` attribute when there is one; it is
    set on each class itself (never inherited), so events keep their own names. It must be
    set before anything asks for the class's topic (``get_topic`` caches it): each
    aggregate's module calls this right after the class statement.
    """
    classes = [aggregate] + [member for _, member in inspect.getmembers(aggregate)
                             if inspect.isclass(member) and issubclass(member, Aggregate.Event)
                             and member.__qualname__.startswith(aggregate.__qualname__ + ".")]
    for cls in classes:
        type.__setattr__(cls, "TOPIC", f"{module}:{cls.__qualname__}")
