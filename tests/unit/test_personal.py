"""The vault (store/personal.py): personal values sealed per person and opened back exactly,
placeholders once the key is gone, refusals for altered or moved blobs, keyed identity
hashes, and the master key's wrapping, rotation and refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadflow.config import ConfigError
from leadflow.domain import Lead
from leadflow.domain.privacy import PERSONAL_FIELDS, public_url
from leadflow.engine.app import LeadflowApp
from leadflow.store.master_keys import MasterKeys, master_keys_from_env, personal_data_plain
from leadflow.store.memory import LeadflowPOPOProcessRecorder
from leadflow.store.personal import PII, SealedValuesError, Vault
from tests.conftest import T0, Records

TEXT = st.text(min_size=1, max_size=40)


def vault() -> Vault:
    return Vault(MasterKeys(["unit-test-master-key-0123456789"], "test"),
                 LeadflowPOPOProcessRecorder())


def committed(v: Vault) -> Vault:
    """Store the pending keys as a commit would."""
    v.table.memory.data_keys.update(v.new_keys())  # type: ignore[union-attr]
    v.committed()
    return v


STATES = st.fixed_dictionaries({
    "primary_key": TEXT.map(lambda t: f"email:{t}"),
    "landing_page": st.one_of(st.none(), TEXT.map(lambda t: f"https://x.example/p?{t}")),
    "source": TEXT,
    "changes": st.dictionaries(st.sampled_from(["first_name", "last_name", "title",
                                                "company", "country"]), TEXT),
    "context": st.dictionaries(st.sampled_from(["url", "landing_page", "source"]),
                               TEXT.map(lambda t: f"https://a.example/{t}")),
    "identity_keys": st.lists(TEXT, max_size=4),
})


@settings(max_examples=150, deadline=None)
@given(state=STATES, name=st.sampled_from(sorted(PERSONAL_FIELDS)))
def test_sealed_values_open_back_exactly_and_the_live_event_is_untouched(
        state: dict[str, Any], name: str) -> None:
    v = vault()
    aggregate_id = uuid4()
    live = copy.deepcopy(state)
    sealed = dict(state)
    v.seal(name, aggregate_id, sealed, first=True)
    assert state == live  # nested dicts were copied before anything was taken out
    stored = json.loads(json.dumps(sealed, default=str))  # what the store keeps
    committed(v)
    assert v.open(name, aggregate_id, stored)
    assert stored == json.loads(json.dumps(state, default=str))


def test_personal_values_leave_the_readable_part_and_placeholders_stay_after_forget() -> None:
    v = vault()
    lead = uuid4()
    created = {"primary_key": "email:anna@acme.example", "created_at": "t",
               "landing_page": "https://acme.example/lp?email=anna@acme.example",
               "source": "google"}
    v.seal("Lead.Created", lead, created, first=True)
    text = json.dumps(created)
    assert "anna" not in text and created["source"] == "google"
    assert created["landing_page"] == "https://acme.example/lp" and PII in created
    profile = {"changes": {"first_name": "Anna", "company": "Acme", "title": "CEO"}}
    v.seal("Lead.ProfileUpdated", lead, profile)
    assert profile["changes"] == {"company": "Acme"}
    committed(v)
    v.shredded([lead])
    opened = dict(created)
    assert not v.open("Lead.Created", lead, opened)
    assert opened["primary_key"] is None and PII not in opened
    assert opened["landing_page"] == "https://acme.example/lp"


def test_a_blob_moved_to_another_event_or_aggregate_never_opens() -> None:
    v = vault()
    a, b = uuid4(), uuid4()
    state = {"key": "email:x@acme.example"}
    v.seal("Lead.IdentityAdded", a, state, first=True)
    v.seal("Lead.IdentityAdded", b, {"key": "email:y@acme.example"}, first=True)
    committed(v)
    # Under another aggregate's key it is a blob of a key that is not there (as after a
    # forget); the chain reports the moved bytes. Under its own key, bound to its event.
    moved = dict(state)
    assert not v.open("Lead.IdentityAdded", b, moved) and moved["key"] is None
    with pytest.raises(ValueError, match="does not decrypt"):
        v.open("Lead.Created", a, dict(state))


@settings(max_examples=60, deadline=None)
@given(states=st.lists(st.tuples(STATES, st.sampled_from(sorted(PERSONAL_FIELDS)),
                                 st.integers(0, 2)), min_size=1, max_size=6))
def test_open_all_opens_a_batch_as_open_does_one_by_one(
        states: list[tuple[dict[str, Any], str, int]]) -> None:
    """The projector's batch (ids as text, several events per aggregate, one forgotten):
    each state comes out exactly as ``open`` leaves it."""
    v = vault()
    ids = [uuid4() for _ in range(3)]
    stored = []
    for state, name, which in states:
        sealed = dict(state)
        v.seal(name, ids[which], sealed, first=True)
        stored.append((name, ids[which], json.loads(json.dumps(sealed, default=str))))
    committed(v)
    v.shredded([ids[2]])
    one_by_one = copy.deepcopy(stored)
    for name, aggregate_id, state in one_by_one:
        v.open(name, aggregate_id, state)
    batch = [(name, str(aggregate_id), state) for name, aggregate_id, state in stored]
    v.open_all(batch)
    assert [state for _, _, state in batch] == [state for _, _, state in one_by_one]


def test_open_all_names_the_event_whose_blob_does_not_open() -> None:
    v = vault()
    lead = uuid4()
    good, bad = {"key": "email:x@acme.example"}, {"key": "email:y@acme.example"}
    v.seal("Lead.IdentityAdded", lead, good, first=True)
    v.seal("Lead.IdentityAdded", lead, bad)
    committed(v)
    batch = [("Lead.IdentityAdded", lead, dict(good)), ("Lead.Created", lead, dict(bad))]
    with pytest.raises(SealedValuesError) as raised:
        v.open_all(batch)
    assert raised.value.index == 1
    assert "does not decrypt" in str(raised.value.__cause__)
    assert batch[0][2]["key"] == "email:x@acme.example"  # the events before it are opened


def test_identity_hashes_are_keyed_stable_and_reveal_nothing() -> None:
    one, other = vault(), vault()
    h = one.lookup("email:anna@acme.example")
    assert h == one.lookup("email:anna@acme.example") and len(h) == 32
    assert "anna" not in h and h != other.lookup("email:anna@acme.example")


def test_master_keys_wrap_rotate_and_name_a_wrong_key(tmp_path: Path) -> None:
    old = MasterKeys(["old-master-key-0123456789"], "test")
    aggregate_id = uuid4()
    wrapped = old.wrap(aggregate_id, b"k" * 32)
    both = MasterKeys(["new-master-key-0123456789", "old-master-key-0123456789"], "test")
    assert both.unwrap(aggregate_id, wrapped) == b"k" * 32
    rewrapped = both.wrap(aggregate_id, both.unwrap(aggregate_id, wrapped))
    assert both.key_id_of(rewrapped) == both.current != old.current
    with pytest.raises(ConfigError, match="not among the configured"):
        old.unwrap(aggregate_id, rewrapped)
    with pytest.raises(ValueError, match="does not unwrap"):
        both.unwrap(UUID(int=1), rewrapped)
    with pytest.raises(ConfigError, match="too short"):
        MasterKeys(["short"], "test")
    with pytest.raises(ConfigError, match="LEADFLOW_MASTER_KEY"):
        master_keys_from_env({}, None, "eventsourcing.postgres")
    made = master_keys_from_env({}, str(tmp_path / "x.db"), "eventsourcing.sqlite")
    key_file = tmp_path / "x.db.master-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert master_keys_from_env({}, str(tmp_path / "x.db"), "eventsourcing.sqlite"
                                ).current == made.current
    with pytest.raises(ConfigError, match="LEADFLOW_PERSONAL_DATA"):
        personal_data_plain({"LEADFLOW_PERSONAL_DATA": "off"})


def test_public_url_keeps_scheme_host_and_path() -> None:
    assert public_url("https://a.example/p/q?x=1#f") == "https://a.example/p/q"
    assert public_url("https://a.example/p#f?x") == "https://a.example/p"
    assert public_url("/pricing") == "/pricing"


def test_forget_in_memory_keeps_the_lead_and_its_score(rec: Records) -> None:
    app = LeadflowApp()
    app.apply_batch([rec("form_submitted", "anna@acme.example",
                         lead={"first_name": "Anna"}, at=T0),
                     rec("email_clicked", "bob@acme.example", at=T0)])
    before = app.lead("email:anna@acme.example", at=T0)
    result = app.forget("email:anna@acme.example", "request 7", "dpo", T0)
    assert result.lead_id == before.lead_id and result.identities == 1
    after = app.lead(before.lead_id, at=T0)
    assert after.forgotten and after.primary_key is None and after.identities == ()
    assert "first_name" not in after.profile and after.score == before.score
    # A fresh process (no cache) replays the same state from the stored events.
    app.forget_cached_aggregates()
    replayed = app.lead(before.lead_id, at=T0)
    assert (replayed.primary_key, replayed.score, replayed.stage_now) == (
        None, before.score, before.stage_now)
    assert app.lead("email:bob@acme.example", at=T0).primary_key == "email:bob@acme.example"


def test_an_anonymous_visitor_is_forgotten_with_their_interest(rec: Records) -> None:
    app = LeadflowApp()
    app.apply_batch([rec("page_viewed", None, lead={"anonymous_id": "cookie-9"},
                         context={"url": "https://a.example/pricing?email=x@y.example"})])
    result = app.forget("anonymous_id:cookie-9", "visitor request", "dpo", T0)
    assert (result.data_keys, result.identities, result.leads) == (1, 1, ())
    again = app.forget  # the cookie now names nothing
    with pytest.raises(Exception, match="no lead known"):
        again("anonymous_id:cookie-9", "again", "dpo", T0)
    app.forget_cached_aggregates()
    interest: Any = app.repository.get(result.lead_id)
    assert interest.anonymous_id is None
    assert interest.touchpoints[0]["context"]["url"] == "https://a.example/pricing"
    # A later record with the same cookie starts afresh.
    app.apply_batch([rec("page_viewed", None, lead={"anonymous_id": "cookie-9"})])
    assert app.directory.lookup(["anonymous_id:cookie-9"])["anonymous_id:cookie-9"].target_id \
        != result.lead_id


def test_custom_properties_are_sealed_whole_and_come_back() -> None:
    v = vault()
    lead = uuid4()
    live = {"event_id": "e1", "context": {"source": "ads", "url": "https://a.example/p",
                                          "properties": {"product": "b", "note": "x@y.io"}}}
    state = dict(live)
    v.seal("Lead.TouchpointScored", lead, state, first=True)
    assert state["context"] == {"source": "ads", "url": "https://a.example/p"}
    assert "properties" in live["context"]  # type: ignore[operator]
    committed(v)
    stored = json.loads(json.dumps(state))
    assert v.open("Lead.TouchpointScored", lead, stored)
    assert stored == live


def test_a_url_is_sealed_only_for_a_query_or_fragment() -> None:
    v = vault()
    lead = uuid4()
    bare = {"context": {"url": "https://a.example/p", "landing_page": "/pricing"}}
    v.seal("Lead.TouchpointScored", lead, bare)
    assert PII not in bare and not v.new_keys()  # nothing personal: no blob, no key made
    for url in ("https://a.example/p#t=x@y.io", "https://a.example/p?e=x@y.io",
                "https://a.example/p?"):
        live = {"context": {"url": url, "landing_page": "/pricing"}}
        state = dict(live)
        v.seal("Lead.TouchpointScored", lead, state)
        assert state["context"] == {"url": public_url(url), "landing_page": "/pricing"}
        assert PII in state
        committed(v)
        stored = json.loads(json.dumps(state))
        assert v.open("Lead.TouchpointScored", lead, stored)
        assert stored == live


def test_a_forgotten_lead_given_a_new_key_later_still_loads(rec: Records) -> None:
    app = LeadflowApp()
    app.apply_batch([rec("form_submitted", "anna@acme.example", at=T0)])
    lead_id = app.resolve("email:anna@acme.example")
    app.forget(lead_id, "request 8", "dpo", T0)
    # An event with a sealed field after the forget (a rep's reason): a new key is made for
    # it; the rows sealed with the deleted key still read as forgotten, not as damage.
    unit = app._unit()
    lead = unit.get(Lead, lead_id)
    assert lead is not None
    lead.change_stage("disqualified", T0, "rep-a", "asked to be left alone")
    unit.seal({"command": "test"})
    app._commit(unit, None)
    app.forget_cached_aggregates()
    view = app.lead(lead_id, at=T0)
    assert view.primary_key is None and view.stage_now == "disqualified"
    assert view.transitions[-1]["reason"] == "asked to be left alone"
    assert all(app.verify(i).ok for i in app.lead_ids())


def test_only_a_bounded_number_of_aes_contexts_stay_alive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each AES-GCM object holds OpenSSL memory: the data-key cache keeps key bytes, and at
    most _AEADS_MAX AEADs live at once; a key whose AEAD was dropped seals and opens again."""
    from leadflow.store import personal

    monkeypatch.setattr(personal, "_AEADS_MAX", 3)
    monkeypatch.setattr(personal, "_live_aeads", personal.deque())
    v = vault()
    ids = [uuid4() for _ in range(8)]
    sealed = []
    for aggregate_id in ids:
        state = {"key": f"email:{aggregate_id.hex}@acme.example"}
        v.seal("Lead.IdentityAdded", aggregate_id, state, first=True)
        sealed.append(state)
    committed(v)
    keys = [v._cipher(i, False) for i in ids]
    assert all(k is not None for k in keys)
    for aggregate_id, state in zip(ids, sealed, strict=True):
        opened = dict(state)
        assert v.open("Lead.IdentityAdded", aggregate_id, opened)
        assert opened["key"] == f"email:{aggregate_id.hex}@acme.example"
        assert sum(k._aead is not None for k in keys if k is not None) <= 3
    assert len(personal._live_aeads) == 3


