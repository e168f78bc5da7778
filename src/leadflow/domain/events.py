"""The base of leadflow's domain events: eventsourcing's frozen dataclasses, built cheaper.

eventsourcing makes every event class a frozen dataclass (``MetaDomainEvent`` applies
``dataclasses.dataclass(frozen=True)``). On Python 3.11 that compiles six functions per
class from generated source (``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__``, ``__delattr__``), parses every string annotation and precomputes an
``inspect.signature``: 86 million instructions for the lead's 27 event classes, ~20 ms of
every process start and an eighth of ``lead show`` (start-up target of 0.2 s, issue 15).

``LeanEventType`` builds the same frozen dataclass without generating code: the class gets
its dataclass fields (``dataclasses.fields``, ``replace`` and ``is_dataclass`` answer as
before) and the same six methods as shared functions that read the class's field list, with
the dataclass semantics, pinned by ``tests/unit/test_lean_events.py`` against eventsourcing's
own classes: the constructor takes the fields positionally or by name, applies defaults,
names missing and unexpected arguments, and runs ``__post_init__``; instances are frozen;
``repr`` shows the fields; equal only to an instance of the same class with equal fields,
hashed by them. ``__signature__`` (eventsourcing's ``@event`` methods filter their arguments
by it) is computed on first read. A class this builder does not cover (a ``ClassVar`` or
``InitVar`` annotation, a ``field()`` or unhashable default) goes through
``dataclasses.dataclass`` as before.

Building an event through its constructor costs a little more (~1 µs): the frequent events
are built by ``Lead._emit`` and decoded by the mapper, neither of which calls it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

from eventsourcing.domain import Aggregate, EventsourcingType, MetaDomainEvent

_MISSING: Any = dataclasses.MISSING
A = TypeVar("A", bound=Aggregate)
#: Annotations the builder leaves to ``dataclasses`` (they change what a field is).
_SPECIAL = ("ClassVar", "InitVar", "KW_ONLY")


class _Spec:
    """What the shared methods need of one class: its init fields, in order, and defaults."""

    __slots__ = ("defaults", "name_set", "names", "required")

    def __init__(self, fields: dict[str, dataclasses.Field[Any]]) -> None:
        # Fields come from dataclasses machinery (``_field_type``): pseudo-fields (ClassVar)
        # are not init fields.
        real = [f for f in fields.values() if f._field_type is dataclasses._FIELD]  # type: ignore[attr-defined]
        self.names = tuple(f.name for f in real)
        self.name_set = frozenset(self.names)
        self.defaults = {f.name: f.default for f in real if f.default is not _MISSING}
        self.required = frozenset(n for n in self.names if n not in self.defaults)


def _spec(cls: type) -> _Spec:
    return cls.__dict__["_lean_spec"]  # type: ignore[no-any-return]


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    spec = _spec(cls)
    names = spec.names
    if not args and kwargs.keys() == spec.name_set:
        # The way events are made (eventsourcing's trigger_event): every field by name.
        # The dataclass constructor writes each field in order (through object.__setattr__,
        # as the instance is frozen): the same dict, in the same order.
        object.__setattr__(self, "__dict__", {name: kwargs[name] for name in names})
        self.__post_init__()
        return
    if len(args) > len(names):
        least = len(spec.required) + 1
        takes = f"from {least} to {len(names) + 1}" if spec.defaults else str(least)
        raise TypeError(f"{cls.__qualname__}.__init__() takes {takes} positional arguments "
                        f"but {len(args) + 1} were given")
    values = dict(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name in values:
            raise TypeError(f"{cls.__qualname__}.__init__() got multiple values for "
                            f"argument {name!r}")
        values[name] = value
    if len(values) != len(names) or not values.keys() <= spec.name_set:
        unexpected = [n for n in kwargs if n not in spec.name_set]
        if unexpected:
            raise TypeError(f"{cls.__qualname__}.__init__() got an unexpected keyword "
                            f"argument {unexpected[0]!r}")
        missing = [n for n in names if n in spec.required and n not in values]
        if missing:
            listed = ", ".join(repr(n) for n in missing)
            raise TypeError(f"{cls.__qualname__}.__init__() missing {len(missing)} required "
                            f"positional argument{'s' if len(missing) > 1 else ''}: {listed}")
    state = self.__dict__
    defaults = spec.defaults
    for name in names:
        state[name] = values[name] if name in values else defaults[name]
    self.__post_init__()


def _setattr(self: Any, name: str, value: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _repr(self: Any) -> str:
    cls = type(self)
    shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in _spec(cls).names)
    return f"{cls.__qualname__}({shown})"


def _eq(self: Any, other: object) -> Any:  # bool, or NotImplemented for another class
    if other.__class__ is not self.__class__:
        return NotImplemented
    names = _spec(type(self)).names
    return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)


def _hash(self: Any) -> int:
    return hash(tuple(getattr(self, n) for n in _spec(type(self)).names))


_METHODS = {"__init__": _init, "__setattr__": _setattr, "__delattr__": _delattr,
            "__repr__": _repr, "__eq__": _eq, "__hash__": _hash}


def _build(cls: type) -> bool:
    """Make ``cls`` a frozen dataclass without generating code; False (nothing changed) when
    one of its own fields needs ``dataclasses`` itself."""
    # As dataclasses reads them on 3.11 (the class body's own, unevaluated strings).
    own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    for name, annotation in own.items():
        text = annotation if isinstance(annotation, str) else repr(annotation)
        default = getattr(cls, name, _MISSING)
        if (any(word in text for word in _SPECIAL) or isinstance(default, dataclasses.Field)
                or (default is not _MISSING and type(default).__hash__ is None)):
            return False
    # Base fields first, in reverse MRO order, then the class's own (dataclasses' order).
    fields: dict[str, dataclasses.Field[Any]] = {}
    params = None
    for base in cls.__mro__[-1:0:-1]:
        base_fields = getattr(base, "__dataclass_fields__", None)
        if base_fields is not None:
            fields.update(base_fields)
            params = getattr(base, "__dataclass_params__", params)
    for name, annotation in own.items():
        field: dataclasses.Field[Any] = dataclasses.field(default=getattr(cls, name, _MISSING),
                                                          kw_only=False)
        field.name = name
        field.type = annotation
        field._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
        fields[name] = field
    spec = _Spec(fields)
    seen_default = None
    for name in spec.names:
        if name in spec.defaults:
            seen_default = name
        elif seen_default is not None:
            raise TypeError(f"non-default argument {name!r} follows default argument")
    type.__setattr__(cls, "__dataclass_fields__", fields)
    type.__setattr__(cls, "__dataclass_params__", params)
    type.__setattr__(cls, "__match_args__", spec.names)
    type.__setattr__(cls, "_lean_spec", spec)
    for name, method in _METHODS.items():
        type.__setattr__(cls, name, method)
    return True


class LeanEventType(MetaDomainEvent):
    """``MetaDomainEvent`` that builds the frozen dataclass without generating code."""

    def __new__(mcs, name: str, bases: tuple[type, ...], cls_dict: dict[str, Any]) -> Any:
        # MetaDomainEvent.__new__ would apply dataclass(frozen=True): skip to its parent.
        cls = EventsourcingType.__new__(mcs, name, bases, cls_dict)
        if _build(cls):
            return cls
        return dataclasses.dataclass(frozen=True)(cls)

    @property
    def __signature__(cls) -> inspect.Signature:  # noqa: N805 - a metaclass property
        # A data descriptor on the metaclass: read before the class's own attributes, so
        # ``inspect.signature(EventClass)`` finds it as it found MetaDomainEvent's value.
        signature = cls.__dict__.get("_lean_signature")
        if signature is None:
            if "_lean_spec" in cls.__dict__:
                # As MetaDomainEvent computes it: the signature of the unbound __init__,
                # ``self`` included.
                parameter = inspect.Parameter
                kind = parameter.POSITIONAL_OR_KEYWORD
                signature = inspect.Signature(
                    [parameter("self", kind),
                     *(parameter(f.name, kind, annotation=f.type,
                                 default=parameter.empty if f.default is _MISSING else f.default)
                       for f in dataclasses.fields(cls))],  # type: ignore[arg-type]
                    return_annotation=None)
            else:
                signature = inspect.signature(cls.__init__)  # type: ignore[misc]
            type.__setattr__(cls, "_lean_signature", signature)
        return signature


class Event(Aggregate.Event, metaclass=LeanEventType):
    """Base of every leadflow aggregate's events (``class Event(events.Event)`` in each)."""


