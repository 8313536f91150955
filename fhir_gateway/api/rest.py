"""FHIR R4 REST interactions at /fhir, thin over the store.

Handlers parse HTTP, call one store operation in a worker thread (the stores are
synchronous), and render FHIR HTTP conventions; no FHIR logic lives here.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_gateway import bundle as bundles
from fhir_gateway.api import auth as auth_routes
from fhir_gateway.api.capability import capability_statement
from fhir_gateway.api.http import (
    check_accept,
    fhir_response,
    is_pretty,
    prefer,
    read_body,
    version_headers,
    written_response,
)
from fhir_gateway.audit.append_only import check_bundle as check_audit_entries
from fhir_gateway.auth.access import Scoped, access_of
from fhir_gateway.auth.view import store_for
from fhir_gateway.outcome import FhirError, Issue, invalid, operation_outcome
from fhir_gateway.search.query import (
    DEFAULT_COUNT,
    MAX_COUNT,
    MAX_OFFSET,
    RESULT_PARAMS,
    whole_number,
)
from fhir_gateway.search.registry import resource_types
from fhir_gateway.store.base import FhirStore, StoredSearchset
from fhir_gateway.validation.service import check_shape, check_update_id

router = APIRouter(prefix="/fhir")


def _store(request: Request) -> FhirStore:
    return store_for(request)


def base_url(request: Request) -> str:
    configured = request.app.state.settings.base_url
    return configured.rstrip("/") if configured else f"{str(request.base_url).rstrip('/')}/fhir"


def _type(resource_type: str) -> str:
    if resource_type not in resource_types():
        raise FhirError(404, f"Unknown resource type '{resource_type}'", "not-supported")
    return resource_type


def _strict(request: Request) -> bool:
    return prefer(request).get("handling") == "strict"


def _params(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    check_accept(request)
    token_url = auth_routes.token_url(request) if request.app.state.tokens else None
    statement = capability_statement(base_url(request), request.app.state.validator, token_url)
    return fhir_response(statement, pretty=is_pretty(request))


@router.post("")
@router.post("/")
async def system_bundle(request: Request) -> Response:
    body = await read_body(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise invalid("POST to the base URL takes a Bundle of type transaction or batch",
                      "resourceType")
    kind = body.get("type")
    access = access_of(request)
    if kind in ("transaction", "batch"):
        check_audit_entries(body)
    store = _store(request)
    if kind == "transaction":
        access.check_bundle(body)
        result = await run_in_threadpool(store.transaction, body)
    elif kind == "batch":  # an entry outside the scopes is refused alone
        result = await run_in_threadpool(Scoped(store, access).batch, body)
    else:
        raise invalid(f"Bundle.type must be transaction or batch, not '{kind}'", "Bundle.type")
    return fhir_response(result, pretty=is_pretty(request))


@router.get("/_history")
async def system_history(request: Request) -> Response:
    return await _history(request, None, None)


@router.get("/{resource_type}")
async def search(request: Request, resource_type: str) -> Response:
    return await _search(request, _type(resource_type), _params(request))


@router.post("/{resource_type}/_search")
async def search_post(request: Request, resource_type: str) -> Response:
    body = (await request.body()).decode()
    params = _params(request) + parse_qsl(body, keep_blank_values=True)
    return await _search(request, _type(resource_type), params)


async def _search(request: Request, resource_type: str, params: list[tuple[str, str]]
                  ) -> Response:
    """A search; a store that offers its searchset as bytes gets them passed through
    (re-based, with the gateway's links) unless the gateway must indent them."""
    check_accept(request)
    store = _store(request)
    access = access_of(request)
    access.check_chains(resource_type, params)
    filtered = not access.grant.everything("r") and any(
        k.split(":")[0] in ("_include", "_revinclude") for k, _ in params)
    search = store.search if is_pretty(request) or filtered else \
        getattr(store, "search_raw", store.search)
    result = await run_in_threadpool(search, resource_type, params, _strict(request))
    if filtered:  # included resources of types outside the scopes are left out
        result.included = [r for r in result.included if access.visible(r)]
    if isinstance(result, StoredSearchset):
        body = bundles.stored_searchset(result, base_url(request), resource_type, params)
    else:
        body = bundles.searchset(result, base_url(request), resource_type, params)
    return fhir_response(body, pretty=is_pretty(request))


@router.post("/{resource_type}/$validate")
async def validate_operation(request: Request, resource_type: str) -> Response:
    """`$validate`: the resource itself, or a Parameters with `resource` (and `profile`).

    Like HAPI, the answer is 200 with an OperationOutcome listing every issue; only a body
    that is not a resource at all is a 400.
    """
    body = await read_body(request)
    profile = request.query_params.get("profile")
    if isinstance(body, dict) and body.get("resourceType") == "Parameters" and \
            resource_type != "Parameters":
        params = {p.get("name"): p for p in body.get("parameter", [])}
        if "resource" not in params:
            raise invalid("Parameters needs a 'resource' parameter", "Parameters.parameter")
        body = params["resource"].get("resource")
        profile = (params.get("profile") or {}).get("valueUri") or \
            (params.get("profile") or {}).get("valueCanonical") or profile
    resource = check_shape(body, _type(resource_type))
    issues = await run_in_threadpool(request.app.state.validator.validate, resource, profile)
    if not issues:
        issues = [Issue("No issues detected during validation", "informational", "information")]
    return fhir_response(operation_outcome(issues), pretty=is_pretty(request))


@router.post("/{resource_type}")
async def create(request: Request, resource_type: str) -> Response:
    resource = check_shape(await read_body(request), _type(resource_type))
    written = await run_in_threadpool(_store(request).create, resource,
                                      request.headers.get("if-none-exist"))
    return written_response(request, written.resource, written.status, base_url(request))


@router.put("/{resource_type}")
async def conditional_update(request: Request, resource_type: str) -> Response:
    criteria = [(k, v) for k, v in _params(request) if k not in RESULT_PARAMS]
    if not criteria:
        raise invalid("A conditional update needs search criteria in the URL "
                      "(e.g. PUT /fhir/Patient?identifier=system|value)")
    resource = check_shape(await read_body(request), _type(resource_type))
    written = await run_in_threadpool(_store(request).conditional_update, resource_type,
                                      criteria, resource)
    return written_response(request, written.resource, written.status, base_url(request))


@router.delete("/{resource_type}")
async def conditional_delete(request: Request, resource_type: str) -> Response:
    criteria = [(k, v) for k, v in _params(request) if k not in RESULT_PARAMS]
    await run_in_threadpool(_store(request).conditional_delete, _type(resource_type), criteria)
    return _deleted_response(request, "what matched the criteria")


@router.get("/{resource_type}/_history")
async def type_history(request: Request, resource_type: str) -> Response:
    return await _history(request, _type(resource_type), None)


@router.get("/{resource_type}/{resource_id}")
async def read(request: Request, resource_type: str, resource_id: str) -> Response:
    return await _read(request, "read", _type(resource_type), resource_id)


@router.get("/{resource_type}/{resource_id}/_history/{version}")
async def vread(request: Request, resource_type: str, resource_id: str, version: str
                ) -> Response:
    return await _read(request, "vread", _type(resource_type), resource_id, version)


async def _read(request: Request, interaction: str, *key: str) -> Response:
    """A read or vread: the store's own bytes and version headers when it offers them
    (`read_raw`, `vread_raw`) and the gateway has nothing to apply to the resource."""
    check_accept(request)
    store = _store(request)
    stored = getattr(store, f"{interaction}_raw", None)
    if stored is not None and not _reshaped(request):
        raw = await run_in_threadpool(stored, *key)
        headers = {"ETag": raw.etag, "Last-Modified": raw.last_modified}
        return _resource_response(request, raw.content, {k: v for k, v in headers.items() if v})
    resource = await run_in_threadpool(getattr(store, interaction), *key)
    return _resource_response(request, resource, version_headers(resource))


def _reshaped(request: Request) -> bool:
    """Whether a read's answer is not the stored resource as is: `_summary`, `_elements`
    or `_pretty` ask the gateway to change it."""
    return is_pretty(request) or any(
        k == "_elements" or (k == "_summary" and v != "false")
        for k, v in request.query_params.multi_items())


def _resource_response(request: Request, resource: dict | bytes, headers: dict) -> Response:
    etag = headers.get("ETag")
    if etag and request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    if isinstance(resource, dict):
        params = request.query_params
        summary = params.get("_summary")
        elements = [e for e in params.get("_elements", "").split(",") if e]
        resource = bundles.project(resource, None if summary == "false" else summary, elements)
    return fhir_response(resource, headers=headers, pretty=is_pretty(request))


@router.put("/{resource_type}/{resource_id}")
async def update(request: Request, resource_type: str, resource_id: str) -> Response:
    resource = check_shape(await read_body(request), _type(resource_type))
    check_update_id(resource, resource_id)
    written = await run_in_threadpool(_store(request).update, resource_type, resource_id,
                                      resource, request.headers.get("if-match"))
    return written_response(request, written.resource, written.status, base_url(request))


@router.delete("/{resource_type}/{resource_id}")
async def delete(request: Request, resource_type: str, resource_id: str) -> Response:
    await run_in_threadpool(_store(request).delete, _type(resource_type), resource_id)
    return _deleted_response(request, f"{resource_type}/{resource_id}")


def _deleted_response(request: Request, what: str) -> Response:
    outcome = operation_outcome([Issue(f"Successfully deleted {what}", "informational",
                                       "information")])
    return fhir_response(outcome, pretty=is_pretty(request))


@router.get("/{resource_type}/{resource_id}/_history")
async def instance_history(request: Request, resource_type: str, resource_id: str) -> Response:
    return await _history(request, _type(resource_type), resource_id)


async def _history(request: Request, resource_type: str | None, resource_id: str | None
                   ) -> Response:
    check_accept(request)
    params = _params(request)
    query = dict(params)
    count = whole_number(query.get("_count", str(DEFAULT_COUNT)), "_count")
    offset = whole_number(query.get("_offset", "0"), "_offset", MAX_OFFSET)
    result = await run_in_threadpool(
        _store(request).history, resource_type, resource_id, query.get("_since"),
        min(count, MAX_COUNT), offset)
    path = "/".join(p for p in (resource_type, resource_id, "_history") if p)
    body = bundles.history(result, base_url(request), path, params)
    return fhir_response(body, pretty=is_pretty(request))
