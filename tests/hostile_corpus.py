"""The hostile corpus: inputs an attacker (or a broken producer) sends, each with the reason
leadflow must refuse it with -- or ``applied`` for odd-but-valid records that must get in.

Every path that reads records runs this corpus: the parser (tests/unit/test_hostile_input.py),
``leadflow ingest`` on a file (tests/e2e/test_hostile_ingest.py) and a real Kafka topic with
several partitions (tests/integration/test_hostile_kafka.py). Cases are built in code so each
one reads as what it is; ``python -m tests.hostile_corpus OUT.jsonl`` writes them as a file
(with ``raw_base64``) for trying them against another deployment.

Classes covered: encoding, JSON syntax and shape, size, nesting depth, numbers (magnitude,
digits, non-finite), timestamps (overflow at any offset, range, non-RFC 3339), control and
invisible characters, look-alike identities, schema, idempotency conflicts, domain refusals.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass
from typing import Any

# Event time of every corpus record: inside the contract's range and not in the future.
AT = "2026-03-02T09:15:00+01:00"
# Records after the corpus reference these leads (created by GOOD records first).
KNOWN_EMAIL = "known.person@hostile-corpus.example"


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    expect: str  # a reject reason, "applied" or "duplicate"


def record(event_id: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"event_id": event_id, "type": "email_opened", "occurred_at": AT,
                            "lead": {"email": f"{event_id}@hostile-corpus.example"}}
    data.update(overrides)
    return data


def dumps(data: Any) -> bytes:
    # ensure_ascii=False so characters travel as UTF-8, as a real producer sends them.
    return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")


def lead(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"email": f"{event_id}@hostile-corpus.example", **fields}


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(name: str, raw: bytes | dict[str, Any], expect: str) -> None:
        c.append(Case(name, raw if isinstance(raw, bytes) else dumps(raw), expect))

    ok = dumps(record("h-enc"))
    # --- encoding ----------------------------------------------------------------------
    add("latin-1 byte inside a string", ok.replace(b"h-enc@", b"h-enc\xe9@"), "malformed_encoding")
    add("latin-1 byte outside strings", ok[:-1] + b"\xa0}", "malformed_encoding")
    add("gzip-compressed record", b"\x1f\x8b\x08\x00" + ok, "malformed_encoding")
    add("UTF-16 LE with BOM", b"\xff\xfe" + json.dumps(record("h-u16le")).encode("utf-16-le"),
        "malformed_encoding")
    add("UTF-16 BE with BOM", b"\xfe\xff" + json.dumps(record("h-u16be")).encode("utf-16-be"),
        "malformed_encoding")
    add("overlong UTF-8 slash", ok.replace(b"h-enc", b"h-\xc0\xafenc"), "malformed_encoding")
    add("UTF-8-encoded surrogate", ok.replace(b"h-enc@", b"h-\xed\xa0\x80@"),
        "malformed_encoding")
    add("truncated multi-byte sequence", ok[:-1] + b"\xe2\x82", "malformed_encoding")
    add("ZIP archive", b"PK\x03\x04" + ok, "malformed_encoding")
    add("binary noise", bytes(range(0x80, 0x100)) * 4, "malformed_encoding")
    # --- JSON syntax and shape ------------------------------------------------------------
    add("not JSON", b"hello, leadflow", "malformed_json")
    add("truncated object", ok[: len(ok) // 2], "malformed_json")
    add("trailing garbage", ok + b" {}", "malformed_json")
    add("single-quoted JSON", ok.replace(b'"', b"'"), "malformed_json")
    add("JSON with a comment", b"/* hi */ " + ok, "malformed_json")
    add("lone surrogate escape",
        dumps(record("h-surrogate")).replace(b"h-surrogate@", b"h-\\ud800@"), "malformed_json")
    add("a JSON array", dumps([record("h-array")]), "schema_violation")
    add("a JSON string", b'"email_opened"', "schema_violation")
    add("JSON null", b"null", "schema_violation")
    add("a bare number", b"42", "schema_violation")
    # --- size and depth --------------------------------------------------------------------
    add("record over 1 MiB", record("h-huge", lead=lead("h-huge", title="x" * (1 << 20))),
        "record_too_large")
    add("1 MiB of whitespace around a record", b" " * (1 << 20) + dumps(record("h-ws")),
        "record_too_large")
    add("10,000-level nested object", b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        "nesting_too_deep")
    add("100,000-level nested array inside lead",
        dumps(record("h-deep")).replace(b'"h-deep@hostile-corpus.example"',
                                        b"[" * 100_000 + b"]" * 100_000), "nesting_too_deep")
    # --- numbers ---------------------------------------------------------------------------
    add("5,000-digit integer",
        dumps(record("h-int5000", lead=lead("h-int5000", employees=0))).replace(
            b'"employees": 0', b'"employees": ' + b"9" * 5000), "number_out_of_range")
    add("400-digit integer", record("h-int400", lead=lead("h-int400", employees=10 ** 400)),
        "number_out_of_range")
    add("negative employees", record("h-negemp", lead=lead("h-negemp", employees=-1)),
        "number_out_of_range")
    add("fractional employees", record("h-fracemp", lead=lead("h-fracemp", employees=1.5)),
        "schema_violation")
    add("annual_revenue 1e400 as text",
        record("h-rev-text", lead=lead("h-rev-text", annual_revenue="1e400")),
        "number_out_of_range")
    add("annual_revenue 1e400 as number",
        dumps(record("h-rev-num", lead=lead("h-rev-num", annual_revenue=0))).replace(
            b'"annual_revenue": 0', b'"annual_revenue": 1e400'), "number_out_of_range")
    add("annual_revenue NaN", record("h-rev-nan", lead=lead("h-rev-nan", annual_revenue="NaN")),
        "number_out_of_range")
    add("annual_revenue -Infinity literal",
        dumps(record("h-rev-inf", lead=lead("h-rev-inf", annual_revenue=0))).replace(
            b'"annual_revenue": 0', b'"annual_revenue": -Infinity'), "number_out_of_range")
    add("annual_revenue with 5 decimals",
        record("h-rev-dec", lead=lead("h-rev-dec", annual_revenue="0.00001")),
        "number_out_of_range")
    add("deal amount 1e400",
        record("h-deal-inf", type="converted", lead={"email": KNOWN_EMAIL},
               deal={"id": "D-1", "amount": "1e400", "currency": "USD"}), "number_out_of_range")
    add("negative deal amount",
        record("h-deal-neg", type="converted", lead={"email": KNOWN_EMAIL},
               deal={"id": "D-1", "amount": "-5", "currency": "USD"}), "number_out_of_range")
    # --- timestamps ------------------------------------------------------------------------
    add("9999-12-31 at -01:00 (overflows in UTC)",
        record("h-ts-max", occurred_at="9999-12-31T23:59:59-01:00"), "timestamp_out_of_range")
    add("0001-01-01 at +01:00 (underflows in UTC)",
        record("h-ts-min", occurred_at="0001-01-01T00:00:00+01:00"), "timestamp_out_of_range")
    add("epoch zero", record("h-ts-1970", occurred_at="1970-01-01T00:00:00Z"),
        "timestamp_out_of_range")
    add("year 2500", record("h-ts-2500", occurred_at="2500-01-01T00:00:00Z"),
        "timestamp_out_of_range")
    add("next year (beyond the clock skew)",
        record("h-ts-future", occurred_at="2199-01-01T00:00:00Z"), "timestamp_out_of_range")
    add("no UTC offset", record("h-ts-naive", occurred_at="2026-03-02T09:15:00"),
        "schema_violation")
    add("month 13", record("h-ts-13", occurred_at="2026-13-02T09:15:00Z"), "schema_violation")
    add("Unix time number", record("h-ts-unix", occurred_at=1772439300), "schema_violation")
    add("offset +25:00", record("h-ts-off", occurred_at="2026-03-02T09:15:00+25:00"),
        "schema_violation")
    # --- control and invisible characters ---------------------------------------------------
    add("NUL in company", record("h-nul-co", lead=lead("h-nul-co", company="Acme\u0000Corp")),
        "forbidden_character")
    add("NUL in external_id",
        record("h-nul-ext", lead={"external_id": "CRM-\u00001"}), "forbidden_character")
    add("escape sequence in first_name",
        record("h-esc", lead=lead("h-esc", first_name="\u001b[31mAnna")), "forbidden_character")
    add("zero-width space in external_id",
        record("h-zwsp", lead={"external_id": "CRM\u200b-7"}), "forbidden_character")
    add("right-to-left override in anonymous_id",
        record("h-rlo", lead={"anonymous_id": "cookie\u202e-9"}), "forbidden_character")
    add("C1 control in source",
        record("h-c1", context={"source": "google\u0085ads"}), "forbidden_character")
    add("tab in event_id", record("h-tab\tid"), "forbidden_character")
    add("newline in title", record("h-nl", lead=lead("h-nl", title="VP\nSales")),
        "forbidden_character")
    add("byte-order mark inside event_id", record("h-\ufeffbom"), "forbidden_character")
    add("DEL in url", record("h-del", context={"url": "https://acme.io/\u007fpricing"}),
        "forbidden_character")
    # --- identities and look-alikes ----------------------------------------------------------
    add("Cyrillic a in the domain", record("h-homo-dom", lead={"email": "anna@\u0430cme.io"}),
        "invalid_identity")
    add("Greek omicron in the local part",
        record("h-homo-loc", lead={"email": "j\u03bfhn@acme.io"}), "invalid_identity")
    add("full-width email", record("h-fullwidth", lead={"email": "\uff41nna@acme.io"}),
        "invalid_identity")
    add("two at-signs", record("h-2at", lead={"email": "anna@@acme.io"}), "invalid_identity")
    add("toll-free phone", record("h-tollfree", lead={"phone": "+1 800 555 0199"}),
        "invalid_identity")
    add("phone made of letters", record("h-phone-abc", lead={"phone": "call me maybe"}),
        "invalid_identity")
    add("no identity at all", record("h-noid", lead={"company": "Acme"}), "invalid_identity")
    add("email of 400 characters",
        record("h-longmail", lead={"email": "a" * 390 + "@acme.io"}), "value_too_long")
    # --- schema -------------------------------------------------------------------------------
    add("unknown record type", record("h-unk", type="email_bounced"), "unknown_type")
    add("type as a number", record("h-typenum", type=7), "schema_violation")
    add("unknown top-level field", record("h-extra", is_admin=True), "schema_violation")
    add("unknown lead field", record("h-extra-lead", lead=lead("h-extra-lead", ssn="1")),
        "schema_violation")
    add("schema_version 2", record("h-v2", schema_version=2), "schema_violation")
    add("converted without a deal",
        record("h-nodeal", type="converted", lead={"email": KNOWN_EMAIL}), "schema_violation")
    add("whitespace-only event_id", record("   "), "schema_violation")
    add("event_id of 201 characters", record("h" * 201), "value_too_long")
    add("lead as an array", record("h-lead-arr", lead=[{"email": "a@acme.io"}]),
        "schema_violation")
    add("three-letter country", record("h-ctry", lead=lead("h-ctry", country="GBR")),
        "schema_violation")
    add("missing occurred_at", {k: v for k, v in record("h-no-ts").items()
                                if k != "occurred_at"}, "schema_violation")
    # --- idempotency -------------------------------------------------------------------------
    add("known event_id with other content",
        record("h-good-1", lead={"email": KNOWN_EMAIL}, type="email_clicked"),
        "event_id_conflict")
    add("known event_id on another lead",
        record("h-good-1", lead={"email": "someone.else@hostile-corpus.example"}),
        "event_id_conflict")
    add("known event_id, same content (a re-send)", GOOD[0], "duplicate")
    # --- domain refusals -----------------------------------------------------------------------
    add("disposition for an unknown lead",
        record("h-disp", type="sales_accepted", lead={"email": "nobody@hostile-corpus.example"},
               actor="rep-a"), "unknown_lead")
    add("owner_assigned to an unknown rep",
        record("h-rep", type="owner_assigned", lead={"email": KNOWN_EMAIL}, owner="rep-zz"),
        "unknown_rep")
    # --- odd but valid: must be applied --------------------------------------------------------
    add("byte-order mark before the record", b"\xef\xbb\xbf" + dumps(record("h-bom-ok")),
        "applied")
    add("emoji and accents in names",
        record("h-emoji", lead=lead("h-emoji", first_name="Zoë 🚀", company="Ünïcode GmbH")),
        "applied")
    add("an all-Cyrillic address", record("h-cyr", lead={"email": "анна@пример.рф"}), "applied")
    add("500 KiB of whitespace inside a record",
        dumps(record("h-ws-ok")).replace(b", ", b"," + b" " * (100 << 10)), "applied")
    add("duplicate keys (the last one wins)",
        dumps(record("h-dupkey-x")).replace(b'"event_id": "h-dupkey-x"',
                                            b'"event_id": "h-dupkey-x", "event_id": "h-dupkey"')
        .replace(b"h-dupkey-x@", b"h-dupkey@"), "applied")
    add("a 2,000-character url",
        record("h-url", context={"url": "https://acme.io/" + "p" * 1984}), "applied")
    return c


#: Valid records that must come before the corpus (the leads it refers to).
GOOD: list[bytes] = [
    dumps(record("h-good-1", lead={"email": KNOWN_EMAIL}, type="form_submitted")),
]

CASES: list[Case] = _cases()


def good_filler(n: int, prefix: str = "g") -> list[bytes]:
    """Valid records to interleave with the corpus: each must be applied."""
    return [dumps(record(f"{prefix}-{i}", type=("email_opened", "page_viewed",
                                                "content_downloaded")[i % 3],
                         lead={"email": f"filler{i % 40}@filler{i % 7}.example"}))
            for i in range(n)]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.hostile_corpus OUT.jsonl", file=sys.stderr)
        return 2
    with open(argv[0], "w", encoding="utf-8") as out:
        for case in CASES:
            out.write(json.dumps({"name": case.name, "expect": case.expect,
                                  "raw_base64": base64.b64encode(case.raw).decode()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
