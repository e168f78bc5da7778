"""Reading a rules table into its frozen record without pydantic (see ``rules``' module doc).

``_Record`` is the base of every rules record: fields in the pydantic model's order, under
the same names, each with how the quick reading reads it (``_Field``). ``_build`` reads a
table of the file into a record, or raises ``_Unsure`` when pydantic has to decide (a value
it would convert, any error: it then names the problem). ``_from_model`` turns a model
pydantic validated into the record of the same name; ``_data`` dumps a record as pydantic's
``model_dump(mode="json", by_alias=True)`` would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

from leadflow.domain.rules_checks import _M, CONDITION_FIELD_RE, MODEL_ID
from leadflow.domain.vocabulary import TOUCHPOINT_TYPES

if TYPE_CHECKING:
    from pydantic import BaseModel

class _Unsure(Exception):
    """The quick reading cannot vouch for a value: pydantic decides, and names any error."""


_UNSURE = _Unsure()
_REQUIRED: Any = object()
_Read = Callable[[Any], Any]


class _Field(NamedTuple):
    name: str
    read: _Read
    default: Any = _REQUIRED
    factory: Callable[[], Any] | None = None
    key: str = ""  # the name in the file when it is not ``name`` (``in`` for ``in_``)


def _text(pattern: str | None = None, min_length: int = 0,
          max_length: int | None = None) -> _Read:
    compiled = re.compile(pattern) if pattern is not None else None

    def read(value: Any) -> str:
        if (type(value) is not str or len(value) < min_length
                or (max_length is not None and len(value) > max_length)
                or (compiled is not None and compiled.fullmatch(value) is None)):
            raise _UNSURE
        return value

    return read


def _choice(choices: frozenset[str]) -> _Read:
    def read(value: Any) -> str:
        if type(value) is not str or value not in choices:
            raise _UNSURE
        return value

    return read


#: The readers of float fields: their values are dumped as floats, as pydantic dumps them
#: (an int default such as ``mql_threshold = 50`` included).
_FLOATS: set[_Read] = set()


def _number(gt: float | None = None) -> _Read:
    def read(value: Any) -> float:
        # pydantic turns an int into a float; non-finite numbers and huge ints it decides.
        if type(value) is int and abs(value) <= 2**53:
            value = float(value)
        if type(value) is not float or not math.isfinite(value) or (
                gt is not None and not value > gt):
            raise _UNSURE
        return value

    _FLOATS.add(read)
    return read


def _integer(ge: int | None = None) -> _Read:
    def read(value: Any) -> int:
        if type(value) is not int or (ge is not None and value < ge):
            raise _UNSURE
        return value

    return read


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise _UNSURE
    return value


def _optional(read: _Read) -> _Read:
    def read_optional(value: Any) -> Any:
        return None if value is None else read(value)

    if read in _FLOATS:
        _FLOATS.add(read_optional)
    return read_optional


def _list(read: _Read, min_length: int = 0) -> _Read:
    def read_list(value: Any) -> list[Any]:
        if type(value) is not list or len(value) < min_length:
            raise _UNSURE
        return [read(item) for item in value]

    return read_list


def _mapping(read_key: _Read, read: _Read) -> _Read:
    def read_mapping(value: Any) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _UNSURE
        return {read_key(key): read(item) for key, item in value.items()}

    return read_mapping


def _record(cls: type[_Record]) -> _Read:
    return lambda value: _build(cls, value)


_RULE_ID = _text(r"[a-z0-9][a-z0-9_.-]{0,63}")
_SEGMENT_NAME = r"[A-Za-z_$][A-Za-z0-9_$-]*"
_SEGMENT_PATH = _text(rf"{_SEGMENT_NAME}(\.{_SEGMENT_NAME})*", max_length=200)
_TOUCHPOINT = _choice(TOUCHPOINT_TYPES)
_CONTEXT_FIELD = _choice(frozenset(("url", "form_id", "content_id", "landing_page", "source",
                                    "campaign")))
_TRAIT_FIELD = _choice(frozenset(("email", "phone", "first_name", "last_name", "name",
                                  "company", "title", "industry", "employees",
                                  "annual_revenue", "country")))
_STRINGS = _list(_text())


def _condition_field(value: Any) -> str:
    if type(value) is not str or CONDITION_FIELD_RE.fullmatch(value) is None:
        raise _UNSURE
    return value


_MODEL_ID = _text(MODEL_ID)


class _Record:
    """A frozen record of validated values, as the pydantic model of the same name in
    ``rules_schema`` holds them (fields in the same order, under the same names)."""

    #: The fields, in the model's order, and how the quick reading reads each.
    _FIELDS: ClassVar[tuple[_Field, ...]] = ()
    #: The model validator, if any (raises ValueError).
    _CHECK: ClassVar[Callable[[Any], Any] | None] = None

    #: Every record class by name (``_from_model`` finds a model's record by its name).
    _CLASSES: ClassVar[dict[str, type[_Record]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _Record._CLASSES[cls.__name__] = cls

    def __init__(self, **values: Any) -> None:
        for spec in self._FIELDS:
            object.__setattr__(self, spec.name, values[spec.name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, spec.name) for spec in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{spec.name}={getattr(self, spec.name)!r}" for spec in self._FIELDS)
        return f"{type(self).__name__}({fields})"

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with ``update`` applied, not validated (as pydantic's ``model_copy``)."""
        values = {spec.name: getattr(self, spec.name) for spec in self._FIELDS}
        return type(self)(**{**values, **(update or {})})


def _build(cls: type[_M], data: Any) -> _M:
    """``cls`` from a table of the file, or ``_Unsure`` when pydantic has to decide."""
    assert issubclass(cls, _Record)
    if type(data) is not dict:
        raise _UNSURE
    values: dict[str, Any] = {}
    for spec in cls._FIELDS:
        key = spec.key or spec.name
        if key in data:
            values[spec.name] = spec.read(data[key])
        elif spec.factory is not None:
            values[spec.name] = spec.factory()
        elif spec.default is not _REQUIRED:
            values[spec.name] = spec.default
        else:
            raise _UNSURE
    if len(data) != sum(1 for spec in cls._FIELDS if (spec.key or spec.name) in data):
        raise _UNSURE  # a key the model does not have (or a field under its python name)
    record = cls(**values)
    if cls._CHECK is not None:
        try:
            cls._CHECK(record)
        except ValueError:
            raise _UNSURE from None
    return record


def _from_model(model: BaseModel) -> Any:
    """The record of a model pydantic validated: same class name, same values."""
    cls = _Record._CLASSES[type(model).__name__]
    return cls(**{spec.name: _copy(getattr(model, spec.name)) for spec in cls._FIELDS})


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if hasattr(value, "model_fields_set"):  # a pydantic model
        return _from_model(value)
    return value


def _data(value: Any) -> Any:
    """``model_dump(mode="json", by_alias=True)`` of a record (and of what it holds)."""
    if isinstance(value, _Record):
        return {spec.key or spec.name: _dumped(getattr(value, spec.name), spec)
                for spec in value._FIELDS}
    if isinstance(value, list):
        return [_data(item) for item in value]
    if isinstance(value, dict):
        return {key: _data(item) for key, item in value.items()}
    return value


def _dumped(value: Any, spec: _Field) -> Any:
    if spec.read in _FLOATS and type(value) is int:
        return float(value)
    return _data(value)
