"""A lead's account is loaded with its batch, even when the record names no company.

A record that reaches its lead by a CRM id, a phone or a cookie carries no email domain, yet
its touchpoint engages the lead's account (the account surge). The batch loads those
accounts, and their engagement rows, in one query with the rest of what it needs, not one
by one while deciding; an account the engine has just created has no rows to read at all.
Run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from leadflow.config import Settings
from leadflow.engine.app import LeadflowApp
from tests.conftest import T0, Records, days


@contextmanager
def opened(url: str) -> Iterator[tuple[LeadflowApp, list[list[UUID]]]]:
    """An application on ``url`` whose engagement reads are listed (the real reads run)."""
    app = LeadflowApp(env=dict(Settings(database_url=url).eventsourcing_env({})))
    reads: list[list[UUID]] = []
    recorder: Any = app.recorder
    real = recorder.select_engagements

    def counted(ids: list[UUID]) -> Any:
        reads.append(list(ids))
        return real(ids)

    recorder.select_engagements = counted
    try:
        yield app, reads
    finally:
        app.close()


def test_accounts_of_leads_reached_without_a_company_are_loaded_with_the_batch(
        db_url: str, rec: Records) -> None:
    crm = {f"{name}@{company}": f"crm-{name}-{company}"
           for company in ("bigco.com", "otherco.com") for name in ("p1", "p2", "p3")}
    # Two of each company's people engage now; the third a month earlier (outside the
    # 14-day surge window), so no surge yet.
    first = [rec("form_submitted", email, at=T0 - days(30) if email.startswith("p3") else T0,
                 lead={"external_id": crm_id}) for email, crm_id in crm.items()]
    with opened(db_url) as (app, _):
        app.apply_batch(first)
    # A new process: nothing cached. The third people come back by their CRM id alone.
    with opened(db_url) as (app, reads):
        later = [rec("content_downloaded", at=T0 + days(1), lead={"external_id": crm_id})
                 for email, crm_id in crm.items() if email.startswith("p3")]
        app.apply_batch(later)
        accounts = {app.lead(f"email:p1@{c}").account_id for c in ("bigco.com", "otherco.com")}
        assert None not in accounts and len(accounts) == 2
        # Both accounts' engagement rows in one read, made before any record was decided.
        assert len(reads) == 1 and set(reads[0]) == accounts
        # And they were the store's rows: the two people engaged a day earlier count, so
        # each company's three people within the window surge.
        for company in ("bigco.com", "otherco.com"):
            for name in ("p1", "p2", "p3"):
                view = app.lead(f"email:{name}@{company}")
                assert any(c.rule == "account-surge" for c in view.breakdown), view.email


def test_an_account_the_engine_created_has_no_engagement_rows_to_read(
        db_url: str, rec: Records) -> None:
    with opened(db_url) as (app, reads):
        app.apply_batch([rec("form_submitted", "ann@newco.io", at=T0,
                             lead={"external_id": "crm-ann"})])
        app.apply_batch([rec("email_opened", at=T0 + days(1),
                             lead={"external_id": "crm-ann"})])
        # Created by the first batch and cached: the second batch engages it without
        # reading the store's engagement rows (it was there when they were all written).
        assert reads == []
        assert app.lead("email:ann@newco.io").account_id is not None
