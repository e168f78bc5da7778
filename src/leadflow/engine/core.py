"""The application's parts every use case shares: configuration, stores, codec, caches.

``AppCore`` builds the eventsourcing ``Application`` leadflow runs on: the keyed chain and
personal-data keys read from the environment before anything connects, the orjson
transcoder, the folding event store with the vault, a process recorder that keeps the
record-id index, the identity directory and the spilling aggregate cache. The use cases are
layered on it: queries (engine/queries.py), the batch unit of work (engine/batch.py), the
other commands (engine/commands.py); ``LeadflowApp`` (engine/app.py) is the whole.
"""

from __future__ import annotations

from typing import cast
from uuid import UUID

from eventsourcing.application import Application, LRUCache
from eventsourcing.persistence import (
    EventStore,
    JSONTranscoder,
    ProcessRecorder,
    Transcoder,
)
from eventsourcing.popo import POPOFactory

from leadflow.domain.rules import Rules, default_rules
from leadflow.engine.decisions import RecordProcessor
from leadflow.engine.store_format import (
    StoreCipherError,
    StoreVersionError,
    check_cipher,
    check_store_version,
)
from leadflow.engine.unit import CacheMarks, Directory, TimerHints, Unit
from leadflow.store.cache import SpillingLRUCache
from leadflow.store.codec import EventCodec
from leadflow.store.fold import FoldingEventStore
from leadflow.store.keys import keyring_from_env
from leadflow.store.master_keys import master_keys_from_env, personal_data_plain
from leadflow.store.memory import LeadflowPOPOProcessRecorder
from leadflow.store.personal import Vault
from leadflow.store.recorders import RecordIdIndex, recorder_topic_for
from leadflow.store.timers import TIMERS_EPOCH
from leadflow.store.transcoder import OrjsonTranscoder


class AppCore(Application[UUID]):
    """Configuration and infrastructure of the engine (see the module's doc)."""

    name = "leadflow"
    # No snapshots: the library looks a snapshot up before every aggregate it loads, which
    # doubled the queries of each cache miss; the shared Router and Clock are loaded once per
    # process and then live in the aggregate cache.

    def __init__(self, env: dict[str, str] | None = None, rules: Rules | None = None,
                 *, migrating: bool = False) -> None:
        # The audit key signs every row's chain link (store/keys.py); never in the database.
        # Read before connecting, so a store without one is refused before anything opens.
        config = self.construct_env(self.name, env)
        persistence = config.get("PERSISTENCE_MODULE") or "eventsourcing.popo"
        self.keyring = keyring_from_env(config, config.get("SQLITE_DBNAME"), persistence)
        # The master key wraps each person's data key (store/personal.py); same rules.
        self.master_keys = master_keys_from_env(config, config.get("SQLITE_DBNAME"),
                                                persistence)
        self.personal_plain = personal_data_plain(config)
        super().__init__(env)
        self.rules = rules or default_rules()
        self.codec = EventCodec(self.mapper, self.recorder, self.keyring, self.vault)
        self.directory = Directory(self.indexes, self.vault.lookup)
        self.cache_marks = CacheMarks()
        self.timer_hints = TimerHints()
        if not migrating:
            self._check_store_version()
        cache = self.repository.cache
        spill_mib = int(self.env.get("LEADFLOW_AGGREGATE_SPILL_MIB") or 0)
        if isinstance(cache, LRUCache) and spill_mib > 0:
            # Evicted aggregates are pickled rather than dropped (see cache.py).
            self.repository.cache = SpillingLRUCache(cache.maxsize, spill_mib << 20)

    def _unit(self) -> Unit:
        unit = Unit(self.repository, self.directory)
        unit.timers_epoch = self.indexes.meta(TIMERS_EPOCH)
        self.timer_hints.begin(unit.timers_epoch)
        if unit.shared:
            # Whether the caches can be used as they are (engine/unit.py CacheMarks). Caches
            # that already failed to be (another writer committed) cannot be again until
            # they are emptied: the mark is not even read then. Two consumers of a group
            # never trust theirs, and the read was 1.2 % of their time (the other's
            # uncommitted rows at the end of the notification id index).
            empty = self._caches_empty()
            if empty or self.cache_marks.valid_at is not None:
                unit.seen = self.record_ids.writer_mark()
                unit.trusted = self.cache_marks.trusts(unit.seen, empty)
        return unit

    def _caches_empty(self) -> bool:
        cache = self.repository.cache
        return (not self.directory.cache and not self.vault.holds_keys()
                and (cache is None or not cache.cache)
                and not (isinstance(cache, SpillingLRUCache) and cache.spilled))

    def _check_store_version(self) -> None:
        try:
            check_store_version(self.indexes)
            check_cipher(self.indexes, self.mapper.cipher)
        except (StoreVersionError, StoreCipherError):
            self.close()
            raise

    def construct_transcoder(self) -> Transcoder:
        # The library's JSON format, written with orjson (store/transcoder.py).
        transcoder = super().construct_transcoder()
        if type(transcoder) is not JSONTranscoder:
            return transcoder  # a transcoder chosen in the configuration is kept
        fast = OrjsonTranscoder()
        for transcoding in transcoder.types.values():
            fast.register(transcoding)
        return fast

    def construct_event_store(self) -> EventStore[UUID]:
        # Reads envelopes (one row per cause, store/fold.py) as the events they hold, with
        # personal values decrypted by the vault (made here: it needs the recorder).
        self.vault = Vault(self.master_keys, self.recorder, plain=self.personal_plain)
        return FoldingEventStore(self.mapper, self.recorder, self.vault)

    def construct_recorder(self) -> ProcessRecorder:
        # A process recorder can commit a tracking position with the events (Kafka offsets);
        # leadflow's recorders also keep the record-id index in the same transaction.
        factory = self.factory
        if isinstance(factory, POPOFactory):
            return LeadflowPOPOProcessRecorder()
        topic = recorder_topic_for(type(factory).__module__)
        if topic is not None and not factory.env.get(factory.PROCESS_RECORDER_TOPIC):
            factory.env[factory.PROCESS_RECORDER_TOPIC] = topic
        return factory.process_recorder()

    @property
    def indexes(self) -> RecordIdIndex:
        return self.record_ids

    @property
    def record_ids(self) -> RecordIdIndex:
        recorder = self.recorder
        if not isinstance(recorder, RecordIdIndex):
            raise TypeError(f"{type(recorder).__name__} keeps no record-id index: configure "
                            "one of leadflow.store.recorders's recorders (PROCESS_RECORDER_TOPIC)")
        return recorder

    @property
    def shared_store(self) -> bool:
        """Several processes write the store (see ``RecordIdIndex.shared``)."""
        return self.record_ids.shared

    @property
    def process_recorder(self) -> ProcessRecorder:
        return cast(ProcessRecorder, self.recorder)

    def _decide(self, unit: Unit) -> RecordProcessor:
        return RecordProcessor(self.rules, unit)
