"""A member's record as the Health Home rules read it, gathered from any store."""

from __future__ import annotations

from fhir_gateway.identifiers import LOINC
from fhir_gateway.store.base import FhirStore


def member_record(store: FhirStore, patient_id: str) -> list[dict]:
    """The facts eligibility reads: the Patient, Conditions, BMI/smoking Observations, Coverage."""
    patient = store.read("Patient", patient_id)
    subject = f"Patient/{patient_id}"
    found = [patient]
    for resource_type, params in (
            ("Condition", [("patient", subject)]),
            ("Observation", [("patient", subject), ("code", f"{LOINC}|39156-5,{LOINC}|72166-2")]),
            ("Coverage", [("beneficiary", subject)])):
        found += store.search(resource_type, [*params, ("_count", "1000")]).matches
    return found
