"""One in-process ingest of the bench's sample, for an instruction count (``bench/run.py``).

    python bench/cost_child.py STREAM LIMIT NOW DB VARIANT

``VARIANT`` is one of ``setup`` (everything but the ingest), ``encrypted``, ``plain``,
``keyed``, ``unkeyed``. The bench runs this under ``valgrind --tool=callgrind`` and reads
the instructions it executed: unlike CPU time, an instruction count does not depend on what
else the machine runs (on this 2-core VM the CPU time of one and the same ingest varied by
±25 % between runs, and the paired ratios with it). The ``setup`` run does the same reading,
parsing and opening as the others, so ``(variant - setup) / (baseline - setup)`` is the
ratio of the ingests alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from datetime import datetime
from pathlib import Path

from leadflow.config import Settings
from leadflow.contract import RecordRejected, parse_record
from leadflow.engine.app import LeadflowApp
from leadflow.store.keys import Keyring

VARIANTS = ("setup", "encrypted", "plain", "keyed", "unkeyed")


class UnkeyedRing(Keyring):
    """The chain as it was before keyed links: plain SHA-256 (the chain cost's baseline)."""

    def sign(self, message: bytes) -> str:
        return hashlib.sha256(message).hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[4] not in VARIANTS:
        print(f"usage: cost_child.py STREAM LIMIT NOW DB {{{'|'.join(VARIANTS)}}}", file=sys.stderr)
        return 2
    stream, limit, now, db, variant = (
        Path(argv[0]),
        int(argv[1]),
        datetime.fromisoformat(argv[2]),
        Path(argv[3]),
        argv[4],
    )
    # The bench's sample: the stream's first LIMIT lines, the rejected ones left out.
    lines: list[str] = []
    with stream.open(encoding="utf-8") as text:
        for line in text:
            if len(lines) >= limit:
                break
            if line.strip():
                lines.append(line.rstrip("\n"))
    records = []
    for line in lines:
        with contextlib.suppress(RecordRejected):
            records.append(parse_record(line, now=now))
    settings = Settings(database_url=f"sqlite:///{db}")
    app = LeadflowApp(env=settings.eventsourcing_env({}))
    try:
        if variant == "plain":
            app.vault.plain = True
        elif variant == "unkeyed":
            app.codec.keyring = UnkeyedRing(
                app.keyring.keys, app.keyring.current, "bench: unkeyed baseline"
            )
        if variant != "setup":
            for i in range(0, len(records), 1000):
                app.apply_batch(records[i : i + 1000])
    finally:
        app.close()
    print(len(records))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
