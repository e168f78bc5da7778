"""Duplicate suggestions: pairs of live leads that are probably one person, with a score in
[0, 1] and the reasons for it.

No shared identity key links them (that would have merged them already): the evidence is
fuzzy. Every lead becomes a ``Person`` (normalised names, organisations, email local parts,
phone digits, external id cores); a *blocking index* groups people who share a cheap key
(an organisation and a name token, a phone's last nine digits, an external id's core), and
only people in one block are compared, never all pairs: matching 100,000 leads takes
seconds (reading them from the store takes longer, see the README). Comparisons use
rapidfuzz (Levenshtein and Jaro-Winkler for names, Indel ratio for email local parts).

Each reason carries a weight (the chance, roughly, that it alone means one person); the
score combines them as independent evidence (``1 - Π(1 - w)``) and is cut down when the
first or last names clearly differ, or when each has its own mailbox at one domain. Two
leads at different organisations are only suggested on a phone or external id, never on a
name: namesakes at other companies are no duplicates. Forgotten leads have no names or
identities and are never suggested; pairs a person rejected (``dedupe reject``) are left
out.

People's data is read through the engine (stored events replayed, personal values opened
with each person's data key), never from raw rows.
"""

from __future__ import annotations

import gc
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from time import perf_counter
from typing import Any
from uuid import UUID

from rapidfuzz import fuzz
from rapidfuzz.distance import JaroWinkler, Levenshtein

from leadflow.domain import Lead

#: People per block beyond which the block is not compared pair by pair (a very common
#: token at a big company): its pairs would cost O(n²) and say little.
MAX_BLOCK = 200
#: Default least score a suggestion must reach.
DEFAULT_MIN_SCORE = 0.5

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

_COMPANY_SUFFIXES = frozenset({"inc", "llc", "ltd", "gmbh", "ag", "corp", "co", "sa", "plc",
                               "ooo", "oao"})
_ASCII_WORDS = re.compile(r"[a-z]+")
_LOCAL_WORDS = re.compile(r"[^\W\d_]+|\d+")
_PHONE_CHARS = re.compile(r"^[+\d\s().\-/]+$")
_SYSTEM_PREFIX = re.compile(r"^([a-z][a-z0-9]*)[:/|_\-\s]+(.+)$")
_PHONE_DIGITS = 9  # trailing digits compared: the subscriber number without country/trunk


def normalise_name(text: object) -> str:
    """Lower case, accents and punctuation removed (``Müller-Lüdenscheidt`` ->
    ``muller ludenscheidt``)."""
    if not isinstance(text, str):
        return ""
    if text.isascii():
        return " ".join(_ASCII_WORDS.findall(text.lower()))
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    letters = "".join(ch if ch.isalpha() else " " for ch in decomposed
                      if not unicodedata.combining(ch))
    return " ".join(letters.split())


def normalise_company(text: object) -> str:
    """As accounts key companies: words lower-cased, legal suffixes (Inc, GmbH…) dropped."""
    if not isinstance(text, str):
        return ""
    words = "".join(ch.lower() if ch.isalnum() else " " for ch in text).split()
    while words and words[-1] in _COMPANY_SUFFIXES:
        words.pop()
    return " ".join(words)


def local_tokens(local: str) -> tuple[str, ...]:
    """An email local part's words and numbers: ``a.schmidt2+news`` -> ``("a", "schmidt",
    "2")``."""
    base = local.split("+", 1)[0].casefold()
    if not base.isascii():
        decomposed = unicodedata.normalize("NFKD", base)
        base = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return tuple(_LOCAL_WORDS.findall(base))


def phone_signature(value: str) -> str | None:
    """The last nine digits of something written like a phone number (None otherwise)."""
    if not _PHONE_CHARS.match(value):
        return None
    digits = "".join(ch for ch in value if ch.isdigit())
    return digits[-_PHONE_DIGITS:] if len(digits) >= _PHONE_DIGITS else None


def external_core(value: str) -> str | None:
    """An external id without its system prefix (``sf:00Q5e0001`` -> ``00q5e0001``), when what
    is left is long enough to identify someone (six characters or more, with a digit)."""
    text = value.strip().lower()
    match = _SYSTEM_PREFIX.match(text)
    core = match.group(2) if match else text
    core = "".join(ch for ch in core if ch.isalnum())
    if len(core) >= 6 and any(ch.isdigit() for ch in core):
        return core
    return None


