"""``plain_output`` (cli/common.py) writes what rich's ``Console(width=150)`` prints to a
stdout that is not a terminal (``out_console``), for the lines and the table of ``lead show``,
or declines (None) and rich prints them. Compared with rich on generated text: markup-like
brackets and backslashes, ``:emoji:`` codes, wide and control characters, lines and tables
around the 150-column width."""

from __future__ import annotations

import io
import string
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from leadflow.cli import common
from leadflow.cli.common import PIPED_WIDTH, markup_escape, plain_output

Justify = Literal["left", "right"]
COLUMNS: list[tuple[str, Justify]] = [("rule", "left"), ("kind", "left"), ("count", "right"),
                                      ("points", "right"), ("value now", "right")]


def by_rich(lines: Sequence[str], columns: Sequence[tuple[str, Justify]],
            rows: Sequence[Sequence[str]]) -> list[str]:
    """What ``lead show`` printed with rich alone, one string a ``print``."""
    out: list[str] = []

    def printed(renderable: object) -> None:
        buffer = io.StringIO()
        Console(file=buffer, width=PIPED_WIDTH, force_terminal=False, force_jupyter=False,
                _environ={}).print(renderable)
        out.append(buffer.getvalue())

    for line in lines:
        printed(line)
    table = Table()
    for header, justify in columns:
        table.add_column(header, justify=justify)
    for row in rows:
        table.add_row(*row)
    printed(table)
    return out


@pytest.fixture(autouse=True)
def piped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "_piped_stdout", lambda: True)


# Mostly what lead show prints; now and then what rich would change or wrap.
SAFE = st.text(string.ascii_letters + string.digits + "@._-+ :", max_size=30)
RISKY = st.one_of(
    st.sampled_from([":smile:", ":100:", ":00:", "a:thumbs_up:b", ":+1:", "x:1234:", "[bold]",
                     "[/]", "a\\", "\\[x]", "[link]", "caf\u00e9", "\u4e2d\u6587", "a\tb",
                     " lead ", "x  y", " ", "", ":45:20", "e:smile-emoji:"]),
    st.text(max_size=12),
    st.text(string.ascii_letters + " :", min_size=60, max_size=160),
)


@st.composite
def texts(draw: st.DrawFn) -> str:
    # Escaped as lead show escapes the values it puts into its markup.
    return markup_escape(draw(RISKY if draw(st.integers(0, 29)) == 0 else SAFE))


@given(st.one_of(st.text(max_size=20), st.sampled_from(["[/]", "a\\", "\\[b]", "[x]y\\"])))
def test_markup_escape_is_richs(text: str) -> None:
    from rich.markup import escape

    assert markup_escape(text) == escape(text)


TEXT = texts()
NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(lambda x: f"{x:.2f}"),
                   st.floats(allow_nan=False).map(lambda x: f"{x:g}"),
                   st.integers(-10, 10**12).map(str))
TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                     timezones=st.just(UTC))


@st.composite
def shows(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, ...]]]:
    at = draw(TIMES)
    lines = [f"[bold]{draw(TEXT)}[/] lead {draw(TEXT)}",
             f"at {at.isoformat()}: stage [bold]{draw(TEXT)}[/] (now {draw(TEXT)}), owner "
             f"{draw(TEXT)}, score [bold]{draw(NUMBER)}[/] = fit {draw(NUMBER)} + engagement "
             f"{draw(NUMBER)}"]
    rows: list[tuple[str, ...]] = draw(st.lists(st.tuples(TEXT, TEXT, NUMBER, NUMBER, NUMBER),
                                                max_size=6))
    return lines, rows


def check(lines: list[str], rows: Sequence[tuple[str, ...]]) -> bool:
    plain = plain_output(lines, COLUMNS, rows)
    if plain is not None:
        assert plain == by_rich(lines, COLUMNS, rows)
    return plain is not None


@settings(max_examples=600, deadline=None)
@given(shows())
@example(([f"[bold]email:{'a' * 130}@acme.io[/] lead x", "at 2026-03-02T09:00:00+00:00: "
           "stage [bold]new[/]"], []))
@example((["[bold]x[/] lead " + "y" * (PIPED_WIDTH - 9)], [("r", "fit", "1", "2", "3.00")]))
def test_plain_output_is_what_rich_prints(show: tuple[list[str], list[tuple[str, ...]]]) -> None:
    check(*show)


def test_the_usual_show_is_written_plain() -> None:
    at = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC) + timedelta(hours=5)
    lines = ["[bold]email:bob@other.example[/] lead 3f8d56b9-0ffc-5608-8996-c07170c83692",
             f"at {at.isoformat()}: stage [bold]mql[/] (now mql), owner rep-anna, score "
             "[bold]52.50[/] = fit 20.00 + engagement 32.50"]
    rows = [("contact-form", "engagement", "1", "15", "14.78"),
            ("title-vp", "fit", "1", "20", "20.00")]
    assert check(lines, rows)
    assert check(lines, [])
    # Lines as wide as the output are printed as they are; one more column, rich wraps.
    assert check(["[bold]x[/] " + "y" * (PIPED_WIDTH - 2)], rows)
    assert not check(["[bold]x[/] " + "y" * (PIPED_WIDTH - 1)], rows)
    # A table as wide as the output (the rule column's cells and padding, the four other
    # columns' 32, six borders) is drawn as it is; one more column, rich shrinks it.
    assert check(lines, [("r" * (PIPED_WIDTH - 40), "fit", "1", "2", "3.00")])
    assert not check(lines, [("r" * (PIPED_WIDTH - 39), "fit", "1", "2", "3.00")])


@pytest.mark.parametrize("text", ["a:smile:b", "[red]x", "a\\", "caf\u00e9", "a\tb",
                                  "x:100:", ":+1:"])
def test_text_rich_would_change_is_left_to_rich(text: str) -> None:
    assert not check([f"[bold]{text}[/] lead x"], [])
    assert not check(["x"], [(text, "fit", "1", "2", "3.00")])


def test_no_two_digit_emoji_code_exists() -> None:
    # plain_output lets ``:NN:`` through (times hold them): rich must know none of them.
    from rich._emoji_codes import EMOJI

    assert not [name for name in EMOJI if len(name) == 2 and name.isdigit()]


@pytest.mark.parametrize(("env", "tty", "encoding", "expected"), [
    ({}, False, "utf-8", True),
    ({}, True, "utf-8", False),
    ({"FORCE_COLOR": "1"}, False, "utf-8", False),
    ({"FORCE_COLOR": ""}, False, "utf-8", False),
    ({"TTY_COMPATIBLE": "1"}, False, "utf-8", False),
    ({"TTY_COMPATIBLE": "0"}, False, "utf-8", False),
    ({"JUPYTER_COLUMNS": "80"}, False, "utf-8", False),
    ({}, False, "ascii", False),
    ({}, False, "UTF-8", True),
])
def test_piped_stdout(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tty: bool,
                      encoding: str, expected: bool) -> None:
    monkeypatch.undo()  # the real _piped_stdout

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

        @property
        def encoding(self) -> str:  # type: ignore[override]
            return encoding

    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS",
                 "JUPYTER_LINES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.stdout", Stream())
    assert common._piped_stdout() is expected
