"""Scoring: the seed 001 numbers, frequency bands, caps, expiry and decay in event time."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadflow.domain import scoring
from leadflow.domain.rules import parse_rules
from leadflow.domain.scoring import Award
from tests.conftest import T0, days

H = 30 * 86400.0


def total(awards: list[Award]) -> float:
    return sum(a.points for a in awards)


def score_all(rules_text: str | None, touches: list[tuple[str, dict[str, str]]]) -> float:
    from leadflow.domain.rules import default_rules

    rules = parse_rules(rules_text) if rules_text else default_rules()
    counts: dict[str, int] = {}
    totals: dict[str, float] = {}
    points = 0.0
    for i, (kind, ctx) in enumerate(touches):
        for award in scoring.score_touchpoint(rules, kind, ctx, T0, f"e{i}", counts, totals):
            counts[award.rule] = counts.get(award.rule, 0) + 1
            totals[award.rule] = totals.get(award.rule, 0.0) + award.points
            points += award.points
    return points


def test_lead_a_downloads_three_opens_and_clicks_three_emails_and_starts_a_trial_76() -> None:
    touches = [("content_downloaded", {})] * 3 + [("email_opened", {})] * 3 \
        + [("email_clicked", {})] * 3 + [("trial_started", {})]
    assert score_all(None, touches) == 76


def test_lead_b_visits_pricing_once_and_opens_two_emails_19() -> None:
    touches = [("page_viewed", {"url": "https://example.com/pricing"})] \
        + [("email_opened", {})] * 2
    assert score_all(None, touches) == 19


def test_each_seed_001_point_value_holds() -> None:
    expected = {
        ("form_submitted", ()): 15, ("email_opened", ()): 2, ("email_clicked", ()): 5,
        ("page_viewed", (("url", "https://x.io/pricing"),)): 15,
        ("page_viewed", (("url", "https://x.io/blog/post-1"),)): 2,
        ("content_downloaded", ()): 10, ("trial_started", ()): 25, ("unsubscribed", ()): -5,
    }
    for (kind, ctx), points in expected.items():
        assert score_all(None, [(kind, dict(ctx))]) == points, kind


def test_demo_request_scores_above_a_whitepaper_and_below_after_purchase_questions() -> None:
    demo = score_all(None, [("demo_requested", {})])
    whitepaper = score_all(None, [("content_downloaded", {})])
    support = score_all(None, [("form_submitted", {"form_id": "support-question"})])
    assert whitepaper < demo < support


BANDS = """
[scoring]
[[scoring.engagement]]
id = "email-opens"
type = "email_opened"
bands = [{ min = 1, max = 5, points = 5 }, { min = 6, max = 10, points = 10 }]
"""


@pytest.mark.parametrize(("opens", "expected"), [(1, 5), (5, 5), (6, 10), (10, 10), (14, 10)])
def test_frequency_bands_give_5_points_for_1_to_5_opens_and_10_for_6_to_10(
    opens: int, expected: float
) -> None:
    assert score_all(BANDS, [("email_opened", {})] * opens) == expected


def test_a_capped_rule_never_gives_more_than_its_cap() -> None:
    capped = """
[scoring]
[[scoring.engagement]]
id = "blog"
type = "page_viewed"
points = 2
cap = 5
"""
    assert score_all(capped, [("page_viewed", {"url": "/blog/x"})] * 10) == 5


def test_engagement_halves_after_one_half_life_76_becomes_38() -> None:
    value, as_of = 0.0, None
    for points in [10, 10, 10, 2, 2, 2, 5, 5, 5, 25]:
        value, as_of = scoring.add_decaying(value, as_of, points, T0, H)
    assert value == 76
    assert scoring.decayed(value, as_of, T0 + days(30), H) == pytest.approx(38)
    assert scoring.decayed(value, as_of, T0 + days(60), H) == pytest.approx(19)


def test_expiring_award_counts_fully_inside_its_window_then_drops_to_zero() -> None:
    award = Award("call", 10, T0, "e1", T0 + days(30))
    assert award.value_at(T0 + days(29.9), H) == 10
    assert award.value_at(T0 + days(30), H) == 0
    assert award.value_at(T0 - days(1), H) == 0


def test_first_time_below_is_the_exact_decay_crossing() -> None:
    # 76 engagement, no fit: below 20 at 30 * log2(76/20) days.
    when = scoring.first_time_below(20, 0, 76, T0, [], T0, H)
    assert when is not None
    assert (when - T0).total_seconds() == pytest.approx(H * math.log2(76 / 20), rel=1e-9)


def test_first_time_below_accounts_for_an_expiring_award() -> None:
    # 30 decaying + 10 expiring at day 5: 36.7 just before expiry, 26.7 just after, so the
    # score falls below 28 exactly when the call expires ...
    expiring = [Award("call", 10, T0, "e", T0 + days(5))]
    assert scoring.first_time_below(28, 0, 30, T0, expiring, T0, H) == T0 + days(5)
    # ... but stays above 25 until the decaying part alone crosses it, at 30*log2(30/25) days.
    when = scoring.first_time_below(25, 0, 30, T0, expiring, T0, H)
    assert when is not None
    assert (when - T0).total_seconds() == pytest.approx(H * math.log2(30 / 25), rel=1e-9)


def test_first_time_below_is_none_when_fit_alone_keeps_the_score_up() -> None:
    assert scoring.first_time_below(20, 25, 40, T0, [], T0, H) is None


touch = st.tuples(
    st.floats(min_value=-10, max_value=30, allow_nan=False),
    st.integers(min_value=0, max_value=120 * 24),  # hours after T0
)


@settings(max_examples=200, deadline=None)
@given(st.lists(touch, min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_decayed_engagement_does_not_depend_on_arrival_order(
    touches: list[tuple[float, int]], rnd: object
) -> None:
    def fold(items: list[tuple[float, int]]) -> tuple[float, object]:
        value, as_of = 0.0, None
        for points, hours in items:
            value, as_of = scoring.add_decaying(value, as_of, points,
                                                T0 + timedelta(hours=hours), H)
        return value, as_of

    shuffled = list(touches)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    in_order, late = fold(sorted(touches, key=lambda t: t[1])), fold(shuffled)
    assert late[1] == in_order[1]
    assert late[0] == pytest.approx(in_order[0], abs=1e-9)
    # And it equals the sum of each award decayed from its own time.
    horizon = in_order[1]
    exact = sum(p * scoring.decay_factor((horizon - (T0 + timedelta(hours=h))).total_seconds(), H)
                for p, h in touches)
    assert in_order[0] == pytest.approx(exact, abs=1e-9)


def test_fit_takes_the_first_matching_rule_per_field() -> None:
    from leadflow.domain.rules import default_rules

    awards = scoring.fit_awards(default_rules(), {"title": "VP Sales", "employees": 20,
                                                  "country": "US"})
    assert awards == [("title-executive", 15.0), ("size-11-50", 5.0), ("country-target", 5.0)]
    assert scoring.fit_awards(default_rules(), {"title": "MVP engineer"}) == []
