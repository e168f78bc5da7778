"""Kafka keys: one partition owns a company's people; other records go by their identity."""

from __future__ import annotations

from leadflow.consumers.publish import partition_key
from tests.conftest import Records


def test_people_of_one_company_share_the_account_key(rec: Records) -> None:
    anna = rec("email_opened", "Anna@Acme.io")
    bob = rec("form_submitted", "bob@acme.io", lead={"phone": "+44 20 7946 0958"})
    assert partition_key(anna) == partition_key(bob) == "domain:acme.io"


def test_free_mail_phone_only_and_anonymous_records_go_by_their_identity(rec: Records) -> None:
    assert partition_key(rec("email_opened", "anna@gmail.com")) == "email:anna@gmail.com"
    assert partition_key(rec("call_logged", lead={"phone": "+44 20 7946 0958"})) == \
        "phone:+442079460958"
    assert partition_key(rec("page_viewed", lead={"anonymous_id": "c-1"})) == "anonymous_id:c-1"


def test_the_rules_file_decides_what_is_free_mail(rec: Records) -> None:
    record = rec("email_opened", "anna@acme.io")
    assert partition_key(record, frozenset({"acme.io"})) == "email:anna@acme.io"
