"""Health Home operations on Patient: `$hh-status` (more arrive with the domain issues).

Registered before the generic REST routes, so `Patient/$hh-status` is not read as an id.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_gateway.api.http import fhir_response, is_pretty
from fhir_gateway.healthhome import status as hh
from fhir_gateway.identifiers import MO_HEALTHNET_DCN
from fhir_gateway.outcome import FhirError, invalid

router = APIRouter(prefix="/fhir")


@router.get("/Patient/$hh-status")
async def hh_status_by_identifier(request: Request) -> Response:
    identifier = request.query_params.get("identifier")
    if not identifier:
        raise invalid("Patient/$hh-status needs identifier=system|value", "identifier")
    return await _hh_status(request, None, identifier)


@router.get("/Patient/{patient_id}/$hh-status")
async def hh_status(request: Request, patient_id: str) -> Response:
    return await _hh_status(request, patient_id, None)


async def _hh_status(request: Request, patient_id: str | None, identifier: str | None
                     ) -> Response:
    store, lookups = request.app.state.store, request.app.state.lookups
    answer = await run_in_threadpool(_status, store, lookups, patient_id, identifier)
    return fhir_response(answer, pretty=is_pretty(request))


def _status(store, lookups, patient_id: str | None, identifier: str | None) -> dict:
    patient = _patient(store, patient_id, identifier)
    dcn = next((i.get("value") for i in patient.get("identifier", [])
                if i.get("system") == MO_HEALTHNET_DCN), None)
    with ThreadPoolExecutor(max_workers=2) as pool:
        asked = {name: pool.submit(_ask, lookups.get(name), name, dcn)
                 for name in ("cimor", "cyberaccess")}
        held = _held(store, patient["id"])
        statuses = [asked["cimor"].result(), asked["cyberaccess"].result(), held]
    return hh.to_parameters(statuses)


def _patient(store, patient_id: str | None, identifier: str | None) -> dict:
    if patient_id:
        return store.read("Patient", patient_id)
    found = store.search("Patient", [("identifier", identifier), ("_count", "2")]).matches
    if not found:
        raise FhirError(404, f"No Patient has identifier {identifier}", "not-found", "identifier")
    if len(found) > 1:
        raise FhirError(412, f"More than one Patient has identifier {identifier}", "duplicate",
                        "identifier")
    return found[0]


def _ask(client, name: str, dcn: str | None) -> hh.SourceStatus:
    """One live lookup; a source that is down or not configured is reported, not raised."""
    reduce = hh.from_cimor if name == "cimor" else hh.from_cyberaccess
    if client is None:
        return hh.SourceStatus(name, reachable=False, problem="no lookup endpoint configured")
    if dcn is None:
        return hh.SourceStatus(name, reachable=False, problem="the member has no MO HealthNet DCN")
    try:
        record = client.lookup(dcn)
    except Exception as exc:  # SourceUnavailable, or anything the client did not expect
        return hh.SourceStatus(name, reachable=False, problem=str(exc) or type(exc).__name__)
    return reduce(record.data if record else None)


def _held(store, patient_id: str) -> hh.SourceStatus:
    result = store.search("EpisodeOfCare", [("patient", f"Patient/{patient_id}"),
                                            ("_include", "EpisodeOfCare:organization"),
                                            ("_count", "100")])
    names = {f"Organization/{o['id']}": o.get("name") for o in result.included
             if o.get("resourceType") == "Organization" and o.get("name")}
    return hh.from_store(result.matches, names)
