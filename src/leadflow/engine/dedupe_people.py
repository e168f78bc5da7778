"""Duplicate suggestions (see :mod:`leadflow.engine.dedupe`): every lead as a ``Person``
(normalised names, organisations, email local parts, phone digits, external id cores)
and the cheap keys of the blocking index that decide who is compared with whom."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any
from uuid import UUID

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
