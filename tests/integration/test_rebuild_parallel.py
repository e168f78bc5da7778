"""A rebuild split among processes by lead (projections/parallel.py) gives exactly the rows
one process gives, on a real PostgreSQL: forked parts, their own connections, the totals
merged; and falls back to one process where the split cannot be exact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import psycopg
import pytest
from structlog.testing import capture_logs

from leadflow.engine.app import LeadflowApp
from leadflow.projections import parallel
from leadflow.projections.db import ProjectionDB
from leadflow.projections.projector import Projector
from tests.conftest import T0, Records, clean_env, days
from tests.integration.kafka_helpers import wait_until
from tests.integration.test_projections import LEADFLOW, dump, engine, load_stream


def rebuilt(app: LeadflowApp, db: ProjectionDB, workers: int) -> tuple[int, int, list[Any]]:
    """Rebuild with ``workers``: (events, position, the rebuild's log entries)."""
    with capture_logs() as logs:
        stats = Projector(app, db).rebuild(workers=workers)
    return stats.events, stats.position, logs


def processes(logs: list[Any]) -> int:
    return int(next(e["processes"] for e in logs if e["event"] == "rebuild swapped in"))


@pytest.fixture
def generated(pg_url: str) -> tuple[LeadflowApp, ProjectionDB]:
    app = engine(pg_url)
    load_stream(app, leads=500, seed=31)
    return app, ProjectionDB(pg_url)


def test_parts_replay_a_generated_store_into_exactly_the_rows_of_one_process(
        generated: tuple[LeadflowApp, ProjectionDB]) -> None:
    app, db = generated
    Projector(app, db, page_size=400).run(until_idle=True)
    live = dump(db)
    events, position, logs = rebuilt(app, db, 1)
    assert processes(logs) == 1 and dump(db) == live
    # What the parts merge is there to merge: accounts whose people fall in different
    # parts, engagements and surges.
    accounts = db.query("SELECT a.account_id, a.surges, a.engagements, "
                        "array_agg(l.lead_id) AS leads FROM account_state a "
                        "JOIN lead_state l USING (account_id) GROUP BY 1, 2, 3")
    assert any(len({parallel.part_of(lead, 2) for lead in a["leads"]}) == 2
               and a["surges"] and a["engagements"] for a in accounts)
    for workers in (2, 3):
        got = rebuilt(app, db, workers)
        assert (got[0], got[1], processes(got[2])) == (events, position, workers)
        assert dump(db) == live, workers
        assert not [e for e in got[2] if e["log_level"] == "warning"]
    db.close()


def test_the_parts_of_a_lead_id_are_the_ones_postgresql_selects(pg_url: str) -> None:
    """``part_of`` (Python) and ``select_part_rows`` (SQL) deal a lead to the same part."""
    chaos = random.Random(5)
    ids = [uuid.UUID(int=chaos.getrandbits(128)) for _ in range(2000)]
    ids += [uuid.uuid5(uuid.NAMESPACE_URL, f"email:p{i}@x.io") for i in range(500)]
    ids += [uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1), uuid.UUID(int=255)]
    with psycopg.connect(pg_url) as conn:
        for parts in (2, 3, 7, 8):
            rows = conn.execute("SELECT i::text, get_byte(uuid_send(i), 15) %% %s "
                                "FROM unnest(%s::uuid[]) AS i", [parts, ids]).fetchall()
            assert {i: parallel.part_of(i, parts) for i, _ in rows} == dict(rows)
    # Evenly spread: no part of three has less than a quarter of 2,500 leads.
    assert min(Counter(parallel.part_of(str(i), 3) for i in ids).values()) > 2500 / 4


