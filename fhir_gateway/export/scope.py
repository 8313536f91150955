"""Which resources one export may include: the one place that decides it.

The level's compartment: a system-level export has everything, a Patient-level export the
resources in any Patient's compartment, a Group-level export those in its members'
compartments; ANDed with what the client that asked may see (`auth/audience.py`: a Health
Home client's members, as they are when the job runs; 42 CFR Part 2). The writer asks
nothing else.
"""

from __future__ import annotations

from fhir_gateway.auth.audience import Audience
from fhir_gateway.export.compartments import patient_id, patients_of
from fhir_gateway.export.request import ExportRequest
from fhir_gateway.export.writer import Keep


def job_scope(store, request: ExportRequest) -> Keep | None:
    """The test every exported resource passes (None: all of them). Read when the job
    runs, not at kick-off: a Group's members are those it has at the transaction time."""
    level = _level(store, request)
    audience = Audience(store, request.organization, part2=request.part2)
    if not (audience.restricted or audience.part2_restricted):
        return level
    return audience.sees if level is None else lambda r: level(r) and audience.sees(r)


def _level(store, request: ExportRequest) -> Keep | None:
    if request.level == "patient":
        return lambda resource: bool(patients_of(resource))
    if request.level == "group":
        members = group_members(store, request.group_id or "")
        return lambda resource: not members.isdisjoint(patients_of(resource))
    return None


def group_members(store, group_id: str) -> frozenset[str]:
    """The ids of the Patients a Group has as (active) members; only ids are held, never
    their resources. 404 when the Group does not exist."""
    group = store.read("Group", group_id)
    members = set()
    for member in group.get("member", []):
        patient = patient_id(member.get("entity"))
        if patient and member.get("inactive") is not True:
            members.add(patient)
    return frozenset(members)

