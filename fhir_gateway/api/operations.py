"""Health Home operations on Patient: `$hh-status`, `$hh-eligibility`, `$enroll`, `$disenroll`.

Registered before the generic REST routes, so `Patient/$hh-status` is not read as an id.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_gateway.api.http import fhir_response, is_pretty, read_body, version_headers
from fhir_gateway.api.rest import base_url
from fhir_gateway.healthhome import enrollment as hh_enrollment
from fhir_gateway.healthhome import status as hh
from fhir_gateway.healthhome.enrollment import EnrollmentRefused
from fhir_gateway.identifiers import MO_HEALTHNET_DCN
from fhir_gateway.members import member_record
from fhir_gateway.outcome import FhirError, invalid
from fhir_gateway.search.dates import now_instant

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
    resources = await run_in_threadpool(member_record, store, patient_id)
    query = request.query_params
    return _eligibility_response(request, resources, query.get("state"), query.get("asOf"))


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


# -- $enroll / $disenroll ------------------------------------------------------------------

def _parameters(body: object) -> dict[str, dict]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise invalid("The operation takes a Parameters resource", "resourceType")
    return {p.get("name"): p for p in body.get("parameter", [])}


def _date(params: dict, name: str, required: bool = True) -> date | None:
    value = (params.get(name) or {}).get("valueDate")
    if value is None:
        if required:
            raise invalid(f"Parameter '{name}' (valueDate) is required", name)
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise invalid(f"Parameter '{name}' must be a date (YYYY-MM-DD), not '{value}'", name) from None


def _code(params: dict, name: str) -> str:
    value = (params.get(name) or {}).get("valueCode")
    if not value:
        raise invalid(f"Parameter '{name}' (valueCode) is required", name)
    return value


def _refused(err: EnrollmentRefused) -> FhirError:
    code = {409: "conflict", 422: "business-rule", 404: "not-found"}.get(err.status, "invalid")
    return FhirError(err.status, str(err), code, err.where)


@router.post("/Patient/{patient_id}/$enroll")
async def enroll(request: Request, patient_id: str) -> Response:
    params = _parameters(await read_body(request))
    provider = ((params.get("provider") or {}).get("valueReference") or {}).get("reference", "")
    if not provider.startswith("Organization/"):
        raise invalid("Parameter 'provider' must reference the Health Home Organization",
                      "provider")
    override = (params.get("override") or {}).get("valueBoolean") is True
    reason = (params.get("reason") or {}).get("valueString")
    if override and not reason:
        raise invalid("An override needs a 'reason'", "reason")
    wanted = hh_enrollment.Request(_code(params, "program"), provider, _date(params, "start"),
                                   _code(params, "source"), reason if override else None,
                                   _agreement(params))
    store = request.app.state.store
    episode = await run_in_threadpool(_enroll, store, patient_id, wanted)
    headers = version_headers(episode, base_url(request))
    return fhir_response(episode, 201, headers, pretty=is_pretty(request))


def _agreement(params: dict) -> hh_enrollment.Agreement | None:
    """The optional `consent` parameter: parts `agreedBy` (the Patient or a RelatedPerson,
    the guardian) and `date`. Whether it is required depends on the program's state."""
    if "consent" not in params:
        return None
    parts = {p.get("name"): p for p in params["consent"].get("part") or []}
    by = ((parts.get("agreedBy") or {}).get("valueReference") or {}).get("reference", "")
    if not by.startswith(("Patient/", "RelatedPerson/")):
        raise invalid("Parameter 'consent' needs a part 'agreedBy' (valueReference to the "
                      "Patient or to a RelatedPerson, the guardian)", "consent.agreedBy")
    return hh_enrollment.Agreement(by, _date({"consent.date": parts.get("date")}, "consent.date"))


#: how often `$enroll` decides again after losing a race with a concurrent change
ATTEMPTS = 3


def _enroll(store, patient_id: str, wanted) -> dict:
    """Decide and write, with the member's enrollment List as the guard: each attempt reads
    the List, then the record, and writes with If-Match on the List's version. Of concurrent
    enrollments of one member the store commits one; the others fail (409/412 from either
    store, HAPI included, in one transaction) and decide again on what was committed."""
    if wanted.consent and wanted.consent.by.startswith("RelatedPerson/"):
        wanted.consent.guardian = _referenced(store, wanted.consent.by, "consent.agreedBy")
    for _ in range(ATTEMPTS):
        guard = _enrollments_list(store, patient_id)
        bundle = _enrollment_bundle(store, patient_id, wanted, guard)
        try:
            response = store.transaction(bundle)
        except FhirError as err:
            if err.status in (409, 412):  # the List changed since we read it
                continue
            raise
        location = response["entry"][0]["response"]["location"].split("/")
        return store.read(location[0], location[1])
    raise FhirError(409, f"The enrollments of Patient/{patient_id} changed during each of "
                         f"{ATTEMPTS} attempts; try again", "conflict")


