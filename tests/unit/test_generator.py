"""The synthetic stream: deterministic, valid against contract v1, plausible, ingestible."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
import pytest

from leadflow.contract import InboundRecord, RecordRejected, parse_record
from leadflow.contract.identity import normalise_phone
from leadflow.domain.rules import default_rules
from leadflow.domain.vocabulary import DISPOSITION_TYPES
from leadflow.engine.app import LeadflowApp
from leadflow.generator import (
    BAD_KINDS,
    PHONE_TEMPLATES,
    RECORDS_PER_LEAD,
    count_hint,
    generate,
    generate_labeled,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
LEADS, DAYS, SEED = 2000, 90, 42
END = START + timedelta(days=DAYS)
REPS = {"rep-a", "rep-b", "rep-c", "rep-d", "rep-e", "rep-f"}

EXPECTED_REASON = {
    "malformed_json": "malformed_json",
    "unknown_type": "unknown_type",
    "invalid_email": "invalid_identity",
    "missing_occurred_at": "schema_violation",
    "far_future": "timestamp_out_of_range",
    "missing_identity": "invalid_identity",
    "wrong_field_type": "schema_violation",
}


@pytest.fixture(scope="module")
def labeled() -> list[tuple[str, str | None]]:
    return list(generate_labeled(LEADS, DAYS, SEED, start=START))


@pytest.fixture(scope="module")
def records(labeled: list[tuple[str, str | None]]) -> list[InboundRecord]:
    return [parse_record(line) for line, bad in labeled if bad is None]


@pytest.fixture(scope="module")
def raw(labeled: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
    return [json.loads(line) for line, bad in labeled if bad is None]


# ----------------------------------------------------------------------- determinism, size


def test_the_same_seed_gives_the_same_stream() -> None:
    assert list(generate(300, 30, 7)) == list(generate(300, 30, 7))


def test_a_different_seed_gives_a_different_stream() -> None:
    assert list(generate(300, 30, 7)) != list(generate(300, 30, 8))


def test_generate_yields_the_labeled_lines_without_labels(
        labeled: list[tuple[str, str | None]]) -> None:
    assert list(itertools.islice(generate(LEADS, DAYS, SEED, start=START), 500)) == [
        line for line, _ in labeled[:500]]


def test_lines_are_single_json_lines_without_newlines(
        labeled: list[tuple[str, str | None]]) -> None:
    assert all("\n" not in line for line, _ in labeled)


def test_about_ten_records_per_lead_over_the_default_window(
        labeled: list[tuple[str, str | None]]) -> None:
    assert 0.85 * RECORDS_PER_LEAD * LEADS <= len(labeled) <= 1.15 * RECORDS_PER_LEAD * LEADS
    assert 0.85 <= len(labeled) / count_hint(LEADS, DAYS) <= 1.15


def test_count_hint_grows_with_the_window_and_the_leads() -> None:
    hints = [count_hint(1000, d) for d in (1, 7, 30, 90, 365, 1000)]
    assert hints == sorted(hints)
    assert count_hint(100_000) == pytest.approx(1_000_000, rel=0.01)
    assert count_hint(2000, 30) == pytest.approx(2 * count_hint(1000, 30), abs=1)


def test_a_short_window_yields_about_what_count_hint_says() -> None:
    n = sum(1 for _ in generate(1000, 14, 3))
    assert 0.8 <= n / count_hint(1000, 14) <= 1.2


def test_the_stream_is_lazy_even_for_a_huge_number_of_leads() -> None:
    # Building a million leads' stream up front would take minutes; the first lines do not.
    first = list(itertools.islice(generate(1_000_000, 365, 1), 200))
    assert len(first) == 200


def test_nonsense_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="days"):
        generate(10, 0, 1)
    with pytest.raises(ValueError, match="timezone"):
        generate(10, 5, 1, start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="bad_ratio"):
        generate(10, 5, 1, bad_ratio=1.5)


def test_no_leads_means_an_empty_stream() -> None:
    assert list(generate(0, 30, 1)) == []


# ----------------------------------------------------------------------- contract


def test_every_good_line_validates_against_the_contract(
        labeled: list[tuple[str, str | None]]) -> None:
    for line, bad in labeled:
        if bad is None:
            parse_record(line)
            parse_record(line, now=END)  # nothing claims to be from after the window


def test_bad_lines_of_every_kind_are_present_and_rejected_for_their_reason(
        labeled: list[tuple[str, str | None]]) -> None:
    seen: Counter[str] = Counter()
    for line, bad in labeled:
        if bad is None:
            continue
        seen[bad] += 1
        with pytest.raises(RecordRejected) as caught:
            parse_record(line, now=END)
        assert caught.value.reason == EXPECTED_REASON[bad], (bad, line)
    assert set(seen) == set(BAD_KINDS)
    total = sum(seen.values())
    assert 0.002 * len(labeled) <= total <= 0.01 * len(labeled)


def test_bad_ratio_zero_gives_only_good_lines() -> None:
    for line in generate(200, 30, 5, bad_ratio=0.0):
        parse_record(line, now=START + timedelta(days=30))


def test_every_occurred_at_lies_within_the_window(records: list[InboundRecord]) -> None:
    assert all(START <= r.occurred_at <= END for r in records)
    assert max(r.occurred_at for r in records) > END - timedelta(days=2)


def test_timestamps_carry_offsets_in_several_styles(raw: list[dict[str, Any]]) -> None:
    stamps = [r["occurred_at"] for r in raw]
    assert any(s.endswith("Z") for s in stamps)
    assert any(s.endswith("+00:00") for s in stamps)
    local = {s[-6:] for s in stamps if not s.endswith(("Z", "+00:00"))}
    assert {"-05:00", "+01:00", "+09:00"} <= local


def test_event_ids_are_unique_except_for_resent_copies(
        labeled: list[tuple[str, str | None]]) -> None:
    by_id: defaultdict[str, set[str]] = defaultdict(set)
    for line, bad in labeled:
        if bad is None:
            by_id[json.loads(line)["event_id"]].add(line)
    assert all(len(lines) == 1 for lines in by_id.values())  # same id, same bytes
    assert all(event_id.startswith(f"evt-{SEED}-") for event_id in by_id)


# ----------------------------------------------------------------------- delivery


def test_duplicates_are_exact_copies_sent_a_bit_later(
        labeled: list[tuple[str, str | None]]) -> None:
    counts = Counter(line for line, bad in labeled if bad is None)
    copies = sum(n - 1 for n in counts.values())
    assert 0.004 * len(labeled) <= copies <= 0.02 * len(labeled)


def test_records_are_in_time_order_apart_from_late_ones() -> None:
    stamps = [parse_record(line).occurred_at
              for line in generate(1000, 60, 9, bad_ratio=0, duplicate_ratio=0, late_ratio=0)]
    assert stamps == sorted(stamps)


def test_some_records_arrive_hours_to_days_late(records: list[InboundRecord]) -> None:
    latest = START
    lateness: list[timedelta] = []
    for record in records:
        if record.occurred_at < latest - timedelta(minutes=30):
            lateness.append(latest - record.occurred_at)
        latest = max(latest, record.occurred_at)
    assert 0.005 * len(records) <= len(lateness) <= 0.04 * len(records)
    assert max(lateness) >= timedelta(hours=12)
    assert max(lateness) <= timedelta(days=6)


# ----------------------------------------------------------------------- realism


def test_a_persons_first_record_is_a_touchpoint(records: list[InboundRecord]) -> None:
    known: set[str] = set()
    for record in records:
        keys = {f"{k}:{v}" for k, v in (("email", record.lead.email),
                                        ("phone", record.lead.phone),
                                        ("external_id", record.lead.external_id)) if v}
        if record.type in DISPOSITION_TYPES:
            assert keys & known, record
        known |= keys


def test_companies_have_several_people_engaging_within_days(
        records: list[InboundRecord]) -> None:
    free = default_rules().free_mail
    first_seen: defaultdict[str, dict[str, datetime]] = defaultdict(dict)
    for record in records:
        email = record.lead.email
        if email and email.rsplit("@", 1)[1] not in free:
            first_seen[email.rsplit("@", 1)[1]].setdefault(email, record.occurred_at)
    surging = 0
    for people in first_seen.values():
        times = sorted(people.values())
        if any(len([t for t in times if s <= t <= s + timedelta(days=14)]) >= 3
               for s in times):
            surging += 1
    assert surging >= 10
    assert max(len(people) for people in first_seen.values()) >= 5
    assert sum(1 for people in first_seen.values() if len(people) == 1) > surging


def test_there_are_free_mail_people_too(records: list[InboundRecord]) -> None:
    free = default_rules().free_mail
    domains = Counter(r.lead.email.rsplit("@", 1)[1] for r in records
                      if r.lead.email and r.lead.first_name)
    assert domains["gmail.com"] > 0
    assert sum(n for d, n in domains.items() if d in free) > 0.2 * sum(domains.values())


def test_profiles_look_like_people_at_companies(records: list[InboundRecord]) -> None:
    profiles = [r.lead for r in records if r.lead.first_name]
    assert len(profiles) >= 0.9 * LEADS
    titles = {p.title for p in profiles if p.title}
    assert {"CEO", "Student", "Software Engineer"} <= titles
    assert any(t.startswith(("VP", "Director", "Head")) for t in titles)
    assert {p.industry for p in profiles if p.industry} == {
        "software", "retail", "healthcare", "manufacturing", "finance", "education"}
    sizes: dict[str, int] = {}
    for p in profiles:
        if p.company and p.employees:
            sizes.setdefault(p.company, p.employees)
    employees = sorted(sizes.values())
    assert employees[0] >= 1 and employees[-1] <= 5000
    assert employees[len(employees) // 2] <= 50  # most companies are small
    assert employees[-len(employees) // 20] >= 500  # a few are large
    countries = {p.country for p in profiles}
    assert {"US", "GB", "DE", "FR", "CA", "NL", "ES", "KR", "RU", "BR", "IN"} <= countries


def test_some_profiles_change_later(records: list[InboundRecord]) -> None:
    titles: defaultdict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.lead.email and r.lead.title:
            titles[r.lead.email].add(r.lead.title)
    assert any(len(t) > 1 for t in titles.values())


def test_context_names_sources_campaigns_pages_content_and_forms(
        records: list[InboundRecord]) -> None:
    ctx = [r.context for r in records]
    assert {"google-ads", "linkedin", "organic", "webinar", "partner", "trade-show",
            "email"} <= {c.source for c in ctx}
    campaigns = {c.campaign for c in ctx if c.campaign}
    assert "q1-webinar" in campaigns
    assert any(c.endswith("-promo") for c in campaigns)
    urls = {c.url for c in ctx if c.url}
    assert "https://example.com/pricing" in urls
    assert any("/blog/" in u for u in urls)
    assert {"contact", "contact-sales", "how-to-buy", "newsletter", "support-question"} <= {
        c.form_id for c in ctx if c.form_id}
    assert any(c.content_id for c in ctx)
    assert any(c.landing_page for c in ctx)


def test_all_kinds_of_touchpoints_and_dispositions_occur(
        records: list[InboundRecord]) -> None:
    types = Counter(r.type for r in records)
    assert set(types) == {
        "form_submitted", "email_opened", "email_clicked", "page_viewed",
        "content_downloaded", "call_logged", "demo_requested", "trial_started",
        "event_attended", "unsubscribed", "sales_accepted", "disqualified", "recycled",
        "converted", "deal_won", "deal_lost", "owner_assigned", "contacted"}
    assert types["page_viewed"] > types["demo_requested"]
    assert types["contacted"] > types["converted"] > types["deal_won"]


def test_sales_dispositions_carry_reps_deals_and_reasons(records: list[InboundRecord]) -> None:
    dispositions = [r for r in records if r.type in DISPOSITION_TYPES]
    for r in dispositions:
        if r.type == "contacted":
            assert r.actor in REPS
        if r.type == "owner_assigned":
            assert r.actor == "manager-1" and r.owner in REPS
        if r.type in ("converted", "deal_won", "deal_lost"):
            assert r.deal is not None and r.deal.currency == "USD"
            assert r.deal.amount is not None and r.deal.amount > 0
        if r.type in ("disqualified", "recycled", "deal_lost"):
            assert r.reason
    reasons = {r.reason for r in dispositions if r.type == "disqualified"}
    assert {"wrong contact", "spam", "competitor", "no budget"} <= reasons
    assert {"not now", "went quiet"} <= {r.reason for r in dispositions
                                         if r.type == "recycled"}


def test_deals_are_won_or_lost_after_conversion(records: list[InboundRecord]) -> None:
    converted = {r.deal.id: r.occurred_at for r in records
                 if r.type == "converted" and r.deal}
    closed = [r for r in records if r.type in ("deal_won", "deal_lost")]
    assert closed
    for r in closed:
        assert r.deal is not None and r.deal.id in converted
        assert r.occurred_at > converted[r.deal.id]


def test_some_leads_have_phones_crm_ids_or_only_a_phone(records: list[InboundRecord]) -> None:
    people = [r.lead for r in records if r.lead.first_name]
    with_phone = sum(1 for p in people if p.phone)
    assert 0.05 * len(people) <= with_phone <= 0.25 * len(people)
    assert any(p.external_id for p in people)
    assert any(r.lead.phone and not r.lead.email and not r.lead.anonymous_id
               and r.type == "form_submitted" for r in records)


def test_anonymous_visits_later_link_to_a_person(records: list[InboundRecord]) -> None:
    alone: dict[str, datetime] = {}
    linked = 0
    for r in records:
        anon = r.lead.anonymous_id
        if anon and not (r.lead.email or r.lead.phone or r.lead.external_id):
            alone.setdefault(anon, r.occurred_at)
        elif anon and r.lead.email and anon in alone and alone[anon] < r.occurred_at:
            linked += 1
    assert linked >= 0.1 * LEADS
    assert len(alone) > linked  # some visitors never say who they are


def test_some_people_appear_under_two_identities_and_are_later_joined(
        records: list[InboundRecord]) -> None:
    phone_alone: dict[str, datetime] = {}
    email_alone: dict[str, datetime] = {}
    merges = 0
    for r in records:
        email, phone = r.lead.email, r.lead.phone
        if phone and not email:
            phone_alone.setdefault(phone, r.occurred_at)
        elif email and not phone:
            email_alone.setdefault(email, r.occurred_at)
        elif email and phone and phone in phone_alone and email in email_alone:
            merges += 1
    assert merges >= 3


def test_phone_templates_give_valid_personal_numbers_of_their_country() -> None:
    rng = random.Random(0)
    for country, templates in PHONE_TEMPLATES.items():
        for prefix, digits in templates:
            for _ in range(300):
                number = prefix + "".join(str(rng.randrange(10)) for _ in range(digits))
                parsed = phonenumbers.parse(number)
                assert phonenumbers.is_valid_number(parsed), number
                assert phonenumbers.region_code_for_number(parsed) == country, number
                assert normalise_phone(number) == number


def test_generated_phones_are_valid_for_the_persons_country(
        records: list[InboundRecord]) -> None:
    checked = 0
    for r in records:
        if r.lead.phone and r.lead.country:
            parsed = phonenumbers.parse(r.lead.phone)
            assert phonenumbers.is_valid_number(parsed)
            checked += 1
    assert checked > 50


# ----------------------------------------------------------------------- into the engine


def test_an_ingested_stream_produces_a_plausible_funnel() -> None:
    days = 60
    end = START + timedelta(days=days)
    app = LeadflowApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    batch: list[InboundRecord] = []
    rejected: Counter[str] = Counter()
    parse_rejects: Counter[str] = Counter()
    applied = duplicates = 0

    def flush() -> None:
        nonlocal applied, duplicates
        result = app.apply_batch(batch)
        applied += result.applied
        duplicates += result.duplicates
        rejected.update(r.reason or "?" for r in result.rejected)
        batch.clear()

    for line in generate(300, days, 2026, start=START):
        try:
            batch.append(parse_record(line, now=end))
        except RecordRejected as exc:
            parse_rejects[exc.reason] += 1
            continue
        if len(batch) == 500:
            flush()
    flush()

    assert set(parse_rejects) <= set(EXPECTED_REASON.values())
    assert duplicates > 0
    assert set(rejected) <= {"unknown_lead"}
    assert sum(rejected.values()) <= 0.005 * applied

    reached: Counter[str] = Counter()
    live = 0
    for lead_id in app.lead_ids():
        view = app.lead(lead_id)
        if view.lead_id != lead_id:
            continue  # merged into another lead
        live += 1
        for stage in {t["to"] for t in view.transitions} | {view.stage_now}:
            reached[stage] += 1
    assert 270 <= live <= 300
    assert 0.15 * live <= reached["mql"] <= 0.6 * live
    assert reached["sql"] > 0
    assert reached["customer"] > 0
    assert reached["disqualified"] > 0
    assert reached["new"] > reached["mql"] > reached["sql"] >= reached["customer"]
