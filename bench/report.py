"""The bench's table: the engine v2 issue's targets and the rendering of a results file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import (
    PARTITIONS,
    dig,
    out,
)
from rich.table import Table

# The engine v2 issue's "must reach" targets: (key, label, figure path in the results,
# comparison, threshold, unit).
TARGETS: tuple[tuple[str, str, str, str, float, str], ...] = (
    ("events_per_record", "stored events per record", "stored_events_per_record", "<=", 1.1,
     ""),
    ("e2e_rate", "end-to-end records/s, one consumer", "e2e.records_per_s", ">=", 8_000,
     "rec/s"),
    ("e2e_parallel_rate", "end-to-end records/s, two consumers", "e2e_parallel.records_per_s",
     ">=", 12_000, "rec/s"),
    ("parallel_scaling", "two consumers vs one", "ratios.parallel_scaling", ">=", 1.5, "x"),
    ("e2e_vs_naive", "end to end vs naive", "ratios.e2e_vs_naive", ">=", 15, "x"),
    ("rebuild_rate", "rebuild events/s", "projection.rebuild.events_per_s", ">=", 50_000,
     "ev/s"),
    ("rescore_rate", "rescore records/s", "rescore.records_per_s", ">=", 30_000, "rec/s"),
    ("funnel_p50", "funnel p50", "queries.funnel.p50_ms", "<=", 50, "ms"),
    ("lead_show_p50", "lead show p50 (cold)", "queries.lead_show.cold_p50_ms", "<=", 20, "ms"),
    ("consumer_rss", "consumer peak RSS", "peak_rss_mib.consumer", "<=", 1024, "MiB"),
    ("chain_cost", "ingest with keyed links vs unkeyed", "chain_cost.keyed_vs_unkeyed", "<=",
     1.05, "x"),
    # Issue 14 item 5: personal values encrypted per person vs stored in the clear.
    ("privacy_cost", "ingest with personal data encrypted vs plain",
     "privacy_cost.encrypted_vs_plain", "<=", 1.15, "x"),
    # Issue 15 item 4: the whole `leadflow lead show EMAIL` process on the embedded store.
    ("lead_show_startup", "lead show start-up (process, SQLite)", "startup.lead_show.median_s",
     "<=", 0.2, "s"),
)


# --------------------------------------------------------------------------- output


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".strip()


def _server_cpu(r: dict[str, Any], step: str) -> str:
    """PostgreSQL's CPU a record over a consume step (common.server_cpu)."""
    return (f"PostgreSQL {fmt(dig(r, f'{step}.postgres_cpu_us_per_record'), 'µs')}, "
            f"consumers {fmt(dig(r, f'{step}.consumer_cpu_us_per_record'), 'µs')} of CPU a "
            f"record; machine {fmt(dig(r, f'{step}.machine_busy_percent'), '%')} busy")


def _paired_cost(r: dict[str, Any], label: str, key: str, figure: str
                 ) -> tuple[str, str, str]:
    """A row of a paired ingest (costs.py ``paired_ingest``): the ratio and how it was read."""
    return (label, fmt(dig(r, f"{key}.{figure}"), "x"),
            f"{fmt(dig(r, f'{key}.measure'))}, {fmt(dig(r, f'{key}.records'))} records in "
            f"process on SQLite; CPU median of 7 pairs "
            f"{fmt(dig(r, f'{key}.cpu_pairwise_median'), 'x')}, fastest runs "
            f"{fmt(dig(r, f'{key}.wall_ratio'), 'x')} wall")


