"""Which Patients a resource belongs to: the R4 Patient compartment, read as data.

`compartment-patient.json` is the spec's CompartmentDefinition for Patient
(http://hl7.org/fhir/R4/compartmentdefinition-patient.html): for each resource type, the
search parameters whose references put a resource in a Patient's compartment. The values
are taken with the same compiled search-parameter expressions the store indexes with
(`search/registry.py`), so "Observation.subject" means here what `subject=` means in a
search. Patient- and Group-level exports keep the resources whose compartment Patients
they ask for.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import orjson

from fhir_gateway.search.registry import SearchParam, params_for


@cache
def _definition() -> dict[str, tuple[str, ...]]:
    raw = resources.files("fhir_gateway.export").joinpath("compartment-patient.json").read_bytes()
    return {r["code"]: tuple(r.get("param", ())) for r in orjson.loads(raw)["resource"]}


def patient_compartment_types() -> tuple[str, ...]:
    """The resource types that can be in a Patient's compartment, sorted."""
    return tuple(sorted(_definition()))


@cache
def _params(resource_type: str) -> tuple[SearchParam, ...]:
    known = params_for(resource_type)
    return tuple(known[code] for code in _definition().get(resource_type, ()) if code in known)


def patients_of(resource: dict) -> set[str]:
    """The ids of the Patients whose compartment `resource` is in (a Patient is in its own)."""
    resource_type = resource.get("resourceType", "")
    found = {resource["id"]} if resource_type == "Patient" and resource.get("id") else set()
    for param in _params(resource_type):
        for value in param.extract(resource) if param.extract else ():
            patient = patient_id(value)
            if patient:
                found.add(patient)
    return found


def patient_id(value) -> str | None:
    """`Patient/123` (relative, absolute or versioned) -> '123'; other targets -> None."""
    reference = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(reference, str):
        return None
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        return parts[-1]
    return None
