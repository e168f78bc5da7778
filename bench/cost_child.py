"""The bench's in-process sample, and one ingest of it for an instruction count.

    python bench/cost_child.py STREAM LIMIT NOW DB VARIANT

``VARIANT`` is one of ``setup`` (everything but the ingest), ``encrypted``, ``plain``,
``keyed``, ``unkeyed``. ``bench/run.py`` runs this under ``valgrind --tool=callgrind`` and
reads the instructions it executed: unlike CPU time, an instruction count does not depend on
what else the machine runs (on this 2-core VM the CPU time of one and the same ingest varied
by ±25 % between runs, and the paired ratios with it). The ``setup`` run does the same
reading, parsing and opening as the others, so ``(variant - setup) / (baseline - setup)`` is
the ratio of the ingests alone.

``read_lines``/``parse_lines`` make the sample here and in ``bench/run.py`` alike (a module
of its own: the child does not import the bench's Kafka, rich and test helpers).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from leadflow.config import Settings
from leadflow.contract import InboundRecord, RecordRejected, parse_record
from leadflow.engine.app import LeadflowApp
from leadflow.store.keys import Keyring

VARIANTS = ("setup", "encrypted", "plain", "keyed", "unkeyed")


class UnkeyedRing(Keyring):
    """The chain as it was before keyed links: plain SHA-256 (the chain cost's baseline)."""

    def sign(self, message: bytes) -> str:
        return hashlib.sha256(message).hexdigest()


def read_lines(path: Path, limit: int) -> list[str]:
    """The stream's first ``limit`` non-blank lines."""
    lines: list[str] = []
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if len(lines) >= limit:
                break
            if line.strip():
                lines.append(line.rstrip("\n"))
    return lines


def parse_lines(lines: Sequence[str], now: datetime) -> list[InboundRecord]:
    """The lines' records; the ones the contract rejects are left out of the sample."""
    parsed = []
    for line in lines:
        with contextlib.suppress(RecordRejected):
            parsed.append(parse_record(line, now=now))
    return parsed


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[4] not in VARIANTS:
        print(f"usage: cost_child.py STREAM LIMIT NOW DB {{{'|'.join(VARIANTS)}}}",
              file=sys.stderr)
        return 2
    stream, limit, now, db, variant = Path(argv[0]), int(argv[1]), \
        datetime.fromisoformat(argv[2]), Path(argv[3]), argv[4]
    records = parse_lines(read_lines(stream, limit), now)
    app = LeadflowApp(env=Settings(database_url=f"sqlite:///{db}").eventsourcing_env({}))
    try:
        if variant == "plain":
            app.vault.plain = True
        elif variant == "unkeyed":
            app.codec.keyring = UnkeyedRing(app.keyring.keys, app.keyring.current,
                                            "bench: unkeyed baseline")
        if variant != "setup":
            for i in range(0, len(records), 1000):
                app.apply_batch(records[i:i + 1000])
    finally:
        app.close()
    print(len(records))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
