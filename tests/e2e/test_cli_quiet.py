"""A quiet CLI on a terminal: progress bars and, under them, the per-record warnings counted
by reason; `demo` shows nothing but progress before its result; every command is listed by
`leadflow --help` and has its own `--help`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from leadflow.cli import COMMANDS
from tests.e2e.test_cli import line, run
from tests.e2e.test_cli_errors import on_a_terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: A structlog console line: `2026-... [warning  ] event ...`.
LOG_LINE = re.compile(r"\[(debug|info|warning|error|critical)\s*\]")


def terminal_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env.update(LEADFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'lf.db'}", COLUMNS="120",
               TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    return env


def test_help_lists_every_command_and_every_command_has_its_own_help(tmp_path: Path) -> None:
    listed = run(["--help"], tmp_path)
    assert listed.returncode == 0
    commands = listed.stdout.split("Commands:")[1]
    names = {row.split()[0] for row in commands.splitlines() if row.strip()}
    assert names == set(COMMANDS)
    for name in COMMANDS:
        own = run([name, "--help"], tmp_path)
        assert own.returncode == 0 and "Usage:" in own.stdout, (name, own.stderr)
        assert f"leadflow.cli {name}" in own.stdout.splitlines()[0]


@pytest.mark.parametrize("command", ["consume", "project", "relay"])
def test_long_running_commands_offer_a_metrics_port(command: str, tmp_path: Path) -> None:
    result = run([command, "--help"], tmp_path)
    assert "--metrics-port" in result.stdout and "LEADFLOW_METRICS_PORT" in result.stdout


def test_rejections_are_counted_by_reason_under_the_bar_while_it_runs(tmp_path: Path) -> None:
    lines = [line(event_id=f"q{i}", lead={"email": f"q{i}@acme.io"}) if i % 4
             else '{"event_id": "broken"' for i in range(800)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    code, _, screen = on_a_terminal(["ingest", str(source)], tmp_path, terminal_env(tmp_path))
    assert code == 3, screen
    text = ANSI.sub("", screen)
    # The bar's label is the file's name, and the count under it is the final one.
    assert "ingest in.jsonl" in text
    assert "rejected 200: malformed_json 200" in text, text


def test_the_demo_draws_only_progress_before_its_result(tmp_path: Path) -> None:
    code, stdout, screen = on_a_terminal(["demo", "--leads", "200", "--days", "30"], tmp_path,
                                         terminal_env(tmp_path))
    assert code == 0, screen
    text = ANSI.sub("", screen)
    assert not LOG_LINE.search(text), text
    assert "ingest stream.jsonl" in text and "project" in text
    assert re.search(r"rejected \d+: \w+ \d+", text), text
    # The result: facts, the funnel with conversion, top leads with why, owners.
    for heading in ("leadflow demo", "applied", "Funnel:", "from previous", "Top leads by score",
                    "why (points now)", "Owners", "pool (unassigned)"):
        assert heading in stdout, (heading, stdout)
    assert re.search(r"mql\s+[\d,]+\s+\d+\.\d%", stdout), stdout