def _referenced(store, reference: str, where: str) -> dict:
    try:
        return store.read(*reference.split("/", 1))
    except FhirError as err:
        if err.status in (404, 410):
            raise invalid(f"{reference} is not on record", where) from None
        raise


def _enrollments_list(store, patient_id: str) -> dict:
    """The member's enrollment List, created on their first `$enroll` (after the Patient is
    known to exist). Two first requests may both write it: the content is the same."""
    list_id = hh_enrollment.enrollments_list_id(patient_id)
    try:
        return store.read("List", list_id)
    except FhirError as err:
        if err.status not in (404, 410):
            raise
    store.read("Patient", patient_id)
    try:
        return store.update("List", list_id, hh_enrollment.enrollments_list(patient_id)).resource
    except FhirError as err:
        if err.status not in (409, 412):
            raise
        return store.read("List", list_id)


def _enrollment_bundle(store, patient_id: str, wanted, guard: dict) -> dict:
    """The transaction of one enrollment: the EpisodeOfCare, what goes with it (consent,
    override Provenance, care team, Regional Office referral, KanCare assignment letter) and
    the List, rewritten If-Match its version read before the record was."""
    from fhir_gateway.healthhome.eligibility import EligibilityInputError, evaluate

    record = member_record(store, patient_id)
    try:
        programs = evaluate(record, None, wanted.start).programs
        verdict = next((p for p in programs if p.code == wanted.program), None)
    except EligibilityInputError as err:
        raise invalid(str(err), getattr(err, "where", None)) from None
    conditions = [r for r in record if r["resourceType"] == "Condition"]
    episodes = _episodes(store, patient_id)
    try:
        episode = hh_enrollment.enroll(record[0], wanted, verdict, conditions, episodes)
    except EnrollmentRefused as err:
        raise _refused(err) from None
    target, when, member = f"urn:uuid:{uuid.uuid4()}", now_instant()[0], f"Patient/{patient_id}"
    entries = [{"fullUrl": target, "resource": episode,
                "request": {"method": "POST", "url": "EpisodeOfCare"}}]

    def add(resource: dict, full_url: str | None = None) -> None:
        entries.append({**({"fullUrl": full_url} if full_url else {}), "resource": resource,
                        "request": {"method": "POST", "url": resource["resourceType"]}})

    if wanted.consent:
        add(hh_enrollment.consent(member, wanted, target))
    if wanted.override_reason:
        add(hh_enrollment.override_provenance(target, member, wanted.override_reason, when))
    coordination = hh_enrollment.coordination_episodes(wanted.program, episodes)
    team = hh_enrollment.care_team(wanted.program, member, target, coordination)
    if team:
        add(team, f"urn:uuid:{uuid.uuid4()}")
        episode["team"] = [{"reference": entries[-1]["fullUrl"]}]
    if hh_enrollment.dd_referral_needed(wanted.program, record[0], conditions,
                                       coordination):
        add(hh_enrollment.dd_referral(wanted.program, record[0], when))
    if hh_enrollment.sends_letter(wanted.program, wanted.source):
        provider = store.read(*wanted.provider.split("/", 1))
        add(hh_enrollment.assignment_letter(record[0], target, wanted.program, verdict,
                                            provider, when))
    entries.append({"resource": hh_enrollment.enrollments_list(patient_id, target, when),
                    "request": {"method": "PUT", "url": f"List/{guard['id']}",
                                "ifMatch": f'W/"{guard["meta"]["versionId"]}"'}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@router.post("/Patient/{patient_id}/$disenroll")
async def disenroll(request: Request, patient_id: str) -> Response:
    params = _parameters(await read_body(request))
    program, reason, end = _code(params, "program"), _code(params, "reason"), _date(params, "end")
    store = request.app.state.store

    def close() -> dict:
        store.read("Patient", patient_id)
        try:
            episode = hh_enrollment.disenroll(_episodes(store, patient_id), program, reason, end)
        except EnrollmentRefused as err:
            raise _refused(err) from None
        version = episode["meta"]["versionId"]
        return store.update("EpisodeOfCare", episode["id"], episode, f'W/"{version}"').resource

    episode = await run_in_threadpool(close)
    return fhir_response(episode, 200, version_headers(episode), pretty=is_pretty(request))


def _episodes(store, patient_id: str) -> list[dict]:
    return store.search("EpisodeOfCare", [("patient", f"Patient/{patient_id}"),
                                          ("_count", "1000")]).matches
