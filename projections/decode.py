"""The projector's reading of a page of stored events (see ``projector``): each event
decoded (envelopes opened, sealed personal values opened in one pass), the rows the page
touches, and ``ProjectionFailedError`` for an event that cannot be projected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder, Notification
from eventsourcing.utils import get_topic

from leadflow.engine.app import LeadflowApp
from leadflow.projections.events import ENVELOPES, KINDS, LEAD_TOPICS, EventData, load_payload
from leadflow.projections.rows import MODEL_EVENTS
from leadflow.store.personal import PII, SealedValuesError
from leadflow.store.recorders import PageRow

#: Each followed topic's name in the vault's terms ("Lead.Created"): what a sealed blob of
#: its payload is bound to (store/personal.py).
_AGGREGATE_EVENT = {topic: topic.partition(":")[2] for topic in KINDS}
#: Per envelope topic, each inner event name met so far: (its topic, its vault name), or
#: None for one the read models do not follow.
_ENVELOPE_EVENTS: dict[str, dict[str, tuple[str, str] | None]] = {t: {} for t in ENVELOPES}


def _followed(envelope_topic: str, name: str) -> tuple[str, str] | None:
    """The topic of an envelope's inner event ``name`` and its vault name, if followed."""
    topic = f"{envelope_topic.rsplit('.', 1)[0]}.{name}"
    return (topic, _AGGREGATE_EVENT[topic]) if topic in KINDS else None


def _forgotten_set(events: list[tuple[int, str, Any]]) -> set[str]:
    """Leads merged into a forgotten lead: their rows are emptied with the lead's."""
    out: set[str] = set()
    for _, topic, event in events:
        if KINDS[topic][1] == "Forgotten":
            out.update(str(i) for i in event.data_keys)
    return out


def _model_leads(events: list[tuple[int, str, Any]]) -> set[str]:
    """Leads whose named models' rows the page changes."""
    return {str(e.originator_id) for _, topic, e in events if KINDS[topic][1] in MODEL_EVENTS}


def _accounts_set(events: list[tuple[int, str, Any]]) -> set[str]:
    """Accounts the page's leads join (their touchpoints then count as its engagements)."""
    out: set[str] = set()
    for _, topic, event in events:
        if KINDS[topic][1] == "AccountSet":
            try:
                out.add(str(event.account_id))
            except Exception:
                continue
    return out


class ProjectionFailedError(RuntimeError):
    """A stored event the projector cannot project: the one line names it and why.

    Raised by ``process_page`` (whose page is then not committed: the tracking position stays
    before the event) and by ``rebuild`` (the live tables stay as they were).
    """

    def __init__(self, notification_id: int, originator_id: Any, topic: str | None,
                 reason: str) -> None:
        self.notification_id = notification_id
        self.originator_id = str(originator_id)
        self.topic = topic
        self.reason = " ".join(str(reason).split())[:500]
        super().__init__(notification_id, self.originator_id, topic, self.reason)

    def __str__(self) -> str:
        kind = "account" if self.topic and KINDS.get(self.topic, (False,))[0] else "lead"
        name = self.topic.rpartition(":")[2] if self.topic else "event"
        return (f"cannot project event {self.notification_id} ({name} of {kind} "
                f"{self.originator_id}): {self.reason}")


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Decoder:
    """Decodes a page of stored events for ``Projector``."""

    app: LeadflowApp

    def _decode(self, rows: Sequence[PageRow]) -> list[tuple[int, str, Any]]:
        """The page's events; the first that cannot be decoded raises ProjectionFailedError."""
        mapper = self.app.mapper
        transcoder = mapper.transcoder
        out: list[tuple[int, str, Any]] = []
        sealed: list[tuple[PageRow, str, dict[str, Any]]] = []
        row: PageRow | None = None
        try:
            if not isinstance(transcoder, JSONTranscoder):
                expand = self.app.codec.expander.expand
                for row in rows:
                    nid, oid, version, topic, state = row
                    stored = Notification(id=nid, originator_id=UUID(oid),
                                          originator_version=version, topic=topic, state=state)
                    for event in expand(stored):
                        topic = get_topic(type(event))
                        if topic in KINDS:
                            out.append((nid, topic, event))
                return out
            names = transcoder.names
            cipher, compressor = mapper.cipher, mapper.compressor
            vault = self.app.vault
            # Personal values are sealed per person (store/personal.py): the page's data
            # keys are read in one query; a forgotten person's values read as placeholders.
            vault.preload(row[1] for row in rows if row[3] in LEAD_TOPICS)
            # Sealed values are opened in one pass over the page (Vault.open_all), after
            # the page is parsed: (row, vault name, state) of each event holding some.
            append, loads, seal = out.append, orjson.loads, sealed.append
            for row in rows:
                nid, oid, _, stored_topic, state = row
                if cipher:
                    state = cipher.decrypt(state)
                if compressor:
                    state = compressor.decompress(state)
                try:
                    data = loads(state)
                except orjson.JSONDecodeError:
                    data = load_payload(state)
                if type(data) is not dict:
                    data = load_payload(state)  # raises: no JSON object
                inner = _ENVELOPE_EVENTS.get(stored_topic)
                if inner is not None:
                    for name, sub in data["events"]:
                        found = inner.get(name) if type(name) is str else None
                        if found is None:
                            if type(name) is not str or name in inner:
                                continue  # an event the read models do not follow
                            found = _followed(stored_topic, name)
                            if len(inner) < 256:  # no more names than the domain has
                                inner[name] = found
                            if found is None:
                                continue
                        topic, aggregate_event = found
                        if PII in sub:
                            seal((row, aggregate_event, sub))
                        append((nid, topic, EventData(oid, sub, names)))
                    continue
                if PII in data:
                    seal((row, _AGGREGATE_EVENT.get(stored_topic)
                          or stored_topic.partition(":")[2], data))
                append((nid, stored_topic, EventData(oid, data, names)))
            row = None
            self._open(sealed)
        except Exception as exc:
            if row is None:
                raise
            # An event before this one whose sealed values do not open is named first.
            self._open(sealed)
            raise ProjectionFailedError(row[0], row[1], row[3],
                                        f"payload cannot be decoded: {_reason(exc)}") from exc
        return out

    def _open(self, sealed: list[tuple[PageRow, str, dict[str, Any]]]) -> None:
        """Open the page's sealed values; the first that does not open raises
        ProjectionFailedError naming its event."""
        try:
            self.app.vault.open_all([(name, row[1], state) for row, name, state in sealed])
        except SealedValuesError as exc:
            row = sealed[exc.index][0]
            cause = exc.__cause__ or exc  # Vault.open's error for that event
            raise ProjectionFailedError(row[0], row[1], row[3],
                                        f"payload cannot be decoded: {_reason(cause)}") from exc
