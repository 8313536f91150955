"""Health Home operations on Patient: `$hh-status`, `$hh-eligibility`.

Registered before the generic REST routes, so `Patient/$hh-status` is not read as an id.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import date

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_gateway.api.http import fhir_response, is_pretty, read_body
from fhir_gateway.healthhome import status as hh
from fhir_gateway.identifiers import LOINC, MO_HEALTHNET_DCN
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


# -- $hh-eligibility ----------------------------------------------------------------------

@router.post("/Patient/$hh-eligibility")
async def hh_eligibility_posted(request: Request) -> Response:
    """Evaluate the resources of a posted Parameters(`bundle`, `state`?, `asOf`?)."""
    body = await read_body(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise invalid("$hh-eligibility takes a Parameters resource", "resourceType")
    params = {p.get("name"): p for p in body.get("parameter", [])}
    bundle = (params.get("bundle") or {}).get("resource")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise invalid("Parameters needs a 'bundle' parameter holding a Bundle",
                      "Parameters.parameter")
    resources = [e["resource"] for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    state = (params.get("state") or {}).get("valueCode")
    as_of = (params.get("asOf") or {}).get("valueDate")
    return _eligibility_response(request, resources, state, as_of)


@router.get("/Patient/{patient_id}/$hh-eligibility")
async def hh_eligibility(request: Request, patient_id: str) -> Response:
    """Evaluate what the store holds for one member."""
    store = request.app.state.store
    resources = await run_in_threadpool(_member_record, store, patient_id)
    query = request.query_params
    return _eligibility_response(request, resources, query.get("state"), query.get("asOf"))


def _member_record(store, patient_id: str) -> list[dict]:
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


def _eligibility_response(request: Request, resources: list[dict], state: str | None,
                          as_of: str | None) -> Response:
    from fhir_gateway.healthhome.eligibility import EligibilityInputError, evaluate

    try:
        when = date.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise invalid(f"asOf must be a date (YYYY-MM-DD), not '{as_of}'", "asOf") from None
    try:
        result = evaluate(resources, state, when)
    except EligibilityInputError as err:
        raise invalid(str(err), getattr(err, "where", None)) from None
    parameters = [{"name": "program", "part": [
        {"name": "code", "valueCode": v.code},
        {"name": "eligible", "valueBoolean": v.eligible},
        *({"name": "basis", "valueString": b} for b in v.basis),
        {"name": "rule", "valueString": v.rule},
        {"name": "explanation", "valueString": v.explanation}]} for v in result.programs]
    parameters += [{"name": "category", "valueCode": c} for c in result.categories]
    return fhir_response({"resourceType": "Parameters", "parameter": parameters},
                         pretty=is_pretty(request))
