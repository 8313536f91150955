"""Health Home operations: on Patient `$hh-status`, `$hh-eligibility`, `$enroll`,
`$disenroll`; on the system `$generate-claims`, `$potential-enrollees`.

Registered before the generic REST routes, so `Patient/$hh-status` is not read as an id.
"""

from __future__ import annotations

from datetime import date

import base64

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_gateway.api.http import fhir_response, is_pretty, read_body, version_headers
from fhir_gateway.api.rest import base_url
from fhir_gateway.auth.access import access_of
from fhir_gateway.auth.view import admitting, own_provider, store_for
from fhir_gateway.healthhome import billing, monthly_claims, potential_enrollees, services
from fhir_gateway.healthhome import enrollment as hh_enrollment
from fhir_gateway.healthhome.eligibility import Evaluation, RuleFiles, evaluate
from fhir_gateway.healthhome.status import to_parameters
from fhir_gateway.outcome import invalid

router = APIRouter(prefix="/fhir")


def _files(request: Request) -> RuleFiles:
    """The Health Home rule files of the app's settings."""
    return RuleFiles.of(request.app.state.settings)


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
    state = request.app.state
    if getattr(state, "lookup_turns", None) is None:  # made in the event loop, on first use
        state.lookup_turns = anyio.CapacityLimiter(state.settings.lookup_concurrency)
    # lookups take their turns apart from the worker threads that serve everything else
    statuses = await anyio.to_thread.run_sync(services.member_status, store_for(request),
                                              state.lookups, patient_id, identifier,
                                              limiter=state.lookup_turns)
    return fhir_response(to_parameters(statuses), pretty=is_pretty(request))


# -- $hh-eligibility ----------------------------------------------------------------------

