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
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

__all__ = [
    "BAD_KINDS",
    "RECORDS_PER_LEAD",
    "count_hint",
    "generate",
    "generate_labeled",
]

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

RECORDS_PER_LEAD = 10.0
"""Average records per lead at the default ratios over 90 days (the CLI default): 100,000
leads give about a million records. See :func:`count_hint` for other windows."""

_H = 3600.0
_D = 86400.0
_HALF_LIFE = 30 * _D
_MQL = 50.0

# --------------------------------------------------------------------------- reference data

_COUNTRIES: tuple[tuple[str, int], ...] = (
    ("US", 30), ("GB", 9), ("DE", 9), ("FR", 6), ("CA", 6), ("NL", 4), ("ES", 4),
    ("KR", 5), ("RU", 5), ("BR", 6), ("IN", 8),
)
_COUNTRY_CODES = tuple(c for c, _ in _COUNTRIES)
_COUNTRY_WEIGHTS = tuple(w for _, w in _COUNTRIES)

# Local UTC offsets (standard time), used for behaviour (people act in their daytime) and by
# the upstream systems that send local time instead of UTC.
_OFFSETS: dict[str, timedelta] = {
    "US": timedelta(hours=-5), "CA": timedelta(hours=-5), "GB": timedelta(0),
    "DE": timedelta(hours=1), "FR": timedelta(hours=1), "NL": timedelta(hours=1),
    "ES": timedelta(hours=1), "KR": timedelta(hours=9), "RU": timedelta(hours=3),
    "BR": timedelta(hours=-3), "IN": timedelta(hours=5, minutes=30),
}
_TZ: dict[str, timezone] = {c: timezone(off) for c, off in _OFFSETS.items()}

# (prefix, number of random digits): every completion is a valid personal number for the
# country according to ``phonenumbers`` (mobiles, or geographic lines in NANP); no reserved
# fiction ranges (US 555, GB 07700 900xxx), no toll-free. tests/unit/test_generator.py checks.
PHONE_TEMPLATES: dict[str, tuple[tuple[str, int], ...]] = {
    "US": (("+16502", 6), ("+14152", 6)),
    "CA": (("+14163", 6), ("+16043", 6)),
    "GB": (("+44780", 7), ("+44795", 7)),
    "DE": (("+49151", 8), ("+49170", 7)),
    "FR": (("+3361", 7), ("+3367", 7)),
    "NL": (("+3161", 7),),
    "ES": (("+346", 8),),
    "KR": (("+82102", 7), ("+82103", 7)),
    "RU": (("+7912", 7), ("+7916", 7)),
    "BR": (("+551198", 7),),
    "IN": (("+9198", 8),),
}

_FIRST: dict[str, tuple[str, ...]] = {
    "en": ("James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
           "David", "Sarah", "Daniel", "Emily", "Chris", "Jessica", "Matthew", "Ashley",
           "Andrew", "Laura", "Kevin", "Rachel", "Brian", "Megan", "Ryan", "Olivia", "Ethan",
           "Sophia", "Noah", "Emma", "Liam", "Ava", "Oliver", "Amelia", "Harry", "Grace"),
    "DE": ("Lukas", "Anna", "Felix", "Lena", "Jonas", "Laura", "Maximilian", "Sophie", "Paul",
           "Marie", "Tobias", "Katharina", "Florian", "Julia"),
    "FR": ("Camille", "Louis", "Chloe", "Hugo", "Manon", "Lucas", "Lea", "Antoine", "Julie",
           "Thomas", "Nicolas", "Claire"),
    "NL": ("Daan", "Sanne", "Bram", "Lotte", "Sem", "Fleur", "Jeroen", "Anouk", "Ruben",
           "Eva"),
    "ES": ("Javier", "Lucia", "Carlos", "Maria", "Pablo", "Carmen", "Alejandro", "Elena",
           "Diego", "Sofia"),
    "KR": ("Minjun", "Seoyeon", "Jiho", "Jiwoo", "Hyunwoo", "Soyeon", "Donghyun", "Yuna",
           "Jaewon", "Hana"),
    "RU": ("Dmitry", "Olga", "Alexei", "Anastasia", "Sergei", "Ekaterina", "Ivan", "Natalia",
           "Mikhail", "Irina", "Pavel", "Svetlana"),
    "BR": ("Joao", "Ana", "Pedro", "Juliana", "Lucas", "Mariana", "Gabriel", "Fernanda",
           "Rafael", "Camila"),
    "IN": ("Aarav", "Priya", "Rohan", "Ananya", "Vikram", "Neha", "Arjun", "Pooja", "Rahul",
           "Kavya", "Siddharth", "Divya"),
}
_LAST: dict[str, tuple[str, ...]] = {
    "en": ("Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson",
           "Anderson", "Taylor", "Thomas", "Moore", "Martin", "Jackson", "Thompson", "White",
           "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott",
           "Green", "Baker", "Adams", "Nelson", "Hill", "Evans", "Turner"),
    "DE": ("Mueller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
           "Hoffmann", "Koch", "Richter", "Wolf"),
    "FR": ("Martin", "Bernard", "Dubois", "Durand", "Lefebvre", "Moreau", "Laurent", "Simon",
           "Michel", "Garnier", "Roux", "Fontaine"),
    "NL": ("de Jong", "Jansen", "de Vries", "van den Berg", "Bakker", "Visser", "Smit",
           "Meijer", "de Boer", "Mulder"),
    "ES": ("Garcia", "Fernandez", "Lopez", "Martinez", "Sanchez", "Perez", "Gomez", "Ruiz",
           "Diaz", "Moreno"),
    "KR": ("Kim", "Lee", "Park", "Choi", "Jung", "Kang", "Cho", "Yoon", "Jang", "Lim"),
    "RU": ("Smirnov", "Ivanov", "Kuznetsov", "Popov", "Sokolov", "Lebedev", "Kozlov",
           "Novikov", "Morozov", "Volkov"),
    "BR": ("Silva", "Santos", "Oliveira", "Souza", "Lima", "Pereira", "Costa", "Rodrigues",
           "Almeida", "Carvalho"),
    "IN": ("Sharma", "Patel", "Gupta", "Singh", "Kumar", "Reddy", "Iyer", "Nair", "Mehta",
           "Joshi"),
}