def test_the_identity_hash_cache_is_bounded_and_a_dropped_hash_is_the_same_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from leadflow.store import personal

    monkeypatch.setattr(personal, "HASHES_MAX", 4)
    v = vault()
    first = {n: v.lookup(f"email:p{n}@acme.example") for n in range(10)}
    assert len(v._hashes) <= 4
    assert {n: v.lookup(f"email:p{n}@acme.example") for n in range(10)} == first


def test_the_identity_directory_is_bounded_and_reads_dropped_rows_back(
        monkeypatch: pytest.MonkeyPatch, rec: Records) -> None:
    from leadflow.engine import unit

    monkeypatch.setattr(unit, "DIRECTORY_MAX", 3)
    app = LeadflowApp()
    emails = [f"p{n}@acme.example" for n in range(8)]
    app.apply_batch([rec("form_submitted", e) for e in emails])
    leads = {e: app.lead(f"email:{e}", at=T0).lead_id for e in emails}
    app.apply_batch([rec("email_clicked", e) for e in emails[:2]])
    assert len(app.directory.cache) == 2  # over its bound: started over with this batch's
    # A key whose row was dropped finds its lead again (no second lead for it).
    app.apply_batch([rec("email_clicked", emails[5])])
    assert app.lead(f"email:{emails[5]}", at=T0).lead_id == leads[emails[5]]
    found = app.directory.lookup([f"email:{e}" for e in emails])
    assert {k[6:]: i.target_id for k, i in found.items()} == leads
