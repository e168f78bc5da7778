#!/usr/bin/env python3
"""Small helpers for scripts/services that are awkward to do in bash.

  helpers.py ports N          print N distinct free TCP ports on 127.0.0.1
  helpers.py cluster-id       print a random KRaft cluster id
  helpers.py kafka-ready BOOTSTRAP
                              one readiness probe: exit 0 if the broker answers
                              an admin list_topics(), 1 if not (yet), 3 if
                              kafka-python cannot be imported by this python

Only `kafka-ready` needs a third-party package (kafka-python); the others use
the standard library so any python3 will do.
"""
import base64
import socket
import sys
import uuid


def ports(n: int) -> None:
    # Hold all sockets open until every port is chosen so the N ports are
    # distinct; the kernel hands out a fresh ephemeral port for each bind(0).
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


def cluster_id() -> None:
    # Same shape as Kafka's Uuid.randomUuid().toString(): 16 random bytes,
    # url-safe base64 without padding (22 chars). Kafka never hands out ids
    # starting with '-' (they would parse as CLI flags), so neither do we.
    # Doing this in python saves a ~1 s JVM start (StorageTool random-uuid).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            print(cid)
            return


def kafka_ready(bootstrap: str) -> int:
    try:
        from kafka import KafkaAdminClient
    except ImportError as exc:  # a missing package is fatal, not "not ready"
        print(f"kafka-python not importable by {sys.executable}: {exc}", file=sys.stderr)
        return 3
    admin = None
    try:
        # kafka-python 3.x: bootstrap_timeout_ms bounds the constructor's wait
        # for the first connection (default 30 s would make the poll sluggish).
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="leadflow-services-probe",
            bootstrap_timeout_ms=2000,
            request_timeout_ms=5000,
        )
        admin.list_topics()
        return 0
    except Exception:  # noqa: BLE001 - any failure just means "not ready yet"
        return 1
    finally:
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001
                pass


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[1] == "ports":
        ports(int(argv[2]) if len(argv) > 2 else 1)
        return 0
    if len(argv) == 2 and argv[1] == "cluster-id":
        cluster_id()
        return 0
    if len(argv) == 3 and argv[1] == "kafka-ready":
        return kafka_ready(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
