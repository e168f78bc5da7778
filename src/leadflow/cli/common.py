"""What every command group shares: the context (settings, the application), one-line
errors (``fail``), how arguments are read (times, identities), files and the output console
(and ``plain_output``: piped, what rich would print, written without rich). Progress bars
are in ``progress``; the metrics endpoint and Kafka settings of the commands that serve or
talk to Kafka in ``services``.

Nothing here connects to anything at import time; heavy modules (Kafka, the projections)
are imported inside the functions that need them.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NoReturn, TypeVar

import click

from leadflow.config import ConfigError, Settings

if TYPE_CHECKING:
    from uuid import UUID

    from rich.console import Console

    from leadflow.domain.rules import Rules
    from leadflow.engine.app import LeadflowApp

EXIT_OK, EXIT_ERROR, EXIT_REJECTED = 0, 1, 3



@functools.cache
def err_console() -> Console:
    """The console on stderr (rich is imported when something is first printed there)."""
    from rich.console import Console

    return Console(stderr=True)


class _Log:
    """``structlog.get_logger("leadflow.cli")``, imported on the first log call: commands
    that never log (``--help``) do not pay for importing structlog."""

    def __getattr__(self, name: str) -> Any:
        import structlog

        return getattr(structlog.get_logger("leadflow.cli"), name)


log: Any = _Log()


#: Passwords of the configured database: never printed, whatever message carries them.
SECRETS: set[str] = set()


def scrub(text: str) -> str:
    for secret in SECRETS:
        text = text.replace(secret, "***")
    return text


#: Set by the console script's ``main``: the command owns the process (not a test's or a
#: library caller's in-process invocation), so it may end it without the teardown.
OWNS_PROCESS = False


def end_process(app: Any = None, code: int = EXIT_OK) -> None:
    """End a long-running command's process now that its work is done: its output flushed,
    its database connections closed, without the interpreter's teardown.

    A consumer's aggregate cache is a few million objects that only the garbage collector
    can free (the cache's LRU ring of links holds them in a reference cycle), and the
    interpreter's final collection walks every one before the process ends: 12.6 s after
    the default bench stream's last batch (``idle_and_exit_seconds``), 1.2 s at 20,000
    leads (``gc.collect()`` timed at exit). Callers have flushed and closed their Kafka
    clients and committed their database work, so the exit handlers have nothing left to
    do. Outside the console script (``OWNS_PROCESS`` false) this only closes ``app``."""
    if app is not None:
        app.close()
    if not OWNS_PROCESS:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """``error: <message>`` on one line (drivers' messages span several; the terminal's
    width does not wrap it), without the database password, and exit.

    Emails and phones in it are masked (``leadflow.redaction``): stderr is where
    supervisors and cron collect logs, and the operator knows what they typed."""
    from leadflow.redaction import mask_text

    text = "; ".join(part.strip() for part in mask_text(scrub(message)).splitlines()
                     if part.strip())
    console = err_console()
    console.print("[bold red]error:[/] ", end="", highlight=False)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def passwords(url: str) -> set[str]:
    """What to scrub from messages: the URL's password, raw and percent-encoded, or when the
    URL cannot be read, everything that might be the password."""
    from urllib.parse import quote

    from leadflow.config import parse_postgres_url

    sep, rest = url.partition("://")[1:]
    userinfo = rest.rpartition("@")[0]
    if not (sep and ":" in userinfo):
        return set()
    try:
        password = parse_postgres_url(url).password or ""
    except ConfigError:
        password = userinfo.partition(":")[2]
    return {p for p in (password, quote(password, safe="")) if p}


def redact(url: str) -> str:
    from leadflow.config import redact_url

    return redact_url(url)


class Context:
    """Settings and lazily built clients, shared by sub-commands."""

    def __init__(self, settings: Settings, rules_path: str | None) -> None:
        self.settings = settings
        self.rules_path = rules_path or settings.rules_path
        self._app: LeadflowApp | None = None

    def rules(self) -> Rules:
        from leadflow.domain.rules import RulesError, load_rules

        try:
            return load_rules(self.rules_path)
        except RulesError as exc:
            fail(str(exc))

    def app(self, published_rules: bool = True, migrating: bool = False) -> LeadflowApp:
        """The application; ``published_rules=False`` skips reading the rules published with
        `rescore --apply` (``verify`` reads stored bytes only and must work on a store whose
        rule book is damaged); ``migrating=True`` opens a store in an older format."""
        if self._app is None:
            from eventsourcing.persistence import PersistenceError

            from leadflow.engine.app import LeadflowApp, StoreVersionError

            try:
                env = self.settings.eventsourcing_env()
            except ConfigError as exc:
                fail(str(exc))
            try:
                self._app = LeadflowApp(env=env, rules=self.rules(), migrating=migrating)
            except PersistenceError as exc:  # unreachable server, bad credentials, no database
                fail(f"cannot open the database {redact(self.settings.database_url)}: "
                     f"{type(exc).__name__}: {exc}")
            except StoreVersionError as exc:
                fail(f"{redact(self.settings.database_url)}: {exc}")
            if published_rules:
                self._use_published_rules(self._app)
        return self._app

    def _use_published_rules(self, app: LeadflowApp) -> None:
        """Rules published with `rescore --apply` win over the built-in defaults; an
        explicit rules file wins over both (with a warning when they differ)."""
        from eventsourcing.persistence import PersistenceError

        from leadflow.domain.rules import parse_rules

        try:
            published = app.published_rules()
            rules = None if published is None else parse_rules(
                published["text"], source=f"published {published['version']}")
        except PersistenceError:
            raise
        except Exception as exc:  # a damaged rule book: name it, offer the way around it
            if self.rules_path is None:
                fail(f"the rules published with `rescore --apply` cannot be loaded from the "
                     f"store ({type(exc).__name__}: {exc}); score with a rules file "
                     "(--rules or LEADFLOW_RULES) and run `leadflow verify`")
            log.warning("published rules cannot be loaded", error=f"{type(exc).__name__}: "
                        f"{exc}")
            return
        if rules is None:
            return
        if self.rules_path is None:
            app.rules = rules
        elif published is not None and published["version"] != app.rules.version:
            log.warning("explicit rules differ from the published version",
                        explicit=app.rules.version, published=published["version"])


def parse_time(text: str, name: str) -> datetime:
    """ISO 8601 with offset, a date (UTC midnight), or 'now' (wall clock, at this boundary)."""
    if text == "now":
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{name}: {text!r} is not a time; use ISO 8601 like 2026-03-01T12:00:00+00:00, "
             "a date like 2026-03-01, or 'now'")
    if value.tzinfo is None:
        if "T" in text or " " in text:
            fail(f"{name}: {text!r} has no UTC offset; add one, e.g. {text}+00:00")
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        fail(f"{name}: {text!r} is outside the times leadflow can represent (years 1 to 9999 "
             "in UTC)")


T = TypeVar("T")


def lookup(identity: str, find: Callable[[str], T]) -> T:
    """``find`` applied to what IDENTITY means; an unknown lead or a bad identity end the
    command with one line naming them.

    A bare UUID is tried as a lead id first and then as an external id (CRMs use UUIDs
    too); ``lead:<uuid>`` and ``external_id:<uuid>`` each mean only one of them.
    """
    from leadflow.contract.identity import (
        InvalidIdentityError,
        is_lead_id,
        parse_identity_argument,
    )
    from leadflow.domain import LeadflowError, UnknownLeadError
    from leadflow.domain.ids import identity_key

    try:
        key = parse_identity_argument(identity)
    except InvalidIdentityError as exc:
        fail(str(exc))
    keys = [key]
    text = identity.strip()
    if is_lead_id(key) and is_lead_id(text):
        keys.append(identity_key("external_id", text))
    unknown: list[str] = []
    for candidate in keys:
        try:
            return find(candidate)
        except UnknownLeadError as exc:
            unknown.append(str(exc))
        except LeadflowError as exc:
            fail(str(exc))
    fail(", and ".join(unknown))


def resolve(app: LeadflowApp, identity: str) -> UUID:
    return lookup(identity, app.resolve)


def open_input(source: str) -> BinaryIO:
    """The input as bytes: a bad byte costs its own line (malformed_encoding), not the file."""
    try:
        return sys.stdin.buffer if source == "-" else open(source, "rb")
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}")


def check_writable(path: Path, what: str = "") -> None:
    """Name an output path that cannot be written before any work is done for it."""
    named = f"{what} {path}" if what else str(path)
    if path.is_dir():
        fail(f"cannot write {named}: it is a directory")
    if not path.parent.is_dir():
        fail(f"cannot write {named}: the directory {path.parent} does not exist")


def open_for_writing(path: Path, what: str = "") -> IO[str]:
    check_writable(path, what)
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {f'{what} {path}' if what else path}: {exc.strerror or exc}")


def check_rejects_path(source: str, rejects_path: Path) -> None:
    # Opening the rejects file truncates it: it must not be the input being read.
    if source != "-" and Path(source).exists() and rejects_path.exists() \
            and rejects_path.resolve() == Path(source).resolve():
        raise click.BadParameter(f"{rejects_path} is the input file; rejected lines would "
                                 "overwrite it", param_hint="--rejects")


#: The width of output that is not a terminal's (``out_console``).
PIPED_WIDTH = 150


def out_console() -> Console:
    from rich.console import Console

    # Piped output has no terminal width; keep tables readable instead of 80 columns.
    probe = Console()
    return probe if probe.is_terminal else Console(width=PIPED_WIDTH)


# rich's emoji codes (rich/_emoji_replace.py): ``:name:`` is replaced when rich knows the name.
_EMOJI_CODE = re.compile(r"(:(\S*?)(?:(?:\-)(emoji|text))?:)")
# The markup tags ``plain_output`` takes: rich prints the text between them unchanged.
_TAGS = re.compile(r"\[(?:bold|/)\]")


def _piped_stdout() -> bool:
    """Whether rich would write to stdout as to a file: no terminal, nothing forcing one
    (FORCE_COLOR, TTY_COMPATIBLE), no notebook or IDLE, a UTF-8 stream, not Windows."""
    environ = os.environ
    if os.name == "nt" or any(name in environ for name in (
            "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS",
            "JUPYTER_LINES")) or "IPython" in sys.modules or "idlelib" in sys.modules:
        return False
    stream = sys.stdout
    try:
        if stream is None or stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    return (getattr(stream, "encoding", None) or "utf-8").lower().startswith("utf")


def _plain_text(text: str) -> bool:
    """Text rich prints as it is: printable ASCII (one cell a character), no markup or
    escapes, and no ``:name:`` rich might take for an emoji (two digits, as in a time's
    ``:00:``, name none)."""
    return (text.isascii() and text.isprintable() and not any(c in text for c in "[]\\")
            and all(len(m.group(2)) == 2 and m.group(2).isdigit()
                    for m in _EMOJI_CODE.finditer(text)))


_MARKUP_LIKE = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def markup_escape(text: str) -> str:
    """``rich.markup.escape`` (the same rules), without importing rich: a value put into
    markup (an external id ``[/]``, an owner) prints as itself instead of being read as a
    tag — or failing as one."""
    text = _MARKUP_LIKE.sub(lambda m: f"{m.group(1)}{m.group(1)}\\{m.group(2)}", text)
    if text.endswith("\\") and not text.endswith("\\\\"):
        return text + "\\"
    return text


def plain_output(lines: Sequence[str], columns: Sequence[tuple[str, str]],
                 rows: Sequence[Sequence[str]]) -> list[str] | None:
    """What ``out_console().print`` writes, one string a call, for ``lines`` (rich markup
    whose only tags are ``[bold]`` and ``[/]``) followed by a ``rich.table.Table()`` of
    ``columns`` ((header, "left" or "right")) and ``rows``, when stdout is not a terminal
    and rich would print them unchanged (no styles there): the lines fit in
    ``PIPED_WIDTH`` columns and need no wrapping, the table needs no shrinking.

    None when rich must draw them (a terminal: colours and its width; anything else).
    Written without importing rich, which costs a short command like ``lead show`` a third
    of its start-up; ``tests/unit/test_plain_output.py`` compares it with rich.
    """
    if not _piped_stdout():
        return None
    out: list[str] = []
    for markup in lines:
        pieces = _TAGS.split(markup)
        text = "".join(pieces)
        if len(text) > PIPED_WIDTH or not all(_plain_text(piece) for piece in pieces):
            return None
        out.append(text + "\n")
    cells = [[header for header, _ in columns], *rows]
    if not all(_plain_text(cell) for row in cells for cell in row):
        return None
    widths = [max(len(row[i]) for row in cells) + 2 for i in range(len(columns))]
    if sum(widths) + len(widths) + 1 > PIPED_WIDTH:
        return None

    def row_text(row: Sequence[str], edge: str) -> str:
        return edge + edge.join(
            " " + (cell.ljust(width - 2) if justify == "left" else cell.rjust(width - 2)) + " "
            for cell, width, (_, justify) in zip(row, widths, columns, strict=True)) + edge

    def rule(left: str, line: str, cross: str, right: str) -> str:
        return left + cross.join(line * width for width in widths) + right

    table = [rule("\u250f", "\u2501", "\u2533", "\u2513"), row_text(cells[0], "\u2503"),
             rule("\u2521", "\u2501", "\u2547", "\u2529"),
             *(row_text(row, "\u2502") for row in rows),
             rule("\u2514", "\u2500", "\u2534", "\u2518")]
    out.append("\n".join(table) + "\n")
    return out


def write_output(parts: Sequence[str]) -> None:
    """Write ``plain_output``'s strings as rich's ``Console.print`` does: each written and
    flushed; a closed pipe (``| head``) ends the command with code 1 and nothing more."""
    try:
        for part in parts:
            sys.stdout.write(part)
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
