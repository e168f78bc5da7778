"""The lean event base (``domain.events``) keeps eventsourcing's frozen-dataclass semantics.

Each check compares a class built by ``LeanEventType`` with the same class built by
eventsourcing's own ``MetaDomainEvent``: repr, equality, hashing, immutability, defaults,
``dataclasses.fields`` and the signature ``@event`` methods filter their arguments by.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate, event

from leadflow import domain
from leadflow.domain import AGGREGATES, events
from leadflow.domain.lead import Lead

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class Standard(Aggregate):
    """Built by eventsourcing's own metaclass (the reference)."""

    class Noted(Aggregate.Event):
        note: str
        tags: tuple[str, ...] = ()
        weight: float = 1.0


class Lean(Aggregate):
    """The same event, built by ``LeanEventType``."""

    class Event(events.Event):
        """Base of the lean aggregate's events."""

    class Noted(Event):
        note: str
        tags: tuple[str, ...] = ()
        weight: float = 1.0

    @event("Renamed")
    def rename(self, name: str, reason: str = "typo") -> None:
        self.name = name
        self.reason = reason


def pair(**fields: Any) -> tuple[Any, Any]:
    common: dict[str, Any] = {"originator_id": UUID(int=7), "originator_version": 2,
                              "timestamp": T0, **fields}
    return Standard.Noted(**common), Lean.Noted(**common)


def test_repr_is_the_dataclass_repr() -> None:
    standard, lean = pair(note="hello", tags=("a",))
    assert repr(lean) == repr(standard).replace("Standard.", "Lean.")


def test_equality_and_hash_follow_the_fields_and_the_class() -> None:
    _, lean = pair(note="x")
    _, same = pair(note="x")
    _, other = pair(note="y")
    assert lean == same and hash(lean) == hash(same)
    assert lean != other
    standard, _ = pair(note="x")
    # Another class with equal fields is not equal (dataclass semantics: same class only).
    assert lean != standard and standard != lean
    assert {lean, same, other} == {lean, other}


def test_instances_are_frozen_and_defaults_apply() -> None:
    _, lean = pair(note="x")
    assert (lean.tags, lean.weight) == ((), 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lean.note = "changed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        del lean.note
    with pytest.raises(TypeError, match="note"):
        Lean.Noted(originator_id=uuid4(), originator_version=1, timestamp=T0)  # type: ignore[call-arg]


def test_fields_and_signature_match_the_reference() -> None:
    assert ([f.name for f in dataclasses.fields(Lean.Noted)]
            == [f.name for f in dataclasses.fields(Standard.Noted)])
    assert (str(inspect.signature(Lean.Noted))
            == str(inspect.signature(Standard.Noted)))


def test_event_methods_and_pickling_work_on_lean_events() -> None:
    aggregate = Lean()
    aggregate.rename("Anna")
    renamed = aggregate.collect_events()[-1]
    assert isinstance(renamed, Lean.Event)
    assert (renamed.name, renamed.reason) == ("Anna", "typo")  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(renamed)) == renamed


def test_every_leadflow_event_class_is_lean() -> None:
    # The start-up saving only holds if every aggregate's events use the lean base.
    for aggregate in AGGREGATES:
        assert issubclass(aggregate.Event, events.Event), aggregate
        assert isinstance(aggregate.Event, events.LeanEventType), aggregate
    assert isinstance(Lead.TouchpointScored, events.LeanEventType)
    # Built without generated code (the fallback to dataclasses is for special fields only).
    for cls in (Lead.Created, Lead.TouchpointScored, Lead.Absorbed, Lead.Event):
        assert "_lean_spec" in cls.__dict__, cls


