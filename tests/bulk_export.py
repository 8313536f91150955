"""A synthetic FHIR Bulk Data export, shaped like Synthea's: one NDJSON file per type,
named `<Type>.000.ndjson`, records referring to each other by `Type/id`.

Used by the load tests and by `bench/load_bench.py`. Shapes that make loading hard are
there on purpose: files whose names sort before the types they refer to, an Observation
panel whose members come later in its own file, and two Patients linked to each other (a
cycle).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson

NS = uuid.UUID("2f1c7e52-8a51-4d0b-9a52-000000000000")
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RESOURCES_PER_MEMBER = 15  # and one Organization and one Practitioner per 10 members


def rid(kind: str, n: int, extra: int = 0) -> str:
    return str(uuid.uuid5(NS, f"{kind}-{n}-{extra}"))


def ref(rtype: str, ident: str) -> dict:
    return {"reference": f"{rtype}/{ident}"}


def coding(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def member_resources(n: int) -> list[dict]:
    """The 15 resources of member `n`, in no particular order."""
    pid, org, doc = rid("p", n), rid("o", n // 10), rid("d", n // 10)
    patient = {"resourceType": "Patient", "id": pid,
               "identifier": [{"system": "https://example.org/mrn", "value": f"MRN{n:07d}"}],
               "name": [{"family": f"Synthetic{n}", "given": ["Test"]}],
               "gender": ("female", "male")[n % 2], "birthDate": f"{1950 + n % 50}-0{1 + n % 9}-1{n % 9}",
               "generalPractitioner": [ref("Practitioner", doc)],
               "managingOrganization": ref("Organization", org)}
    if n < 2:  # members 0 and 1 are linked to each other: a cycle
        patient["link"] = [{"other": ref("Patient", rid("p", 1 - n)), "type": "seealso"}]
    out = [patient]
    encounters = [rid("e", n, k) for k in range(3)]
    for k, eid in enumerate(encounters):
        out.append({"resourceType": "Encounter", "id": eid, "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                              "code": "AMB"},
                    "subject": ref("Patient", pid),
                    "participant": [{"individual": ref("Practitioner", doc)}],
                    "period": {"start": f"2025-0{1 + k}-0{1 + n % 9}T09:00:00Z",
                               "end": f"2025-0{1 + k}-0{1 + n % 9}T09:30:00Z"},
                    "serviceProvider": ref("Organization", org)})
    conditions = [rid("c", n, k) for k in range(2)]
    for k, (cid, (code, text)) in enumerate(zip(conditions, (("E11.9", "Type 2 diabetes"),
                                                             ("I10", "Hypertension")))):
        out.append({"resourceType": "Condition", "id": cid,
                    "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/"
                                             "condition-clinical", "active", "Active"),
                    "code": coding(ICD10, code, text), "subject": ref("Patient", pid),
                    "encounter": ref("Encounter", encounters[k])})
    members = [rid("ob", n, k) for k in range(1, 5)]
    out.append({"resourceType": "Observation", "id": rid("ob", n, 0), "status": "final",
                "code": coding(LOINC, "85354-9", "Blood pressure panel"),
                "subject": ref("Patient", pid), "encounter": ref("Encounter", encounters[0]),
                "hasMember": [ref("Observation", m) for m in members[:2]]})
    for k, oid in enumerate(members):
        out.append({"resourceType": "Observation", "id": oid, "status": "final",
                    "code": coding(LOINC, "39156-5", "Body mass index"),
                    "subject": ref("Patient", pid), "encounter": ref("Encounter", encounters[k % 3]),
                    "valueQuantity": {"value": float(f"2{k}.{n % 10}"), "unit": "kg/m2",
                                      "system": "http://unitsofmeasure.org", "code": "kg/m2"}})
    out.append({"resourceType": "Procedure", "id": rid("pr", n), "status": "completed",
                "code": coding(SNOMED, "430193006", "Medication reconciliation"),
                "subject": ref("Patient", pid), "encounter": ref("Encounter", encounters[1])})
    out.append({"resourceType": "AllergyIntolerance", "id": rid("a", n),
                "patient": ref("Patient", pid),
                "code": coding(SNOMED, "300916003", "Latex allergy")})
    coverage = rid("cov", n)
    out.append({"resourceType": "Coverage", "id": coverage, "status": "active",
                "beneficiary": ref("Patient", pid), "payor": [ref("Organization", org)]})
    out.append({"resourceType": "Claim", "id": rid("cl", n), "status": "active",
                "type": coding("http://terminology.hl7.org/CodeSystem/claim-type",
                               "professional", "Professional"),
                "use": "claim", "patient": ref("Patient", pid), "created": "2025-03-31",
                "provider": ref("Organization", org),
                "priority": coding("http://terminology.hl7.org/CodeSystem/processpriority",
                                   "normal", "Normal"),
                "diagnosis": [{"sequence": 1, "diagnosisReference": ref("Condition", conditions[0])}],
                "insurance": [{"sequence": 1, "focal": True, "coverage": ref("Coverage", coverage)}],
                "item": [{"sequence": 1, "encounter": [ref("Encounter", encounters[2])],
                          "productOrService": coding("https://www.cms.gov/Medicare/Coding/"
                                                     "HCPCSReleaseCodeSets", "S0281",
                                                     "Medical home program, per month"),
                          "unitPrice": {"value": 85.17, "currency": "USD"}}]})
    return out


def shared_resources(members: int) -> list[dict]:
    out = []
    for g in range((members + 9) // 10):
        out.append({"resourceType": "Organization", "id": rid("o", g), "active": True,
                    "name": f"Synthetic Clinic {g}"})
        out.append({"resourceType": "Practitioner", "id": rid("d", g), "active": True,
                    "name": [{"family": f"Doctor{g}", "given": ["Test"]}]})
    return out


def write_export(directory: Path, members: int) -> dict[str, list[bytes]]:
    """Write the export; return each file's lines (the file name -> its lines)."""
    directory.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[bytes]] = {}
    for resource in shared_resources(members):
        by_type.setdefault(resource["resourceType"], []).append(orjson.dumps(resource))
    for n in range(members):
        for resource in member_resources(n):
            by_type.setdefault(resource["resourceType"], []).append(orjson.dumps(resource))
    files = {}
    for rtype, lines in by_type.items():
        name = f"{rtype}.000.ndjson"
        (directory / name).write_bytes(b"\n".join(lines) + b"\n")
        files[name] = lines
    return files
