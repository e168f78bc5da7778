"""What `leadflow lead show` imports on the embedded SQLite store (issue 15: start-up under
0.2 s). Module lists, not timings: a timing assertion would fail on a busy machine and pass
on a fast one whatever the code imports. ``bench/run.py`` (step ``startup``) measures it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from leadflow.domain.rules import default_rules_text
from tests.conftest import clean_env

# Runs the console script's main() with the arguments after the output file's path (as
# `leadflow lead show x@acme.io`), then writes the exit code and every module the process
# imported to that file.
SHOW = """
import json, sys
from leadflow.cli import main
out_path = sys.argv[1]
sys.argv = ["leadflow", *sys.argv[2:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
with open(out_path, "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""

#: The aggregates' modules (leadflow.domain imports each on first use).
AGGREGATE_MODULES = {f"leadflow.domain.{name}" for name in (
    "lead", "interest", "identity_index", "account", "router", "clock", "rulebook",
    "duplicates")}


def make_store(work: Path) -> tuple[Path, dict[str, str]]:
    """A small embedded store in ``work`` and the environment that reads it."""
    env = clean_env()
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"):
        env.pop(name, None)
    env.update(LEADFLOW_DATABASE_URL=f"sqlite:///{work / 'lf.db'}", LEADFLOW_LOG_FORMAT="json")
    records = [{"event_id": "e1", "type": "content_downloaded",
                "occurred_at": "2026-03-02T09:00:00Z", "lead": {"email": "x@acme.io"}},
               {"event_id": "e2", "type": "form_submitted",
                "occurred_at": "2026-03-02T10:00:00Z",
                "lead": {"email": "x@acme.io", "title": "VP Marketing"}}]
    ingest = subprocess.run([sys.executable, "-m", "leadflow.cli", "ingest", "-"],
                            input="".join(json.dumps(r) + "\n" for r in records),
                            capture_output=True, text=True, cwd=work, env=env, timeout=300,
                            check=False)
    assert ingest.returncode == 0, ingest.stderr
    return work, env


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A small embedded store (its directory) and the environment that reads it."""
    return make_store(tmp_path_factory.mktemp("startup"))


def show(work: Path, env: dict[str, str], *args: str) -> tuple[str, list[str]]:
    """What ``leadflow lead show ARGS`` prints, and the modules its process imported."""
    out = work / "modules.json"
    shown = subprocess.run([sys.executable, "-c", SHOW, str(out), "lead", "show", *args],
                           capture_output=True, text=True, cwd=work, env=env, timeout=300,
                           check=False)
    result = json.loads(out.read_text())
    assert result["code"] == 0, shown.stderr
    modules: list[str] = result["modules"]
    return shown.stdout, modules


@pytest.fixture(scope="module")
def show_modules(store: tuple[Path, dict[str, str]]) -> list[str]:
    printed, modules = show(*store, "x@acme.io")
    assert "email:x@acme.io" in printed
    return modules


def _imported(modules: list[str], *packages: str) -> list[str]:
    return [m for m in modules if m.split(".")[0] in packages or m in packages]


def test_lead_show_startup_imports_no_pydantic_kafka_or_projections(
        show_modules: list[str]) -> None:
    # The built-in rules are read without pydantic (leadflow.domain.rules); the PostgreSQL
    # recorder, Kafka and the read models belong to other commands.
    assert _imported(show_modules, "pydantic", "pydantic_core", "kafka") == []
    assert [m for m in show_modules if m.startswith(("leadflow.projections",
                                                      "leadflow.consumers",
                                                      "leadflow.domain.rules_schema",
                                                      "leadflow.store.postgres"))] == []


def test_lead_show_startup_on_the_embedded_store_imports_no_psycopg(
        show_modules: list[str]) -> None:
    # Only a PostgreSQL store needs it (leadflow.store.postgres, codec's PostgreSQL read).
    assert _imported(show_modules, "psycopg", "psycopg_binary", "psycopg_pool",
                     "eventsourcing.postgres") == []


def test_lead_show_startup_imports_no_structlog(show_modules: list[str]) -> None:
    # structlog brings rich's traceback module and asyncio; lead show logs nothing.
    assert _imported(show_modules, "structlog") == []


def test_lead_show_startup_imports_no_rich_email_validator_or_store_audit(
        show_modules: list[str]) -> None:
    # Piped output is written without rich (cli/common.py plain_output); a plain ASCII
    # address is normalised without email-validator (contract/identity.py); the format
    # check reads CHAINED_SINCE from domain/vocabulary.py, not the whole-store audit.
    assert _imported(show_modules, "rich", "email_validator", "idna") == []
    assert "leadflow.store.audit" not in show_modules


@pytest.mark.parametrize("identity", ["x@acme.io", "X@Acme.IO", "email:x@acme.io"])
def test_lead_show_piped_prints_what_rich_prints(store: tuple[Path, dict[str, str]],
                                                 identity: str) -> None:
    # TTY_COMPATIBLE=0 makes the command leave the output to rich (which prints to a file as
    # to a non-terminal): the two must be the same bytes.
    work, env = store
    command = [sys.executable, "-m", "leadflow.cli", "lead", "show", identity, "--at",
               "2026-03-03T12:00:00Z"]
    plain = subprocess.run(command, capture_output=True, cwd=work, env=env, timeout=300,
                           check=False)
    by_rich = subprocess.run(command, capture_output=True, cwd=work,
                             env={**env, "TTY_COMPATIBLE": "0"}, timeout=300, check=False)
    assert plain.returncode == by_rich.returncode == 0, plain.stderr + by_rich.stderr
    assert plain.stdout == by_rich.stdout
    assert plain.stdout.startswith(b"email:x@acme.io lead ")
    assert "\u2503 rule ".encode() in plain.stdout


def test_lead_show_startup_imports_no_aggregate_it_does_not_replay(
        show_modules: list[str]) -> None:
    # Importing an aggregate defines its event classes (eventsourcing makes each a dataclass,
    # ~1 ms apiece): showing a lead replays the lead, and reads the rule book by id, which
    # imports its class only when rules were published (this store has none).
    assert sorted(AGGREGATE_MODULES & set(show_modules)) == ["leadflow.domain.lead"]


def test_lead_show_startup_imports_no_write_path_module(show_modules: list[str]) -> None:
    # Written rows' chain links (store/chain.py), routing (domain/routing.py) and the
    # commands' results (engine/results.py) are imported where records are applied.
    assert [m for m in ("leadflow.store.chain", "leadflow.domain.routing",
                        "leadflow.engine.results") if m in show_modules] == []


def test_lead_show_replays_published_rules_whose_class_it_had_not_imported(
        tmp_path: Path) -> None:
    # The rule book's stored topic names leadflow.domain:RuleBook...; the process resolves
    # it by importing the module then, and the published half-life is the one shown.
    work, env = make_store(tmp_path)
    rules = tmp_path / "fast.toml"
    rules.write_text(default_rules_text().replace("half_life_days = 30", "half_life_days = 1"))
    published = subprocess.run([sys.executable, "-m", "leadflow.cli", "rescore", "--rules",
                                str(rules), "--apply"], capture_output=True, text=True,
                               cwd=work, env=env, timeout=300, check=False)
    assert published.returncode == 0, published.stderr
    printed, modules = show(work, env, "x@acme.io", "--at", "2026-03-03T10:00:00Z", "--json")
    view = json.loads(printed)
    # The engagement at the last record (10 + 15 points an hour apart, scored with the
    # built-in 30-day half-life) halved by a day at the published 1-day half-life; the
    # built-in rules would show 24.4.
    at_record = 10 * 0.5 ** (1 / (30 * 24)) + 15
    assert view["engagement"] == pytest.approx(at_record / 2, abs=1e-4)
    assert sorted(AGGREGATE_MODULES & set(modules)) == ["leadflow.domain.lead",
                                                        "leadflow.domain.rulebook"]


def test_lead_show_startup_parses_no_toml(show_modules: list[str]) -> None:
    # The built-in rules are read from their JSON snapshot (domain/rules.py SNAPSHOT):
    # tomllib is imported only for a rules file or an edited default_rules.toml.
    assert _imported(show_modules, "tomllib") == []
