"""The quick reading of a rules file (plain records, no pydantic) gives exactly what
pydantic's validation gives, and leaves to pydantic every file it cannot vouch for."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import tomllib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadflow.domain import rules as quick
from leadflow.domain.rules import Rules, RulesError, default_rules, default_rules_text, parse_rules

DEFAULT = tomllib.loads(default_rules_text())


def _by_pydantic(data: dict[str, Any]) -> tuple[Rules, dict[str, Any]]:
    from leadflow.domain import rules_schema

    model = rules_schema.Rules.model_validate(data)
    return quick._from_model(model), model.model_dump(mode="json", by_alias=True)


def _assert_same(read: Rules, data: dict[str, Any]) -> None:
    by_pydantic, dumped = _by_pydantic(data)
    assert repr(read) == repr(by_pydantic)  # values and their types (50 is not 50.0)
    assert read == by_pydantic
    assert quick._data(read) == dumped
    assert json.dumps(quick._data(read), sort_keys=True) == json.dumps(dumped, sort_keys=True)
    assert read.version == by_pydantic.version


def test_the_builtin_rules_are_read_without_pydantic_and_equal_its_reading() -> None:
    read = quick._build(Rules, copy.deepcopy(DEFAULT))
    _assert_same(read, copy.deepcopy(DEFAULT))
    assert default_rules().version == read.version


def test_the_builtin_rules_text_is_the_package_resource() -> None:
    from importlib import resources

    assert default_rules_text() == (resources.files("leadflow.domain")
                                    .joinpath("default_rules.toml").read_text(encoding="utf-8"))


def test_reading_the_builtin_rules_imports_no_pydantic() -> None:
    code = ("import sys; from leadflow.domain.rules import default_rules\n"
            "print(default_rules().version, any(m.startswith('pydantic') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == [default_rules().version, "False"]


def test_defaults_are_the_models_defaults() -> None:
    for text in ("", "[scoring]\n", '[[routing.reps]]\nid = "a"\n', "[segment]\n",
                 '[[routing.teams]]\nid = "t"\nmembers = ["a"]\n[[routing.reps]]\nid = "a"\n'
                 '[[routing.rules]]\nid = "r"\nteam = "t"\n'):
        data = tomllib.loads(text)
        _assert_same(quick._build(Rules, copy.deepcopy(data)), data)


@pytest.mark.parametrize("text", [
    '[scoring]\nmql_threshold = "50"\n',  # pydantic converts the text
    "[scoring]\nmql_threshold = inf\n",
    "[[lifecycle.auto_sql]]\nid = \"a\"\ntype = \"trial_started\"\nmin_fit = nan\n",
    '[[routing.reps]]\nid = "a"\ncapacity = 2.0\n',  # an int written as a float
    '[[routing.reps]]\nid = "a"\navailable = "yes"\n',
    '[[scoring.fit]]\nid = "a"\nfield = "title"\nin_ = ["x"]\npoints = 1\n',  # python name
])
def test_what_pydantic_would_convert_is_left_to_pydantic(text: str) -> None:
    data = tomllib.loads(text)
    with pytest.raises(quick._Unsure):
        quick._build(Rules, copy.deepcopy(data))
    try:
        expected = _by_pydantic(data)[0]
    except Exception:
        with pytest.raises(RulesError):
            parse_rules(text)
    else:
        assert repr(parse_rules(text)) == repr(expected)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _leaves(item, (*path, index))
    return found


PATHS = [p for p in _leaves(DEFAULT) if p]
VALUES = st.one_of(
    st.integers(min_value=-3, max_value=3), st.integers(), st.floats(),
    st.sampled_from([0.5, 1.0, 2**60, "", "a", "in", "form_id", "trial_started", "pool",
                     "Email Opened", "x.y", "a b", "A-1", "ok\n", True, False, [], {},
                     ["x"], ["a", "b"], {"in": ["x"]}, {"x": 1}, [{"id": "z"}], "email"]),
    st.text(max_size=5), st.lists(st.text(max_size=3), max_size=2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["set", "delete", "add"]),
                          VALUES), min_size=1, max_size=3))
def test_a_changed_file_is_read_as_pydantic_reads_it_or_left_to_pydantic(
        changes: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    data = copy.deepcopy(DEFAULT)
    for path, how, value in changes:
        parent: Any = data
        try:
            for step in path[:-1]:
                parent = parent[step]
            if how == "set":
                parent[path[-1]] = copy.deepcopy(value)
            elif how == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[f"{path[-1]}_extra"] = copy.deepcopy(value)
            else:
                parent.append(copy.deepcopy(value))
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # the path no longer leads to a container (an earlier change)
    try:
        read = quick._build(Rules, copy.deepcopy(data))
    except quick._Unsure:
        return  # pydantic decides; its reading is the only one
    _assert_same(read, data)


def test_a_changed_default_float_keeps_the_version_rule() -> None:
    text = default_rules_text()
    same = text.replace("mql_threshold = 50", "mql_threshold = 50.0")
    assert parse_rules(same).version == default_rules().version
    assert not math.isclose(parse_rules(text.replace("mql_threshold = 50", "mql_threshold = 51"))
                            .scoring.mql_threshold, 50)


def test_records_are_frozen_and_copy_like_models() -> None:
    rules = default_rules()
    with pytest.raises(AttributeError):
        rules.label = "x"  # type: ignore[misc]
    track = rules.segment.track
    moved = rules.segment.model_copy(update={"track": [track[-1], *track[:-1]]})
    assert moved.track[0] == track[-1] and rules.segment.track == track
    # Computed for the copy, not carried over from the original.
    assert next(iter(moved.track_by_event)) == quick.segment_event_key(track[-1].event[0])


def test_a_primary_model_choice_is_read_alike_and_versions_only_what_is_written() -> None:
    from tests.unit.test_scoring_models import MODELS

    with_models = default_rules_text() + MODELS
    chosen = with_models.replace("[lifecycle]\n", '[lifecycle]\nprimary_model = "emea"\n', 1)
    chosen = chosen.replace("threshold = 30\n", "threshold = 30\nrecycle_threshold = 10\n", 1)
    data = tomllib.loads(chosen)
    _assert_same(quick._build(Rules, copy.deepcopy(data)), data)
    # Both readings then put the chosen model first: [scoring] scores as "scoring".
    rules = parse_rules(chosen)
    assert (rules.scoring.mql_threshold, rules.scoring.recycle_threshold) == (30, 10)
    assert list(rules.models) == ["scoring", "product-b"]
    assert rules.models["scoring"].threshold == default_rules().scoring.mql_threshold
    # Unset, the new keys leave a version as it was before they existed; set, they change it.
    assert parse_rules(with_models).version == "r-d8a605196742"
    assert rules.version != parse_rules(with_models).version
