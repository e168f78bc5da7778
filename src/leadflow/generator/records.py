"""How a person's action becomes a record of the synthetic stream (see
:mod:`leadflow.generator`): stamps, waking and office hours, identities, touchpoints."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from leadflow.generator.people import _Life, _People, _Person
from leadflow.generator.reference import _BASE, _BOFU, _D, _H, _HALF_LIFE, _MQL


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


class _Records(_People):
    # The stream's (stream.py) and the sales work's (journeys.py), for the type checker.
    _push: Callable[[_Life], None]
    _sales: Callable[[_Person, float], _Life]

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
