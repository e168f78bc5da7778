"""The hash-chain seal: a link over the exact stored bytes, appended as the last member."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import StoredEvent

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
