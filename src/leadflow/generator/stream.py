"""The synthetic stream itself (see :mod:`leadflow.generator`): arrivals at sorted random
times, the heap that merges the people's lives, late, re-sent and bad lines."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson

from leadflow.generator.journeys import _Journeys
from leadflow.generator.people import _Life
from leadflow.generator.reference import _CO_A, _CO_B, _D, _H

BAD_KINDS: tuple[str, ...] = (
    "malformed_json",
    "unknown_type",
    "invalid_email",
    "missing_occurred_at",
    "far_future",
    "missing_identity",
    "wrong_field_type",
)
"""Kinds of deliberately bad lines, each rejected by :func:`leadflow.contract.parse_record`
(``far_future`` only when it is given the receiving clock, ``now``)."""


class _Stream(_Journeys):
    def __init__(self, leads: int, days: int, seed: int, start: datetime, bad_ratio: float,
                 duplicate_ratio: float, late_ratio: float) -> None:
        if leads < 0 or days <= 0:
            raise ValueError("leads must be >= 0 and days > 0")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        for name, ratio in (("bad_ratio", bad_ratio), ("duplicate_ratio", duplicate_ratio),
                            ("late_ratio", late_ratio)):
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        self.rng = random.Random(seed)
        self.seed = seed
        self.leads = leads
        self.t0 = start.timestamp()
        self.end = days * _D
        self.bad_ratio = bad_ratio
        self.dup_ratio = duplicate_ratio
        self.late_ratio = late_ratio
        self.heap: list[tuple[float, int, dict[str, Any], bool, _Life]] = []
        self.delayed: list[tuple[float, int, str]] = []  # late and re-sent lines
        self.seq = 0
        self.events = 0
        self.pids = 0
        self.companies = 0
        self.deals = 0
        self.crm = 0
        self.bad_turn = self.rng.randrange(len(BAD_KINDS))
        self.company_offset = self.rng.randrange(len(_CO_A) * len(_CO_B))

    # ------------------------------------------------------------ driver

    def run(self) -> Iterator[tuple[str, str | None]]:
        rng = self.rng
        n = self.leads
        i = 0
        x = 0.0
        while i < n:
            # Sorted uniform arrival times, one after the other (no list of n floats).
            x = 1.0 - (1.0 - x) * rng.random() ** (1.0 / (n - i))
            t = x * self.end
            yield from self._drain(t)
            size = self._unit(t, n - i)
            for j in range(1, size):  # a company's other people use up their slots
                x = 1.0 - (1.0 - x) * rng.random() ** (1.0 / (n - i - j))
            i += size
        yield from self._drain(math.inf)
        while self.delayed:
            yield heapq.heappop(self.delayed)[2], None

    def _push(self, life: _Life) -> None:
        for t, rec, may_be_late in life:
            if t > self.end:
                break
            self.seq += 1
            heapq.heappush(self.heap, (t, self.seq, rec, may_be_late, life))
            return

    def _drain(self, limit: float) -> Iterator[tuple[str, str | None]]:
        heap = self.heap
        rng = self.rng
        while heap and heap[0][0] <= limit:
            t, _, rec, may_be_late, life = heapq.heappop(heap)
            self._push(life)  # the person's next record, if any (may also start sales work)
            while self.delayed and self.delayed[0][0] <= t:
                yield heapq.heappop(self.delayed)[2], None
            self.events += 1
            rec["event_id"] = f"evt-{self.seed}-{self.events}"
            line = orjson.dumps(rec).decode()
            if may_be_late and rng.random() < self.late_ratio:
                delay = min(5 * _D, max(_H, rng.expovariate(1 / (14 * _H))))
                self._delay(t + delay, line)
            else:
                yield line, None
            if rng.random() < self.dup_ratio:
                self._delay(t + rng.uniform(60, 6 * _H), line)
            if rng.random() < self.bad_ratio:
                kind = BAD_KINDS[self.bad_turn % len(BAD_KINDS)]
                self.bad_turn += 1
                yield self._bad(rec, line, kind), kind

    def _delay(self, release: float, line: str) -> None:
        self.seq += 1
        heapq.heappush(self.delayed, (release, self.seq, line))

    def _bad(self, rec: dict[str, Any], line: str, kind: str) -> str:
        rng = self.rng
        if kind == "malformed_json":
            return line[: rng.randrange(8, max(9, len(line) - 2))]
        self.events += 1
        bad = dict(rec)
        bad["event_id"] = f"evt-{self.seed}-{self.events}"
        lead = dict(rec["lead"])
        bad["lead"] = lead
        if kind == "unknown_type":
            bad["type"] = "tweet_liked"
        elif kind == "invalid_email":
            email = lead.get("email")
            lead["email"] = email.replace("@", "@@") if isinstance(email, str) else "bob@@x"
        elif kind == "missing_occurred_at":
            del bad["occurred_at"]
        elif kind == "far_future":
            stamp = str(rec["occurred_at"])
            day = "-03-01" if stamp[4:10] == "-02-29" else stamp[4:10]  # 2099 is no leap year
            bad["occurred_at"] = "2099" + day + stamp[10:]
        elif kind == "missing_identity":
            bad["lead"] = {}
        else:  # wrong_field_type
            lead["employees"] = "many"
        return orjson.dumps(bad).decode()

    # ------------------------------------------------------------ units and people

    def _unit(self, t: float, room: int) -> int:
        """Create the people of one arrival (a free-mail person or a company's people)."""
        rng = self.rng
        r = rng.random()
        if r < 0.40:
            self._push(self._life(self._person(t, None), t))
            if rng.random() < 0.2:
                self._push(self._stranger(t))
            return 1
        company = self._company(customer=rng.random() < 0.05)
        if r < 0.47:
            size = rng.randint(3, 8)
            spread = 6 * _D  # several people of one firm within days: an account surge
            company.employees = max(company.employees, rng.randint(30, 3000))
        elif r < 0.58:
            size = 2
            spread = 40 * _D
        else:
            size = 1
            spread = 0.0
        size = min(size, room)
        used: set[str] = set()
        for k in range(size):
            start = t if k == 0 else min(t + rng.uniform(0, spread), self.end)
            person = self._person(start, company, used)
            self._push(self._life(person, start))
        return size