@router.post("/Patient/$hh-eligibility")
async def hh_eligibility_posted(request: Request) -> Response:
    """Evaluate the resources of a posted Parameters(`bundle`, `state`?, `asOf`?)."""
    params = _parameters(await read_body(request))
    bundle = (params.get("bundle") or {}).get("resource")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise invalid("Parameters needs a 'bundle' parameter holding a Bundle",
                      "Parameters.parameter")
    resources = [e["resource"] for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    state = (params.get("state") or {}).get("valueCode")
    when = _day((params.get("asOf") or {}).get("valueDate"), "asOf")
    result = evaluate(resources, state, when, files=_files(request))
    return _eligibility_response(request, result)


@router.get("/Patient/{patient_id}/$hh-eligibility")
async def hh_eligibility(request: Request, patient_id: str) -> Response:
    """Evaluate what the store holds for one member."""
    state, as_of = request.query_params.get("state"), request.query_params.get("asOf")
    result = await run_in_threadpool(services.member_eligibility, store_for(request),
                                     _files(request), patient_id, state, _day(as_of, "asOf"))
    return _eligibility_response(request, result)


def _eligibility_response(request: Request, result: Evaluation) -> Response:
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


def _day(value: str | None, name: str) -> date | None:
    """A date parameter, None when absent or empty; not a date is a 400 that names it."""
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise invalid(f"Parameter '{name}' must be a date (YYYY-MM-DD), not '{value}'", name) from None


def _date(params: dict, name: str) -> date:
    value = (params.get(name) or {}).get("valueDate")
    if not value:
        raise invalid(f"Parameter '{name}' (valueDate) is required", name)
    return _day(value, name)


def _code(params: dict, name: str) -> str:
    value = (params.get(name) or {}).get("valueCode")
    if not value:
        raise invalid(f"Parameter '{name}' (valueCode) is required", name)
    return value


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
    store = store_for(request)
    episode = await run_in_threadpool(
        lambda: services.enroll(admitting(store, patient_id, provider), _files(request),
                                patient_id, wanted))
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


@router.post("/Patient/{patient_id}/$disenroll")
async def disenroll(request: Request, patient_id: str) -> Response:
    params = _parameters(await read_body(request))
    program, reason, end = _code(params, "program"), _code(params, "reason"), _date(params, "end")
    episode = await run_in_threadpool(services.disenroll, store_for(request),
                                      _files(request), patient_id, program, reason, end)
    return fhir_response(episode, 200, version_headers(episode), pretty=is_pretty(request))


# -- $generate-claims ----------------------------------------------------------------------

@router.post("/$generate-claims")
async def generate_claims(request: Request) -> Response:
    """Parameters(`month` valueDate YYYY-MM, `provider`? valueReference Organization): the
    month's HH Monthly Claims; the answer lists the claims created and the enrolled members
    not billed, each with the reason."""
    within, provider = _month_and_provider(request, _parameters(await read_body(request)))
    run = await run_in_threadpool(billing.generate_claims, store_for(request),
                                  _files(request), within, provider)
    return fhir_response(_claim_run(run), pretty=is_pretty(request))


def _month_and_provider(request: Request, params: dict
                        ) -> tuple[monthly_claims.Month, str | None]:
    """The `month` (valueDate YYYY-MM) and optional `provider` (valueReference to an
    Organization) of a monthly operation; a Health Home client's is its own."""
    within = monthly_claims.month((params.get("month") or {}).get("valueDate"), "month")
    provider = None
    if "provider" in params:
        provider = ((params["provider"].get("valueReference") or {}).get("reference") or "")
        if not provider.startswith("Organization/"):
            raise invalid("Parameter 'provider' must reference the Health Home Organization",
                          "provider")
    return within, own_provider(access_of(request), provider)


def _claim_run(run: billing.ClaimRun) -> dict:
    created = [{"name": "created", "part": [
        *_reference("claim", f"Claim/{c['id']}"), *_reference("patient", c["patient"]["reference"]),
        *_reference("provider", c["provider"]["reference"]),
        {"name": "services", "valueInteger": len(c.get("supportingInfo", []))}]}
        for c in run.created]
    not_billed = [{"name": "notBilled", "part": [
        *_reference("patient", n.patient), *_reference("provider", n.provider),
        {"name": "reason", "valueString": n.reason}, *_reference("claim", n.claim)]}
        for n in run.not_billed]
    return {"resourceType": "Parameters", "parameter": [
        {"name": "month", "valueDate": run.month.text},
        {"name": "claimsCreated", "valueInteger": len(created)},
        {"name": "membersNotBilled", "valueInteger": len(not_billed)},
        *created, *not_billed]}


def _reference(name: str, reference: str | None) -> list[dict]:
    return [{"name": name, "valueReference": {"reference": reference}}] if reference else []


# -- $potential-enrollees ------------------------------------------------------------------

@router.post("/$potential-enrollees")
async def potential_enrollees_list(request: Request) -> Response:
    """Parameters(`month` valueDate YYYY-MM, `provider`? valueReference Organization): the
    month's lists of potential Health Home enrollees over the store's claims, per provider a
    Group and the CSV (as an Attachment), each member with program, rule and diagnoses."""
    within, provider = _month_and_provider(request, _parameters(await read_body(request)))
    lists = await run_in_threadpool(potential_enrollees.from_store, store_for(request),
                                    _files(request), within, provider)
    return fhir_response(_enrollee_lists(lists), pretty=is_pretty(request))


def _enrollee_lists(lists: potential_enrollees.Lists) -> dict:
    out = [{"name": "month", "valueDate": lists.month.text},
           {"name": "potentialEnrollees", "valueInteger": lists.members}]
    for provider, rows in lists.providers.items():
        enrollees = [{"name": "enrollee", "part": [
            *_reference("patient", f"Patient/{e.member_id}"),
            {"name": "program", "valueCode": e.program}, {"name": "rule", "valueString": e.rule},
            *({"name": "diagnosis", "valueCode": code} for code in e.diagnoses)]} for e in rows]
        csv_bytes = potential_enrollees.csv_text(rows).encode()
        out.append({"name": "list", "part": [
            *_reference("provider", provider),
            {"name": "group", "resource": potential_enrollees.group(provider, rows, lists)},
            {"name": "csv", "valueAttachment": {
                "contentType": "text/csv", "data": base64.b64encode(csv_bytes).decode(),
                "title": f"{potential_enrollees.file_stem(lists, provider)}.csv"}},
            *enrollees]})
    return {"resourceType": "Parameters", "parameter": out}
