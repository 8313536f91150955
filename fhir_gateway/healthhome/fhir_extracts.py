"""FHIR resources as the potential-enrollee lists' columnar formats (README "Claims extract
and member file"): FHIR NDJSON files for the command, what the store holds for
`$potential-enrollees`. One line or resource at a time, written to CSV: memory stays flat
and the SQL reads one format.

- Claim / ExplanationOfBenefit -> a claim line: the member (`patient`), the service date (the
  first item's `servicedDate` or `servicedPeriod.start`, else `billablePeriod.start`, else
  `created`), the provider (`provider` reference), the ICD-10-CM codes of `diagnosis` by
  `sequence` (the first is the principal diagnosis), the first item's procedure code.
  Cancelled or entered-in-error claims, pre-authorisations and predeterminations are no
  care given and are skipped; a diagnosis given only as a reference to a Condition is not
  read (claims extracts carry codes).
- Patient -> the member (DCN, birth date, the state as eligibility derives it), Coverage ->
  one row per Source of Payment Typology code of an active Coverage, EpisodeOfCare -> an HH
  enrollment in force in the month makes the member enrolled.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import orjson

from fhir_gateway.formats import fhirjson
from fhir_gateway.healthhome.eligibility import EligibilityInputError, RuleSet, member_state
from fhir_gateway.healthhome.monthly_claims import Month, in_force
from fhir_gateway.healthhome.claims_formats import CLAIM_COLUMNS, MEMBER_COLUMNS, InputError
from fhir_gateway.healthhome.status import episode_program
from fhir_gateway.identifiers import HH_PROGRAM, ICD10CM, MO_HEALTHNET_DCN
from fhir_gateway.store.base import FhirStore

CLAIM_TYPES = ("Claim", "ExplanationOfBenefit")
MEMBER_TYPES = ("Patient", "Coverage", "EpisodeOfCare")
NOT_CARE = {"status": ("cancelled", "entered-in-error"),
            "use": ("preauthorization", "predetermination")}
PAGE = 500


def is_ndjson(path: Path) -> bool:
    return path.name.lower().endswith((".ndjson", ".jsonl"))


def _lines(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, resource) of each line; a line that is not a JSON object is an InputError."""
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                resource = fhirjson.loads(line)
            except orjson.JSONDecodeError as err:
                raise InputError(f"{where}: not JSON ({err})") from None
            if not isinstance(resource, dict):
                raise InputError(f"{where}: not a JSON object")
            yield where, resource


def claims_csv(path: Path, out: Path) -> Path:
    """The Claim and ExplanationOfBenefit lines of an NDJSON file as a claims extract."""
    return _write(out, CLAIM_COLUMNS, (row for where, r in _lines(path)
                                       if r.get("resourceType") in CLAIM_TYPES
                                       for row in claim_rows(r, where, strict=True)))


def members_csv(path: Path, out: Path, within: Month, rules: RuleSet) -> Path:
    """The Patient, Coverage and EpisodeOfCare lines of an NDJSON file as a member file."""
    return _write(out, MEMBER_COLUMNS, (row for where, r in _lines(path)
                                        for row in member_rows(r, where, within, rules,
                                                               strict=True)))


def export_store(store: FhirStore, folder: Path, within: Month, rules: RuleSet
                 ) -> tuple[Path, Path]:
    """What the store holds, as the claims extract and the member file (a resource the lists
    cannot read, such as a Claim naming no provider, is left out)."""
    claims = _write(folder / "claims.csv", CLAIM_COLUMNS, (
        row for kind in CLAIM_TYPES for r in _stored(store, kind, [])
        for row in claim_rows(r, f"{kind}/{r.get('id')}", strict=False)))
    members = _write(folder / "members.csv", MEMBER_COLUMNS, (
        row for kind, criteria in (("Patient", []), ("Coverage", [("status", "active")]),
                                   ("EpisodeOfCare", [("type", f"{HH_PROGRAM}|")]))
        for r in _stored(store, kind, criteria)
        for row in member_rows(r, f"{kind}/{r.get('id')}", within, rules, strict=False)))
    return claims, members


