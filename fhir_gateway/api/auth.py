"""SMART Backend Services endpoints: the discovery document and the token endpoint.

Registered before the REST routes (`.well-known` is no resource type). The token endpoint
is outside /fhir, so the bearer middleware leaves it alone; its answers are OAuth2's JSON,
never cached.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from fhir_gateway.auth import scopes
from fhir_gateway.auth.tokens import CLIENT_ALGORITHMS, OAuthError

router = APIRouter()
TOKEN_PATH = "/auth/token"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def token_url(request: Request) -> str:
    """The token endpoint's public URL: beside the configured base URL's /fhir, else on the
    request's own origin. A client's assertion must name it as `aud`."""
    configured = request.app.state.settings.base_url.rstrip("/")
    origin = configured.removesuffix("/fhir") if configured else \
        str(request.base_url).rstrip("/")
    return f"{origin}{TOKEN_PATH}"


@router.get("/fhir/.well-known/smart-configuration")
async def smart_configuration(request: Request) -> JSONResponse:
    return JSONResponse({
        "token_endpoint": token_url(request),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": CLIENT_ALGORITHMS,
        "scopes_supported": scopes.SUPPORTED,
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    })


@router.post(TOKEN_PATH)
async def token(request: Request) -> JSONResponse:
    service = request.app.state.tokens
    try:
        if service is None:
            raise OAuthError("invalid_request", "authorization is off on this server "
                                                "(FHIR_GATEWAY_AUTH=off): no token is needed")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "the token request must be "
                                                "application/x-www-form-urlencoded")
        pairs = parse_qsl((await request.body()).decode("utf-8", "replace"),
                          keep_blank_values=True)
        form = {}
        for key, value in pairs:
            if key in form:
                raise OAuthError("invalid_request", f"parameter {key} is given twice")
            form[key] = value
        answer = await run_in_threadpool(service.issue, form, token_url(request))
    except OAuthError as err:
        headers = {**_NO_STORE, **({"WWW-Authenticate": "Bearer"} if err.status == 401 else {})}
        return JSONResponse(err.body(), err.status, headers=headers)
    return JSONResponse(answer, headers=_NO_STORE)
