"""The production path logs no email or phone either: `publish` refusing lines and `consume`
dead-lettering records, on a real broker and PostgreSQL, with JSON logs at DEBUG. The
dead-letter topic itself keeps the raw records (what the README's Privacy section says
erasure cannot reach), for its retention."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import Pipeline
from tests.integration.services import Services

pytestmark = pytest.mark.integration

GOOD = ("anna.smith@acme.io", "bob.jones@acme.io")
BAD_EMAILS = ("lookalike@аcme.io", "ghost.person@nowhere.io", "bob@@acme.io")
PHONES = ("+442079460958", "+1 415 555 01", "4155550100")


def record(event_id: str, lead: dict[str, str], type_: str = "email_opened",
           **fields: str) -> str:
    return json.dumps({"event_id": event_id, "type": type_,
                       "occurred_at": "2026-03-02T09:00:00Z", "lead": lead, **fields},
                      ensure_ascii=False)


@pytest.fixture
def pipe(services: Services, pg_url: str, topic_prefix: str) -> Iterator[Pipeline]:
    pipeline = Pipeline(services, pg_url, topic_prefix)
    assert pipeline.run("db", "init").returncode == 0
    topics = pipeline.run("kafka", "create-topics", "--partitions", "1")
    assert topics.returncode == 0, topics.stderr
    yield pipeline
    pipeline.close()


def assert_no_personal_data(text: str) -> None:
    for email in (*GOOD, *BAD_EMAILS):
        assert email not in text and email.split("@")[0] + "@" not in text, email
    for phone in PHONES:
        assert phone not in text, phone
        digits = re.sub(r"\D", "", phone)
        assert not any(digits in re.sub(r"\D", "", x) for x in text.splitlines()), phone


def test_publish_and_consume_log_refusals_and_dead_letters_without_emails_or_phones(
        pipe: Pipeline, tmp_path: Path) -> None:
    lines = [record("g1", {"email": GOOD[0], "phone": PHONES[0]}),
             record("g2", {"email": GOOD[1]}),
             record("b1", {"email": BAD_EMAILS[0]}),            # refused by publish
             record("b2", {"email": BAD_EMAILS[2]}),
             record("b3", {"phone": PHONES[1]})]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    published = pipe.run("publish", str(source), LEADFLOW_LOG_LEVEL="DEBUG")
    assert published.returncode == 3, published.stderr[-3000:]
    assert published.stderr.count('"line not published"') == 3
    assert_no_personal_data(published.stderr + published.stdout)

    # Sent by another client: valid JSON the engine refuses, and a value that is no record.
    pipe.produce_raw([
        record("b4", {"email": BAD_EMAILS[1]}, type_="deal_won", actor="rep-a").encode(),
        record("b5", {"email": BAD_EMAILS[0], "phone": PHONES[2]}).encode(),
        f"not json, from {BAD_EMAILS[1]} tel {PHONES[2]}".encode()])
    consumed = pipe.run("consume", "--until-idle", LEADFLOW_LOG_LEVEL="DEBUG")
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    logs = [json.loads(x) for x in consumed.stderr.splitlines()]
    letters = [x for x in logs if x["event"] == "dead-lettered"]
    assert sorted(x["reason"] for x in letters) == ["invalid_identity", "malformed_json",
                                                    "unknown_lead"]
    assert any("l***@аcme.io" in str(x.get("detail")) for x in letters)
    assert_no_personal_data(consumed.stderr + consumed.stdout)

    # The dead letters themselves hold the records as sent: only retention removes them.
    values = b" ".join(m.value for m in pipe.read_all(pipe.dlq))
    assert BAD_EMAILS[1].encode() in values and PHONES[2].encode() in values
