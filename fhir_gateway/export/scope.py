"""Which resources one export may include: the one place that decides it.

Today that is the level's compartment: a system-level export has everything, a
Patient-level export the resources in any Patient's compartment, a Group-level export
those in its members' compartments. Access control (a later issue) plugs in here: a
client's own filter is ANDed with the compartment's, and the writer asks nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from fhir_gateway.export.compartments import patient_id, patients_of
from fhir_gateway.export.request import ExportRequest

Keep = Callable[[dict], bool]


def job_scope(store, request: ExportRequest) -> Keep | None:
    """The test every exported resource passes (None: all of them). Read when the job
    runs, not at kick-off: a Group's members are those it has at the transaction time."""
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

