"""The people and companies of the synthetic stream (see :mod:`leadflow.generator`): who
they are, where they work, what brought them, which rep works them."""

from __future__ import annotations

import math
import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from typing import Any

from leadflow.generator.reference import (
    _BASE,
    _CO_A,
    _CO_B,
    _CO_C,
    _COUNTRY_CODES,
    _COUNTRY_WEIGHTS,
    _EMEA,
    _FIRST,
    _FREE_MAIL,
    _INDUSTRIES,
    _INDUSTRY_WEIGHTS,
    _LAST,
    _LEGAL,
    _OFFSETS,
    _PERSONAS_B2B,
    _PERSONAS_FREE,
    _REPS,
    _SOURCE_NAMES,
    _SOURCE_WEIGHTS,
    _TARGET,
    _TITLES_EXEC,
    _TITLES_IC,
    _TITLES_JUNIOR,
    _TITLES_MGR,
    _TLD,
    _TZ,
    PHONE_TEMPLATES,
)

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



def _ascii(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())



class _People:
    """The stream's people and companies. The state is ``_Stream``'s (stream.py): declared
    here for the type checker, with what the records and journeys below use of it."""

    rng: random.Random
    seed: int
    t0: float
    pids: int
    companies: int
    company_offset: int
    crm: int
    deals: int

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
