"""Embedded-store figures: transaction ingest rate, search latency at 100k resources, memory.

Prints each figure next to a baseline measured in the same run on the same machine:
- ingest: the same JSON written by bare SQLite INSERTs (no validation, no index) — the floor;
- search: a primary-key read of one resource — the cheapest query the store can answer.
Targets (issue "Gateway foundation"): ingest >= 2,000 resources/s; search p95 <= 25 ms;
memory flat while ingesting.

    .venv/bin/python bench/store_bench.py [--ingest 10000] [--stored 100000]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from fastapi.testclient import TestClient

from fhir_gateway.api.app import create_app
from fhir_gateway.store.sqlite import SQLiteStore

os.environ.setdefault("FHIR_GATEWAY_AUTH", "off")  # loopback; tokens: bench/auth_overhead.py

DCN = "http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
CODES = ["F20.9", "F31.9", "F32.9", "F41.1", "F10.20", "J45.909", "J44.9", "E11.9", "I10", "E66.9"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def member_bundles(total: int, rng: random.Random, start: int = 0):
    """Transaction bundles of 100 entries: 1 Patient + 3 Conditions per member."""
    entries = []
    for n in range(start, start + total // 4):
        pat = f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
        entries.append({"fullUrl": pat, "request": {"method": "POST", "url": "Patient"},
                        "resource": {"resourceType": "Patient",
                                     "identifier": [{"system": DCN, "value": f"{n:08d}"}],
                                     "name": [{"family": f"Member{n}", "given": ["Test"]}],
                                     "gender": rng.choice(["female", "male"]),
                                     "birthDate": f"{rng.randint(1940, 2015)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"}})
        for code in rng.sample(CODES, 3):
            entries.append({"request": {"method": "POST", "url": "Condition"},
                            "resource": {"resourceType": "Condition", "subject": {"reference": pat},
                                         "code": {"coding": [{"system": ICD, "code": code}]},
                                         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                                         "onsetDateTime": f"20{rng.randint(10, 24)}-0{rng.randint(1, 9)}-15"}})
        if len(entries) >= 100:
            yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            entries = []
    if entries:
        yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def bench_ingest(workdir: Path, count: int) -> None:
    rng = random.Random(7)
    bundles = list(member_bundles(count, rng))
    # baseline: bare inserts of the same JSON, same transaction size
    conn = sqlite3.connect(workdir / "baseline.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE r(id INTEGER PRIMARY KEY, body BLOB)")
    started = time.perf_counter()
    for bundle in bundles:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO r(body) VALUES (?)",
                         [(orjson.dumps(e["resource"]),) for e in bundle["entry"]])
        conn.execute("COMMIT")
    baseline = count / (time.perf_counter() - started)
    conn.close()

    store = SQLiteStore(workdir / "ingest.db")
    marks = []
    started = time.perf_counter()
    for i, bundle in enumerate(bundles, 1):
        store.transaction(bundle)
        if i % (len(bundles) // 5) == 0:
            marks.append(round(rss_mb(), 1))
    rate = count / (time.perf_counter() - started)
    store.close()
    print(f"ingest: {rate:,.0f} resources/s via 100-entry transactions "
          f"(baseline bare INSERT {baseline:,.0f}/s; ratio {rate / baseline:.3f}); target >= 2,000/s")
    print(f"memory while ingesting (RSS MB at each fifth): {marks}; growth "
          f"{marks[-1] - marks[0]:+.1f} MB over the last four fifths")


def bench_search(workdir: Path, stored: int, queries: int = 300) -> None:
    store = SQLiteStore(workdir / "search.db")
    rng = random.Random(11)
    started = time.perf_counter()
    marks = []
    for i, bundle in enumerate(member_bundles(stored, rng), 1):
        store.transaction(bundle)
        if i % max(len(range(0, stored, 100)) // 5, 1) == 0:
            marks.append(round(rss_mb()))
    print(f"filled {stored:,} resources in {time.perf_counter() - started:.0f}s; RSS MB at each "
          f"fifth: {marks}")
    members = stored // 4
    patients = store.search("Patient", [("_count", "1000"), ("_elements", "id")]).matches
    ids = [p["id"] for p in patients]

    def timed(fn) -> list[float]:
        out = []
        for _ in range(queries):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1000)
        return out

    def pct(values: list[float], p: int) -> float:
        return statistics.quantiles(values, n=100)[p - 1]

    hits = []

    def search(resource_type: str, params: list) -> None:
        hits.append(store.search(resource_type, params).total > 0)

    def over_http(path: str) -> None:
        assert http.get(path).status_code == 200

    http = TestClient(create_app(store))
    read = timed(lambda: store.read("Patient", rng.choice(ids)))
    read_http = timed(lambda: over_http(f"/fhir/Patient/{rng.choice(ids)}"))
    workloads = {
        "Patient?identifier=": (
            lambda: search("Patient", [("identifier", f"{DCN}|{rng.randrange(members):08d}")]),
            lambda: over_http(f"/fhir/Patient?identifier={DCN}|{rng.randrange(members):08d}")),
        "Condition?subject=&code=": (
            lambda: search("Condition", [("subject", f"Patient/{rng.choice(ids)}"),
                                         ("code", f"{ICD}|{rng.choice(CODES)}")]),
            lambda: over_http(f"/fhir/Condition?subject=Patient/{rng.choice(ids)}"
                              f"&code={ICD}|{rng.choice(CODES)}")),
    }
    for name, (direct, via_http) in workloads.items():
        hits.clear()
        store_ms, http_ms = timed(direct), timed(via_http)
        print(f"search {name}: store p50 {pct(store_ms, 50):.2f} ms, p95 {pct(store_ms, 95):.2f} ms "
              f"({sum(hits)}/{len(hits)} found something; baseline read by id p50 "
              f"{pct(read, 50):.2f} ms); over HTTP p50 {pct(http_ms, 50):.2f} ms, p95 "
              f"{pct(http_ms, 95):.2f} ms (baseline read by id over HTTP p50 "
              f"{pct(read_http, 50):.2f} ms); target p95 <= 25 ms")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=int, default=10_000)
    parser.add_argument("--stored", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_ingest(Path(tmp), args.ingest)
        bench_search(Path(tmp), args.stored)


if __name__ == "__main__":
    main()
