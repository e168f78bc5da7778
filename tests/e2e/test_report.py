"""The HTML report as an analyst gets it: written by `leadflow report`, opened in a browser.
The store is scored with two named models beside the primary one, which the report shows
side by side.

Headless Chromium (Debian's ``chromium`` package) parses and lays the page out; the test reads
back the rendered DOM and a screenshot. The test installs nothing: without Chromium it fails
and says what to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from leadflow.config import Settings
from leadflow.contract import RecordRejected, parse_record
from leadflow.domain.rules import default_rules_text, parse_rules
from leadflow.engine.app import LeadflowApp
from leadflow.generator import generate
from leadflow.projections.db import ProjectionDB
from leadflow.projections.projector import Projector
from leadflow.projections.report import render_report
from tests.conftest import clean_env
from tests.integration.test_projection_models import GENERATED_MODELS

CHARTS = {"funnel", "cohorts", "velocity", "entries"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
# Appended to a copy of the report: asks the layout engine how big each bar really is.
PROBE = """<script>
for (const svg of document.querySelectorAll("svg.chart")) {
  const box = svg.getBoundingClientRect();
  const drawn = [...svg.querySelectorAll("rect.bar")].filter((r) => {
    const b = r.getBoundingClientRect();
    return b.width > 0 && b.height > 0;
  });
  svg.setAttribute("data-drawn-bars", String(drawn.length));
  svg.setAttribute("data-box", `${Math.round(box.width)}x${Math.round(box.height)}`);
}
document.body.setAttribute("data-probe", "done");
</script>"""


def chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("headless Chromium not found (/usr/bin/chromium or `chromium` on PATH): "
                "install Debian's chromium package, e.g. `apt-get install -y chromium` "
                "(`make test` installs it)", pytrace=False)


def run_chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=180, check=False,
                            env={**os.environ, "HOME": str(tmp)})
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr}"
    return result


def build_database(path: Path, leads: int, days: int) -> str:
    """An event store with generated traffic scored by the rules file ``rules_file(path)``
    (two named models: web, email); the read models are left to the command."""
    url = f"sqlite:///{path}"
    text = default_rules_text() + GENERATED_MODELS
    rules_file(path).write_text(text)
    app = LeadflowApp(env=Settings(database_url=url).eventsourcing_env({}),
                      rules=parse_rules(text, source="models.toml"))
    records = []
    for raw in generate(leads=leads, days=days, seed=3):
        with contextlib.suppress(RecordRejected):
            records.append(parse_record(raw, now=datetime.now(UTC)))
    for i in range(0, len(records), 1000):
        app.apply_batch(records[i:i + 1000])
    app.advance_clock(max(r.occurred_at for r in records))
    app.close()
    return url


def rules_file(database: Path) -> Path:
    return database.with_suffix(".rules.toml")


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_database(tmp_path_factory.mktemp("report") / "lf.db", leads=300, days=60)


@dataclass
class Chart:
    kind: str
    label: str
    attrs: dict[str, str]
    bars: int = 0
    texts: list[str] = field(default_factory=list)


class Charts(HTMLParser):
    """The `svg.chart` elements of a document, with their bars of positive size."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[Chart] = []
        self._current: Chart | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "svg" and "chart" in a.get("class", "").split():
            self._current = Chart(a.get("data-chart", ""), a.get("aria-label", ""), a)
            self.charts.append(self._current)
            self._depth = 0
        elif tag == "svg" and self._current is not None:
            self._depth += 1
        elif (tag == "rect" and self._current is not None
              and "bar" in a.get("class", "").split()
              and float(a.get("width", "0")) > 0 and float(a.get("height", "0")) > 0):
            self._current.bars += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self._current is not None:
            if self._depth:
                self._depth -= 1
            else:
                self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and data.strip():
            self._current.texts.append(data.strip())