@dataclass(frozen=True, slots=True)
class Person:
    """What duplicate matching knows of one live lead (normalised)."""

    lead_id: UUID
    created_at: datetime
    primary_key: str | None
    first: str
    last: str
    display_name: str
    company: str  # normalised
    company_name: str  # as received
    orgs: frozenset[str]
    emails: tuple[tuple[str, str], ...]  # (local part, domain)
    phones: frozenset[str]  # last nine digits of phone identities
    phone_like: frozenset[str]  # last nine digits of external ids written like phones
    external: frozenset[str]  # external id values as received
    cores: frozenset[str]  # external ids without their system prefix

    @property
    def named(self) -> bool:
        """First and last name known."""
        return bool(self.first and self.last)


def person_of(lead_id: UUID, created_at: datetime, primary_key: str | None,
              identity_keys: Iterable[str], profile: Mapping[str, Any],
              free_mail: frozenset[str]) -> Person:
    """A lead's matching features from its identity keys and profile."""
    emails: list[tuple[str, str]] = []
    phones: set[str] = set()
    phone_like: set[str] = set()
    external: set[str] = set()
    cores: set[str] = set()
    orgs: set[str] = set()
    for key in identity_keys:
        kind, _, value = key.partition(":")
        if kind == "email":
            local, _, domain = value.rpartition("@")
            emails.append((local, domain))
            if domain not in free_mail:
                orgs.add("domain:" + domain)
        elif kind == "phone":
            signature = phone_signature(value)
            if signature:
                phones.add(signature)
        elif kind == "external_id":
            external.add(value)
            core = external_core(value)
            if core:
                cores.add(core)
            stripped = _SYSTEM_PREFIX.match(value.strip().lower())
            signature = phone_signature(stripped.group(2) if stripped else value)
            if signature:
                phone_like.add(signature)
    company = normalise_company(profile.get("company"))
    if company:
        orgs.add("company:" + company)
    first = normalise_name(profile.get("first_name"))
    last = normalise_name(profile.get("last_name"))
    display = " ".join(str(profile[f]) for f in ("first_name", "last_name")
                       if isinstance(profile.get(f), str))
    company_name = profile.get("company")
    return Person(lead_id, created_at, primary_key, first, last, display, company,
                  company_name if isinstance(company_name, str) else "",
                  frozenset(orgs), tuple(emails), frozenset(phones), frozenset(phone_like),
                  frozenset(external), frozenset(cores))


def block_keys(person: Person) -> set[tuple[str, ...]]:
    """The blocking index keys of a person: people sharing none are never compared.

    Within an organisation: the last name, the first name with the last name's initial,
    and the words of email local parts (``a.schmidt`` -> ``schmidt``; a nameless person's
    words stand for names). Keys of kind ``w`` (a first name alone) are weak: people in
    such a block are compared only with its nameless members (see ``candidate_pairs``).
    """
    keys: set[tuple[str, ...]] = set()
    first, last = person.first, person.last
    word_lists = [[t for t in local_tokens(local) if not t.isdigit()]
                  for local, _ in person.emails]
    for org in person.orgs:
        if person.named:
            keys.add(("n", org, last))
            keys.add(("n", org, first, last[0]))
            keys.add(("w", org, first))
            for words in word_lists:
                keys.update(("n", org, t) for t in words
                            if len(t) >= 3 and t not in (first, last))
            continue
        if first:
            keys.add(("w", org, first))
        for words in word_lists:
            keys.update(("n", org, t) for t in words if len(t) >= 2)
            keys.update(("w", org, t) for t in words if len(t) >= 2)
            keys.update(("n", org, x, y[0]) for x, y in pairwise(words))
    if person.named:
        # Same full name anywhere: compared, but never suggested on the name alone across
        # organisations (see score_pair).
        keys.add(("fn", first, last))
    keys.update(("p", digits) for digits in person.phones | person.phone_like)
    keys.update(("x", core) for core in person.cores)
    return keys


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


@dataclass
class Stats:
    """How the suggestion run went (for ``--json`` and the bench)."""

    leads: int = 0
    blocks: int = 0
    oversized_blocks: int = 0
    compared: int = 0
    rejected_pairs: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"leads": self.leads, "blocks": self.blocks,
                "oversized_blocks": self.oversized_blocks, "compared": self.compared,
                "rejected_pairs": self.rejected_pairs,
                "seconds": {k: round(v, 3) for k, v in self.timings.items()}}


def candidate_pairs(people: list[Person], stats: Stats | None = None
                    ) -> Iterator[tuple[int, int]]:
    """Index pairs of people who share a block (each pair once)."""
    blocks: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, person in enumerate(people):
        for key in block_keys(person):
            blocks[key].append(index)
    seen: set[tuple[int, int]] = set()
    for key, members in blocks.items():
        if len(members) < 2:
            continue
        if key[0] == "w":
            # A first name alone links only people whose name is not known.
            lefts = [m for m in members if not people[m].named]
            if not lefts:
                continue
        else:
            lefts = members
        if stats is not None:
            stats.blocks += 1
        if len(members) > MAX_BLOCK:
            if stats is not None:
                stats.oversized_blocks += 1
            continue
        for left in lefts:
            for right in members:
                if left == right:
                    continue
                pair = (left, right) if left < right else (right, left)
                if pair not in seen:
                    seen.add(pair)
                    yield pair


