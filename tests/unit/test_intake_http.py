"""The HTTP intake's contract with clients, on the real engine (in-memory store): auth,
formats, limits, status codes and per-record answers; and that no input yields a 500 and
no refused request writes anything."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadflow.domain.rules import default_rules
from leadflow.engine.app import LeadflowApp
from leadflow.intake.auth import Tokens, load_tokens, parse_tokens, presented_token
from leadflow.intake.http import IntakeConfig, Limits, create_app
from leadflow.intake.sinks import EngineSink
from tests.intake_server import ASGIClient
from tests.segment_spec import JOURNEY_AT, JOURNEY_EMAIL, JOURNEY_SCORE, SPEC_BATCH, journey

TOKEN = "wk_test_0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


def record(event_id: str, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"event_id": event_id, "type": "form_submitted",
                            "occurred_at": "2026-03-02T09:00:00Z",
                            "lead": {"email": "anna@acme.io"}}
    data.update(fields)
    return data


class Intake:
    def __init__(self, limits: Limits | None = None) -> None:
        self.app = LeadflowApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        config = IntakeConfig(sink=EngineSink(self.app), mapping=default_rules().segment,
                              tokens=Tokens([TOKEN, "other-token"]),
                              limits=limits or Limits(), clock=lambda: NOW)
        self.client = ASGIClient(create_app(config))

    def written(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    def post(self, path: str, body: Any = None, *, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        if content is None:
            content = json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **BEARER, **(headers or {})}
        return self.client.post(path, content=content, headers=sent)


@pytest.fixture
def intake() -> Iterator[Intake]:
    yield Intake()


def test_health_and_readiness_need_no_token(intake: Intake) -> None:
    assert intake.client.get("/healthz").json() == {"status": "ok"}
    ready = intake.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "sink": "store"}


@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong", f"Bearer {TOKEN}x", "Basic !!!",
    "Basic " + base64.b64encode(b"wrong:").decode(), f"Token {TOKEN}", "Bearer",
])
def test_a_request_without_a_valid_token_gets_401_and_writes_nothing(
        intake: Intake, authorization: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = intake.client.post("/v1/records", content=json.dumps(record("a1")),
                                headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert "Bearer" in answer.headers["www-authenticate"]
    assert intake.written() == 0


def test_basic_auth_with_the_token_as_user_name_is_how_segment_sdks_send_a_write_key(
        intake: Intake) -> None:
    basic = "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()
    answer = intake.post("/v1/records", record("b1"), headers={"Authorization": basic})
    assert answer.status_code == 200 and answer.json()["accepted"] == 1


def test_one_record_an_array_and_ndjson_are_answered_per_record(intake: Intake) -> None:
    one = intake.post("/v1/records", record("r1"))
    assert one.json()["results"] == [{"index": 0, "status": "accepted", "event_id": "r1"}]
    many = intake.post("/v1/records", [record("r2"), record("r1"), {"nope": 1}, 7,
                                       record("r3", lead={"email": "bob@@acme.io"})])
    body = many.json()
    assert many.status_code == 200
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1, 1, 3)
    assert [r["status"] for r in body["results"]] == [
        "accepted", "duplicate", "rejected", "rejected", "rejected"]
    assert body["results"][2]["reason"] == "schema_violation"
    assert (body["results"][4]["reason"], body["results"][4]["field"]) == (
        "invalid_identity", "lead.email")
    lines = (json.dumps(record("n1")) + "\n\nnot json\n" + json.dumps(record("n2"))).encode()
    nd = intake.post("/v1/records", content=lines,
                     headers={"Content-Type": "application/x-ndjson"})
    results = nd.json()["results"]
    assert [(r["line"], r["status"]) for r in results] == [
        (1, "accepted"), (3, "rejected"), (4, "accepted")]
    assert results[1]["reason"] == "malformed_json"


def test_engine_refusals_are_rejections_with_their_reason(intake: Intake) -> None:
    answer = intake.post("/v1/records", [record("d1", type="deal_won",
                                                 lead={"email": "ghost@acme.io"}),
                                         record("ok1")])
    results = answer.json()["results"]
    assert results[0]["status"] == "rejected" and results[0]["reason"] == "unknown_lead"
    assert results[1]["status"] == "accepted"
    conflict = intake.post("/v1/records", record("ok1", type="email_opened"))
    assert conflict.status_code == 422
    assert conflict.json()["results"][0]["reason"] == "event_id_conflict"


def test_a_request_whose_every_record_is_rejected_gets_422_and_writes_nothing(
        intake: Intake) -> None:
    answer = intake.post("/v1/records", [record("x1", occurred_at="yesterday"),
                                         record("x2", type="tweeted")])
    assert answer.status_code == 422
    assert [r["reason"] for r in answer.json()["results"]] == ["schema_violation",
                                                               "unknown_type"]
    assert intake.written() == 0


@pytest.mark.parametrize(("path", "content", "content_type", "status", "code"), [
    ("/v1/records", b"{not json", "application/json", 400, "malformed_body"),
    ("/v1/records", b"[]", "application/json", 400, "no_records"),
    ("/v1/records", b'"text"', "application/json", 400, "malformed_body"),
    ("/v1/records", b"\n\n", "application/x-ndjson", 400, "no_records"),
    ("/v1/records", b"{}", "text/csv", 415, "unsupported_media_type"),
    ("/v1/records", b"{}", "", 415, "unsupported_media_type"),
    ("/v1/batch", b'{"batch": {}}', "application/json", 400, "malformed_body"),
    ("/v1/batch", b'{"batch": []}', "application/json", 400, "no_records"),
    ("/v1/batch", b"[1e400]", "application/json", 400, "malformed_body"),
    ("/v1/batch", b"{}", "application/x-ndjson", 415, "unsupported_media_type"),
])
def test_what_a_client_gets_wrong_is_a_named_4xx(intake: Intake, path: str, content: bytes,
                                                 content_type: str, status: int,
                                                 code: str) -> None:
    answer = intake.post(path, content=content, headers={"Content-Type": content_type})
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert intake.written() == 0


def test_unknown_paths_and_methods_are_json_errors(intake: Intake) -> None:
    assert intake.client.get("/nope").json()["error"]["code"] == "not_found"
    answer = intake.client.get("/v1/records", headers=BEARER)
    assert answer.status_code == 405
    assert answer.json()["error"]["code"] == "method_not_allowed"


def test_limits_on_body_size_and_records_per_request() -> None:
    small = Intake(Limits(max_body_bytes=2048, max_records=3))
    big = small.post("/v1/records", [record(f"s{i}", reason="x" * 900) for i in range(3)])
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    many = small.post("/v1/records", [record(f"m{i}") for i in range(4)])
    assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_records"
    batch = small.post("/v1/batch", {"batch": [{"type": "page"}] * 4})
    assert batch.json()["error"]["code"] == "too_many_records"
    assert small.written() == 0


def test_a_segment_message_over_32_kb_is_rejected_alone(intake: Intake) -> None:
    messages = journey()[:2]
    messages[0] = {**messages[0], "properties": {"url": "/pricing", "pad": "x" * (33 << 10)}}
    results = intake.post("/v1/batch", {"batch": messages}).json()["results"]
    assert [(r["status"], r.get("reason")) for r in results] == [
        ("rejected", "record_too_large"), ("accepted", None)]


def test_gzip_bodies_are_read_and_a_gzip_bomb_is_refused() -> None:
    intake = Intake(Limits(max_body_bytes=64 << 10))
    packed = gzip.compress(json.dumps({"batch": journey()}).encode())
    answer = intake.post("/v1/batch", content=packed, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200 and answer.json()["accepted"] == 6
    bomb = gzip.compress(b"[" + b" " * (10 << 20) + b"]")
    refused = intake.post("/v1/records", content=bomb, headers={"Content-Encoding": "gzip"})
    assert refused.status_code == 413
    other = intake.post("/v1/records", content=b"{}", headers={"Content-Encoding": "br"})
    assert other.status_code == 415


def test_a_segment_batch_is_mapped_answered_per_message_and_scored(intake: Intake) -> None:
    answer = intake.post("/v1/batch", {"batch": journey(), "sentAt": "2026-03-02T09:00:01Z"})
    body = answer.json()
    assert answer.status_code == 200
    assert (body["accepted"], body["rejected"], body["unmapped"]) == (6, 0, 1)
    assert body["unmapped_events"] == {"Account Created": 1}
    unmapped = body["results"][6]
    assert (unmapped["status"], unmapped["reason"]) == ("unmapped", "unmapped_event")
    signed_up = body["results"][3]
    assert signed_up["ignored"] == ["properties.phone: not a person's phone number in "
                                    "international (+country) form"]
    view = intake.app.lead(f"email:{JOURNEY_EMAIL}", at=datetime.fromisoformat(JOURNEY_AT))
    assert view.score == pytest.approx(JOURNEY_SCORE)
    again = intake.post("/v1/batch", {"batch": journey()}).json()
    assert (again["accepted"], again["duplicates"]) == (0, 6)


def test_the_published_batch_example_is_answered_message_by_message(intake: Intake) -> None:
    body = intake.post("/v1/batch", SPEC_BATCH).json()
    assert [(r["status"], r.get("reason")) for r in body["results"]] == [
        ("accepted", None), ("unmapped", "unmapped_event"),
        ("rejected", "schema_violation"), ("unmapped", "unmapped_event")]
    assert body["unmapped_events"] == {"Song Played": 2}


def test_the_batch_context_is_merged_into_each_message(intake: Intake) -> None:
    message = {"type": "page", "anonymousId": "c1", "messageId": "p1",
               "timestamp": "2026-03-02T09:00:00Z", "properties": {"url": "/blog/x"}}
    shared = {"campaign": {"source": "newsletter", "name": "spring"}}
    intake.post("/v1/batch", {"batch": [message], "context": shared})
    identify = {"type": "identify", "anonymousId": "c1", "userId": "u1",
                "traits": {"email": "c1@acme.io"}, "messageId": "i1",
                "timestamp": "2026-03-02T09:01:00Z"}
    intake.post("/v1/identify", identify)
    view = intake.app.lead("email:c1@acme.io")
    assert [c.rule for c in view.breakdown] == ["blog-post"]


def test_single_call_endpoints_take_one_message(intake: Intake) -> None:
    track = {"userId": "u2", "event": "Demo Requested", "messageId": "t1",
             "timestamp": "2026-03-02T09:00:00Z", "properties": {"email": "d@acme.io"}}
    answer = intake.post("/v1/track", track)
    assert answer.json()["results"][0]["status"] == "accepted"
    assert intake.app.lead("email:d@acme.io").engagement == pytest.approx(20, rel=0.01)


def test_tokens_are_read_from_text_and_headers_safely(tmp_path: Any) -> None:
    assert parse_tokens("a, b\n# comment\nc # trailing\n\n", source="x") == ["a", "b", "c"]
    file = tmp_path / "tokens"
    file.write_text("from-file\n")
    assert load_tokens("env1,env2", file) == ["env1", "env2", "from-file"]
    assert presented_token("bearer  abc ") == "abc"
    assert presented_token("Basic " + base64.b64encode(b":pw").decode()) == "pw"
    assert presented_token("Basic " + base64.b64encode(b"\xff").decode()) is None
    tokens = Tokens(["abc"])
    assert tokens.accepts("abc") and not tokens.accepts("abcd") and not tokens.accepts(None)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "event", "userId", "anonymousId", "batch",
                                       "traits", "properties", "context", "timestamp",
                                       "messageId", "lead", "email", "event_id", "url"])
                      | st.text(max_size=8), children, max_size=5),
    max_leaves=25)
PATHS = st.sampled_from(["/v1/records", "/v1/batch", "/v1/track", "/v1/identify"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=PATHS, document=JSON)
def test_no_json_document_yields_a_500_and_a_refused_request_writes_nothing(
        path: str, document: Any) -> None:
    _check_never_500(path, json.dumps(document).encode(), "application/json")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=PATHS, body=st.binary(max_size=300),
       content_type=st.sampled_from(["application/json", "application/x-ndjson",
                                     "text/plain", "application/octet-stream"]))
def test_no_byte_sequence_yields_a_500_and_a_refused_request_writes_nothing(
        path: str, body: bytes, content_type: str) -> None:
    _check_never_500(path, body, content_type)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(["identify", "track", "page", "group", "x"]),
     "event": st.sampled_from(["Email Opened", "Signed Up", "Song Played", "Trial Started"]),
     "userId": st.text(max_size=5) | st.integers(), "timestamp": st.sampled_from(
         ["2026-03-02T09:00:00Z", "bad", "2015-2-02T00:30:08Z"]),
     "traits": st.fixed_dictionaries({"email": st.sampled_from(["a@acme.io", "bad@@x", ""])}),
     "properties": JSON}), min_size=1, max_size=5))
def test_segment_shaped_batches_never_yield_a_500(messages: list[dict[str, Any]]) -> None:
    _check_never_500("/v1/batch", json.dumps({"batch": messages}).encode(), "application/json")


_SHARED: list[Intake] = []


def _check_never_500(path: str, body: bytes, content_type: str) -> None:
    if not _SHARED:
        _SHARED.append(Intake())
    intake = _SHARED[0]
    before = intake.written()
    answer = intake.post(path, content=body, headers={"Content-Type": content_type})
    assert answer.status_code in (200, 400, 413, 415, 422), answer.text
    payload = answer.json()
    if answer.status_code >= 400:
        assert intake.written() == before
        assert "error" in payload or all(r["status"] == "rejected" for r in payload["results"])
    else:
        assert {"accepted", "duplicates", "rejected", "unmapped", "results"} <= set(payload)


def test_a_leading_byte_order_mark_is_ignored_as_the_contract_ignores_it(intake: Intake) -> None:
    body = b"\xef\xbb\xbf" + json.dumps([record("bom1")]).encode()
    assert intake.post("/v1/records", content=body).json()["accepted"] == 1


def test_every_answer_is_observed_by_route_template_never_by_raw_path() -> None:
    seen: list[tuple[str, str, int]] = []
    app = LeadflowApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    config = IntakeConfig(sink=EngineSink(app), mapping=default_rules().segment,
                          tokens=Tokens([TOKEN]), clock=lambda: NOW,
                          observe=lambda method, route, status, seconds: seen.append(
                              (method, route, status)))
    client = ASGIClient(create_app(config))
    client.get("/healthz")
    client.post("/v1/records", json=record("o1"), headers=BEARER)
    client.post("/v1/records", json=record("o2"))
    client.get("/wp-admin/../../etc/passwd")
    client.post("/v1/batch", json={"batch": [{"type": "track"}]}, headers=BEARER)
    assert seen == [("GET", "/healthz", 200), ("POST", "/v1/records", 200),
                    ("POST", "/v1/records", 401), ("GET", "unmatched", 404),
                    ("POST", "/v1/batch", 422)]


def test_browsers_of_the_allowed_origins_may_post_and_others_may_not() -> None:
    app = LeadflowApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    config = IntakeConfig(sink=EngineSink(app), mapping=default_rules().segment,
                          tokens=Tokens([TOKEN]), clock=lambda: NOW,
                          cors_origins=("https://www.initech.com",))
    client = ASGIClient(create_app(config))
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    allowed = client.options("/v1/batch", headers={"Origin": "https://www.initech.com",
                                                   **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://www.initech.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = client.options("/v1/batch", headers={"Origin": "https://evil.example",
                                                 **preflight})
    assert other.status_code == 400
    posted = client.post("/v1/batch", json={"batch": journey()[:1]},
                         headers={"Origin": "https://www.initech.com", **BEARER})
    assert posted.headers["access-control-allow-origin"] == "https://www.initech.com"
    assert posted.json()["accepted"] == 1
    unauthenticated = client.post("/v1/batch", json={"batch": journey()[:1]},
                                  headers={"Origin": "https://www.initech.com"})
    assert unauthenticated.status_code == 401
    without = Intake().client.options("/v1/batch", headers={
        "Origin": "https://www.initech.com", **preflight})
    assert without.status_code == 405  # no CORS configured: no preflight answered
