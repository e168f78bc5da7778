"""structlog is imported by the first module that logs and configured then, as asked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Configures logging, checks structlog is not imported yet, then logs through get_logger and
# through structlog imported directly (as a module that does not use get_logger would).
CODE = """
import sys
from leadflow.logs import configure_logging, get_logger
configure_logging({level!r}, {fmt!r})
assert "structlog" not in sys.modules
log = get_logger("t")
log.info("info line", n=1)
log.warning("warning line", n=2)
import structlog
structlog.get_logger("u").error("error line", email="anna@acme.io")
"""


def _run(level: str, fmt: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", CODE.format(level=level, fmt=fmt)],
                          capture_output=True, text=True, check=True)
    assert done.stdout == ""
    return done.stderr.splitlines()


def test_settings_apply_when_structlog_is_first_imported() -> None:
    lines = [json.loads(line) for line in _run("WARNING", "json")]
    assert [(x["event"], x["level"]) for x in lines] == [("warning line", "warning"),
                                                         ("error line", "error")]
    assert lines[1]["email"] != "anna@acme.io"  # the masking processor is configured too
    assert all("timestamp" in x for x in lines)


def test_console_format_and_info_level() -> None:
    lines = _run("info", "console")
    assert len(lines) == 3 and "info line" in lines[0] and "[info" in lines[0]


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "json"), ("INFO", "xml")])
def test_bad_settings_are_refused_before_anything_is_imported(level: str, fmt: str) -> None:
    from leadflow.logs import configure_logging

    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, fmt)
