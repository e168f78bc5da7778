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

People and their block keys are in ``dedupe_people``, the comparison of a pair and its
weights in ``dedupe_score``; this module blocks, suggests and reads the store.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any
from uuid import UUID

from leadflow.domain import Lead
from leadflow.engine.dedupe_people import (
    Person,
    block_keys,
    external_core,
    local_tokens,
    normalise_company,
    normalise_name,
    person_of,
    phone_signature,
)
from leadflow.engine.dedupe_score import (
    DISTINCT_MAILBOXES,
    NAME_CONFLICT,
    W_EMAIL_ALIKE,
    W_EMAIL_FIRST_NAME,
    W_EMAIL_NAME,
    W_EMAIL_SAME,
    W_EXTERNAL_ID,
    W_PHONE,
    W_SAME_NAME,
    W_SAME_NAME_ONLY,
    W_SIMILAR_NAME,
    Reason,
    Suggestion,
    score_pair,
)

#: People per block beyond which the block is not compared pair by pair (a very common
#: token at a big company): its pairs would cost O(n²) and say little.
MAX_BLOCK = 200
#: Default least score a suggestion must reach.
DEFAULT_MIN_SCORE = 0.5

# What was defined here before the people and the scoring had modules of their own.
__all__ = [
    "DEFAULT_MIN_SCORE", "DISTINCT_MAILBOXES", "MAX_BLOCK", "NAME_CONFLICT", "W_EMAIL_ALIKE",
    "W_EMAIL_FIRST_NAME", "W_EMAIL_NAME", "W_EMAIL_SAME", "W_EXTERNAL_ID", "W_PHONE", "W_SAME_NAME",
    "W_SAME_NAME_ONLY", "W_SIMILAR_NAME", "Person", "Reason", "Stats", "Suggestion", "block_keys",
    "candidate_pairs", "external_core", "live_id", "live_rejections", "local_tokens",
    "normalise_company", "normalise_name", "person_of", "phone_signature", "read_people",
    "score_pair", "suggest", "suggest_in_store",
]


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
