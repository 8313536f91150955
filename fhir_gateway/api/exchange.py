"""`POST /fhir/$process-message`: FHIR messages from the HIEs (Da Vinci Unsolicited
Notifications). Thin: the work is `exchange/messages.py`'s.

Registered before the generic REST routes, so `$process-message` is not read as a type.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_gateway.api.http import fhir_response, is_pretty, read_body
from fhir_gateway.api.rest import base_url
from fhir_gateway.auth.access import Forbidden, access_of
from fhir_gateway.auth.view import store_for
from fhir_gateway.exchange import messages
from fhir_gateway.outcome import FhirError

router = APIRouter(prefix="/fhir")


@router.post("/$process-message")
async def process_message(request: Request) -> Response:
    if request.query_params.get("async") == "true":
        raise FhirError(422, "Only synchronous processing is supported (async=false)",
                        "not-supported", "async")
    if access_of(request).organization is not None:
        raise Forbidden("Notifications are an HIE's to send (a client registered without "
                        "--organization): a Health Home's client would match the message's "
                        "patient among its own members only")
    body = await read_body(request)
    answer = await run_in_threadpool(messages.process, store_for(request), body,
                                     base_url(request), request.app.state.message_rules,
                                     request.app.state.validator)
    return fhir_response(answer, pretty=is_pretty(request))