_FREE_MAIL: dict[str, tuple[str, ...]] = {
    "RU": ("mail.ru", "yandex.ru", "gmail.com"),
    "KR": ("naver.com", "gmail.com"),
    "DE": ("gmx.de", "gmail.com", "outlook.com"),
    "US": ("gmail.com", "gmail.com", "yahoo.com", "outlook.com", "icloud.com", "aol.com",
           "hotmail.com"),
    "": ("gmail.com", "gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "proton.me",
         "icloud.com"),
}

_TLD: dict[str, tuple[str, ...]] = {
    "US": ("com", "com", "io"), "CA": ("ca", "com"), "GB": ("co.uk", "com"), "DE": ("de",),
    "FR": ("fr", "com"), "NL": ("nl",), "ES": ("es", "com"), "KR": ("co.kr", "com"),
    "RU": ("ru",), "BR": ("com.br",), "IN": ("in", "com"),
}
_LEGAL: dict[str, tuple[str, ...]] = {
    "US": ("Inc", "LLC", "Corp"), "CA": ("Inc", "Ltd"), "GB": ("Ltd", "plc"),
    "DE": ("GmbH", "AG"), "FR": ("SAS", "SA"), "NL": ("B.V.",), "ES": ("S.L.", "S.A."),
    "KR": ("Co., Ltd.",), "RU": ("OOO",), "BR": ("Ltda",), "IN": ("Pvt Ltd",),
}
_CO_A = ("North", "Blue", "Bright", "Silver", "Iron", "Green", "Red", "Swift", "Clear", "True",
         "Peak", "Summit", "Rapid", "Cedar", "Maple", "Oak", "Pine", "River", "Stone", "Star",
         "Sun", "Nova", "Alpha", "Delta", "Apex", "Vertex", "Quantum", "Fusion", "Pixel",
         "Bold", "Harbor", "Atlas", "Orbit", "Beacon", "Crest", "Ember", "Falcon", "Granite",
         "Horizon", "Lumen", "Meridian", "Nimbus", "Onyx", "Prism", "Quartz", "Sierra",
         "Tidal", "Zenith")
_CO_B = ("wind", "wave", "point", "works", "logic", "soft", "ware", "forge", "labs", "line",
         "path", "field", "bridge", "gate", "stack", "base", "cloud", "data", "scale", "loop",
         "craft", "mark", "core", "hub", "sync", "flow", "metrics", "signal", "vision", "leaf",
         "rock", "port", "dale", "worth", "stream", "spark", "shift", "grid", "nest", "tech")
_CO_C = ("Systems", "Labs", "Group", "Digital", "Solutions", "Partners", "Analytics",
         "Health", "Retail", "Industries", "Capital", "Academy")

_INDUSTRIES = ("software", "retail", "healthcare", "manufacturing", "finance", "education")
_INDUSTRY_WEIGHTS = (30, 15, 14, 16, 13, 12)

_TITLES_EXEC = ("CEO", "Founder", "CTO", "CFO", "COO", "VP Sales", "VP Marketing",
                "VP Engineering", "Owner", "Chief Revenue Officer")
_TITLES_MGR = ("Director of Marketing", "Director of IT", "Head of Sales", "Head of Operations",
               "Marketing Manager", "Sales Manager", "Product Manager", "IT Manager",
               "Team Lead", "Procurement Manager")
_TITLES_IC = ("Software Engineer", "Data Analyst", "Marketing Specialist",
              "Sales Representative", "Consultant", "Accountant", "Office Administrator",
              "Designer", "Engineer", "Recruiter")
_TITLES_JUNIOR = ("Student", "Intern", "Freelancer", "Teacher", "Nurse", "Assistant")

_SOURCES: tuple[tuple[str, int], ...] = (
    ("google-ads", 24), ("organic", 26), ("linkedin", 16), ("webinar", 9), ("partner", 7),
    ("trade-show", 6), ("email", 12),
)
_SOURCE_NAMES = tuple(s for s, _ in _SOURCES)
_SOURCE_WEIGHTS = tuple(w for _, w in _SOURCES)

_BASE = "https://example.com"
_BLOG = ("lead-scoring-101", "what-is-an-mql", "crm-migration-checklist",
         "sales-marketing-alignment", "account-based-marketing", "b2b-funnel-metrics",
         "email-nurture-that-works", "routing-leads-fairly", "customer-story-bluewave",
         "pricing-your-saas", "gdpr-for-marketers", "webinar-recap-q1")
_CONTENT = ("wp-roi-calculator", "ebook-lead-scoring-101", "case-study-northwind",
            "report-state-of-sales-2026", "checklist-crm-migration", "guide-abm-playbook",
            "template-sla-handoff")
