"""/fhir/AuditEvent, answered from the audit trail (`audit/trail.py`), never from the
gateway's store: search (GET and POST `_search`), read, the one version of an event; every
write refused (405, append-only). Included before the REST router, which would take these
paths for any type.

Scopes are checked by the bearer middleware like any type's (`system/AuditEvent.rs`). A
client acting for an organization sees only the events of its organization's requests:
the others are not in its searches, totals or includes, and read as unknown (404).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_gateway import bundle as bundles
from fhir_gateway.api.http import check_accept, fhir_response, is_pretty, prefer, version_headers
from fhir_gateway.api.rest import base_url
from fhir_gateway.audit.append_only import refused
from fhir_gateway.audit.trail import Trail
from fhir_gateway.auth.access import access_of
from fhir_gateway.outcome import FhirError
from fhir_gateway.store.base import HistoryEntry, HistoryResult

router = APIRouter(prefix="/fhir/AuditEvent")
TYPE = "AuditEvent"


def _trail(request: Request) -> Trail:
    return request.app.state.audit


def _organization(request: Request) -> str | None:
    return access_of(request).organization


@router.get("")
async def search(request: Request) -> Response:
    return await _search(request, list(request.query_params.multi_items()))


@router.post("/_search")
async def search_post(request: Request) -> Response:
    body = (await request.body()).decode()
    params = list(request.query_params.multi_items()) + parse_qsl(body, keep_blank_values=True)
    return await _search(request, params)


async def _search(request: Request, params: list[tuple[str, str]]) -> Response:
    check_accept(request)
    strict = prefer(request).get("handling") == "strict"
    result = await run_in_threadpool(_trail(request).search, params, _organization(request),
                                     strict)
    body = bundles.searchset(result, base_url(request), TYPE, params)
    return fhir_response(body, pretty=is_pretty(request))


@router.get("/_history")
async def type_history(request: Request) -> Response:
    raise FhirError(400, "Each AuditEvent has one version and the trail only grows: search "
                         "it instead (GET /fhir/AuditEvent?date=ge2026-01-01&_sort=-date)",
                    "not-supported")


@router.get("/{event_id}")
async def read(request: Request, event_id: str) -> Response:
    return await _read(request, event_id)


@router.get("/{event_id}/_history/{version}")
async def vread(request: Request, event_id: str, version: str) -> Response:
    return await _read(request, event_id, version)


async def _read(request: Request, event_id: str, version: str | None = None) -> Response:
    check_accept(request)
    event = await run_in_threadpool(_trail(request).read, event_id, _organization(request),
                                    version)
    summary = request.query_params.get("_summary")
    elements = [e for e in request.query_params.get("_elements", "").split(",") if e]
    shown = bundles.project(event, None if summary == "false" else summary, elements)
    return fhir_response(shown, headers=version_headers(event), pretty=is_pretty(request))


@router.get("/{event_id}/_history")
async def instance_history(request: Request, event_id: str) -> Response:
    check_accept(request)
    event = await run_in_threadpool(_trail(request).read, event_id, _organization(request))
    meta = event["meta"]
    result = HistoryResult([HistoryEntry(TYPE, event_id, int(meta["versionId"]),
                                         meta["lastUpdated"], "POST", event)], 1, 20, 0)
    body = bundles.history(result, base_url(request), f"{TYPE}/{event_id}/_history",
                           list(request.query_params.multi_items()))
    return fhir_response(body, pretty=is_pretty(request))


@router.api_route("", methods=["POST", "PUT", "DELETE", "PATCH"])
@router.api_route("/{event_id}", methods=["PUT", "DELETE", "PATCH"])
async def write(request: Request) -> Response:
    raise refused()
