"""Batch eligibility: every member of an NDJSON file (or the store), one report row each.

Resources are grouped by the member they belong to (the Patient itself, or what refers to
it as subject / patient / beneficiary), then each group is evaluated on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path

import orjson

from fhir_gateway.healthhome.eligibility import EligibilityInputError, evaluate

OWNER_KEYS = ("subject", "patient", "beneficiary")
COLUMNS = ("patient", "state", "program", "eligible", "rule", "basis", "categories", "error")


def members_from_ndjson(path: Path) -> Iterator[list[dict]]:
    """Each member's resources from an NDJSON file (any order)."""
    groups: dict[str, list[dict]] = {}
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                resource = orjson.loads(line)
                groups.setdefault(_owner(resource), []).append(resource)
    groups.pop("", None)
    yield from groups.values()


def _owner(resource: dict) -> str:
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource.get('id', '')}"
    for key in OWNER_KEYS:
        ref = (resource.get(key) or {}).get("reference", "") if isinstance(resource.get(key), dict) else ""
        if ref.startswith("Patient/"):
            return ref
    return ""


def rows(members: Iterable[list[dict]], state: str | None, as_of: date | None) -> Iterator[dict]:
    """One row per member and program (or one error row for a member that cannot be judged)."""
    for resources in members:
        patient = next((r.get("id", "") for r in resources if r.get("resourceType") == "Patient"), "")
        try:
            result = evaluate(resources, state, as_of)
        except EligibilityInputError as err:
            yield {"patient": patient, "error": str(err)}
            continue
        for verdict in result.programs:
            yield {"patient": patient, "state": result.state, "program": verdict.code,
                   "eligible": verdict.eligible, "rule": verdict.rule,
                   "basis": " ".join(verdict.basis), "categories": " ".join(result.categories)}