def _stored(store: FhirStore, kind: str, criteria: list[tuple[str, str]]) -> Iterator[dict]:
    offset = 0
    while True:
        page = store.search(kind, [*criteria, ("_sort", "_id"), ("_count", str(PAGE)),
                                   ("_offset", str(offset))]).matches
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def _write(out: Path, columns: dict, rows) -> Path:
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return out


def _patient_id(reference: object) -> str | None:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if isinstance(ref, str) and ref.startswith("Patient/") and len(ref) > 8:
        return ref[8:]
    return None


def claim_rows(claim: dict, where: str, strict: bool) -> list[list]:
    """The claim's one line in the claims format (none if it is no care given; with
    `strict`, a claim the lists cannot read is an InputError naming the element)."""
    kind = claim.get("resourceType")
    if any(claim.get(key) in values for key, values in NOT_CARE.items()):
        return []
    member = _patient_id(claim.get("patient"))
    provider = (claim.get("provider") or {}).get("reference") \
        if isinstance(claim.get("provider"), dict) else None
    items = [i for i in claim.get("item") or [] if isinstance(i, dict)]
    served = next((i.get("servicedDate") or (i.get("servicedPeriod") or {}).get("start")
                   for i in items if i.get("servicedDate") or i.get("servicedPeriod")), None)
    day = served or (claim.get("billablePeriod") or {}).get("start") or claim.get("created")
    problem = ("patient", "is not a reference to a Patient") if member is None else \
        ("provider", "is missing (the provider the member is attributed to)") \
        if not isinstance(provider, str) or not provider else \
        ("item.servicedDate", "no service date (item.servicedDate, billablePeriod.start, "
                              "created)") if not isinstance(day, str) else None
    if problem:
        if strict:
            raise InputError(f"{where}: {kind}.{problem[0]} {problem[1]}")
        return []
    diagnoses = sorted((d for d in claim.get("diagnosis") or [] if isinstance(d, dict)),
                       key=lambda d: d.get("sequence") if isinstance(d.get("sequence"), int)
                       else 1 << 30)
    codes = [c["code"] for d in diagnoses
             for c in (d.get("diagnosisCodeableConcept") or {}).get("coding") or []
             if isinstance(c, dict) and c.get("system") == ICD10CM
             and isinstance(c.get("code"), str)]
    procedure = next((c.get("code") for i in items
                      for c in (i.get("productOrService") or {}).get("coding") or []
                      if isinstance(c, dict) and c.get("code")), "")
    return [[member, day[:10], provider, "", ";".join(codes), procedure]]


def member_rows(resource: dict, where: str, within: Month, rules: RuleSet, strict: bool
                ) -> list[list]:
    """Rows of the member file for a Patient, Coverage or HH EpisodeOfCare."""
    kind = resource.get("resourceType")
    if kind == "Patient":
        if not resource.get("id"):
            if strict:
                raise InputError(f"{where}: Patient.id is missing")
            return []
        dcn = next((i.get("value") for i in resource.get("identifier") or []
                    if isinstance(i, dict) and i.get("system") == MO_HEALTHNET_DCN), "")
        try:
            state = member_state(resource, rules)
        except EligibilityInputError:
            state = ""  # a member whose state cannot be told is not judged
        return [[resource["id"], dcn, (resource.get("birthDate") or "")[:10], state,
                 "", "", "", ""]]
    if kind == "Coverage":
        member = _patient_id(resource.get("beneficiary"))
        if member is None:
            if strict:
                raise InputError(f"{where}: Coverage.beneficiary is not a reference to a Patient")
            return []
        if resource.get("status") != "active":
            return []
        period = resource.get("period") or {}
        system = rules.facts["coverage"]["system"]
        return [[member, "", "", "", c["code"], (period.get("start") or "")[:10],
                 (period.get("end") or "")[:10], ""]
                for c in (resource.get("type") or {}).get("coding") or []
                if isinstance(c, dict) and c.get("system") == system and c.get("code")]
    if kind == "EpisodeOfCare":
        member = _patient_id(resource.get("patient"))
        program = episode_program(resource)
        if member is None or not program or not in_force(resource, within):
            return []
        return [[member, "", "", "", "", "", "", program]]
    return []
