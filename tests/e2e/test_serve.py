"""`leadflow serve` embedded (SQLite) and `ingest --format segment`, as a user runs them: real
processes, a real HTTP client, the result read back with `lead show`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import clean_env
from tests.intake_server import LEADFLOW, ServeProcess
from tests.segment_spec import JOURNEY_AT, JOURNEY_EMAIL, JOURNEY_SCORE, journey

TOKEN = "wk_e2e_4f1c"


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = clean_env()
    env.update({"LEADFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'lf.db'}",
                "LEADFLOW_LOG_FORMAT": "json", "LEADFLOW_INTAKE_TOKENS": TOKEN})
    env.update(extra)
    return env


def leadflow(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LEADFLOW, *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env_for(tmp_path, **extra), timeout=300, check=False)


def shown(tmp_path: Path, identity: str) -> dict[str, object]:
    result = leadflow(tmp_path, "lead", "show", identity, "--at", JOURNEY_AT, "--json")
    assert result.returncode == 0, result.stderr
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


def test_serve_refuses_to_start_without_tokens_unless_told_no_auth(tmp_path: Path) -> None:
    refused = leadflow(tmp_path, "serve", LEADFLOW_INTAKE_TOKENS="")
    assert refused.returncode == 1
    assert "no intake tokens" in refused.stderr and "Traceback" not in refused.stderr
    missing = leadflow(tmp_path, "serve", "--tokens-file", "nope.txt", LEADFLOW_INTAKE_TOKENS="")
    assert missing.returncode == 1 and "cannot read the tokens file" in missing.stderr
    both = leadflow(tmp_path, "serve", "--no-auth")
    assert both.returncode == 1 and "--no-auth with tokens configured" in both.stderr
    env = env_for(tmp_path, LEADFLOW_INTAKE_TOKENS="")
    with ServeProcess(env, tmp_path / "serve.log", "--no-auth") as server:
        answer = httpx.post(f"{server.url}/v1/records", timeout=30, json={
            "event_id": "n1", "type": "email_opened", "occurred_at": "2026-03-02T09:00:00Z",
            "lead": {"email": "open@acme.io"}})
        assert answer.status_code == 200 and answer.json()["accepted"] == 1
    assert "authentication is OFF" in (tmp_path / "serve.log").read_text()


def test_serve_embedded_applies_records_and_segment_batches_to_the_store(
        tmp_path: Path) -> None:
    with ServeProcess(env_for(tmp_path), tmp_path / "serve.log") as server:
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.json() == {"status": "ready", "sink": "store"}
        nobody = httpx.post(f"{server.url}/v1/batch", json={"batch": journey()}, timeout=30)
        assert nobody.status_code == 401
        # As a Segment SDK sends it: the write key as the Basic user name, gzip allowed.
        answer = httpx.post(f"{server.url}/v1/batch", json={"batch": journey()},
                            auth=(TOKEN, ""), timeout=30)
        body = answer.json()
        assert answer.status_code == 200, body
        assert (body["accepted"], body["rejected"], body["unmapped"]) == (6, 0, 1)
        assert body["unmapped_events"] == {"Account Created": 1}
        lines = "\n".join(json.dumps(r) for r in [
            {"event_id": "c1", "type": "form_submitted", "occurred_at": "2026-03-02T09:00:00Z",
             "lead": {"email": "anna@acme.io"}, "context": {"form_id": "contact-sales"}},
            {"event_id": "c2", "type": "email_opened", "occurred_at": "someday",
             "lead": {"email": "anna@acme.io"}}])
        records = httpx.post(f"{server.url}/v1/records", content=lines,
                             headers={"Authorization": f"Bearer {TOKEN}",
                                      "Content-Type": "application/x-ndjson"}, timeout=30)
        assert [r["status"] for r in records.json()["results"]] == ["accepted", "rejected"]
        assert server.stop() == 0  # SIGTERM: requests finished, clean exit
    log = (tmp_path / "serve.log").read_text()
    assert JOURNEY_EMAIL not in log and "anna@acme.io" not in log  # no emails in logs
    requests = [json.loads(line) for line in log.splitlines()
                if line.startswith("{") and '"intake request' in line]
    assert [(r["event"], r["status"]) for r in requests] == [
        ("intake request refused", 401), ("intake request", 200), ("intake request", 200)]
    lead = shown(tmp_path, JOURNEY_EMAIL)
    assert lead["score"] == pytest.approx(JOURNEY_SCORE)
    assert (lead["stage"], lead["owner"]) == ("mql", "rep-b")
    assert shown(tmp_path, "anna@acme.io")["engagement"] == pytest.approx(25)


def test_ingest_format_segment_maps_a_file_of_messages_and_counts_the_unmapped(
        tmp_path: Path) -> None:
    source = tmp_path / "segment.jsonl"
    source.write_text("\n".join(json.dumps(m) for m in journey()) + "\nnot json\n")
    result = leadflow(tmp_path, "ingest", "--format", "segment", str(source), "--json")
    assert result.returncode == 3, result.stderr  # the last line is rejected
    summary = json.loads(result.stdout)
    assert (summary["applied"], summary["rejected"], summary["unmapped"]) == (6, 1, 1)
    assert summary["unmapped_events"] == {"Account Created": 1}
    rejects = (tmp_path / "segment.jsonl.rejects.jsonl").read_text().splitlines()
    assert [json.loads(r)["line"] for r in rejects] == [8]
    assert shown(tmp_path, JOURNEY_EMAIL)["score"] == pytest.approx(JOURNEY_SCORE)
    again = leadflow(tmp_path, "ingest", "--format", "segment", str(source))
    assert "0 applied, 6 duplicates ignored, 1 rejected, 1 unmapped" in again.stdout
    assert "'Account Created'=1" in again.stdout


def test_rules_check_validates_the_segment_section(tmp_path: Path) -> None:
    good = leadflow(tmp_path, "rules", "show-default")
    (tmp_path / "mine.toml").write_text(good.stdout)
    checked = leadflow(tmp_path, "rules", "check", "mine.toml")
    assert checked.returncode == 0 and "10 Segment track and 1 page mappings" in checked.stdout
    (tmp_path / "bad.toml").write_text(good.stdout.replace('type = "trial_started"\ncontext',
                                                           'type = "trial_begun"\ncontext'))
    refused = leadflow(tmp_path, "rules", "check", "bad.toml")
    assert refused.returncode == 1
    assert "segment.track.5.type" in refused.stderr and "Traceback" not in refused.stderr


def test_serve_counts_its_requests_by_route_and_status_on_its_metrics_port(
        tmp_path: Path) -> None:
    from tests.intake_server import free_port

    metrics_port = free_port()
    with ServeProcess(env_for(tmp_path), tmp_path / "serve.log",
                      "--metrics-port", str(metrics_port)) as server:
        metrics = f"http://127.0.0.1:{metrics_port}"
        assert httpx.post(f"{server.url}/v1/batch", json={"batch": journey()},
                          timeout=30).status_code == 401
        for _ in range(2):
            assert httpx.post(f"{server.url}/v1/batch", json={"batch": journey()},
                              auth=(TOKEN, ""), timeout=30).status_code == 200
        assert httpx.get(f"{server.url}/no/such/path", timeout=30).status_code == 404
        text = httpx.get(f"{metrics}/metrics", timeout=30).text
        ready = httpx.get(f"{metrics}/readyz", timeout=30)
        live = httpx.get(f"{metrics}/healthz", timeout=30)
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line.startswith("leadflow_http_requests_total{")}
    assert samples['leadflow_http_requests_total{method="POST",route="/v1/batch",'
                   'status="401"}'] == 1
    assert samples['leadflow_http_requests_total{method="POST",route="/v1/batch",'
                   'status="200"}'] == 2
    # A client's made-up path is one series, not one per path.
    assert samples['leadflow_http_requests_total{method="GET",route="unmatched",'
                   'status="404"}'] == 1
    assert 'leadflow_http_request_duration_seconds_count{route="/v1/batch"} 3.0' in text
    assert ready.status_code == 200 and live.status_code == 200