class _Creation:
    """What ``create`` needs of one aggregate class, worked out once: its "created" event
    class, the event's fields in order, ``__init__``'s parameters and defaults, and
    ``create_id``'s parameters."""

    __slots__ = ("defaults", "event_class", "id_params", "init_names", "init_set", "names",
                 "required", "topic")

    def __init__(self, cls: type[Aggregate]) -> None:
        from eventsourcing.domain import _check_explicit_topic_is_registered, _created_event_classes
        from eventsourcing.utils import get_topic

        (event_class,) = _created_event_classes[cls]
        _check_explicit_topic_is_registered(event_class)  # as every library creation does
        self.event_class = event_class
        self.names: tuple[str, ...] = _spec(event_class).names
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        self.init_set = frozenset(p.name for p in parameters)
        # The event's fields that __init__ takes, in the event's order (as the library's
        # ``CanInitAggregate.mutate`` filters them).
        self.init_names = tuple(n for n in self.names if n in self.init_set)
        self.defaults = {p.name: p.default for p in parameters
                         if p.default is not inspect.Parameter.empty}
        self.required = frozenset(p.name for p in parameters
                                  if p.default is inspect.Parameter.empty)
        self.id_params = tuple(inspect.signature(cls.create_id).parameters)
        self.topic = get_topic(cls)


