"""Duplicate suggestions at scale: ``leadflow dedupe suggest`` over N synthetic leads.

    .venv/bin/python bench/dedupe_scale.py                 # 100,000 leads
    .venv/bin/python bench/dedupe_scale.py --leads 10000   # quicker

Writes a deterministic stream of people (Zipf-like companies and names, emails in the usual
corporate patterns, free-mail addresses, phones) with ``--planted`` share of people who
came twice under another identity (an alias email at the same company without a name, a
phone lead with the same name and company, a CRM id holding their phone in another format),
ingests it into a fresh embedded SQLite store (``leadflow ingest``, timed), then times
``leadflow dedupe suggest --json --limit 0`` as a process (start to exit, and its CPU
time) and reports the
command's own split (replaying the leads through the engine vs blocking and scoring), the
pairs compared and how many planted pairs were found. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SYLLABLES = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]
_FREE = ["gmail.com", "outlook.com", "gmx.de"]


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts))


def _zipf(rng: random.Random, n: int, size: int, exponent: float) -> list[int]:
    weights = [1.0 / (rank + 1) ** exponent for rank in range(n)]
    return rng.choices(range(n), weights=weights, k=size)


def stream(leads: int, planted: float, seed: int) -> tuple[list[str], list[tuple[str, str]]]:
    """JSONL lines and the planted pairs (the two identities of one person)."""
    rng = random.Random(seed)
    firsts = sorted({_word(rng, 2).capitalize() for _ in range(800)})
    lasts = sorted({_word(rng, 3).capitalize() for _ in range(20000)})
    companies = sorted({_word(rng, 2).capitalize() + " " + rng.choice(["GmbH", "Inc", "Ltd",
                                                                       "AG", "Labs"])
                        for _ in range(6000)})
    company_of = _zipf(rng, len(companies), leads, 0.9)  # a few accounts with thousands
    first_of = _zipf(rng, len(firsts), leads, 0.7)
    last_of = _zipf(rng, len(lasts), leads, 0.5)
    lines: list[str] = []
    pairs: list[tuple[str, str]] = []
    used: set[str] = set()
    for i in range(leads):
        first, last = firsts[first_of[i]], lasts[last_of[i]]
        company = companies[company_of[i]]
        domain = company.split()[0].lower() + ".example"
        pattern = rng.random()
        local = (f"{first}.{last}" if pattern < 0.5 else f"{first[0]}{last}" if pattern < 0.7
                 else f"{first}{last}" if pattern < 0.85 else f"{first}.{last}{i}").lower()
        email = (f"{local}{i}@{rng.choice(_FREE)}" if rng.random() < 0.15
                 else f"{local}@{domain}")
        if email in used:
            email = f"{local}.{i}@{domain}"
        used.add(email)
        lead = {"email": email, "first_name": first, "last_name": last, "company": company}
        phone = f"+4915{i:09d}"
        if rng.random() < 0.3:
            lead["phone"] = phone
        day = 1 + i % 28
        lines.append(json.dumps({"event_id": f"p{i}", "type": "form_submitted",
                                 "occurred_at": f"2026-03-{day:02d}T09:00:00Z", "lead": lead}))
        if rng.random() >= planted or email.split("@")[1] in _FREE \
                or any(ch.isdigit() for ch in local):
            continue
        kind = rng.randrange(3)
        if kind == 0:
            alias = f"{first[0]}.{last}@{domain}".lower()
            if alias in used or alias == email:
                continue
            used.add(alias)
            twin: dict[str, object] = {"email": alias, "company": company}
            other = "email:" + alias
        elif kind == 1:
            twin = {"phone": phone, "first_name": first, "last_name": last,
                    "company": company}
            if "phone" in lead:
                continue  # would be one lead already
            other = "phone:" + phone
        else:
            crm = f"crm:0{phone[3:6]} {phone[6:]}"
            if "phone" not in lead:
                lead["phone"] = phone  # the CRM id is their phone, written nationally
                lines[-1] = json.dumps({"event_id": f"p{i}", "type": "form_submitted",
                                        "occurred_at": f"2026-03-{day:02d}T09:00:00Z",
                                        "lead": lead})
            twin = {"external_id": crm}
            other = "external_id:" + crm
        lines.append(json.dumps({"event_id": f"t{i}", "type": "email_opened",
                                 "occurred_at": f"2026-03-{day:02d}T10:00:00Z", "lead": twin}))
        pairs.append(("email:" + email, other))
    return lines, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--planted", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--keep", type=Path, default=None,
                        help="Directory to keep the store in (default: a temporary one).")
    args = parser.parse_args()
    lines, pairs = stream(args.leads, args.planted, args.seed)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="leadflow-dedupe-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "people.jsonl"
    source.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env.update({"LEADFLOW_DATABASE_URL": f"sqlite:///{workdir / 'lf.db'}",
                "LEADFLOW_LOG_LEVEL": "WARNING",
                "LEADFLOW_AUDIT_KEY": "bench-audit-key-0123456789abcdef0123",
                "LEADFLOW_MASTER_KEY": "bench-master-key-0123456789abcdef012"})
    leadflow = [sys.executable, "-m", "leadflow.cli"]
    started = time.perf_counter()
    subprocess.run([*leadflow, "ingest", str(source)], env=env, check=True,
                   capture_output=True)
    ingest_s = time.perf_counter() - started
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([*leadflow, "dedupe", "suggest", "--json", "--limit", "0"], env=env,
                          check=True, capture_output=True, text=True)
    suggest_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    suggest_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak_mib = after.ru_maxrss / 1024  # the largest child: ingest or suggest
    out = json.loads(done.stdout)
    found = {frozenset((s["a"]["primary_key"], s["b"]["primary_key"]))
             for s in out["suggestions"]}
    hits = sum(frozenset(p) in found for p in pairs)
    result = {"leads": args.leads, "records": len(lines), "planted_pairs": len(pairs),
              "ingest_seconds": round(ingest_s, 2),
              "suggest_seconds": round(suggest_s, 2),
              "suggest_cpu_seconds": round(suggest_cpu, 2), "suggest_stats": out["stats"],
              "suggestions": out["total"], "planted_found": hits,
              "peak_rss_mib_children": round(peak_mib)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
