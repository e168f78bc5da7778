"""Duplicate suggestions: features, blocking and scoring, without a store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from leadflow.domain.duplicates import DuplicatePair
from leadflow.engine.dedupe import (
    MAX_BLOCK,
    Person,
    Stats,
    block_keys,
    candidate_pairs,
    external_core,
    live_rejections,
    local_tokens,
    normalise_name,
    person_of,
    phone_signature,
    score_pair,
    suggest,
)

T0 = datetime(2026, 3, 2, tzinfo=UTC)
FREE = frozenset({"gmail.com"})


def person(*keys: str, minutes: int = 0, **profile: Any) -> Person:
    return person_of(uuid4(), T0 + timedelta(minutes=minutes), keys[0] if keys else None,
                     keys, profile, FREE)


def codes(a: Person, b: Person) -> set[str]:
    found = score_pair(a, b)
    return {r.code for r in found.reasons} if found else set()


def test_names_lose_case_accents_and_punctuation() -> None:
    assert normalise_name("Müller-Lüdenscheidt") == "muller ludenscheidt"
    assert normalise_name(None) == ""
    assert local_tokens("a.schmidt+news") == ("a", "schmidt")
    assert local_tokens("anna_schmidt2") == ("anna", "schmidt", "2")


def test_phone_and_external_id_signatures() -> None:
    assert phone_signature("+4915112345678") == phone_signature("0151 1234-5678")
    assert phone_signature("CRM-12") is None
    assert external_core("sf:00Q5e0001") == external_core("hubspot/00Q5E0001") == "00q5e0001"
    assert external_core("crm:12") is None  # too short to name a person


def test_same_name_at_same_company_is_suggested_with_its_reason() -> None:
    a = person("email:jo.miller@initech.example", first_name="Jo", last_name="Miller",
               company="Initech")
    b = person("phone:+4915112345678", minutes=5, first_name="JO", last_name="Miller",
               company="Initech Inc.")
    found = score_pair(b, a)
    assert found is not None and found.a is a  # the older lead comes first
    assert [r.code for r in found.reasons] == ["same_name_and_company"]
    assert found.score == 0.9


def test_email_local_parts_that_fit_one_name_are_alike() -> None:
    a = person("email:anna@acme.example", first_name="Anna", last_name="Schmidt")
    b = person("email:a.schmidt@acme.example", minutes=1)
    assert codes(a, b) == {"email_fits_name"}
    assert ("n", "domain:acme.example", "schmidt") in block_keys(a) & block_keys(b)


def test_an_address_with_the_surname_links_harder_than_a_first_name_alone() -> None:
    named = person("email:anna.schmidt@acme.example", first_name="Anna", last_name="Schmidt")
    assert codes(named, person("email:aschmidt@acme.example")) == {"email_fits_name"}
    found = score_pair(named, person("email:anna@acme.example"))
    assert found is not None and found.score < 0.5  # any Anna at Acme could be anna@


def test_numbered_mailboxes_of_namesake_colleagues_are_told_apart() -> None:
    a = person("email:jo.miller@initech.example", first_name="Jo", last_name="Miller",
               company="Initech")
    b = person("email:jo.miller2@initech.example", first_name="Jo", last_name="Miller",
               company="Initech")
    found = score_pair(a, b)
    assert found is not None and found.score < 0.5
    assert "distinct_mailboxes" in {r.code for r in found.reasons}


def test_other_colleagues_at_the_same_company_are_not_alike() -> None:
    anna = person("email:anna@acme.example", first_name="Anna", last_name="Schmidt")
    assert codes(anna, person("email:a.meyer@acme.example")) == set()
    other_anna = person("email:anna.meyer@acme.example", first_name="Anna", last_name="Meyer")
    assert score_pair(anna, other_anna) is None


def test_namesakes_at_different_companies_are_never_suggested() -> None:
    a = person("email:peter.meyer@umbrella.example", first_name="Peter", last_name="Meyer",
               company="Umbrella")
    b = person("email:peter.meyer@hooli.example", first_name="Peter", last_name="Meyer",
               company="Hooli")
    assert score_pair(a, b) is None
    assert suggest([a, b], set(), 0.0) == []


def test_same_phone_in_another_format_outweighs_a_missing_company() -> None:
    a = person("phone:+4915199887766", first_name="Lena", last_name="Vogel", company="Globex")
    b = person("external_id:crm:0151 99887766", minutes=1)
    assert codes(a, b) == {"same_phone"}
    assert next(iter(suggest([a, b], set()))).score == 0.85


def test_same_external_id_in_another_system() -> None:
    a = person("external_id:sf:00Q5e0001")
    b = person("external_id:hubspot-00Q5E0001", minutes=1)
    assert codes(a, b) == {"same_external_id"}
    # Long numeric ids are not counted twice (as a phone too).
    assert codes(person("external_id:sf:100012345678"),
                 person("external_id:hs:100012345678")) == {"same_external_id"}


def test_different_first_names_cut_the_score() -> None:
    a = person("phone:+4915199887766", first_name="Lena", last_name="Vogel")
    b = person("external_id:crm:015199887766", first_name="Max", last_name="Vogel")
    found = score_pair(a, b)
    assert found is not None and found.score < 0.5
    assert "names_differ" in {r.code for r in found.reasons}


def test_blocking_compares_only_people_who_share_a_key() -> None:
    people = [person(f"email:p{i}@firm{i}.example", first_name="Jo",
                     last_name=chr(97 + i % 26) + chr(97 + i // 26) + "son")
              for i in range(50)]
    # Fifty people at fifty firms share no block: nothing is compared.
    assert list(candidate_pairs(people)) == []
    twins = [person("email:jo@acme.example"), person("email:jo.x@acme.example")]
    assert list(candidate_pairs(twins)) == [(0, 1)]


def test_an_oversized_block_is_skipped_and_counted() -> None:
    crowd = [person(f"email:info{i}@big.example") for i in range(MAX_BLOCK + 1)]
    stats = Stats()
    assert list(candidate_pairs(crowd, stats)) == []
    assert stats.oversized_blocks >= 1


def test_rejected_pairs_follow_merges_and_are_left_out() -> None:
    a = person("email:anna@acme.example", first_name="Anna", last_name="Schmidt")
    b = person("email:a.schmidt@acme.example", minutes=1)
    old = uuid4()  # b's id before another lead was merged into it... and the other way
    rejected = live_rejections([(a.lead_id, old)], {old: b.lead_id})
    assert rejected == {frozenset((a.lead_id, b.lead_id))}
    assert suggest([a, b], rejected, 0.0) == []
    assert len(suggest([a, b], set(), 0.0)) == 1


def test_a_pair_is_one_aggregate_whatever_the_order() -> None:
    x, y = UUID(int=1), UUID(int=2)
    assert DuplicatePair.create_id(x, y) == DuplicatePair.create_id(y, x)
    pair = DuplicatePair(y, x)
    pair.reject("maria", "two people", T0)
    assert (pair.lead_a, pair.lead_b) == (x, y)
    assert pair.rejected == {"actor": "maria", "reason": "two people", "at": T0}
