"""Each persona's life as a lazy generator of records, and the sales work on a lead that
looks qualified (see :mod:`leadflow.generator`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from leadflow.generator.people import _fit, _Life, _Person, _Steps
from leadflow.generator.records import _Records
from leadflow.generator.reference import (
    _BASE,
    _BLOG,
    _CONTENT,
    _D,
    _DISQUALIFY,
    _DOCS,
    _H,
    _LOSS,
    _PAGES,
    _REPS,
    _TITLES_EXEC,
    _TITLES_IC,
    _TITLES_MGR,
)


class _Journeys(_Records):
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
