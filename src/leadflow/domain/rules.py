"""The rules file: scoring, lifecycle, account and routing rules as validated data.

Rules are TOML (standard library ``tomllib``) validated against the pydantic models of
:mod:`leadflow.domain.rules_schema`. The *version* of a rule set is a content hash of its
validated, canonical JSON form, so two files that mean the same thing have the same version
and every recorded score names exactly what produced it.

What scoring and routing read is the plain, frozen records below (same classes, fields and
values as the models). A file this module can vouch for by itself (every value of the type
the model asks for, every constraint met: the built-in rules, rules published with
``rescore --apply``, any file written like them) is read into them without pydantic, which a
command such as ``lead show`` would otherwise import for more than the rest of its start-up.
Anything else (a value pydantic would convert, any error) is validated by pydantic, which
names the problem exactly as before; ``tests/unit/test_rules_quick.py`` checks that both
readings give the same records. The model validators both readings run are in
``rules_checks``, the quick reading's machinery (the records' base class) in ``rules_quick``.
The records themselves are in ``rules_records`` (scoring, lifecycle, routing) and
``rules_segment`` (the Segment rules); this module has the whole rule set (``Rules``),
the Segment mapping and the reading of files and of the built-in rules, and exports the
records others import from it.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from leadflow.domain.rules_checks import (
    SCORING_MODEL,
    ContextField,
    TraitField,
    check_primary,
    check_segment_ids,
)
from leadflow.domain.rules_quick import (
    _MODEL_ID,
    _TRAIT_FIELD,
    _build,
    _data,
    _Field,
    _from_model,
    _list,
    _mapping,
    _Record,
    _record,
    _text,
    _Unsure,
)
from leadflow.domain.rules_records import (
    Accounts,
    AutoSql,
    Band,
    Condition,
    EngagementRule,
    FitRule,
    Lifecycle,
    Model,
    Rep,
    RouteCondition,
    RouteRule,
    Routing,
    Scoring,
    Team,
    _by_type,
)
from leadflow.domain.rules_segment import (
    _CONTEXT_PATHS,
    _PATHS,
    SegmentCondition,
    SegmentIdentify,
    SegmentRule,
    SegmentTrack,
    segment_event_key,
)

# The records keep being imported from here, as before they had modules of their own.
__all__ = [
    "SNAPSHOT", "Accounts", "AutoSql", "Band", "Condition", "EngagementRule", "FitRule",
    "Lifecycle", "Model", "Rep", "RouteCondition", "RouteRule", "Routing", "Rules",
    "RulesError", "Scoring", "SegmentCondition", "SegmentIdentify", "SegmentMapping",
    "SegmentRule", "SegmentTrack", "Team", "builtin_segment", "default_rules",
    "default_rules_data", "default_rules_snapshot", "default_rules_text", "load_rules",
    "parse_rules", "rules_json_schema", "segment_event_key",
]


def builtin_segment() -> dict[str, Any]:
    """The ``[segment]`` table of the built-in rules, as TOML gives it."""
    table = default_rules_data().get("segment", {})
    return table if isinstance(table, dict) else {}


class SegmentMapping(_Record):
    """How Segment-spec messages (``identify``, ``track``, ``page``) become records.

    ``userId`` becomes the lead's ``external_id`` (after ``user_id_prefix``),
    ``anonymousId`` its ``anonymous_id``; traits found at ``traits`` paths (relative to each
    rule's ``traits_from`` objects) give its email, phone and profile.
    """

    user_id_prefix: str
    context: dict[ContextField, list[str]]
    traits: dict[TraitField, list[str]]
    identify: SegmentIdentify
    track: list[SegmentTrack]
    page: list[SegmentRule]

    _FIELDS = (_Field("user_id_prefix", _text(max_length=100), ""),
               _Field("context", _CONTEXT_PATHS, factory=dict),
               # Not validated, as the model's default is not.
               _Field("traits", _mapping(_TRAIT_FIELD, _PATHS),
                      factory=lambda: dict(builtin_segment().get("traits", {}))),
               _Field("identify", _record(SegmentIdentify),
                      factory=lambda: _build(SegmentIdentify, {})),
               _Field("track", _list(_record(SegmentTrack)), factory=list),
               _Field("page", _list(_record(SegmentRule)), factory=list))
    _CHECK = check_segment_ids

    @cached_property
    def track_by_event(self) -> dict[str, tuple[SegmentTrack, ...]]:
        """Track rules per normalised event name, in file order."""
        index: dict[str, list[SegmentTrack]] = {}
        for rule in self.track:
            for name in rule.event:
                index.setdefault(segment_event_key(name), []).append(rule)
        return {name: tuple(rules) for name, rules in index.items()}


class Rules(_Record):
    """A complete, validated rule set."""

    label: str
    scoring: Scoring
    lifecycle: Lifecycle
    accounts: Accounts
    routing: Routing
    #: Tracker intake (a file without ``[segment]`` gets the built-in mapping).
    segment: SegmentMapping
    #: Named models beside the primary one (``[scoring]``), by id, in file order.
    models: dict[str, Model]

    _FIELDS = (_Field("label", _text(), "custom"),
               _Field("scoring", _record(Scoring), factory=lambda: _build(Scoring, {})),
               _Field("lifecycle", _record(Lifecycle), factory=lambda: _build(Lifecycle, {})),
               _Field("accounts", _record(Accounts), factory=lambda: _build(Accounts, {})),
               _Field("routing", _record(Routing), factory=lambda: _build(Routing, {})),
               _Field("segment", _record(SegmentMapping),
                      factory=lambda: _build(SegmentMapping, builtin_segment())),
               _Field("models", _mapping(_MODEL_ID, _record(Model)), factory=dict))
    _CHECK = check_primary

    @cached_property
    def version(self) -> str:
        """Content hash: the same meaning gives the same version, whatever the formatting.

        The ``[segment]`` mapping is left out: it decides what record a tracker's message
        becomes, and that record (type, context) is what is stored and scored, so a score is
        reproduced from it and these rules alone; editing the mapping re-versions no score.
        """
        data = _data(self)
        del data["segment"]
        # A file without models, or without the primary-model choice, keeps the version it
        # always had.
        if not data["models"]:
            del data["models"]
        for model in data.get("models", {}).values():
            if model["recycle_threshold"] is None:
                del model["recycle_threshold"]
        if data["lifecycle"]["primary_model"] is None:
            del data["lifecycle"]["primary_model"]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return "r-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @cached_property
    def half_life_seconds(self) -> float:
        return self.scoring.half_life_days * 86400.0

    @cached_property
    def engagement_by_type(self) -> dict[str, tuple[EngagementRule, ...]]:
        """Engagement rules per record type, in file order: a touchpoint only tests the rules
        written for its type (most rule sets have one or two per type)."""
        return _by_type(self.scoring.engagement)

    @cached_property
    def free_mail(self) -> frozenset[str]:
        return frozenset(d.lower() for d in self.accounts.free_mail_domains)


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file and the field."""


def _validated(data: dict[str, Any], source: str) -> Rules:
    """``data`` validated by pydantic: its records, or RulesError naming every problem."""
    from pydantic import ValidationError

    from leadflow.domain import rules_schema

    try:
        model = rules_schema.Rules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
            problems.append(f"{where}: {err.get('msg')}")
        raise RulesError(f"{source}: invalid rules: " + "; ".join(problems)) from exc
    rules: Rules = _from_model(model)
    return rules


def _with_primary(rules: Rules) -> Rules:
    """The rules as scoring reads them: the model ``[lifecycle] primary_model`` names in
    ``scoring`` (its threshold as the MQL threshold), and ``[scoring]`` among the named
    models as ``scoring``. Everything that reads ``rules.scoring`` then follows the chosen
    model and every named model, ``[scoring]`` included, records its own points."""
    primary = rules.lifecycle.primary_model
    if primary is None:
        return rules
    chosen, section = rules.models[primary], rules.scoring
    assert chosen.recycle_threshold is not None  # check_primary
    scoring = Scoring(mql_threshold=chosen.threshold, recycle_threshold=chosen.recycle_threshold,
                      half_life_days=chosen.half_life_days, engagement=chosen.engagement,
                      fit=chosen.fit)
    as_model = Model(threshold=section.mql_threshold, half_life_days=section.half_life_days,
                     engagement=section.engagement, fit=section.fit,
                     description="the [scoring] section",
                     recycle_threshold=section.recycle_threshold)
    models = {SCORING_MODEL: as_model,
              **{model_id: m for model_id, m in rules.models.items() if model_id != primary}}
    return rules.model_copy(update={"scoring": scoring, "models": models})


def _toml(text: str, source: str) -> dict[str, Any]:
    # Imported here: the built-in rules are read from their JSON snapshot (start-up).
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from exc


def parse_rules(text: str, *, source: str = "<rules>") -> Rules:
    return _rules_from(_toml(text, source), source)


def _rules_from(data: dict[str, Any], source: str) -> Rules:
    try:
        rules = _build(Rules, data)
    except _Unsure:
        rules = _validated(data, source)
    return _with_primary(rules)


def load_rules(path: str | Path | None = None) -> Rules:
    """Rules from ``path``, or the built-in defaults when ``path`` is None."""
    if path is None:
        return default_rules()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{file}: cannot read rules file: {exc.strerror}") from exc
    return parse_rules(text, source=str(file))


def default_rules_text() -> str:
    # The file beside this module, in every install that has one; importlib.resources (whose
    # readers import tempfile, shutil and more: ~5 ms of lead show's start-up) only where the
    # package is no directory (a zip import).
    try:
        return Path(__file__).with_name("default_rules.toml").read_text(encoding="utf-8")
    except OSError:
        from importlib import resources

        return (resources.files("leadflow.domain").joinpath("default_rules.toml")
                .read_text(encoding="utf-8"))


#: Beside ``default_rules.toml``: what ``tomllib`` makes of it, as JSON, with the sha256 of
#: the text it was made from. Reading it is ~15x cheaper than parsing the TOML (a tenth of
#: ``lead show``'s run, start-up issue 15); it is used only while the hash matches the text,
#: so an edited TOML is parsed as before. ``make rules-snapshot`` rewrites it, and
#: tests/unit/test_rules.py fails while it is stale.
SNAPSHOT = "default_rules.json"


def default_rules_snapshot(text: str) -> str:
    """The snapshot file's content for the built-in rules ``text``."""
    return json.dumps({"toml_sha256": hashlib.sha256(text.encode()).hexdigest(),
                       "rules": _toml(text, "default_rules.toml")}, indent=1, sort_keys=True) + "\n"


def default_rules_data() -> dict[str, Any]:
    """The built-in rules as ``tomllib`` gives them: from the snapshot when it is the
    snapshot of this text, else parsed."""
    text = default_rules_text()
    try:
        snapshot = json.loads(Path(__file__).with_name(SNAPSHOT).read_bytes())
    except (OSError, ValueError):
        snapshot = None
    if (isinstance(snapshot, dict)
            and snapshot.get("toml_sha256") == hashlib.sha256(text.encode()).hexdigest()):
        return snapshot["rules"]  # type: ignore[no-any-return]
    return _toml(text, "default_rules.toml")


_DEFAULT: Rules | None = None


def default_rules() -> Rules:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = _rules_from(default_rules_data(), "default_rules.toml")
    return _DEFAULT


def rules_json_schema() -> dict[str, Any]:
    from leadflow.domain.rules_schema import Rules as RulesModel

    schema = RulesModel.model_json_schema(mode="validation", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "leadflow rules file"
    return schema
