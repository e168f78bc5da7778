"""A store written by an earlier leadflow (tests/data: 40 leads ingested by the release of
2026-11-22) opens, answers the same, verifies and takes new records with today's code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from leadflow.config import Settings
from leadflow.engine.app import LeadflowApp, Outcome
from tests.conftest import Records

DATA = Path(__file__).resolve().parents[1] / "data"


def test_a_store_written_before_the_package_layout_loads_and_answers_the_same(
        tmp_path: Path, rec: Records) -> None:
    db = tmp_path / "store.db"
    shutil.copy(DATA / "store-v1-2026-11-22.db", db)
    expected = json.loads((DATA / "store-v1-2026-11-22.views.json").read_text())
    app = LeadflowApp(env=Settings(database_url=f"sqlite:///{db}").eventsourcing_env({}))
    try:
        views = {str(i): app.lead(i).to_json() for i in app.lead_ids()}
        assert json.loads(json.dumps(views, sort_keys=True)) == expected
        assert all(app.verify(i).ok for i in app.lead_ids())
        some = next(iter(expected.values()))
        result = app.apply_batch([rec("email_clicked", lead={"email": some["primary_key"]
                                                             .removeprefix("email:")})])
        assert result.results[0].outcome is Outcome.APPLIED
        assert app.verify(app.resolve(some["lead_id"])).ok
    finally:
        app.close()