def render(results: dict[str, Any], path: Path) -> None:
    r = results
    s = r.get("stream", {})
    table = Table(title=f"leadflow bench: {fmt(s.get('records'))} records, "
                        f"{fmt(s.get('leads'))} leads, {s.get('days')} days, seed "
                        f"{s.get('seed')}  ({r['machine'].get('cores')} cores, "
                        f"{fmt(r['machine'].get('memory_mib'))} MiB)")
    table.add_column("measure")
    table.add_column("figure", justify="right")
    table.add_column("detail")
    parallel_rss = " / ".join(fmt(v) for v in dig(r, "peak_rss_mib.consumers_parallel") or [])
    rows: list[tuple[str, str, str]] = [
        ("publish (validate + produce)", fmt(dig(r, "publish.lines_per_s"), "lines/s"),
         f"{fmt(dig(r, 'publish.sent'))} sent in {fmt(dig(r, 'publish.seconds'), 's')}"),
        ("end to end: Kafka → PG (wall)", fmt(dig(r, "e2e.records_per_s"), "rec/s"),
         f"{fmt(dig(r, 'e2e.records'))} records in {fmt(dig(r, 'e2e.wall_seconds'), 's')}, "
         f"{PARTITIONS} partitions, {fmt(dig(r, 'e2e.batches'))} batches; "
         + _server_cpu(r, "e2e")),
        ("end to end, steady state", fmt(dig(r, "e2e.steady_records_per_s"), "rec/s"),
         f"{fmt(dig(r, 'e2e.steady_seconds'), 's')} from assignment to last commit; "
         f"start-up {fmt(dig(r, 'e2e.startup_seconds'), 's')}"),
        ("end to end, two consumers (wall)", fmt(dig(r, "e2e_parallel.records_per_s"),
                                                 "rec/s"),
         f"{fmt(dig(r, 'e2e_parallel.records'))} records in "
         f"{fmt(dig(r, 'e2e_parallel.wall_seconds'), 's')}, one group; steady "
         f"{fmt(dig(r, 'e2e_parallel.steady_records_per_s'), 'rec/s')}, "
         f"{fmt(dig(r, 'e2e_parallel.retries'))} retries; " + _server_cpu(r, "e2e_parallel")),
        ("ratio two consumers / one", fmt(dig(r, "ratios.parallel_scaling"), "x"),
         f"steady {fmt(dig(r, 'ratios.parallel_steady_scaling'), 'x')}; stored records "
         f"{fmt(dig(r, 'e2e_parallel.stored_record_ids'))} vs "
         f"{fmt(dig(r, 'e2e_parallel.stored_record_ids_single'))}"),
        ("floor: lean consumer, real store, one", fmt(dig(r, "floor.one.records_per_s"),
                                                       "rec/s"),
         "bench/floor.py (not the engine); " + _server_cpu(r, "floor.one")),
        ("floor: two in one group", fmt(dig(r, "floor.two.records_per_s"), "rec/s"),
         f"{fmt(dig(r, 'floor.two.conflicts'))} conflicts; " + _server_cpu(r, "floor.two")),
        ("engine / floor, one / two", fmt(dig(r, "ratios.e2e_vs_floor"), "x"),
         f"two consumers {fmt(dig(r, 'ratios.parallel_vs_floor'), 'x')}"),
        ("floor / naive", fmt(dig(r, "ratios.floor_vs_naive"), "x"),
         "how far a nearly free decision layer gets against the naive baseline"),
        ("floor with the engine's aggregates, one",
         fmt(dig(r, "floor_aggregates.one.records_per_s"), "rec/s"),
         "bench/floor.py --aggregates: Lead aggregates and codec, scoring only; / naive "
         f"{fmt(dig(r, 'ratios.aggregates_floor_vs_naive'), 'x')}; "
         + _server_cpu(r, "floor_aggregates.one")),
        ("floor with the engine's aggregates, two",
         fmt(dig(r, "floor_aggregates.two.records_per_s"), "rec/s"),
         f"{fmt(dig(r, 'floor_aggregates.two.conflicts'))} conflicts; "
         + _server_cpu(r, "floor_aggregates.two")),
        ("naive eventsourcing baseline", fmt(dig(r, "naive.records_per_s"), "rec/s"),
         f"{fmt(dig(r, 'naive.records'))} records, get/change/save per record"),
        ("apply_batch in process (PG)", fmt(dig(r, "apply_batch.records_per_s"), "rec/s"),
         f"{fmt(dig(r, 'apply_batch.records'))} records, "
         f"{fmt(dig(r, 'apply_batch.batch_size'))} per transaction"),
        ("ceiling: raw kafka-python", fmt(dig(r, "ceiling.records_per_s"), "rec/s"),
         "poll + json.loads only"),
        ("projection catch-up", fmt(dig(r, "projection.catch_up.events_per_s"), "ev/s"),
         f"{fmt(dig(r, 'projection.catch_up.events'))} events in "
         f"{fmt(dig(r, 'projection.catch_up.seconds'), 's')}"),
        ("rebuild", fmt(dig(r, "projection.rebuild.events_per_s"), "ev/s"),
         f"{fmt(dig(r, 'projection.rebuild.events'))} events in "
         f"{fmt(dig(r, 'projection.rebuild.seconds'), 's')}; replay alone "
         f"{fmt(dig(r, 'projection.rebuild.replay_events_per_s'), 'ev/s')}"),
        ("stored events per record", fmt(dig(r, "stored_events_per_record")),
         f"{fmt(dig(r, 'stored_events'))} events for {fmt(dig(r, 'e2e.applied'))} records"),
        ("verify (whole store)", fmt(dig(r, "verify.events_per_s"), "ev/s"),
         f"{fmt(dig(r, 'verify.rows'))} rows, {fmt(dig(r, 'verify.aggregates'))} aggregates "
         f"in {fmt(dig(r, 'verify.seconds'), 's')}"),
        _paired_cost(r, "ingest, personal data encrypted vs plain", "privacy_cost",
                     "encrypted_vs_plain"),
        _paired_cost(r, "ingest, keyed vs unkeyed links", "chain_cost", "keyed_vs_unkeyed"),
        ("rescore (backtest)", fmt(dig(r, "rescore.records_per_s"), "rec/s"),
         f"{fmt(dig(r, 'rescore.leads'))} leads in {fmt(dig(r, 'rescore.seconds'), 's')}"),
        ("dedupe suggest (whole store)", fmt(dig(r, "dedupe.seconds"), "s"),
         f"{fmt(dig(r, 'dedupe.leads'))} leads, {fmt(dig(r, 'dedupe.pairs_compared'))} pairs "
         f"compared, {fmt(dig(r, 'dedupe.suggestions'))} suggestions"),
        ("funnel query p50 / p95", f"{fmt(dig(r, 'queries.funnel.p50_ms'))} / "
         f"{fmt(dig(r, 'queries.funnel.p95_ms'), 'ms')}",
         f"{fmt(dig(r, 'queries.leads'))} leads, {fmt(dig(r, 'queries.funnel.calls'))} calls"),
        ("lead show cold p50 / p95", f"{fmt(dig(r, 'queries.lead_show.cold_p50_ms'))} / "
         f"{fmt(dig(r, 'queries.lead_show.cold_p95_ms'), 'ms')}",
         f"{fmt(dig(r, 'queries.lead_show.keys'))} random keys, fresh app"),
        ("lead show warm p50 / p95", f"{fmt(dig(r, 'queries.lead_show.warm_p50_ms'))} / "
         f"{fmt(dig(r, 'queries.lead_show.warm_p95_ms'), 'ms')}", "same keys again (cache)"),
        ("embedded SQLite ingest", fmt(dig(r, "sqlite_ingest.records_per_s"), "rec/s"),
         f"{fmt(dig(r, 'sqlite_ingest.lines'))} lines "
         f"({dig(r, 'sqlite_ingest.sample_note') or '-'})"),
        ("peak RSS consumer / projector", f"{fmt(dig(r, 'peak_rss_mib.consumer'))} / "
         f"{fmt(dig(r, 'peak_rss_mib.projector'), 'MiB')}",
         f"two consumers {parallel_rss or '-'}, "
         f"rebuild {fmt(dig(r, 'peak_rss_mib.rebuild'), 'MiB')}, sqlite ingest "
         f"{fmt(dig(r, 'peak_rss_mib.sqlite_ingest'), 'MiB')}"),
        ("ratio e2e / naive", fmt(dig(r, "ratios.e2e_vs_naive"), "x"),
         f"steady {fmt(dig(r, 'ratios.e2e_steady_vs_naive'), 'x')}"),
        ("ratio e2e / ceiling", fmt(dig(r, "ratios.e2e_vs_ceiling"), "x"),
         f"steady {fmt(dig(r, 'ratios.e2e_steady_vs_ceiling'), 'x')}"),
        ("start-up: --help / lead show", f"{fmt(dig(r, 'startup.help.median_s'))} / "
         f"{fmt(dig(r, 'startup.lead_show.median_s'), 's')}",
         f"wall, median of {fmt(dig(r, 'startup.help.runs'))} process runs each (target < "
         f"{fmt(dig(r, 'startup.target_s'), 's')}); CPU medians "
         f"{fmt(dig(r, 'startup.help.cpu_median_s'))} / "
         f"{fmt(dig(r, 'startup.lead_show.cpu_median_s'), 's')}"),
    ]
    for row in rows:
        table.add_row(*row)
    out.print(table)

    targets = Table(title="targets (engine v2 issue)")
    for col in ("target", "value", "wanted", "result"):
        targets.add_column(col, justify="left" if col == "target" else "right")
    for t in r.get("targets", []):
        verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}[
            t["pass"]]
        targets.add_row(t["label"], fmt(t["value"], t["unit"]),
                        f"{t['op']} {fmt(t['target'], t['unit'])}", verdict)
    out.print(targets)
    for name, problem in r.get("errors", {}).items():
        out.print(f"[red]step {name} failed:[/] {problem}", highlight=False)
    out.print(f"results: {path}", highlight=False)
