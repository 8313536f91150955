"""`GET /health`: whether the gateway and its store answer, for a container's health check.

Outside /fhir, so it needs no token (a health checker has none), and it says nothing about
what the store holds: 200 `{"status": "ok"}`, or 503 with the reason the store did not answer.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from fhir_gateway.outcome import FhirError

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    try:
        await run_in_threadpool(request.app.state.store.is_empty)
    except FhirError as err:
        return JSONResponse({"status": "unavailable", "store": str(err)[:200]}, 503)
    return JSONResponse({"status": "ok"})
