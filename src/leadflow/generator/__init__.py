"""Synthetic inbound stream: plausible leads, touchpoints and sales dispositions as JSONL.

``generate(leads, days, seed)`` yields one JSON record per line (contract v1), ordered by
``occurred_at`` except for the records deliberately delivered late, re-sent (duplicates) or
broken (bad lines). The stream is deterministic for a seed: everything comes from one
``random.Random(seed)`` and counters, never from the wall clock.

How it stays streaming: people arrive at sorted random times (generated one after the other,
without storing them), each person's life is a lazy generator of records in time order, and a
heap merges the generators of the people whose lives are still going on. Memory is bounded by
the number of people active at once, not by the length of the stream.

Who is in the stream:

* personas: tire-kicker (a few opens and blog reads), researcher (downloads, blog, pricing
  once), hot buyer (pricing, demo, trial, contact-sales form: an MQL within days), zombie
  (one form, then silence), unsubscriber, existing customer asking support, spam bot;
* companies whose people share an email domain (some with 3-8 people engaging within days,
  so account surges happen) and free-mail people;
* anonymous visits that later link to a person, phone-only leads, people who appear under
  two identities and are later merged by a record carrying both;
* sales work on leads that look qualified: contacted, accepted, converted (deal), won/lost,
  disqualified or recycled with distinguishable reasons, manual owner assignments.

The parts: ``reference`` (countries, names, companies, pages: the reference data),
``people`` (the people and companies of the stream), ``records`` (how a person's action
becomes a record), ``journeys`` (each persona's life and the sales work on it) and ``stream``
(arrivals, the heap that merges the lives, late, re-sent and bad lines).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

from leadflow.generator.reference import PHONE_TEMPLATES as PHONE_TEMPLATES
from leadflow.generator.stream import BAD_KINDS, _Stream

__all__ = [
    "BAD_KINDS",
    "RECORDS_PER_LEAD",
    "count_hint",
    "generate",
    "generate_labeled",
]

RECORDS_PER_LEAD = 10.0
"""Average records per lead at the default ratios over 90 days (the CLI default): 100,000
leads give about a million records. See :func:`count_hint` for other windows."""


# --------------------------------------------------------------------------- public API


def generate_labeled(
    leads: int,
    days: int,
    seed: int,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    bad_ratio: float = 0.005,
    duplicate_ratio: float = 0.01,
    late_ratio: float = 0.02,
) -> Iterator[tuple[str, str | None]]:
    """Like :func:`generate`, with each line's bad kind (one of :data:`BAD_KINDS`) or None."""
    return _Stream(leads, days, seed, start, bad_ratio, duplicate_ratio, late_ratio).run()


def generate(
    leads: int,
    days: int,
    seed: int,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    bad_ratio: float = 0.005,
    duplicate_ratio: float = 0.01,
    late_ratio: float = 0.02,
) -> Iterator[str]:
    """Yield a synthetic inbound stream as JSONL lines (no trailing newline).

    ``leads`` people arrive over ``days`` days from ``start``; every ``occurred_at`` lies in
    ``[start, start + days]``. Deterministic for ``seed``. About :data:`RECORDS_PER_LEAD`
    records per lead (see :func:`count_hint`).
    """
    labeled = generate_labeled(leads, days, seed, start, bad_ratio, duplicate_ratio,
                               late_ratio)  # arguments are checked here, not at the first line
    return (line for line, _ in labeled)


def count_hint(leads: int, days: int = 90) -> int:
    """Roughly how many lines :func:`generate` yields at the default ratios (progress bars).

    Lives last weeks to months, so a short window cuts the later arrivals' lives short.
    """
    per_lead = _PER_LEAD[-1][1]
    for (d0, r0), (d1, r1) in itertools.pairwise(_PER_LEAD):
        if days <= d1:
            per_lead = r0 + (r1 - r0) * (max(days, d0) - d0) / (d1 - d0)
            break
    return round(leads * per_lead)


# Measured records per lead by window length (days), default ratios.
_PER_LEAD: tuple[tuple[int, float], ...] = (
    (1, 1.2), (7, 2.5), (14, 3.6), (30, 5.7), (60, 8.1), (90, RECORDS_PER_LEAD), (180, 11.7),
    (365, 12.4), (730, 13.0),
)
