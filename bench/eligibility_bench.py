"""Batch eligibility throughput: members/s evaluated from NDJSON (100,000 synthetic members,
3-8 conditions each), next to just reading and parsing the same file in one process (the
baseline). Measured as `fhir-gateway eligibility --input` runs it (worker processes, one per
core, up to 4) and with a single worker.

    .venv/bin/python bench/eligibility_bench.py [--members 100000]

Target (eligibility issue): >= 20,000 members/s.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import date
from pathlib import Path

import orjson

from fhir_gateway.healthhome.batch import rows_from_ndjson
from fhir_gateway.identifiers import CONDITION_CLINICAL, ICD10CM, MO_HEALTHNET_DCN, SOURCE_OF_PAYMENT

CODES = ["F20.9", "F31.9", "F32.9", "F41.1", "F10.20", "J45.909", "J44.9", "E11.9", "I10",
         "I50.9", "E66.9", "F17.210", "F84.0", "B20", "M54.5", "Z99.0"]


def write_members(path: Path, members: int, rng: random.Random) -> None:
    with path.open("wb") as fh:
        for n in range(members):
            pid = f"p{n}"
            ref = {"reference": f"Patient/{pid}"}
            resources = [{"resourceType": "Patient", "id": pid,
                          "identifier": [{"system": MO_HEALTHNET_DCN, "value": f"{n:08d}"}],
                          "birthDate": f"{rng.randint(1940, 2020)}-06-15"},
                         {"resourceType": "Coverage", "status": "active", "beneficiary": ref,
                          "payor": [{"display": "MO HealthNet"}],
                          "type": {"coding": [{"system": SOURCE_OF_PAYMENT, "code": "2"}]}}]
            for code in rng.sample(CODES, rng.randint(3, 8)):
                resources.append({"resourceType": "Condition", "subject": ref,
                                  "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL,
                                                                 "code": "active"}]},
                                  "code": {"coding": [{"system": ICD10CM, "code": code}]}})
            fh.write(b"".join(orjson.dumps(r) + b"\n" for r in resources))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "members.ndjson"
        write_members(path, args.members, random.Random(5))
        started = time.perf_counter()
        with path.open("rb") as fh:
            parsed = sum(1 for line in fh if orjson.loads(line))
        baseline = args.members / (time.perf_counter() - started)
        rates = {}
        for workers in (None, 1):
            started = time.perf_counter()
            evaluated = sum(1 for row in rows_from_ndjson(path, "MO", date(2026, 6, 1), workers)
                            if row.get("program") == "mo-cmhc")
            rates[workers] = evaluated / (time.perf_counter() - started)
    rate = rates[None]
    print(f"batch eligibility: {rate:,.0f} members/s ({evaluated:,} members, {parsed:,} "
          f"resources; {rates[1]:,.0f}/s with one worker process) | baseline NDJSON parse "
          f"only {baseline:,.0f} members/s; ratio {rate / baseline:.2f}; target >= 20,000/s")


if __name__ == "__main__":
    main()
