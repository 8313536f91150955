"""A member's record as the Health Home rules read it, gathered from any store."""

from __future__ import annotations

from fhir_gateway.healthhome.eligibility import PRIMARY_SOURCES, observation_codes
from fhir_gateway.identifiers import LOINC
from fhir_gateway.store.base import FhirStore


def member_record(store: FhirStore, patient_id: str) -> list[dict]:
    """The facts eligibility reads: the Patient, Conditions, the BMI, BMI-for-age and
    smoking Observations, Coverage, and what ranks diagnoses (the primary diagnosis):
    EpisodesOfCare, Encounters, Claims."""
    patient = store.read("Patient", patient_id)
    subject = f"Patient/{patient_id}"
    loinc = ",".join(f"{LOINC}|{code}" for code in observation_codes())
    found = [patient]
    for resource_type, params in (
            ("Condition", [("patient", subject)]),
            ("Observation", [("patient", subject), ("code", loinc)]),
            ("Coverage", [("beneficiary", subject)]),
            *((kind, [("patient", subject)]) for kind in PRIMARY_SOURCES)):
        found += store.search(resource_type, [*params, ("_count", "1000")]).matches
    return found
