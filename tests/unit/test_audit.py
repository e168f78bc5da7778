"""The hash-chain seal: a link over the exact stored bytes, appended as the last member."""

from __future__ import annotations

import json
import re
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import StoredEvent
from hypothesis import given
from hypothesis import strategies as st

from leadflow.store import chain as audit
from leadflow.store.keys import Keyring

KEY = Keyring.of(["unit-test-audit-key-0123456789"], "the test")


def verify_events(lead: Any, stored: list[StoredEvent], plain: Any = None) -> Any:
    return audit.verify_events(lead, stored, plain, KEY)


def _chain(lead: object, payloads: list[bytes]) -> list[StoredEvent]:
    head = audit.genesis(lead)  # type: ignore[arg-type]
    out = []
    for version, payload in enumerate(payloads, start=1):
        sealed, head = audit.seal(KEY, head, lead, version, "t:E", payload)  # type: ignore[arg-type]
        out.append(StoredEvent(lead, version, "t:E", sealed))  # type: ignore[arg-type]
    return out


def test_seal_appends_the_link_and_unseal_gives_back_the_exact_payload() -> None:
    lead = uuid4()
    for payload in (b'{"a":1,"b":[1,2]}', b"{}"):
        sealed, link = audit.seal(KEY, audit.genesis(lead), lead, 1, "t:E", payload)
        assert json.loads(sealed)["chain"] == link
        assert audit.unseal(sealed) == (payload, link)


def test_verify_accepts_an_intact_chain_and_names_a_re_spaced_payload() -> None:
    lead = uuid4()
    stored = _chain(lead, [b'{"x":1}', b'{"x":2,"y":"z"}', b'{"x":3}'])
    assert verify_events(lead, stored).ok
    # Same JSON value, other bytes: still an edit of the stored record, and it is caught.
    respaced = json.dumps(json.loads(stored[1].state)).encode()
    stored[1] = StoredEvent(lead, 2, "t:E", respaced)
    result = verify_events(lead, stored)
    assert [p.version for p in result.problems] == [2]


def test_an_event_without_a_link_is_reported_as_inserted_outside_leadflow() -> None:
    lead = uuid4()
    stored = _chain(lead, [b'{"x":1}'])
    stored.append(StoredEvent(lead, 2, "t:E", b'{"context":{"chain":"' + b"0" * 64 + b'"}}'))
    problems = verify_events(lead, stored).problems
    assert len(problems) == 1 and "no chain link" in problems[0].problem


_REFERENCE = re.compile(rb',?\s*"chain"\s*:\s*"((?:[0-9a-f]{8}:)?[0-9a-f]{64})"\s*}\s*\Z')


def _reference_unseal(state: bytes) -> tuple[bytes, str | None]:
    """What unseal must answer: the whole-payload search it replaced (slow, obviously
    right)."""
    found = _REFERENCE.search(state)
    if found is None:
        return state, None
    return state[:found.start()] + b"}", found.group(1).decode()


_LINK = st.from_regex(r"\A(?:[0-9a-f]{8}:)?[0-9a-f]{64}\Z", fullmatch=True)
_SPACE = st.sampled_from(["", " ", "\n", " \t "])


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=4),
       _LINK, _SPACE, _SPACE, st.booleans())
def test_unseal_matches_the_reference_on_sealed_and_re_spaced_payloads(
        body: dict[str, object], link: str, before: str, after: str, chained: bool) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    if chained:
        member = f'{before}"chain"{before}:{after}"{link}"{after}'
        sep = "," if body else ""
        payload = payload[:-1] + f"{sep}{member}}}{after}".encode()
    assert audit.unseal(payload) == _reference_unseal(payload)


@given(st.binary(max_size=200) | st.text(alphabet='{}",:chain 0123456789abcdef',
                                         max_size=160).map(str.encode))
def test_unseal_matches_the_reference_on_any_bytes(state: bytes) -> None:
    assert audit.unseal(state) == _reference_unseal(state)
