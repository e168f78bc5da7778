"""The rules file: validation that names the field, and a content-hash version."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from leadflow.domain.rules import (
    RulesError,
    default_rules,
    default_rules_text,
    load_rules,
    parse_rules,
)


def test_default_rules_reproduce_the_domain_numbers() -> None:
    rules = default_rules()
    assert rules.scoring.mql_threshold == 50
    assert rules.scoring.half_life_days == 30
    points = {r.id: r.points for r in rules.scoring.engagement}
    assert points["contact-form"] == 15
    assert points["email-open"] == 2
    assert points["email-click"] == 5
    assert points["pricing-page"] == 15
    assert points["blog-post"] == 2
    assert points["content-download"] == 10
    assert points["trial-start"] == 25
    assert points["unsubscribe"] == -5


def test_version_is_a_content_hash_independent_of_formatting() -> None:
    text = default_rules_text()
    reformatted = "# a comment\n" + text.replace("mql_threshold = 50", "mql_threshold   =   50.0")
    assert parse_rules(reformatted).version == default_rules().version
    changed = text.replace("mql_threshold = 50", "mql_threshold = 60")
    assert parse_rules(changed).version != default_rules().version


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[scoring]\nmql_threshold = "high"\n', "scoring.mql_threshold"),
        ("[scoring]\nhalf_life_days = -1\n", "scoring.half_life_days"),
        ('[[scoring.engagement]]\nid = "x"\ntype = "tweet"\npoints = 1\n',
         "scoring.engagement.0.type"),
        ('[[scoring.engagement]]\nid = "x"\ntype = "email_opened"\n', "scoring.engagement.0"),
        ('[routing]\nfallback = "nowhere"\n', "routing"),
        ("[scoring]\nmql_threshold = 10\nrecycle_threshold = 20\n", "scoring"),
        ("[unknown_section]\nx = 1\n", "unknown_section"),
    ],
)
def test_an_invalid_rules_file_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, source="bad.toml")
    assert "bad.toml" in str(caught.value)
    assert field in str(caught.value)


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("this is = = not toml")
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(path)


def test_a_missing_rules_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.toml")


def test_the_shipped_snapshot_of_the_builtin_rules_is_current() -> None:
    # The built-in rules are read from default_rules.json while it is the snapshot of the
    # TOML beside it: stale, it would be ignored (correct but slower), so it must be rewritten.
    from leadflow.domain import rules

    text = rules.default_rules_text()
    shipped = Path(rules.__file__).with_name(rules.SNAPSHOT).read_text(encoding="utf-8")
    assert shipped == rules.default_rules_snapshot(text), (
        "src/leadflow/domain/default_rules.json is stale: run `make rules-snapshot`")
    assert rules.default_rules_data() == tomllib.loads(text)


def test_a_stale_snapshot_is_ignored_and_the_toml_parsed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from leadflow.domain import rules

    edited = rules.default_rules_text().replace("mql_threshold = 50", "mql_threshold = 55", 1)
    assert edited != rules.default_rules_text()
    monkeypatch.setattr(rules, "default_rules_text", lambda: edited)
    monkeypatch.setattr(rules, "_DEFAULT", None)
    assert rules.default_rules_data() == tomllib.loads(edited)
    assert rules.default_rules().scoring.mql_threshold == 55
    assert rules.default_rules().version == parse_rules(edited).version
