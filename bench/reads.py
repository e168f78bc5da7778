"""The bench's read-side steps: stored events, projections (catch-up, rebuild), rescore,
dedupe, queries."""

from __future__ import annotations

import contextlib
import json
import random
import time
from datetime import UTC, datetime

import psycopg
from common import (
    BenchState,
    Child,
    count_rows,
    json_log,
    leadflow_app,
    percentile,
    progress,
    rate,
    run_child,
)
from tests.integration.kafka_helpers import LEADFLOW

from leadflow.domain.rules import default_rules_text
from leadflow.projections.db import ProjectionDB
from leadflow.projections.queries import funnel


class ReadSteps(BenchState):
    """Steps 4 and 5 (see run.py's docstring)."""

    # ---------------------------------------------------------------- 4. projections

    def _projection_position(self, name: str) -> int:
        with contextlib.suppress(psycopg.Error), \
                psycopg.connect(self.e2e_url, autocommit=True) as conn:
            row = conn.execute("SELECT position FROM projection_tracking WHERE name = %s",
                               [name]).fetchone()
            return int(row[0]) if row else 0
        return 0

    def _projector_child(self, args: list[str], label: str, tracking: str) -> Child:
        assert self.pipeline is not None
        watcher = leadflow_app(self.e2e_url, cache=False)
        try:
            top = int(watcher.recorder.max_notification_id() or 0)
        finally:
            watcher.close()
        last = [0]

        def tick() -> None:
            last[0] = max(last[0], self._projection_position(tracking))
            bar.update(task, completed=last[0])

        with progress() as bar:
            task = bar.add_task(label, total=top)
            child = run_child([*LEADFLOW, *args], self.pipeline.env(),
                              self.work / f"{args[0]}.log", tick=tick)
            bar.update(task, completed=top)
        child.check(f"leadflow {' '.join(args)}")
        return child

    def project(self) -> None:
        child = self._projector_child(["project", "--until-idle"], "project --until-idle",
                                      "analytics")
        # "projected N events in P pages; position X"
        words = child.stdout.split()
        events = int(words[1])
        self.results.setdefault("projection", {})["catch_up"] = {
            "events": events, "pages": int(words[4]), "seconds": round(child.seconds, 3),
            "events_per_s": rate(events, child.seconds), "peak_rss_mib": child.peak_rss_mib,
            "how": "leadflow project --until-idle subprocess on the database the consumer "
                   "filled (lead and account events only); process start to exit",
        }

    def rebuild(self) -> None:
        # The rebuild keeps its progress in memory (no tracking row): the bar shows elapsed.
        child = self._projector_child(["rebuild"], "rebuild", "analytics:rebuild")
        # "rebuilt T1, T2, ... from N events; position X"
        words = child.stdout.split()
        events = int(words[words.index("from") + 1])
        swapped = next((entry for entry in json_log(self.work / "rebuild.log")
                        if entry.get("event") == "rebuild swapped in"), {})
        replay = float(swapped["seconds"]) if "seconds" in swapped else None
        self.results.setdefault("projection", {})["rebuild"] = {
            "events": events, "seconds": round(child.seconds, 3),
            "events_per_s": rate(events, child.seconds), "peak_rss_mib": child.peak_rss_mib,
            "replay_seconds": replay,
            "replay_events_per_s": rate(events, replay) if replay else None,
            "processes": swapped.get("processes"),
            "how": "leadflow rebuild subprocess (fresh tables, replay, swap; the leads split "
                   "among 'processes' forked processes, one per core by default); "
                   "events_per_s is process start to exit, replay_events_per_s the replay and "
                   "swap alone (from its log, without interpreter start and setup); "
                   "peak_rss_mib is the largest of the process and its parts (wait4)",
        }

    def stored_events(self) -> None:
        """Stored events per applied record: the event model's cost (issue: <= 1.1)."""
        events = count_rows(self.e2e_url, "leadflow_events")
        applied = self.results["e2e"].get("applied") or 0
        self.results["stored_events_per_record"] = round(events / applied, 3) if applied else None
        self.results["stored_events"] = events

    def rescore(self) -> None:
        """`leadflow rescore` (a backtest of a candidate rule set) over the e2e store."""
        candidate = self.work / "candidate.toml"
        # The default rules with a lower MQL threshold: every lead is scored twice, and some
        # become MQL earlier, so the comparison does real work.
        candidate.write_text(default_rules_text().replace("mql_threshold = 50",
                                                          "mql_threshold = 45", 1))
        pipe = self.pipeline
        assert pipe is not None
        child = run_child([*LEADFLOW, "rescore", "--rules", str(candidate), "--json"],
                          pipe.env(), self.work / "rescore.log")
        child.check("leadflow rescore")
        report = json.loads(child.stdout)
        records = self.results["e2e"].get("applied") or 0
        self.results["rescore"] = {
            "leads": report["leads"], "records": records, "seconds": round(child.seconds, 3),
            "records_per_s": rate(records, child.seconds), "peak_rss_mib": child.peak_rss_mib,
            "how": "leadflow rescore --json subprocess over the e2e PostgreSQL store, a candidate "
                   "with the MQL threshold at 45; records = applied records of the stream, "
                   "process start to exit; the leads are split among one process per core "
                   "(forked workers, engine/backtest.py), so the figure scales with cores",
        }

    def dedupe(self) -> None:
        """`leadflow dedupe suggest` over every live lead of the e2e store (issue 16: 100,000
        leads must take seconds); ``bench/dedupe_scale.py`` plants duplicates to count the
        ones found, this times the command where the other figures are."""
        pipe = self.pipeline
        assert pipe is not None
        child = run_child([*LEADFLOW, "dedupe", "suggest", "--json", "--limit", "0"],
                          pipe.env(), self.work / "dedupe.log")
        child.check("leadflow dedupe suggest")
        report = json.loads(child.stdout)
        stats = report["stats"]
        self.results["dedupe"] = {
            "leads": stats.get("leads"), "pairs_compared": stats.get("compared"),
            "suggestions": len(report.get("suggestions", [])),
            "seconds": round(child.seconds, 3),
            "peak_rss_mib": child.peak_rss_mib, "stats": stats,
            "how": "leadflow dedupe suggest --json --limit 0 subprocess over the e2e PostgreSQL "
                   "store (the generated stream plants no duplicates: the figure is the cost); "
                   "process start to exit",
        }

    # ---------------------------------------------------------------- 5. queries

    def queries(self) -> None:
        db = ProjectionDB(self.e2e_url)
        try:
            leads = int(db.query("SELECT count(*) AS n FROM lead_state")[0]["n"])
            keys = [str(r["primary_key"]) for r in
                    db.query("SELECT primary_key FROM lead_personal ORDER BY primary_key")]
            timings = []
            for _ in range(self.args.funnel_calls):
                begin = time.perf_counter()
                funnel(db)
                timings.append((time.perf_counter() - begin) * 1000)
        finally:
            db.close()
        picked = random.Random(self.args.seed).sample(keys, min(self.args.lead_calls, len(keys)))
        app = leadflow_app(self.e2e_url)
        now = datetime.now(UTC)
        try:
            app.recorder.max_notification_id()  # connect first: latency is per query
            cold = []
            for key in picked:
                begin = time.perf_counter()
                app.lead(key, at=now)
                cold.append((time.perf_counter() - begin) * 1000)
            warm = []
            for key in picked:
                begin = time.perf_counter()
                app.lead(key, at=now)
                warm.append((time.perf_counter() - begin) * 1000)
        finally:
            app.close()
        self.results["queries"] = {
            "leads": leads,
            "funnel": {"calls": len(timings), "p50_ms": round(percentile(timings, 50), 2),
                       "p95_ms": round(percentile(timings, 95), 2),
                       "how": "leadflow.projections.queries.funnel(db) in process"},
            "lead_show": {
                "keys": len(picked),
                "cold_p50_ms": round(percentile(cold, 50), 2),
                "cold_p95_ms": round(percentile(cold, 95), 2),
                "warm_p50_ms": round(percentile(warm, 50), 2),
                "warm_p95_ms": round(percentile(warm, 95), 2),
                "how": "LeadflowApp.lead(key, at=now) in process on a fresh app (CLI "
                       "settings, aggregate cache on): one cold call per random "
                       "lead_personal.primary_key, then the same keys again (warm)",
            },
        }
