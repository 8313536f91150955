"""Every request under /fhir carries a bearer token, but `metadata` and the SMART
configuration: pure ASGI, inside the format middleware (so a refusal is an OperationOutcome
in the negotiated format), before any route, so a route added later is covered too.

What the token allows is decided by `auth/access.py` from the method and path; the route
finds the client's `Access` in `request.state.access` for what only it can check (Bundle
entries, included resources). With FHIR_GATEWAY_AUTH=off (loopback only), every request
gets `UNRESTRICTED`.
"""

from __future__ import annotations

import anyio
import orjson

from fhir_gateway.auth import context
from fhir_gateway.auth.access import UNRESTRICTED, Forbidden, needs
from fhir_gateway.auth.tokens import InvalidToken, TokenService
from fhir_gateway.outcome import FhirError

PREFIX = "/fhir"
OPEN = {"/fhir/metadata", "/fhir/.well-known/smart-configuration"}
REALM = 'Bearer realm="fhir-gateway"'


class BearerAuth:
    def __init__(self, app, service: TokenService | None):
        """`service` None: authorization is off."""
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        if self.service is None:
            state["access"] = UNRESTRICTED
            context.access.set(UNRESTRICTED)
            return await self.app(scope, receive, send)
        if path.rstrip("/") in OPEN:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").strip()
        scheme, _, token = header.partition(" ")
        if not header:
            return await _refuse(send, 401, "This endpoint needs an access token: "
                                 "Authorization: Bearer <token> (see "
                                 "/fhir/.well-known/smart-configuration)", "login", REALM)
        if scheme.lower() != "bearer" or not token.strip():
            return await _refuse(send, 401, "The Authorization header must be 'Bearer <token>'",
                                 "login", f'{REALM}, error="invalid_request"')
        try:
            access = self.service.cached(token.strip()) or \
                await anyio.to_thread.run_sync(self.service.verify, token.strip())
        except InvalidToken as err:
            return await _refuse(send, 401, str(err), "login",
                                 f'{REALM}, error="invalid_token", '
                                 f'error_description="{_quoted(str(err))}"')
        state["client"] = access  # identified, even if refused below (the audit trail)
        segments = [s for s in path[len(PREFIX):].split("/") if s]
        try:
            access.require(needs(scope["method"], segments))
        except Forbidden as err:
            return await _refuse(send, 403, str(err), "forbidden",
                                 f'{REALM}, error="insufficient_scope"')
        state["access"] = access
        context.access.set(access)
        await self.app(scope, receive, send)


def _quoted(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")[:200]


async def _refuse(send, status: int, diagnostics: str, code: str, challenge: str) -> None:
    body = orjson.dumps(FhirError(status, diagnostics, code).outcome)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/fhir+json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", challenge.encode("latin-1", "replace"))]})
    await send({"type": "http.response.body", "body": body})
