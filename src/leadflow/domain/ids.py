"""Aggregate ids and identity keys (``kind:value``).

A lead's (and an anonymous interest's) id is derived from the event id of the record that
created it, never from a person's email or phone: anyone can compute ``uuid5`` of an
address, so such an id would tell that the person was there even after ``forget``. Ids stay
replay-stable (the same records make the same ids); identities are found through the
identity table, keyed by an HMAC of the identity (store/personal.py)."""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID, uuid5

# Namespaces are fixed forever: changing one would re-key every stored aggregate.
NS_LEAD = UUID("6f1c3a52-4a0b-4f43-9d47-2f0cbb1f7a10")
NS_IDENTITY = UUID("0b7e1d0e-5b1e-4c53-8f5f-8a6f7f0f6c21")
NS_INTEREST = UUID("a2d5a7a1-7c43-4c7e-9a55-4f1f7f3b2d32")
NS_ACCOUNT = UUID("c9e0d6f4-1d7b-4a8e-b8a1-5c3e2f9d4e43")
NS_SINGLETON = UUID("e4b7c1a9-2f6d-4e8b-9c3a-7d5e1f0a8b54")

IDENTITY_KINDS = ("email", "phone", "external_id", "anonymous_id")


def identity_key(kind: str, value: str) -> str:
    if kind not in IDENTITY_KINDS:
        raise ValueError(f"unknown identity kind {kind!r}")
    return f"{kind}:{value}"


@lru_cache(maxsize=65536)  # uuid5 hashes each time; hot in every batch
def identity_index_id(key: str) -> UUID:
    return uuid5(NS_IDENTITY, key)


def lead_id_for(origin: str) -> UUID:
    """The id of the lead the record with event id ``origin`` created."""
    return uuid5(NS_LEAD, "record:" + origin)


def interest_id_for(origin: str) -> UUID:
    """The id of the anonymous interest the record with event id ``origin`` created."""
    return uuid5(NS_INTEREST, "record:" + origin)


def legacy_interest_id(anonymous_id: str) -> UUID:
    """An interest's id in stores written before format 5 (``uuid5`` of the cookie)."""
    return uuid5(NS_INTEREST, anonymous_id)


@lru_cache(maxsize=65536)
def account_id_for(account_key: str) -> UUID:
    return uuid5(NS_ACCOUNT, account_key)


@lru_cache(maxsize=65536)
def singleton_id(name: str) -> UUID:
    return uuid5(NS_SINGLETON, name)


def rule_book_id() -> UUID:
    """The rule book's id (``RuleBook.create_id``), known without importing the aggregate:
    reading the published rules, which every command does, needs no RuleBook class when
    nothing was published (start-up, issue 15)."""
    return singleton_id("rulebook")