def test_constructor_errors_name_the_argument_as_the_dataclass_does() -> None:
    base = {"originator_id": UUID(int=1), "originator_version": 1, "timestamp": T0}
    for cls in (Standard.Noted, Lean.Noted):
        with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
            cls(**base, note="x", colour="red")
        with pytest.raises(TypeError, match="multiple values for argument 'originator_id'"):
            cls(UUID(int=1), **base, note="x")
        with pytest.raises(TypeError,
                           match="takes from 5 to 7 positional arguments but 8 were given"):
            cls(UUID(int=1), 1, T0, "x", (), 1.0, "extra")
        # eventsourcing's __post_init__ still runs: a non-UUID originator id is refused.
        with pytest.raises(TypeError, match="non-UUID originator_id"):
            cls(**{**base, "originator_id": "nope"}, note="x")
    positional = Lean.Noted(UUID(int=1), 1, T0, "x", ("t",))
    assert positional == Lean.Noted(**base, note="x", tags=("t",), weight=1.0)
    assert list(positional.__dict__) == ["originator_id", "originator_version", "timestamp",
                                         "note", "tags", "weight"]


def test_replace_and_a_class_the_builder_leaves_to_dataclasses() -> None:
    _, lean = pair(note="x")
    assert dataclasses.replace(lean, note="y") == pair(note="y")[1]

    class WithField(Lean.Event):
        # A field() default: built by dataclasses itself, with the same behaviour.
        tags: list[str] = dataclasses.field(default_factory=list)

    made = WithField(originator_id=uuid4(), originator_version=1, timestamp=T0)
    assert made.tags == [] and "tags=[]" in repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.tags = ["x"]


def _without_times(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items()
            if k not in ("timestamp", "_created_on", "_modified_on", "_pending_events")}


@pytest.mark.parametrize(("cls", "kwargs"), [
    ("Lead", {"primary_key": "email:ann@acme.io", "created_at": T0, "source": "webinar",
              "campaign": None, "landing_page": "https://acme.io/?utm_source=x",
              "account_id": None, "origin": "evt-1"}),
    ("Lead", {"primary_key": None, "created_at": T0, "source": None, "campaign": "c",
              "landing_page": None, "account_id": uuid4()}),  # no origin: a random id
    ("Interest", {"anonymous_id": "cookie-1", "occurred_at": T0, "origin": "evt-2"}),
    ("Account", {"account_key": "domain:acme.io", "name": "Acme", "occurred_at": T0}),
])
def test_create_makes_what_the_library_makes(cls: str, kwargs: dict[str, Any]) -> None:
    aggregate_class = getattr(domain, cls)
    made, reference = events.create(aggregate_class, **kwargs), aggregate_class(**kwargs)
    assert type(made) is aggregate_class and made.version == reference.version == 1
    (event,), (expected,) = made.collect_events(), reference.collect_events()
    assert type(event) is type(expected)
    # The same fields, in the same order (the stored JSON's order), defaults filled in.
    assert list(event.__dict__) == list(expected.__dict__)
    if "origin" in kwargs or cls == "Account":
        assert made.id == reference.id == event.originator_id
        assert _without_times(event.__dict__) == _without_times(expected.__dict__)
        state = made.state() if isinstance(made, Lead) else dict(made.__dict__)
        reference_state = (reference.state() if isinstance(reference, Lead)
                           else dict(reference.__dict__))
        assert _without_times(state) == _without_times(reference_state)
        assert list(state) == list(reference_state)
    assert event.timestamp.tzinfo is not None and made.created_on == event.timestamp
    # Replaying the created event builds the same aggregate (as the repository would).
    replayed = event.mutate(None)
    assert replayed is not None and replayed.id == made.id


def test_create_leaves_arguments_init_refuses_to_the_library() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        events.create(Lead, primary_key="email:a@b.io", created_at=T0, source=None,
                      campaign=None, landing_page=None, account_id=None, colour="red")
    with pytest.raises(TypeError, match="missing 1 required"):
        events.create(Lead, primary_key="email:a@b.io", created_at=T0, source=None,
                      campaign=None, landing_page=None)