_DOCS = ("getting-started", "integrations/salesforce", "api/authentication", "billing",
         "sso-setup", "data-export")
_PAGES = ("/product", "/product/integrations", "/product/reporting", "/customers", "/about",
          "/security", "/careers")

_DISQUALIFY = ("wrong contact", "spam", "competitor", "no budget")
_LOSS = ("price", "chose competitor", "no decision", "budget cut", "timing")
_REPS = ("rep-a", "rep-b", "rep-c", "rep-d", "rep-e", "rep-f")
_EMEA = frozenset({"DE", "FR", "NL", "GB", "ES", "IT", "SE", "PL"})
_TARGET = frozenset({"US", "CA", "GB", "DE", "FR", "NL"})
_BOFU = frozenset({"contact-sales", "how-to-buy", "support-question"})

_PERSONAS_B2B: tuple[tuple[str, int], ...] = (
    ("hot", 16), ("researcher", 30), ("tire_kicker", 24), ("zombie", 12),
    ("unsubscriber", 8), ("support", 4), ("spam", 0),
)
_PERSONAS_FREE: tuple[tuple[str, int], ...] = (
    ("hot", 6), ("researcher", 18), ("tire_kicker", 36), ("zombie", 20),
    ("unsubscriber", 13), ("support", 2), ("spam", 5),
)

# --------------------------------------------------------------------------- people

_Entry = tuple[float, dict[str, Any], bool]  # (occurred at, record, may be delivered late)
_Life = Iterator[_Entry]
_Steps = Generator[_Entry, None, float]  # a part of a life; returns where it left off in time


@dataclass(slots=True)
class _Company:
    name: str
    domain: str
    country: str
    industry: str
    employees: int
    customer: bool


@dataclass(slots=True)
class _Person:
    pid: int
    persona: str
    country: str
    off: float  # local offset in seconds (behaviour)
    tz: timezone  # how this person's upstream systems stamp times
    zulu: bool  # "Z" instead of "+00:00" when the stamp is UTC
    email: str | None
    phone: str | None
    external_id: str | None
    anonymous_id: str | None
    profile: dict[str, Any]
    source: str
    campaign: str | None
    landing_page: str
    rep: str
    employees: int | None
    company: bool  # works at a company with its own domain
    merge: bool = False  # appears as phone-only and email-only leads, merged later
    phone_only: bool = False
    fit: float = 0.0
    awards: list[tuple[float, float]] = field(default_factory=list)
    email_known: bool = False
    typed_email: str | None = None  # how they typed it into forms (case, stray space)
    in_sales: bool = False


def _fit(profile: dict[str, Any]) -> float:
    """Fit points as the default rules would give them (estimate only)."""
    points = 0.0
    title = str(profile.get("title", "")).lower()
    if any(w in title for w in ("chief", "ceo", "cto", "cfo", "coo", "vp", "vice president",
                                "founder", "owner")):
        points += 15
    if any(w in title for w in ("director", "head", "manager", "lead")):
        points += 10
    employees = profile.get("employees")
    if isinstance(employees, int):
        if 11 <= employees <= 50:
            points += 5
        elif employees >= 51:
            points += 10
    if profile.get("country") in _TARGET:
        points += 5
    return points


def _points(kind: str, ctx: dict[str, Any]) -> float:
    """Engagement points as the default rules would give them (estimate only)."""
    if kind == "form_submitted":
        return 25.0 if ctx.get("form_id") in _BOFU else 15.0
    if kind == "page_viewed":
        url = str(ctx.get("url", ""))
        return 15.0 if "/pricing" in url else 2.0 if "/blog" in url else 0.0
    return {"email_opened": 2.0, "email_clicked": 5.0, "content_downloaded": 10.0,
            "trial_started": 25.0, "unsubscribed": -5.0, "demo_requested": 20.0,
            "event_attended": 10.0, "call_logged": 10.0}.get(kind, 0.0)


