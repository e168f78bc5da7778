"""Which cached aggregates another writer appended to: the recorders' ``select_moved_on``
(PostgreSQL's batched query is tested against two real writers in
tests/integration/test_write_conflicts.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import T0, Records, days, make_app


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_an_aggregate_with_rows_after_a_version_has_moved_on(
        store: str, tmp_path: Path, rec: Records) -> None:
    app = make_app(store, tmp_path)
    try:
        assert not app.shared_store  # one writer: the batches trust their cache
        app.apply_batch([rec("form_submitted", "anna@acme.io", at=T0)])
        anna = app.resolve("email:anna@acme.io")
        before = app.repository.get(anna).version
        app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(1))])
        after = app.repository.get(anna).version
        assert after > before
        assert app.record_ids.select_moved_on([(anna, before)]) == [anna]
        assert app.record_ids.select_moved_on([(anna, after)]) == []
        assert app.record_ids.select_moved_on([]) == []
    finally:
        app.close()
