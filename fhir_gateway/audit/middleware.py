"""One AuditEvent per /fhir request, refusals included: a pure ASGI middleware just outside
the bearer middleware, so it sees the 401 and 403 that one answers itself, and the client it
identified (`state["client"]`, set before the scopes are checked) or let in
(`state["access"]`).

Not audited: `metadata` and the SMART configuration (no PHI, no token), and what is not
under /fhir (`/auth/token`, `/health`). The event is built after the answer is sent and
queued for the trail's writer thread (`audit/trail.py`): the request waits for neither.
"""

from __future__ import annotations

import logging

from fhir_gateway.audit import events
from fhir_gateway.audit.trail import Trail
from fhir_gateway.auth import context
from fhir_gateway.auth.middleware import OPEN, PREFIX

log = logging.getLogger("fhir_gateway.audit")
#: the most of a `_search` form body kept for the event's query
MAX_FORM = 64 * 1024


class AuditTrail:
    def __init__(self, app, trail: Trail):
        self.app, self.trail = app, trail

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")) \
                or path.rstrip("/") in OPEN:
            return await self.app(scope, receive, send)
        withheld = context.begin_withholding()
        noted = events.begin()
        answer: dict = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                for key, value in message.get("headers", ()):
                    if key.lower() == b"location":
                        answer["location"] = value.decode("latin-1")
            await send(message)

        form = bytearray()
        if scope["method"] == "POST" and path.endswith("/_search"):
            inner = receive

            async def receive():
                message = await inner()
                if message["type"] == "http.request" and len(form) < MAX_FORM:
                    form.extend(message.get("body", b"")[:MAX_FORM - len(form)])
                return message

        try:
            await self.app(scope, receive, watch)
        finally:
            try:
                self.trail.record(events.audit_event(_seen(scope, answer, form, withheld,
                                                           noted)))
            except Exception:  # the answer is sent: a fault here must not become a 500
                log.exception("could not audit a %s request", scope.get("method"))


def _seen(scope, answer: dict, form: bytearray, withheld: list, noted: dict) -> events.Seen:
    state = scope.get("state") or {}
    access = state.get("access") or state.get("client")
    query = scope.get("query_string", b"").decode("latin-1")
    if form:
        query = "&".join(q for q in (query, form.decode("latin-1")) if q)
    client = scope.get("client")
    return events.Seen(
        method=scope["method"], path=scope["path"][len(PREFIX):], query=query,
        status=answer.get("status", 500),
        client_id=access.client_id if access is not None else None,
        organization=access.organization if access is not None else None,
        address=client[0] if client else None, location=answer.get("location"),
        withheld=list(withheld), noted=noted)