def _ascii(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


# --------------------------------------------------------------------------- the stream


class _Stream:
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

    def _company(self, customer: bool) -> _Company:
        rng = self.rng
        n_names = len(_CO_A) * len(_CO_B)
        k = self.companies + self.company_offset
        self.companies += 1
        q, r = divmod(k % n_names, len(_CO_A))
        base = _CO_A[r] + _CO_B[(9 * q + r) % len(_CO_B)]
        rounds = k // n_names
        words = [base]
        if rounds:
            words.append(_CO_C[(rounds - 1) % len(_CO_C)])
            if rounds > len(_CO_C):
                words.append(str(rounds // len(_CO_C) + 1))
        country = rng.choices(_COUNTRY_CODES, _COUNTRY_WEIGHTS)[0]
        name = " ".join(words) + " " + rng.choice(_LEGAL[country])
        domain = "".join(_ascii(w) for w in words) + "." + rng.choice(_TLD[country])
        industry = rng.choices(_INDUSTRIES, _INDUSTRY_WEIGHTS)[0]
        employees = int(min(5000, max(2, math.exp(rng.gauss(3.0, 1.5)))))
        return _Company(name, domain, country, industry, employees, customer)

    def _name(self, country: str) -> tuple[str, str]:
        rng = self.rng
        pool = country if country in _FIRST else "en"
        first = rng.choice(_FIRST[pool])
        last = rng.choice(_LAST[pool])
        if pool == "RU" and first.endswith("a"):
            last += "a"
        return first, last

    def _phone(self, country: str) -> str:
        rng = self.rng
        prefix, digits = rng.choice(PHONE_TEMPLATES[country])
        number = prefix + "".join(str(rng.randrange(10)) for _ in range(digits))
        if rng.random() < 0.2:  # some forms keep the spacing people typed
            cc = {"1": 2, "7": 2}.get(number[1], 3)
            number = number[:cc] + " " + number[cc:]
        return number

    def _person(self, t: float, company: _Company | None,
                used: set[str] | None = None) -> _Person:
        rng = self.rng
        self.pids += 1
        pid = self.pids
        if company is not None:
            country = company.country if rng.random() < 0.9 else rng.choices(
                _COUNTRY_CODES, _COUNTRY_WEIGHTS)[0]
            if company.customer:
                persona = "support" if rng.random() < 0.7 else "researcher"
            else:
                persona = rng.choices([p for p, _ in _PERSONAS_B2B],
                                      [w for _, w in _PERSONAS_B2B])[0]
        else:
            country = rng.choices(_COUNTRY_CODES, _COUNTRY_WEIGHTS)[0]
            persona = rng.choices([p for p, _ in _PERSONAS_FREE],
                                  [w for _, w in _PERSONAS_FREE])[0]
        first, last = self._name(country)
        if persona == "spam":
            first, last = rng.choice((("asdf", "asdf"), ("test", "test"), ("SEO", "Services"),
                                      ("Crypto", "Bonus"), ("qwerty", "x")))
        email: str | None
        if company is not None:
            local = f"{_ascii(first)}.{_ascii(last)}"
            if used is not None:
                while local in used:
                    local = f"{_ascii(first)[:1]}{_ascii(last)}{rng.randint(2, 99)}"
                used.add(local)
            email = f"{local}@{company.domain}"
        else:
            pool = _FREE_MAIL.get(country, _FREE_MAIL[""])
            style = rng.randrange(3)
            tail = pid * 7 + rng.randrange(7)  # unique per person, so no accidental merges
            local = (f"{_ascii(first)}.{_ascii(last)}{tail}" if style == 0 else
                     f"{_ascii(first)[:1]}{_ascii(last)}{tail}" if style == 1 else
                     f"{_ascii(first)}{tail}")
            email = f"{local}@{rng.choice(pool)}"
        profile: dict[str, Any] = {"first_name": first, "last_name": last}
        employees: int | None = None
        if company is not None:
            employees = company.employees
            title = self._title(persona, company.employees)
            profile.update(company=company.name, title=title, industry=company.industry,
                           employees=employees, country=country)
            if rng.random() < 0.15:
                profile["annual_revenue"] = employees * rng.randrange(60, 250) * 1000
        else:
            profile["country"] = country
            r = rng.random()
            if r < 0.45:
                profile["title"] = rng.choice(_TITLES_JUNIOR + _TITLES_IC)
            elif r < 0.65:
                profile["title"] = rng.choice(("Owner", "Founder", "Consultant", "Freelancer"))
                employees = rng.randint(1, 10)
                profile["employees"] = employees
                profile["industry"] = rng.choices(_INDUSTRIES, _INDUSTRY_WEIGHTS)[0]
        if persona == "spam":
            profile = {"first_name": first, "last_name": last}
        phone_only = persona in ("hot", "researcher", "tire_kicker") and rng.random() < 0.012
        merge = not phone_only and persona in ("hot", "researcher") and rng.random() < 0.03
        phone = self._phone(country) if (phone_only or merge or rng.random() < 0.1) else None
        if phone_only:
            email = None
        anonymous = (not phone_only and persona not in ("spam", "support")
                     and rng.random() < 0.35)
        external_id: str | None = None
        if persona == "support" or (company is not None and rng.random() < 0.04):
            self.crm += 1
            external_id = f"crm-{self.seed}-{self.crm:06d}"
        source = rng.choices(_SOURCE_NAMES, _SOURCE_WEIGHTS)[0]
        if persona == "support":
            source = "organic"
        off = _OFFSETS[country].total_seconds()
        local_stamps = rng.random() < 0.15
        person = _Person(
            pid=pid, persona=persona, country=country, off=off,
            tz=_TZ[country] if local_stamps else UTC, zulu=rng.random() < 0.5,
            email=email, phone=phone, external_id=external_id,
            anonymous_id=f"anon-{rng.getrandbits(48):012x}" if anonymous else None,
            profile=profile, source=source, campaign=self._campaign(source, t),
            landing_page=self._landing(source), rep=self._rep(country, employees,
                                                            profile.get("industry")),
            employees=employees, company=company is not None, merge=merge,
            phone_only=phone_only,
        )
        person.fit = _fit(profile)
        if email and rng.random() < 0.12:  # people type their address in many ways
            person.typed_email = (email.capitalize() if rng.random() < 0.4 else
                                  email.upper() if rng.random() < 0.2 else f" {email} ")
        return person

    def _title(self, persona: str, employees: int) -> str:
        rng = self.rng
        r = rng.random()
        exec_share = 0.35 if employees <= 10 else 0.12
        if persona == "hot":
            exec_share += 0.15
        if r < exec_share:
            return rng.choice(_TITLES_EXEC)
        if r < exec_share + 0.38:
            return rng.choice(_TITLES_MGR)
        if r < 0.95:
            return rng.choice(_TITLES_IC)
        return rng.choice(_TITLES_JUNIOR)

    def _campaign(self, source: str, t: float) -> str | None:
        rng = self.rng
        when = datetime.fromtimestamp(self.t0 + t, UTC)
        quarter = f"q{(when.month - 1) // 3 + 1}"
        season = ("winter", "spring", "summer", "autumn")[(when.month % 12) // 3]
        options: dict[str, tuple[str | None, ...]] = {
            "google-ads": (f"{season}-promo", "brand-search", "competitor-keywords"),
            "linkedin": (f"abm-{quarter}", "linkedin-lead-gen", f"{season}-promo"),
            "webinar": (f"{quarter}-webinar",),
            "partner": ("partner-referral", "reseller-program"),
            "trade-show": (f"techexpo-{when.year}", f"saas-summit-{when.year}"),
            "email": ("newsletter", f"{season}-promo"),
            "organic": (None, None, "seo-blog"),
        }
        return rng.choice(options[source])

    def _landing(self, source: str) -> str:
        pages = {
            "google-ads": ("/lp/free-trial", "/lp/pricing", "/lp/demo"),
            "linkedin": ("/lp/whitepaper-roi", "/lp/abm-playbook", "/lp/demo"),
            "webinar": ("/lp/webinar",),
            "partner": ("/lp/partners",),
            "trade-show": ("/lp/event",),
            "email": ("/lp/newsletter", "/lp/free-trial"),
            "organic": ("/", "/blog", "/product"),
        }[source]
        return _BASE + self.rng.choice(pages)

    def _rep(self, country: str, employees: int | None, industry: Any) -> str:
        """The rep the default routing would most likely pick: who works the lead."""
        if country in _EMEA:
            return self.rng.choice(("rep-e", "rep-f"))
        if employees is not None:
            return "rep-a" if employees <= 10 else "rep-b" if employees <= 50 else "rep-c"
        if industry == "healthcare":
            return "rep-d"
        return self.rng.choice(_REPS)

    # ------------------------------------------------------------ record helpers

    def _stamp(self, p: _Person, t: float) -> str:
        text = datetime.fromtimestamp(self.t0 + int(t), p.tz).isoformat()
        if p.zulu and text.endswith("+00:00"):
            text = text[:-6] + "Z"
        return text

    def _awake(self, p: _Person, t: float) -> float:
        """Move a person's action out of their night (local 23:00-07:00)."""
        hour = ((self.t0 + t + p.off) % _D) / _H
        if hour < 7.0:
            return t + (7.0 - hour) * _H + self.rng.uniform(0, 3 * _H)
        if hour >= 23.0:
            return t + (31.0 - hour) * _H + self.rng.uniform(0, 3 * _H)
        return t

    def _office(self, p: _Person, t: float) -> float:
        """Move a rep's action into office hours (weekdays 09:00-18:00, the lead's time)."""
        for _ in range(4):
            local = self.t0 + t + p.off
            day = math.floor(local / _D)
            hour = (local - day * _D) / _H
            weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
            if weekday >= 5:
                t += (7 - weekday) * _D - hour * _H + 9 * _H + self.rng.uniform(0, 2 * _H)
            elif hour < 9.0:
                t += (9.0 - hour) * _H + self.rng.uniform(0, 2 * _H)
            elif hour >= 18.0:
                t += (33.0 - hour) * _H + self.rng.uniform(0, 2 * _H)
            else:
                break
        return t

    def _lead(self, p: _Person, *, profile: bool = False, email: bool = True,
              phone: bool = False, crm: bool = False, anon: bool = False) -> dict[str, Any]:
        lead: dict[str, Any] = {}
        if email and p.email:
            lead["email"] = p.typed_email if profile and p.typed_email else p.email
            p.email_known = True
        if (phone or p.phone_only or not lead) and p.phone:
            lead["phone"] = p.phone
        if crm and p.external_id:
            lead["external_id"] = p.external_id
        if anon and p.anonymous_id:
            lead["anonymous_id"] = p.anonymous_id
        if profile:
            lead.update(p.profile)
        return lead

    def _rec(self, p: _Person, kind: str, t: float, lead: dict[str, Any],
             ctx: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"schema_version": 1, "event_id": "", "type": kind,
                               "occurred_at": self._stamp(p, t), "lead": lead}
        if ctx:
            rec["context"] = ctx
        for key, value in extra.items():
            if value is not None:
                rec[key] = value
        return rec

    def _touch(self, p: _Person, kind: str, t: float, lead: dict[str, Any],
               ctx: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """A touchpoint; keeps the person's score estimate and starts sales work at MQL."""
        points = _points(kind, ctx)
        if points:
            p.awards.append((t, points))
        if not p.in_sales and (p.email_known or p.phone_only) and not p.merge:
            score = p.fit + sum(pts * 0.5 ** ((t - at) / _HALF_LIFE) for at, pts in p.awards)
            if score >= _MQL:
                p.in_sales = True
                self._start_sales(p, t)
        return self._rec(p, kind, t, lead, ctx, **extra)

    def _start_sales(self, p: _Person, t: float) -> None:
        odds = {"hot": 0.95, "researcher": 0.6, "support": 0.8, "tire_kicker": 0.5,
                "unsubscriber": 0.3, "zombie": 0.5, "spam": 1.0}[p.persona]
        if self.rng.random() < odds:
            self._push(self._sales(p, t))

    def _web(self, p: _Person, path: str) -> dict[str, Any]:
        ctx: dict[str, Any] = {"url": _BASE + path}
        if self.rng.random() < 0.5:
            ctx["source"] = self.rng.choice(("organic", "organic", p.source))
        return ctx

    def _mail(self, p: _Person, t: float) -> dict[str, Any]:
        when = datetime.fromtimestamp(self.t0 + t, UTC)
        name = self.rng.choice((f"newsletter-{when:%Y-%m}", "nurture-welcome",
                                "nurture-case-studies", p.campaign or "newsletter"))
        return {"source": "email", "campaign": name}

    def _entry_ctx(self, p: _Person, **more: Any) -> dict[str, Any]:
        ctx: dict[str, Any] = {"source": p.source}
        if p.campaign:
            ctx["campaign"] = p.campaign
        ctx["landing_page"] = p.landing_page
        ctx.update(more)
        return ctx

    # ------------------------------------------------------------ lives

    def _stranger(self, t: float) -> _Life:
        """An anonymous visitor who never identifies: interest, not a lead."""
        rng = self.rng
        anon = f"anon-{rng.getrandbits(48):012x}"
        tz = UTC
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(("/", "/pricing", "/blog/" + rng.choice(_BLOG), *_PAGES))
            stamp = datetime.fromtimestamp(self.t0 + int(t), tz).isoformat()
            yield t, {"schema_version": 1, "event_id": "", "type": "page_viewed",
                      "occurred_at": stamp, "lead": {"anonymous_id": anon},
                      "context": {"url": _BASE + path}}, True
            t += rng.expovariate(1 / (20 * 60))

    def _life(self, p: _Person, t: float) -> _Life:
        rng = self.rng
        t = self._awake(p, t)
        if p.anonymous_id:  # browsing before identifying
            for _ in range(rng.randint(1, 4)):
                path = rng.choice(("/", "/pricing", "/product", "/blog/" + rng.choice(_BLOG),
                                   "/customers"))
                ctx = {"url": _BASE + path, "source": p.source}
                yield t, self._rec(p, "page_viewed", t, {"anonymous_id": p.anonymous_id},
                                   ctx), False
                t = self._awake(p, t + rng.expovariate(1 / (8 * _H)))
            t = self._awake(p, t + rng.uniform(0.5 * _H, 3 * _D))
        if p.merge:  # two leads for one person: a phone call, then an email-only form
            ctx = {"source": "phone", "campaign": p.campaign or "inbound-call"}
            yield t, self._touch(p, "call_logged", t, {"phone": p.phone},
                                 {k: v for k, v in ctx.items() if v}), False
            t = self._awake(p, t + rng.uniform(1 * _D, 10 * _D))
            entry = self._entry_ctx(p, form_id="contact")
            lead = self._lead(p, profile=True, anon=True)
            lead.pop("phone", None)
            yield t, self._touch(p, "form_submitted", t, lead, entry), False
            t = self._awake(p, t + rng.uniform(1 * _D, 8 * _D))
            # The record that carries both identities: the two leads are one person.
            p.merge = False
            yield t, self._touch(p, "demo_requested", t, self._lead(p, phone=True),
                                 {"source": p.source, "url": _BASE + "/demo"}), True
            t = self._awake(p, t + rng.expovariate(1 / (2 * _D)))
        else:
            yield t, self._entry(p, t), False
            t = self._awake(p, t + rng.expovariate(1 / (1.5 * _D)))
        persona = p.persona
        if persona == "hot":
            t = yield from self._hot(p, t)
        elif persona == "researcher":
            t = yield from self._researcher(p, t)
        elif persona == "tire_kicker":
            t = yield from self._tire_kicker(p, t)
        elif persona == "unsubscriber":
            t = yield from self._unsubscriber(p, t)
        elif persona == "support":
            t = yield from self._support(p, t)
        elif persona == "zombie" and rng.random() < 0.25:
            yield t, self._touch(p, "email_opened", t, self._lead(p), self._mail(p, t)), True
        if persona in ("hot", "researcher", "tire_kicker", "support") and p.email:
            # Months later the newsletter still gets the odd open.
            for _ in range(rng.randint(0, 4)):
                t = self._awake(p, t + rng.expovariate(1 / (16 * _D)))
                yield t, self._touch(p, "email_opened", t, self._lead(p),
                                     self._mail(p, t)), True

    def _entry(self, p: _Person, t: float) -> dict[str, Any]:
        """The first record that names the person, with their profile and where they came
        from."""
        rng = self.rng
        lead = self._lead(p, profile=True, phone=True, anon=True,
                          crm=p.persona == "support")
        persona = p.persona
        if persona == "support":
            return self._touch(p, "form_submitted", t, lead,
                               self._entry_ctx(p, form_id="support-question"))
        if persona == "spam":
            return self._touch(p, "form_submitted", t, lead,
                               self._entry_ctx(p, form_id="contact"))
        if p.source in ("webinar", "trade-show") and persona != "zombie":
            return self._touch(p, "event_attended", t, lead, self._entry_ctx(p))
        r = rng.random()
        if persona == "hot":
            if r < 0.35:
                return self._touch(p, "form_submitted", t, lead,
                                   self._entry_ctx(p, form_id="contact"))
            if r < 0.6:
                return self._touch(p, "content_downloaded", t, lead,
                                   self._entry_ctx(p, content_id=rng.choice(_CONTENT)))
            if r < 0.8:
                return self._touch(p, "trial_started", t, lead,
                                   self._entry_ctx(p, url=_BASE + "/signup/trial"))
            return self._touch(p, "demo_requested", t, lead,
                               self._entry_ctx(p, url=_BASE + "/demo"))
        if persona == "researcher" or (persona in ("zombie", "tire_kicker") and r < 0.3):
            return self._touch(p, "content_downloaded", t, lead,
                               self._entry_ctx(p, content_id=rng.choice(_CONTENT)))
        form = "contact" if persona == "zombie" and r < 0.6 else "newsletter"
        return self._touch(p, "form_submitted", t, lead, self._entry_ctx(p, form_id=form))

    def _profile_update(self, p: _Person, t: float) -> dict[str, Any]:
        """A later form with changed profile fields (a promotion, a grown company)."""
        rng = self.rng
        changes: dict[str, Any] = {}
        if "title" in p.profile and rng.random() < 0.7:
            changes["title"] = rng.choice(_TITLES_MGR + _TITLES_EXEC)
        elif isinstance(p.profile.get("employees"), int):
            changes["employees"] = int(p.profile["employees"] * rng.uniform(1.1, 1.6)) + 1
        else:
            changes["title"] = rng.choice(_TITLES_IC)
        p.profile.update(changes)
        p.fit = _fit(p.profile)
        lead = self._lead(p)
        lead.update(changes)
        return self._touch(p, "form_submitted", t, lead,
                           {"form_id": "how-to-buy" if p.persona == "hot" else "contact",
                            "url": _BASE + "/contact", "source": p.source})

    def _hot(self, p: _Person, t: float) -> _Steps:
        rng = self.rng
        steps = ["pricing", "product", "open", "click", "pricing", "demo", "trial",
                 "contact-sales"]
        rng.shuffle(steps)
        steps += rng.sample(("open", "open", "click", "blog", "pricing", "product",
                             "how-to-buy", "download"), rng.randint(1, 5))
        for step in steps:
            yield t, self._step(p, step, t), True
            t = self._awake(p, t + rng.expovariate(1 / (1.2 * _D)))
        # After the buying burst: the occasional read, open and return to pricing.
        for _ in range(rng.randint(1, 6)):
            t = self._awake(p, t + rng.expovariate(1 / (7 * _D)))
            yield t, self._step(p, rng.choice(("open", "open", "blog", "pricing", "click")),
                                t), True
        if rng.random() < 0.08:
            t = self._awake(p, t + rng.uniform(3 * _D, 30 * _D))
            yield t, self._profile_update(p, t), True
        return t

    def _researcher(self, p: _Person, t: float) -> _Steps:
        rng = self.rng
        steps = ["blog"] * rng.randint(2, 8) + ["open"] * rng.randint(2, 8)
        steps += ["download"] * rng.randint(0, 2) + ["click"] * rng.randint(0, 2)
        steps += ["product"] * rng.randint(0, 3)
        if rng.random() < 0.3:
            steps.append("webinar")
        rng.shuffle(steps)
        steps.insert(rng.randint(len(steps) // 2, len(steps)), "pricing")
        if rng.random() < 0.12:
            steps.append("demo")
        for step in steps:
            yield t, self._step(p, step, t), True
            t = self._awake(p, t + rng.expovariate(1 / (3 * _D)))
        if rng.random() < 0.06:
            yield t, self._profile_update(p, t), True
        return t

    def _tire_kicker(self, p: _Person, t: float) -> _Steps:
        rng = self.rng
        for _ in range(rng.randint(2, 11)):
            step = rng.choices(("open", "blog", "product", "click", "careers"),
                               (50, 32, 8, 5, 5))[0]
            yield t, self._step(p, step, t), True
            t = self._awake(p, t + rng.expovariate(1 / (6 * _D)))
        if rng.random() < 0.04:
            yield t, self._profile_update(p, t), True
        return t

    def _unsubscriber(self, p: _Person, t: float) -> _Steps:
        rng = self.rng
        for _ in range(rng.randint(1, 7)):
            yield t, self._step(p, "open" if rng.random() < 0.85 else "click", t), True
            t = self._awake(p, t + rng.expovariate(1 / (5 * _D)))
        yield t, self._touch(p, "unsubscribed", t, self._lead(p), self._mail(p, t)), True
        return t

    def _support(self, p: _Person, t: float) -> _Steps:
        rng = self.rng
        for _ in range(rng.randint(1, 5)):
            r = rng.random()
            if r < 0.6:
                yield t, self._touch(p, "page_viewed", t, self._lead(p),
                                     {"url": f"{_BASE}/docs/{rng.choice(_DOCS)}"}), True
            elif r < 0.8:
                yield t, self._touch(p, "form_submitted", t, self._lead(p, crm=True),
                                     {"form_id": "support-question",
                                      "url": _BASE + "/support"}), True
            else:
                yield t, self._touch(p, "call_logged", t, self._lead(p, crm=True),
                                     {"source": "phone", "campaign": "support-line"}), True
            t = self._awake(p, t + rng.expovariate(1 / (4 * _D)))
        return t

    def _step(self, p: _Person, step: str, t: float) -> dict[str, Any]:
        rng = self.rng
        lead = self._lead(p)
        if step == "open":
            return self._touch(p, "email_opened", t, lead, self._mail(p, t))
        if step == "click":
            ctx = self._mail(p, t)
            ctx["url"] = _BASE + rng.choice(("/pricing", "/blog/" + rng.choice(_BLOG),
                                             "/product", "/customers"))
            return self._touch(p, "email_clicked", t, lead, ctx)
        if step == "blog":
            return self._touch(p, "page_viewed", t, lead,
                               self._web(p, "/blog/" + rng.choice(_BLOG)))
        if step == "pricing":
            return self._touch(p, "page_viewed", t, lead, self._web(p, "/pricing"))
        if step == "product":
            return self._touch(p, "page_viewed", t, lead, self._web(p, rng.choice(_PAGES)))
        if step == "careers":
            return self._touch(p, "page_viewed", t, lead, self._web(p, "/careers"))
        if step == "download":
            return self._touch(p, "content_downloaded", t, lead,
                               {"content_id": rng.choice(_CONTENT), "source": p.source,
                                "url": _BASE + "/resources"})
        if step == "webinar":
            when = datetime.fromtimestamp(self.t0 + t, UTC)
            return self._touch(p, "event_attended", t, lead,
                               {"source": "webinar",
                                "campaign": f"q{(when.month - 1) // 3 + 1}-webinar"})
        if step == "demo":
            return self._touch(p, "demo_requested", t, self._lead(p, phone=True),
                               {"url": _BASE + "/demo", "source": p.source,
                                "form_id": "demo"})
        if step == "trial":
            return self._touch(p, "trial_started", t, lead,
                               {"url": _BASE + "/signup/trial", "source": p.source})
        # contact-sales / how-to-buy forms
        return self._touch(p, "form_submitted", t, self._lead(p, phone=True),
                           {"form_id": step, "url": _BASE + "/" + step, "source": p.source})

    # ------------------------------------------------------------ sales work

    def _deal_amount(self, p: _Person) -> int:
        rng = self.rng
        size = p.employees or 0
        low, high = ((1_000, 6_000) if not p.company and size <= 10 else
                     (2_000, 12_000) if size <= 10 else
                     (8_000, 40_000) if size <= 50 else
                     (25_000, 150_000) if size <= 500 else (80_000, 480_000))
        return int(rng.uniform(low, high) / 100) * 100

    def _sales(self, p: _Person, mql: float) -> _Life:
        """What sales does with a lead that looks qualified, from the moment it does."""
        rng = self.rng
        rep = p.rep

        def lead() -> dict[str, Any]:
            return self._lead(p, crm=True, email=True)

        def later(t: float, mean_hours: float, floor: float = 0.25) -> float:
            return self._office(p, t + max(floor * _H, rng.expovariate(1 / (mean_hours * _H))))

        if p.external_id is None and rng.random() < 0.6:
            self.crm += 1
            p.external_id = f"crm-{self.seed}-{self.crm:06d}"
        t = mql
        if p.persona == "spam":
            t = later(t, 20)
            yield t, self._rec(p, "disqualified", t, lead(), actor=rep, reason="spam"), False
            return
        if rng.random() < 0.06:  # the sales manager hands it to someone by hand
            t = later(t, 4)
            rep = rng.choice(_REPS)
            yield t, self._rec(p, "owner_assigned", t, lead(), actor="manager-1", owner=rep,
                               reason="manual assignment"), False
        r = rng.random()
        if r < 0.08:
            return  # nobody calls: the SLA timer will reassign it
        t = later(t, 10 if r < 0.85 else 40)
        yield t, self._rec(p, "contacted", t, lead(), actor=rep), False
        if rng.random() < 0.6:
            t = later(t, 0.2, 0.05)
            yield t, self._touch(p, "call_logged", t, lead(),
                                 {"source": "phone", "campaign": "sales-call"},
                                 actor=rep), False
        persona = p.persona
        accept, recycle = {"hot": (0.75, 0.12), "researcher": (0.45, 0.30),
                           "support": (0.40, 0.0)}.get(persona, (0.1, 0.5))
        r = rng.random()
        t = later(t, 60)
        if r >= accept + recycle:
            reason = ("existing customer" if persona == "support" else
                      rng.choices(_DISQUALIFY, (30, 10, 15, 45))[0])
            yield t, self._rec(p, "disqualified", t, lead(), actor=rep, reason=reason), False
            return
        if r >= accept:
            yield t, self._rec(p, "recycled", t, lead(), actor=rep,
                               reason=rng.choice(("not now", "went quiet"))), False
            return
        yield t, self._rec(p, "sales_accepted", t, lead(), actor=rep,
                           reason=rng.choice(("BANT confirmed", "budget and need confirmed",
                                              None))), False
        if rng.random() >= (0.65 if persona == "hot" else 0.45):
            if rng.random() < 0.5:
                t = later(t, 24 * 20)
                yield t, self._rec(p, "recycled", t, lead(), actor=rep,
                                   reason="went quiet"), False
            return
        t = later(t, 24 * 6)
        self.deals += 1
        deal = {"id": f"deal-{self.seed}-{self.deals:06d}", "amount": self._deal_amount(p),
                "currency": "USD"}
        closer = rep if rng.random() < 0.7 else rng.choice(("rep-b", "rep-c"))
        yield t, self._rec(p, "converted", t, lead(), actor=rep, owner=closer,
                           deal=deal), False
        for _ in range(rng.randint(0, 3)):  # the buyer keeps reading while deciding
            t = self._awake(p, t + rng.expovariate(1 / (4 * _D)))
            yield t, self._step(p, rng.choice(("open", "pricing", "product", "click")),
                                t), True
        t = later(t, 24 * 14)
        if rng.random() < 0.55:
            yield t, self._rec(p, "deal_won", t, lead(), actor=closer, deal=deal), False
            if rng.random() < 0.25:  # a new customer with a question
                t = self._awake(p, t + rng.uniform(2 * _D, 20 * _D))
                yield t, self._touch(p, "form_submitted", t, lead(),
                                     {"form_id": "support-question",
                                      "url": _BASE + "/support"}), True
        else:
            yield t, self._rec(p, "deal_lost", t, lead(), actor=closer,
                               reason=rng.choice(_LOSS), deal=deal), False


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
