"""The lazy command table stays true to the commands it stands for."""

from __future__ import annotations

import subprocess
import sys

import click

from leadflow.cli import COMMANDS, cli


def test_every_command_in_the_table_loads_and_its_help_matches_the_table() -> None:
    ctx = click.Context(cli)
    for name, entry in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None, name
        assert command.name == name
        # The table's text is what --help shows before the module is imported.
        assert command.get_short_help_str(limit=500) == entry.short_help, name


def test_help_lists_the_same_lines_before_and_after_the_commands_are_loaded() -> None:
    lazy = subprocess.run([sys.executable, "-m", "leadflow.cli", "--help"], capture_output=True,
                          text=True, check=True, env={"COLUMNS": "80", "PATH": ""}).stdout
    # click narrows help to min(COLUMNS, 80) - 2 columns.
    ctx = click.Context(cli, terminal_width=78)
    for name in COMMANDS:
        cli.get_command(ctx, name)  # every module imported: short help from the commands
    loaded = cli.get_help(ctx)
    assert lazy.split("Commands:")[1] == loaded.split("Commands:")[1] + "\n"


def test_help_imports_no_command_module_nor_the_engine() -> None:
    code = ("import sys; from leadflow.cli import main\n"
            "sys.argv = ['leadflow', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in sys.modules if m.startswith(('leadflow.cli.intake', "
            "'leadflow.cli.auditors', 'leadflow.engine', 'eventsourcing', 'kafka', 'pydantic', "
            "'rich', 'psycopg', 'structlog')))\n"
            "print(heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stderr.strip() == "[]"