def charts_of(document: str) -> dict[str, Chart]:
    parser = Charts()
    parser.feed(document)
    parser.close()
    found = {c.kind: c for c in parser.charts}
    assert len(found) == len(parser.charts), "each chart kind appears once"
    return found


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def report_file(populated: str, tmp_path: Path) -> Path:
    out = tmp_path / "report.html"
    env = clean_env()
    env.update({"LEADFLOW_DATABASE_URL": populated, "LEADFLOW_LOG_FORMAT": "json",
                "LEADFLOW_RULES": str(rules_file(Path(populated.removeprefix("sqlite:///"))))})
    result = subprocess.run([sys.executable, "-m", "leadflow.cli", "report", "--html", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and str(out) in result.stdout
    return out


def test_report_command_writes_a_page_whose_charts_render_in_chromium(
        report_file: Path, populated: str, tmp_path: Path) -> None:
    page = report_file.read_text(encoding="utf-8")

    # Self-contained: nothing fetched, nothing executed.
    lowered = page.lower()
    for needle in ("<script", "<link", "<img", "src=", "url(", "@import", "https://"):
        assert needle not in lowered, needle
    assert lowered.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http://") == 0
    # Deterministic: rendering the same read models again gives the same bytes.
    db = ProjectionDB(populated)
    try:
        assert render_report(db) == page
        leads = db.query("SELECT COUNT(*) AS n FROM lead_state WHERE merged_into IS NULL")[0]["n"]
        position = db.query("SELECT position FROM projection_tracking "
                            "WHERE name = 'analytics'")[0]["position"]
        # The models side by side, per source, as the read models count them.
        mql = {r["source"]: r["mql"] for r in db.query(
            "SELECT source, SUM(mql) AS mql, SUM(leads) AS leads FROM leads_by_source "
            "GROUP BY source ORDER BY SUM(leads) DESC, source")}
        above = {(r["source"], r["model"]): r["above_threshold"]
                 for r in db.query("SELECT * FROM models_by_source")}
    finally:
        db.close()
    assert leads > 0 and position > 0
    assert f"{position:,}" in page and f"{leads:,}" in page

    # The DOM Chromium builds from the file holds the four charts, each with bars.
    dom = run_chromium(["--dump-dom", report_file.as_uri()], tmp_path).stdout
    charts = charts_of(dom)
    assert set(charts) == CHARTS | {"models"}
    for kind, chart in charts.items():
        assert chart.attrs.get("role") == "img" and chart.label, kind
        assert chart.bars > 0, f"{kind} chart has no bars"
        assert not any("No data" in t for t in chart.texts), kind
    assert charts["funnel"].bars == 5  # new, mql, sql, opportunity, customer
    for heading in ("By source", "By owner", "By status", "Win rate", "Won amount",
                    "Scoring models side by side", "email ≥ threshold", "web ≥ threshold"):
        assert heading in dom, heading
    # Each source's MQLs (primary model) beside each model's leads above its threshold.
    assert {m for _, m in above} == {"email", "web"} and sum(above.values()) > 0
    models = charts["models"]
    for source in list(mql)[:10]:
        assert (f"{source}: Reached MQL (primary) {mql[source]:,}, email above threshold "
                f"{above.get((source, 'email'), 0):,}, web above threshold "
                f"{above.get((source, 'web'), 0):,}") in models.label, source
    assert models.bars == sum(1 for s in list(mql)[:10] for v in (
        mql[s], above.get((s, "email"), 0), above.get((s, "web"), 0)) if v)

    # Laid out by the browser: every bar occupies real pixels on screen.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    laid_out = run_chromium(["--dump-dom", probe.as_uri()], tmp_path).stdout
    assert 'data-probe="done"' in laid_out
    for kind, chart in charts_of(laid_out).items():
        drawn = int(chart.attrs["data-drawn-bars"])
        width, height = (int(x) for x in chart.attrs["data-box"].split("x"))
        assert drawn == chart.bars, f"{kind}: {drawn} of {chart.bars} bars drawn"
        assert width >= 300 and height >= 100, f"{kind} chart box {width}x{height}"

    # And it looks like something: a full-size screenshot with real content in it.
    shot = tmp_path / "report.png"
    run_chromium([f"--screenshot={shot}", "--window-size=1280,2400", report_file.as_uri()],
                 tmp_path)
    data = shot.read_bytes()
    assert png_size(data) == (1280, 2400)
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes"


def test_report_of_an_empty_projection_says_no_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    app = LeadflowApp(env=Settings(database_url=url).eventsourcing_env({}))
    db = ProjectionDB(url)
    try:
        Projector(app, db).setup()
        page = render_report(db, title="Empty <report>")
    finally:
        db.close()
        app.close()
    assert "<title>Empty &lt;report&gt;</title>" in page
    charts = charts_of(page)
    assert set(charts) == CHARTS
    for kind, chart in charts.items():
        assert chart.bars == 0, kind
        assert any(t.startswith("No data") for t in chart.texts), kind
    assert "no events projected yet" in page
    assert "Scoring models" not in page  # no named model has scored a lead
    assert page.count("No leads yet.") >= 4  # status, owner, source, campaign tables