_CREATIONS: dict[type, _Creation | None] = {}


def create(cls: type[A], **kwargs: Any) -> A:
    """``cls(**kwargs)`` for an aggregate whose ``__init__`` is its ``@event("Created")``
    method, without eventsourcing's generic costs: the same aggregate, with the same created
    event pending (its fields in the same order, the defaults filled in, the id from
    ``create_id``, the library's timestamp, ``apply`` called), as ``Lead._emit`` makes the
    lead's other events. ~14 µs against ~8 for a lead (tests/unit/test_lean_events.py pins
    the equality). Arguments ``__init__`` would refuse, an aggregate with several created
    event classes or whose ``__init__`` takes its id: the library's way, and its errors.
    """
    creation = _CREATIONS.get(cls, _MISSING)
    if creation is _MISSING:
        try:
            creation = _Creation(cls)
        except (KeyError, ValueError, TypeError):  # not one created event class; no spec
            creation = None
        if creation is not None and "id" in creation.init_set:
            creation = None
        _CREATIONS[cls] = creation
    if creation is None or not (kwargs.keys() <= creation.init_set
                                and creation.required <= kwargs.keys()):
        return cls(**kwargs)
    values = {**creation.defaults, **kwargs}
    originator_id = cls.create_id(**{p: values[p] for p in creation.id_params if p in values})
    values["originator_topic"] = creation.topic
    values["originator_id"] = originator_id
    values["originator_version"] = version = cls.INITIAL_VERSION
    values["timestamp"] = timestamp = creation.event_class.create_timestamp()
    created = object.__new__(creation.event_class)
    object.__setattr__(created, "__dict__", {name: values[name] for name in creation.names})
    created.__post_init__()
    aggregate = object.__new__(cls)
    aggregate.__base_init__(originator_id, version, timestamp)
    aggregate.__init__(**{name: values[name] for name in creation.init_names})  # type: ignore[misc]
    created.apply(aggregate)
    aggregate._pending_events.append(created)
    return aggregate
