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


def test_end_process_flushes_the_output_closes_the_app_and_exits_with_the_code() -> None:
    # As the console script runs a long command to its end: output buffered, not flushed.
    code = ("import sys\n"
            "from leadflow.cli import common\n"
            "class App:\n"
            "    def close(self):\n"
            "        sys.stdout.write('closed;')\n"
            "common.OWNS_PROCESS = True\n"
            "sys.stdout.write('consumed 3 records;')\n"
            "sys.stderr.write('log line')\n"
            "common.end_process(App(), code=3)\n"
            "sys.stdout.write('after')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        3, "consumed 3 records;closed;", "log line")


def test_end_process_in_process_only_closes_the_app() -> None:
    from leadflow.cli import common

    closed: list[bool] = []

    class App:
        def close(self) -> None:
            closed.append(True)

    assert not common.OWNS_PROCESS  # pytest imported the CLI; it did not run main()
    common.end_process(App(), code=3)  # returns: a test or a library caller goes on
    assert closed == [True]
