"""`$generate-claims` members/s on the embedded store, next to a same-run baseline: a bare
page-by-page scan of the same enrollments (what any run must read first).

Synthetic members, each with a Patient, a Coverage, a qualifying Condition, a Health Home
enrollment and (for 3 of 4) a core service in the month; a first run bills them, a second
run creates nothing (each member is looked up and found billed).

    .venv/bin/python bench/claims_bench.py [--members 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhir_gateway.config import DEFAULT_PROFILES, Settings  # noqa: E402
from fhir_gateway.healthhome import billing  # noqa: E402
from fhir_gateway.healthhome.checks import health_home_validator  # noqa: E402
from fhir_gateway.healthhome.eligibility import RuleFiles  # noqa: E402
from fhir_gateway.healthhome.monthly_claims import CORE_SERVICE, month  # noqa: E402
from fhir_gateway.identifiers import HH_PROGRAM  # noqa: E402
from fhir_gateway.store import guarded  # noqa: E402
from fhir_gateway.store.sqlite import SQLiteStore  # noqa: E402

os.environ.setdefault("FHIR_GATEWAY_AUTH", "off")


def member(n: int) -> list[dict]:
    pid = f"m{n}"
    ref = {"reference": f"Patient/{pid}"}
    resources = [
        {"resourceType": "Patient", "id": pid, "name": [{"family": "Synthetic"}]},
        {"resourceType": "Coverage", "id": f"c{n}", "status": "active", "beneficiary": ref,
         "payor": [{"reference": "Organization/payer"}]},
        {"resourceType": "Condition", "id": f"d{n}", "subject": ref, "code": {"coding": [
            {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F20.0"}]}},
        {"resourceType": "EpisodeOfCare", "id": f"e{n}", "status": "active",
         "type": [{"coding": [{"system": HH_PROGRAM, "code": "mo-cmhc"}]}], "patient": ref,
         "managingOrganization": {"reference": "Organization/home"},
         "diagnosis": [{"condition": {"reference": f"Condition/d{n}"}}],
         "period": {"start": "2026-01-01"}}]
    if n % 4:
        resources.append({"resourceType": "Procedure", "id": f"p{n}", "status": "completed",
                          "subject": ref, "performedDateTime": "2026-06-10T09:00:00-05:00",
                          "code": {"coding": [{"system": CORE_SERVICE, "code": "care-coordination"}]}})
    return resources


def transaction(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    args = parser.parse_args()
    files = RuleFiles.of(Settings())
    with tempfile.TemporaryDirectory() as folder:
        store = guarded(SQLiteStore(Path(folder) / "claims.db"),
                        health_home_validator(DEFAULT_PROFILES))
        store.transaction(transaction([
            {"resourceType": "Organization", "id": "home", "name": "Home"},
            {"resourceType": "Organization", "id": "payer", "name": "Payer"}]))
        for start in range(0, args.members, 50):
            store.transaction(transaction([r for n in range(start, min(start + 50, args.members))
                                           for r in member(n)]))
        started = time.perf_counter()
        scanned = sum(1 for _ in billing._enrollments(store, None))
        scan = time.perf_counter() - started
        june = month("2026-06")
        started = time.perf_counter()
        first = billing.generate_claims(store, files, june)
        generate = time.perf_counter() - started
        started = time.perf_counter()
        second = billing.generate_claims(store, files, june)
        rerun = time.perf_counter() - started
        store.close()
    print(f"{args.members} enrolled members, embedded store ({scanned} enrollments scanned)")
    print(f"  enrollment scan (baseline)  {scanned / scan:10.0f} members/s")
    print(f"  $generate-claims, first     {args.members / generate:10.0f} members/s   ratio "
          f"{scan / generate:.3f}   ({len(first.created)} claims, {len(first.not_billed)} not billed)")
    print(f"  $generate-claims, again     {args.members / rerun:10.0f} members/s   ratio "
          f"{scan / rerun:.3f}   ({len(second.created)} claims created)")


if __name__ == "__main__":
    main()
