"""Limits on what one request may cost.

The largest request body the gateway takes (`max_body`): one request must not hold the
memory and the CPU that every other caller needs. Pure ASGI, outermost but for the access
log, so an XML body is measured before it is buffered for conversion.

A declared `Content-Length` beyond the limit is refused before anything is read; a body
sent without one (chunked) is counted as it arrives and refused when it passes the limit.
The refusal is raised from `receive`, where the route or the XML conversion reads the
body, so it becomes the usual 413 OperationOutcome in the negotiated format.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fhir_gateway.outcome import FhirError


class BodyLimit:
    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        limit, received = self.max_body, 0

        def too_large() -> FhirError:
            return FhirError(413, f"The request body is larger than {limit} bytes, the most "
                                  "this server takes (setting FHIR_GATEWAY_MAX_BODY)",
                             "too-costly")

        async def counted():
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise too_large()
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large()
            return message

        await self.app(scope, counted, send)


class FhirHttp(HttpToolsProtocol):
    """uvicorn's HTTP protocol (httptools), whose own refusals — a request its parser cannot
    read, a request line beyond the parser's limit (about 80 KB) — are answered as an
    OperationOutcome like every other error, not as plain text. `fhir-gateway serve` runs it."""

    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps(FhirError(
            400, f"{msg.rstrip('.')}: the request could not be read (a URL too long is one "
                 "cause; send a long search as POST [type]/_search)", "structure").outcome)
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/fhir+json\r\n",
                 b"content-length: " + str(len(body)).encode() + b"\r\n",
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
