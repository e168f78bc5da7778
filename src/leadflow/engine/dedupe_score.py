"""Duplicate suggestions (see :mod:`leadflow.engine.dedupe`): how two people are compared,
the reasons found and their weights, and the score that combines them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz
from rapidfuzz.distance import JaroWinkler, Levenshtein

from leadflow.engine.dedupe_people import Person, local_tokens

# Weights of the reasons (see the module doc).
W_SAME_NAME = 0.9
W_SIMILAR_NAME = 0.75
W_SAME_NAME_ONLY = 0.4
W_EMAIL_SAME = 0.8
W_EMAIL_NAME = 0.7
W_EMAIL_FIRST_NAME = 0.45
W_EMAIL_ALIKE = 0.55
W_PHONE = 0.85
W_EXTERNAL_ID = 0.8
# The score is multiplied by this when first or last names clearly differ...
NAME_CONFLICT = 0.3
# ... and by this when both have mailboxes at one domain that nothing links.
DISTINCT_MAILBOXES = 0.5


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    detail: str
    weight: float

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.detail, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Suggestion:
    """Two live leads that are probably one person; ``a`` is the older (a merge keeps it)."""

    a: Person
    b: Person
    score: float
    reasons: tuple[Reason, ...]

    def to_json(self) -> dict[str, Any]:
        def side(p: Person) -> dict[str, Any]:
            return {"lead_id": str(p.lead_id), "primary_key": p.primary_key,
                    "name": p.display_name or None, "company": p.company_name or None}
        return {"lead_a": str(self.a.lead_id), "lead_b": str(self.b.lead_id),
                "score": round(self.score, 4), "reasons": [r.to_json() for r in self.reasons],
                "a": side(self.a), "b": side(self.b)}


def _names_agree(x: str, y: str) -> bool | None:
    """True alike, False clearly different, None unknown (one missing). A lone initial
    agrees with a name starting with it; names of four letters or more agree one typo
    apart (Levenshtein distance 1) or when Jaro-Winkler says they are very close."""
    if not x or not y:
        return None
    if x == y:
        return True
    if len(x) == 1 or len(y) == 1:
        return x[0] == y[0]
    if min(len(x), len(y)) >= 4 and Levenshtein.distance(x, y) <= 1:
        return True
    return JaroWinkler.normalized_similarity(x, y) >= 0.93


def _explained(tokens: tuple[str, ...], first: str, last: str) -> bool:
    """Every word of a local part is the person's first or last name (or its initial), and
    at least one is a whole name (``a.schmidt``, ``anna``, ``annaschmidt``, ``aschmidt``);
    a number (``anna.schmidt2``) is not explained: it tells two mailboxes apart."""
    names = [n for n in (*first.split(), *last.split()) if n]
    if not tokens or not names:
        return False
    f, la = first.replace(" ", ""), last.replace(" ", "")
    joined = {f + la, la + f}
    if f and la:
        joined |= {f[0] + la, la + f[0], f + la[0]}
    whole = False
    for token in tokens:
        if token.isdigit():
            return False
        if token in names or token in joined:
            whole = True
        elif len(token) == 1:
            if not any(n[0] == token for n in names):
                return False
        elif any(JaroWinkler.normalized_similarity(token, n) >= 0.9 for n in names):
            whole = True
        else:
            return False
    return whole


def _has_last(tokens: tuple[str, ...], first: str, last: str) -> bool:
    la = last.replace(" ", "")
    if not la:
        return False
    return any(t == la or t in last.split() or (first and t in (first[0] + la, la + first[0],
                                                                first.replace(" ", "") + la))
               for t in tokens)


def _email_reasons(a: Person, b: Person, first: str, last: str) -> tuple[list[Reason], bool]:
    """The best email reason, and whether the two have distinct mailboxes at one domain
    that nothing links (evidence of two people)."""
    best: Reason | None = None
    distinct = False
    for local_a, domain_a in a.emails:
        for local_b, domain_b in b.emails:
            if domain_a != domain_b or local_a == local_b:
                continue
            tokens_a, tokens_b = local_tokens(local_a), local_tokens(local_b)
            words_a = "".join(t for t in tokens_a if not t.isdigit())
            words_b = "".join(t for t in tokens_b if not t.isdigit())
            numbers_a = [t for t in tokens_a if t.isdigit()]
            numbers_b = [t for t in tokens_b if t.isdigit()]
            found: Reason | None = None
            where = f"{local_a}@ and {local_b}@{domain_a}"
            if numbers_a != numbers_b:
                pass  # anna.schmidt@ and anna.schmidt2@: two mailboxes, two people
            elif words_a and words_a == words_b:
                found = Reason("email_alike", f"{where} differ only in separators",
                               W_EMAIL_SAME)
            elif first and _explained(tokens_a, first, last) \
                    and _explained(tokens_b, first, last):
                # Strong when the surname is in the address of each side without a name.
                strong = all(_has_last(tokens, first, last)
                             for person, tokens in ((a, tokens_a), (b, tokens_b))
                             if not person.named)
                found = Reason("email_fits_name", f"{where} both fit the name {first} {last}",
                               W_EMAIL_NAME if strong else W_EMAIL_FIRST_NAME)
            elif min(len(words_a), len(words_b)) >= 4 and fuzz.ratio(words_a, words_b) >= 88:
                found = Reason("email_alike", f"{where} are alike", W_EMAIL_ALIKE)
            if found is None:
                distinct = True
            elif best is None or found.weight > best.weight:
                best = found
    return ([best] if best is not None else []), distinct and best is None


def score_pair(a: Person, b: Person) -> Suggestion | None:
    """How likely ``a`` and ``b`` are one person, and why (None: no reason at all)."""
    if a.created_at > b.created_at or (a.created_at == b.created_at
                                       and str(a.lead_id) > str(b.lead_id)):
        a, b = b, a
    reasons: list[Reason] = []
    # A phone on one side at least (two external ids alike are the external id's reason).
    shared_phone = (a.phones & (b.phones | b.phone_like)) | (b.phones & a.phone_like)
    if shared_phone:
        digits = sorted(shared_phone)[0]
        reasons.append(Reason("same_phone", f"the same phone number in another format "
                              f"(…{digits[-4:]})", W_PHONE))
    shared_core = a.cores & b.cores
    if shared_core and a.external != b.external:
        reasons.append(Reason("same_external_id", f"the same external id in another system "
                              f"({sorted(shared_core)[0]})", W_EXTERNAL_ID))
    same_org = bool(a.orgs & b.orgs) or bool(
        a.company and b.company and fuzz.ratio(a.company, b.company) >= 92)
    strong = bool(reasons)
    if a.orgs and b.orgs and not same_org and not strong:
        return None  # namesakes (or colleagues' lookalikes) at different organisations
    conflict = _names_agree(a.first, b.first) is False \
        or _names_agree(a.last, b.last) is False
    if same_org and not conflict and a.named and b.named:
        shared = sorted(a.orgs & b.orgs)
        org = shared[0].partition(":")[2] if shared else a.company
        if (a.first, a.last) == (b.first, b.last):
            reasons.append(Reason("same_name_and_company",
                                  f"the same name {a.first} {a.last} at {org}", W_SAME_NAME))
        else:
            reasons.append(Reason("similar_name_and_company",
                                  f"similar names {a.first} {a.last} / {b.first} {b.last} "
                                  f"at {org}", W_SIMILAR_NAME))
    elif not same_org and not conflict and a.named and (a.first, a.last) == (b.first, b.last):
        # No organisation in common: the name alone is weak evidence.
        reasons.append(Reason("same_name", f"the same name {a.first} {a.last} (no shared "
                              "organisation)", W_SAME_NAME_ONLY))
    distinct = False
    if not conflict:
        # The name the local parts must fit: either lead's (they agree).
        first = a.first if len(a.first) > len(b.first) else b.first
        last = a.last if len(a.last) > len(b.last) else b.last
        found, distinct = _email_reasons(a, b, first, last)
        reasons += found
    if not reasons:
        return None
    remaining = 1.0
    for reason in reasons:
        remaining *= 1.0 - reason.weight
    score = 1.0 - remaining
    if conflict:
        score *= NAME_CONFLICT
        reasons.append(Reason("names_differ", f"different names {a.display_name or '?'} / "
                              f"{b.display_name or '?'}", -NAME_CONFLICT))
    if distinct and not strong:
        score *= DISTINCT_MAILBOXES
        reasons.append(Reason("distinct_mailboxes", "each has its own mailbox at the same "
                              "domain, and nothing links them", -DISTINCT_MAILBOXES))
    return Suggestion(a, b, score, tuple(reasons))