def test_a_person_forgotten_after_a_merge_across_parts_is_replayed_in_one_process(
        pg_url: str, rec: Records) -> None:
    app = engine(pg_url)
    emails = [f"p{i}@x.io" for i in range(12)]
    assert not app.apply_batch([rec("form_submitted", e, at=T0 + days(i / 10),
                                    lead={"title": "VP Sales"})
                                for i, e in enumerate(emails)]).rejected
    assert not app.apply_batch([rec("email_opened", e, at=T0 + days(2))
                                for e in emails]).rejected
    ids = {e: str(app.resolve(f"email:{e}")) for e in emails}
    older = emails[0]
    other = next(e for e in emails[1:] if parallel.part_of(ids[e], 2)
                 != parallel.part_of(ids[older], 2))
    same = next(e for e in emails[1:] if e != other and parallel.part_of(ids[e], 2)
                == parallel.part_of(ids[emails[-1]], 2) and e != emails[-1])
    app.merge(f"email:{older}", f"email:{other}", "one person", "analyst", T0 + days(3))
    app.merge(f"email:{same}", f"email:{emails[-1]}", "one person", "analyst", T0 + days(3))
    db = ProjectionDB(pg_url)
    app.forget(f"email:{same}", "GDPR art. 17", "dpo", T0 + days(4))
    Projector(app, db).run(until_idle=True)
    live = dump(db)
    # Both merged leads in one part: the parts replay it.
    _, _, logs = rebuilt(app, db, 2)
    assert processes(logs) == 2 and dump(db) == live
    assert not [e for e in logs if e["log_level"] == "warning"]
    # Now a person whose merged lead is in the other part.
    app.forget(f"email:{older}", "GDPR art. 17", "dpo", T0 + days(4))
    Projector(app, db).run(until_idle=True)
    live = dump(db)
    one = rebuilt(app, db, 1)
    events, position, logs = rebuilt(app, db, 2)
    assert (events, position) == one[:2] and dump(db) == live
    fallback = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in fallback] == ["rebuild replayed again in one process"]
    assert ids[other] in fallback[0]["reason"] and processes(logs) == 1
    forgotten = db.query("SELECT lead_id FROM lead_personal WHERE primary_key IS NULL")
    assert {ids[older], ids[other], ids[same], ids[emails[-1]]} <= {
        r["lead_id"] for r in forgotten}
    db.close()


def _fails_in_part_one(how: Callable[[], None]) -> Callable[..., Any]:
    real = parallel._replay_part

    def replay_part(projector: Any, suffix: str, part: int, *args: Any) -> Any:
        if part == 1:
            how()
        return real(projector, suffix, part, *args)

    return replay_part


def _dies() -> None:
    import os

    os._exit(3)


def _raises() -> None:
    raise MemoryError("no memory left in the part")


@pytest.mark.parametrize("how", [_dies, _raises], ids=["dies", "raises"])
def test_a_part_that_dies_or_fails_is_replayed_again_in_one_process(
        generated: tuple[LeadflowApp, ProjectionDB], monkeypatch: pytest.MonkeyPatch,
        how: Callable[[], None]) -> None:
    app, db = generated
    events, position, _ = rebuilt(app, db, 1)
    one = dump(db)
    # The parts are forked from this process: they run the patched function.
    monkeypatch.setattr(parallel, "_replay_part", _fails_in_part_one(how))
    got = rebuilt(app, db, 2)
    assert (got[0], got[1]) == (events, position) and dump(db) == one
    fallback = [e for e in got[2] if e["event"] == "rebuild replayed again in one process"]
    expected = "exit code 3" if how is _dies else "MemoryError: no memory left in the part"
    assert len(fallback) == 1 and expected in fallback[0]["reason"], fallback
    assert processes(got[2]) == 1
    db.close()


