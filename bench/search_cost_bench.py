"""Search cost on the embedded store with searches a careless or hostile client sends.

Issue "Robustness" measured, on a store of about 15k Patients: `Patient?name=Ring1` repeated
50x took 11 s and 500x 145 s; `Patient?link:Patient.name=Ring1` 200x 117 s;
`Observation?subject:Patient.name:contains=ing` 5-11 s. Each query below is timed next to the
baseline of the same run, the single `name=Ring1` search (same store, same process), and
printed as a ratio: a query whose cost grows with the store squared shows ratios in the
thousands; one that reads indexes in a good order stays within a small factor.

    .venv/bin/python bench/search_cost_bench.py [--patients 15000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fhir_gateway.store.sqlite import SQLiteStore


def fill(store: SQLiteStore, patients: int) -> None:
    """Patients named Ring0..RingN (a shared prefix: `Ring1` matches a ninth of them), each
    linked to the one before; an Observation for every fifth."""
    for start in range(0, patients, 500):
        entries = []
        for n in range(start, min(start + 500, patients)):
            patient = {"resourceType": "Patient", "id": f"p{n}", "gender": "male" if n % 2
                       else "female", "name": [{"family": f"Ring{n}", "given": ["Al"]}]}
            if n:
                patient["link"] = [{"other": {"reference": f"Patient/p{n - 1}"},
                                    "type": "seealso"}]
            entries.append((len(entries), {"resource": patient, "request": {
                "method": "PUT", "url": f"Patient/p{n}"}}))
            if n % 5 == 0:
                entries.append((len(entries), {"resource": {
                    "resourceType": "Observation", "id": f"o{n}", "status": "final",
                    "code": {"text": "x"}, "subject": {"reference": f"Patient/p{n}"}},
                    "request": {"method": "PUT", "url": f"Observation/o{n}"}}))
        store.commit(entries)


QUERIES = {
    "name=Ring1 x40 (same value)": ("Patient", [("name", "Ring1")] * 40),
    "name=Ring1..Ring40 (40 values ANDed)": ("Patient", [("name", f"Ring{i}")
                                                         for i in range(1, 41)]),
    "name:contains x40": ("Patient", [("name:contains", f"ing{i % 9 + 1}") for i in range(40)]),
    "link:Patient.name x10": ("Patient", [("link:Patient.name", "Ring1")] * 10),
    "subject:Patient.name:contains=ing": ("Observation",
                                          [("subject:Patient.name:contains", "ing")]),
    "3-level chain :contains": ("Observation",
                                [("subject:Patient.link:Patient.link:Patient.name:contains",
                                  "ing1")]),
    "name=Ring1 & gender:not=male": ("Patient", [("name", "Ring1"), ("gender:not", "male")]),
}


def timed(store: SQLiteStore, resource_type: str, params: list, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        store.search(resource_type, params)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=15000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "cost.db")
        started = time.perf_counter()
        fill(store, args.patients)
        print(f"{args.patients} Patients, {args.patients // 5} Observations stored in "
              f"{time.perf_counter() - started:.1f} s")
        baseline = timed(store, "Patient", [("name", "Ring1")], args.runs)
        print(f"baseline Patient?name=Ring1: {baseline * 1000:.1f} ms (median of {args.runs})")
        for name, (resource_type, params) in QUERIES.items():
            seconds = timed(store, resource_type, params, args.runs)
            print(f"{name:40s} {seconds * 1000:8.1f} ms  {seconds / baseline:6.1f}x baseline")
        store.close()


if __name__ == "__main__":
    main()
