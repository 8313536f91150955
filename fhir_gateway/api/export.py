"""FHIR Bulk Data export (Bulk Data Access 2.0): kick-off, status, files, cancel.

    GET    /fhir/$export, /fhir/Patient/$export, /fhir/Group/{id}/$export
           (Prefer: respond-async)                     -> 202, Content-Location: status URL
    GET    /fhir/$export-status/{job}                  -> 202 + X-Progress, then 200 manifest
    DELETE /fhir/$export-status/{job}                  -> 202, the job and its files are gone
    GET    /fhir/$export-file/{job}/{file}             -> application/fhir+ndjson

Thin: parameters are `export/request.py`'s, the work `export/jobs.py`'s. Registered before
the generic REST routes, so `$export` is not read as a type nor `Group/x/$export` as a
history. The exporter (its worker threads, its jobs.db) is made at the first export, or
when the app is made if jobs left unfinished by the last run are waiting in the folder.
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_gateway.api.http import fhir_response, prefer
from fhir_gateway.api.rest import base_url
from fhir_gateway.auth.access import access_of
from fhir_gateway.auth.audience import part2_for
from fhir_gateway.auth.view import store_for
from fhir_gateway.export.jobs import Exporter, Job, JobStore
from fhir_gateway.export.request import parse_kickoff
from fhir_gateway.export.scope import group_members
from fhir_gateway.outcome import FhirError, Issue, operation_outcome
from fhir_gateway.search.registry import resource_types

router = APIRouter(prefix="/fhir")
NDJSON = "application/fhir+ndjson"
RETRY_AFTER = "2"
_lock = threading.Lock()


def attach(app: FastAPI) -> None:
    """Resume the jobs a previous run left unfinished (if any) as the app is made."""
    folder = Path(app.state.settings.export_folder())
    if (folder / "jobs.db").exists() and JobStore(folder).unfinished():
        _exporter(app)


def _exporter(app: FastAPI) -> Exporter:
    with _lock:
        if getattr(app.state, "exporter", None) is None:
            settings = app.state.settings
            app.state.exporter = Exporter(app.state.store, Path(settings.export_folder()),
                                          settings.export_workers, settings.export_page_size)
        return app.state.exporter


@router.get("/$export")
async def export_system(request: Request) -> Response:
    return await _kickoff(request, "system")


@router.get("/Patient/$export")
async def export_patients(request: Request) -> Response:
    return await _kickoff(request, "patient")


@router.get("/Group/{group_id}/$export")
async def export_group(request: Request, group_id: str) -> Response:
    return await _kickoff(request, "group", group_id)


async def _kickoff(request: Request, level: str, group_id: str | None = None) -> Response:
    if "respond-async" not in prefer(request):
        raise FhirError(400, "A Bulk Data export runs asynchronously: send the header "
                             "'Prefer: respond-async'", "required", "Prefer")
    params = list(request.query_params.multi_items())
    export = parse_kickoff(level, params, sorted(resource_types()), group_id)
    access = access_of(request)
    export.client_id, export.organization = access.client_id, access.organization
    export.part2 = part2_for(access, request.app.state.settings.part2_unaffiliated)
    exporter = _exporter(request.app)
    if group_id is not None:  # 404 now rather than a failed job later
        await run_in_threadpool(group_members, store_for(request), group_id)
    job = exporter.submit(str(request.url), export)
    status_url = f"{base_url(request)}/$export-status/{job.id}"
    body = operation_outcome([Issue(f"Export accepted; poll {status_url}", "informational",
                                    "information")])
    return fhir_response(body, 202, {"Content-Location": status_url})


def _job(request: Request, job_id: str) -> Job | None:
    """The job, if the requesting client is the one that asked for it."""
    job = _exporter(request.app).jobs.get(job_id)
    if job is None or job.request.client_id not in (None, access_of(request).client_id):
        return None
    return job


@router.get("/$export-status/{job_id}")
async def export_status(request: Request, job_id: str) -> Response:
    job = _job(request, job_id)
    if job is None:
        raise FhirError(404, f"No export job {job_id[:40]}", "not-found")
    if job.status in ("accepted", "in-progress"):
        return Response(status_code=202, headers={
            "X-Progress": (job.progress or job.status)[:200], "Retry-After": RETRY_AFTER})
    if job.status == "failed":
        raise FhirError(500, job.outcome["message"] if job.outcome else "The export failed",
                        "exception")
    files = f"{base_url(request)}/$export-file/{job.id}"
    entries = lambda kind: [{"type": o["type"], "url": f"{files}/{o['file']}",  # noqa: E731
                             "count": o["count"]} for o in job.outcome[kind]]
    return JSONResponse({
        "transactionTime": job.transaction_time,
        "request": job.request_url,
        "requiresAccessToken": request.app.state.tokens is not None,  # the files are under /fhir
        "output": entries("output"),
        "error": entries("error"),
    })


@router.delete("/$export-status/{job_id}")
async def export_cancel(request: Request, job_id: str) -> Response:
    if _job(request, job_id) is None or \
            not await run_in_threadpool(_exporter(request.app).cancel, job_id):
        raise FhirError(404, f"No export job {job_id[:40]}", "not-found")
    body = operation_outcome([Issue(f"Export {job_id} cancelled; its files are deleted",
                                    "informational", "information")])
    return fhir_response(body, 202)


@router.get("/$export-file/{job_id}/{name}")
async def export_file(request: Request, job_id: str, name: str) -> Response:
    exporter = _exporter(request.app)
    job = _job(request, job_id)
    names = {o["file"] for kind in ("output", "error")
             for o in (job.outcome or {}).get(kind, [])} if job and job.status == "completed" \
        else set()
    if name not in names:
        raise FhirError(404, f"No file '{name[:80]}' in export {job_id[:40]}", "not-found")
    return FileResponse(exporter.jobs.files(job_id) / name, media_type=NDJSON)
