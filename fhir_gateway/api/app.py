"""The FastAPI application: routers, and every error rendered as an OperationOutcome."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import anyio

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from fhir_gateway import __version__
from fhir_gateway.api import audit as audit_routes
from fhir_gateway.api import auth as auth_routes
from fhir_gateway.api import exchange, export, health, operations, rest
from fhir_gateway.api.formats import FhirFormats, outcome_body, wants_xml
from fhir_gateway.api.http import outcome_response
from fhir_gateway.api.limits import BodyLimit
from fhir_gateway.audit.middleware import AuditTrail
from fhir_gateway.audit.trail import Trail
from fhir_gateway.auth.setup import setup as auth_setup
from fhir_gateway.auth.middleware import BearerAuth
from fhir_gateway.config import Settings
from fhir_gateway.exchange.messages import Rules as MessageRules
from fhir_gateway.healthhome.checks import health_home_validator
from fhir_gateway.outcome import FhirError
from fhir_gateway.store.base import FhirStore

log = logging.getLogger("fhir_gateway.http")
_HTTP_CODES = {404: "not-found", 405: "not-supported", 406: "not-supported", 413: "too-costly",
               415: "not-supported"}


def create_app(store: FhirStore, settings: Settings | None = None) -> FastAPI:
    """Raises `auth.AuthConfigError` for settings that would serve without authorization
    on an address other than loopback."""
    app = FastAPI(title="Health Home FHIR Gateway", version=__version__,
                  description="FHIR R4 gateway for Medicaid Health Homes (MO HealthNet, KanCare)",
                  lifespan=_lifespan)
    app.state.store = store
    app.state.settings = settings = settings or Settings()
    app.state.validator = health_home_validator(settings.profiles, settings.validate_all)
    app.state.lookups = lookup_clients(settings)
    app.state.message_rules = MessageRules.load()
    app.state.tokens = auth_setup(settings)  # None: FHIR_GATEWAY_AUTH=off (loopback only)
    app.include_router(auth_routes.router)  # before rest: `.well-known` is no type
    app.include_router(health.router)
    app.include_router(operations.router)  # before rest: `Patient/$hh-status` is no id
    app.include_router(exchange.router)  # before rest: `$process-message` is no type
    app.include_router(export.router)  # before rest: `$export` is no type
    export.attach(app)  # resumes exports a previous run left unfinished
    app.state.audit = Trail(settings.audit_db_path())  # searchable even when recording is off
    app.include_router(audit_routes.router)  # before rest: AuditEvent is the trail's
    app.include_router(rest.router)

    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError):
        return outcome_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = "No such endpoint" if exc.status_code == 404 else str(exc.detail)
        return outcome_response(FhirError(exc.status_code, f"{message}: {request.method} "
                                          f"{request.url.path}",
                                          _HTTP_CODES.get(exc.status_code, "processing")))

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError):
        return outcome_response(FhirError(400, str(exc.errors()[:3]), "invalid"))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        """Runs in Starlette's outermost middleware, past FhirFormats: renders XML itself."""
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        err = FhirError(500, f"Internal error ({type(exc).__name__}); see the gateway log",
                        "exception")
        body, media = outcome_body(err, wants_xml(request))
        return Response(body, status_code=500, media_type=media)

    app.add_middleware(BearerAuth, service=app.state.tokens)  # inside FhirFormats: XML refusals
    if settings.audit:  # outside BearerAuth: sees its refusals and the client it identified
        app.add_middleware(AuditTrail, trail=app.state.audit)
    app.add_middleware(FhirFormats)
    app.add_middleware(BodyLimit, max_body=settings.max_body)
    app.add_middleware(AccessLog)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    await anyio.to_thread.run_sync(app.state.audit.close)  # writes what is queued


def lookup_clients(settings: Settings) -> dict:
    """The configured CIMOR / CyberAccess lookup clients (absent when not configured)."""
    from fhir_gateway.adapters.cimor.client import Client as CimorClient
    from fhir_gateway.adapters.cyberaccess.client import Client as CyberAccessClient

    clients = {}
    if settings.cimor_url:
        clients["cimor"] = CimorClient(settings.cimor_url, timeout=settings.lookup_timeout,
                                       max_bytes=settings.lookup_max_bytes)
    if settings.cyberaccess_url:
        clients["cyberaccess"] = CyberAccessClient(settings.cyberaccess_url,
                                                   timeout=settings.lookup_timeout,
                                                   max_bytes=settings.lookup_max_bytes)
    return clients


class AccessLog:
    """Log method, path, status and time only: query strings may carry DCNs or names (PHI).

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs about a millisecond a
    request, which matters in front of HAPI.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            log.info("%s %s %s %.1fms", scope["method"], scope["path"], status.get("code", 500),
                     (time.perf_counter() - started) * 1000)