def test_the_command_splits_the_rebuild_and_names_a_bad_worker_count(
        generated: tuple[LeadflowApp, ProjectionDB], pg_url: str) -> None:
    app, db = generated
    events, position, _ = rebuilt(app, db, 1)
    one = dump(db)
    env = {**clean_env(), "LEADFLOW_DATABASE_URL": pg_url, "LEADFLOW_LOG_FORMAT": "json"}
    for args, extra in ((["--workers", "3"], {}), ([], {"LEADFLOW_REBUILD_WORKERS": "2"})):
        done = subprocess.run([*LEADFLOW, "rebuild", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().endswith(f"from {events} events; position {position}")
        assert '"processes": ' + (args[1] if args else "2") in done.stderr
        assert dump(db) == one
    bad = subprocess.run([*LEADFLOW, "rebuild", "--workers", "0"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "--workers" in bad.stderr and "0" in bad.stderr
    help_text = subprocess.run([*LEADFLOW, "rebuild", "--help"], env=env, capture_output=True,
                               text=True, timeout=60, check=True).stdout
    assert "--workers" in help_text and "LEADFLOW_REBUILD_WORKERS" in help_text
    db.close()


def test_surges_are_counted_once_each_whichever_parts_met_them() -> None:
    """An account's own surge is met by every part, a lead's by one: each counts once, and
    the latest (by notification) gives the row its time and window."""
    t = [datetime(2026, 3, d, tzinfo=T0.tzinfo) for d in (1, 2, 3, 4)]
    account = {"account_id": "a", "account_key": "x.io", "name": None, "engagements": 2,
               "surges": 0, "last_engaged_at": t[0], "last_surge_at": None,
               "surge_window_days": None}

    def done(surges: list[tuple[int, datetime, Any]], engagements: int,
             last: datetime) -> parallel.PartDone:
        return parallel.PartDone(
            accounts={"a": dict(account, engagements=engagements, last_engaged_at=last,
                                surges=len(surges))},
            surges={"a": surges}, funnel=Counter({("2026-03-01", "new", "", ""): 1}),
            load=Counter({("rep", "mql"): 1}), last_event={"a": surges[-1][0]}, foreign=[],
            events=1, pages=1, position=surges[-1][0])

    # Notification 10: the account's own surge (both parts); 12 and 20: one lead's each; 20
    # holds two surges in the second part (an envelope).
    first = done([(10, t[0], 7), (12, t[1], 7)], 3, t[2])
    second = done([(10, t[0], 7), (20, t[2], 14), (20, t[3], 30)], 4, t[1])
    state = parallel.Page(cast(Any, None), "_rebuild", 30.0)  # merging writes nothing
    parallel._merge(state, [first, second])
    row = state.accounts["a"]
    assert (row["surges"], row["last_surge_at"], row["surge_window_days"]) == (4, t[3], 30)
    assert (row["engagements"], row["last_engaged_at"]) == (7, t[2])
    assert state.funnel == Counter({("2026-03-01", "new", "", ""): 2})
    assert state.other_load == Counter({("rep", "mql"): 2})
    assert state.last_event == {"a": 20}


def test_parts_are_one_on_sqlite_and_by_default_on_a_small_store(
        tmp_path: Any, pg_url: str) -> None:
    sqlite = engine(f"sqlite:///{tmp_path / 'lf.db'}")
    lite = ProjectionDB(f"sqlite:///{tmp_path / 'lf.db'}")
    with capture_logs() as logs:
        assert parallel.parts_for(Projector(sqlite, lite), 4, 10**7) == 1
    assert [e["event"] for e in logs] == [
        "rebuild replays in one process: parallel needs PostgreSQL (the event store and the "
        "read models) on Linux"]
    pg = Projector(engine(pg_url), ProjectionDB(pg_url))
    assert parallel.parts_for(pg, None, parallel.MIN_EVENTS_PER_PART - 1) == 1
    assert parallel.parts_for(pg, 3, 10) == 3
    assert parallel.parts_for(pg, None, 10**8) == min(parallel._cpus(), parallel.MAX_PARTS)


#: A rebuild whose parts read slowly (half a second before each page of 50 rows: each part
#: would take over 20 s), so it can be killed half-way.
SLOW_REBUILD = """
import sys, time
from leadflow.config import Settings
from leadflow.engine.app import LeadflowApp
from leadflow.projections.db import ProjectionDB
from leadflow.projections.projector import Projector
from leadflow.store.postgres import LeadflowPostgresProcessRecorder as Recorder

read = Recorder.select_part_rows
def slowly(self, *args):
    time.sleep(0.5)
    return read(self, *args)
Recorder.select_part_rows = slowly
url = sys.argv[1]
app = LeadflowApp(env=Settings(database_url=url, aggregate_cache_size=0).eventsourcing_env({}))
Projector(app, ProjectionDB(url)).rebuild(workers=2, page_size=50)
"""


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listed:
            found += [int(child) for child in listed.read().split()]
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _parts_writing(process: subprocess.Popen[bytes], log: Any, pg_url: str) -> list[int]:
    """Wait until the rebuild ``process`` runs two parts and they have written rows; their
    pids."""
    parts: list[int] = []

    def started() -> bool:
        parts[:] = _children(process.pid)
        try:
            with psycopg.connect(pg_url) as conn:
                written = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM score_ledger_rebuild)").fetchone()
        except psycopg.errors.UndefinedTable:  # not created yet
            return False
        return len(parts) == 2 and bool(written and written[0])

    wait_until(started, 60, "both parts of the rebuild to write rows", interval=0.05,
               watch=[(process, log)])
    return parts


def test_a_rebuild_killed_half_way_leaves_no_part_running_and_the_live_tables_as_they_were(
        generated: tuple[LeadflowApp, ProjectionDB], pg_url: str, tmp_path: Any) -> None:
    app, db = generated
    Projector(app, db).run(until_idle=True)
    before = dump(db)
    log = tmp_path / "rebuild.log"
    process = subprocess.Popen([sys.executable, "-c", SLOW_REBUILD, pg_url], env=clean_env(),
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        parts = _parts_writing(process, log, pg_url)
    finally:
        process.kill()  # no chance to clean up: the parts must notice on their own
        process.wait(timeout=30)
    # Each part looks for its parent after every page: gone, it exits (a part that went on
    # to the end would take over 20 s).
    wait_until(lambda: not any(_running(pid) for pid in parts), 10,
               "the parts of a killed rebuild to exit", interval=0.1)
    assert dump(db) == before  # the live tables were never touched
    # The next rebuild starts from scratch over what the killed one left.
    _, _, logs = rebuilt(app, db, 2)
    assert processes(logs) == 2 and dump(db) == before


#: ``leadflow rebuild --workers 2`` with parts that read slowly, as SLOW_REBUILD.
SLOW_COMMAND = SLOW_REBUILD.partition("url = sys.argv[1]")[0] + """
from leadflow.cli import main
sys.argv = ["leadflow", "--database", sys.argv[1], "--log-format", "json", "rebuild",
            "--workers", "2"]
main()
"""


@pytest.mark.parametrize("how", ["term", "ctrl-c"])
def test_a_stopped_rebuild_command_says_where_in_one_line_and_leaves_the_live_tables(
        generated: tuple[LeadflowApp, ProjectionDB], pg_url: str, tmp_path: Any,
        how: str) -> None:
    """TERM to the command, or Ctrl-C (SIGINT to its whole process group, parts included):
    the replay stops (not replayed again in one process), one line, exit 1."""
    app, db = generated
    Projector(app, db).run(until_idle=True)
    before = dump(db)
    log = tmp_path / "rebuild.log"
    process = subprocess.Popen([sys.executable, "-c", SLOW_COMMAND, pg_url], env=clean_env(),
                               stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                               start_new_session=True)
    try:
        parts = _parts_writing(process, log, pg_url)
        if how == "term":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = log.read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, stderr[-3000:]
    assert "rebuild stopped at event" in errors[0], errors
    assert "the live tables are unchanged" in errors[0]
    assert "Traceback" not in stderr and "replayed again in one process" not in stderr
    assert not any(_running(pid) for pid in parts)
    assert dump(db) == before


def test_parts_read_a_store_encrypted_at_rest(pg_url: str) -> None:
    """The parts open the store as the parent does (the cipher from its environment)."""
    from eventsourcing.cryptography import AESCipher

    from leadflow.config import Settings

    cipher = {"CIPHER_KEY": AESCipher.create_key(32)}
    env = Settings(database_url=pg_url, aggregate_cache_size=0).eventsourcing_env(cipher)
    app = LeadflowApp(env={**env, **cipher})  # the key given to the app, not the process
    load_stream(app, leads=150, seed=9)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT state FROM leadflow_events LIMIT 1").fetchone()
    assert row and b"occurred_at" not in bytes(row[0])  # the rows are ciphertext
    db = ProjectionDB(pg_url)
    Projector(app, db, page_size=100).run(until_idle=True)
    live = dump(db)
    assert len(live["lead_state"]) > 100
    _, _, logs = rebuilt(app, db, 2)
    assert processes(logs) == 2 and dump(db) == live
    assert not [e for e in logs if e["log_level"] == "warning"]
    db.close()