def suggest(people: list[Person], rejected: set[frozenset[UUID]],
            min_score: float = DEFAULT_MIN_SCORE, stats: Stats | None = None
            ) -> list[Suggestion]:
    """Pairs of ``people`` scoring at least ``min_score``, best first, without the
    ``rejected`` pairs."""
    out: list[Suggestion] = []
    compared = 0
    for left, right in candidate_pairs(people, stats):
        a, b = people[left], people[right]
        if frozenset((a.lead_id, b.lead_id)) in rejected:
            continue
        compared += 1
        found = score_pair(a, b)
        if found is not None and found.score >= min_score:
            out.append(found)
    if stats is not None:
        stats.compared = compared
        stats.leads = len(people)
    out.sort(key=lambda s: (-s.score, str(s.a.lead_id), str(s.b.lead_id)))
    return out


# ----------------------------------------------------------------- reading the store


def read_people(lead_ids: Iterable[UUID], load_page: Callable[[list[UUID]], Iterable[Lead]],
                free_mail: frozenset[str], page: int = 1000,
                progress: Callable[[int], None] | None = None
                ) -> tuple[list[Person], dict[UUID, UUID]]:
    """The live, not forgotten leads as people, and where each merged lead went.

    ``load_page`` replays a page of leads (``LeadflowApp.replay_leads``); ``progress`` is
    told how many leads were read after each page.
    """
    people: list[Person] = []
    merged: dict[UUID, UUID] = {}
    batch: list[UUID] = []

    def flush() -> None:
        for lead in load_page(batch):
            if lead.merged_into is not None:
                merged[lead.id] = lead.merged_into
            elif not lead.forgotten and lead.identity_keys:
                people.append(person_of(lead.id, lead.created_at, lead.primary_key,
                                        lead.identity_keys, lead.profile, free_mail))
        if progress is not None:
            progress(len(batch))
        batch.clear()
        gc.freeze()  # the people kept so far: never rescanned by the collector

    with _collector_quiet():
        for lead_id in lead_ids:
            batch.append(lead_id)
            if len(batch) >= page:
                flush()
        if batch:
            flush()
    return people, merged


@contextmanager
def _collector_quiet() -> Iterator[None]:
    """Reading every lead keeps one small object per lead alive and makes many short-lived
    ones: without this the cyclic collector rescans the survivors again and again (a third
    of the reading time at 100,000 leads). Frozen objects are handed back at the end."""
    threshold = gc.get_threshold()
    gc.set_threshold(50_000, *threshold[1:])
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def live_id(lead_id: UUID, merged: Mapping[UUID, UUID]) -> UUID:
    """The lead a (possibly merged) lead id stands for now."""
    for _ in range(32):
        target = merged.get(lead_id)
        if target is None:
            return lead_id
        lead_id = target
    return lead_id


def live_rejections(pairs: Iterable[tuple[UUID, UUID]], merged: Mapping[UUID, UUID]
                    ) -> set[frozenset[UUID]]:
    """Rejected pairs in terms of today's live leads: a lead merged since stands for the
    lead it went into (still not the other person)."""
    out: set[frozenset[UUID]] = set()
    for lead_a, lead_b in pairs:
        a, b = live_id(lead_a, merged), live_id(lead_b, merged)
        if a != b:
            out.add(frozenset((a, b)))
    return out


def suggest_in_store(app: Any, min_score: float = DEFAULT_MIN_SCORE,
                     stats: Stats | None = None,
                     progress: Callable[[int], None] | None = None) -> list[Suggestion]:
    """Suggestions over every live lead of ``app`` (a ``LeadflowApp``), without the pairs
    people rejected; ``progress`` as for ``read_people``."""
    stats = stats if stats is not None else Stats()
    started = perf_counter()
    with _collector_quiet():
        people, merged = read_people(app.lead_ids(), app.replay_leads, app.rules.free_mail,
                                     progress=progress)
        loaded = perf_counter()
        gc.freeze()
        rejected = live_rejections(app.rejected_pairs(), merged)
        stats.rejected_pairs = len(rejected)
        found = suggest(people, rejected, min_score, stats)
    stats.timings = {"load": loaded - started, "match": perf_counter() - loaded}
    return found
