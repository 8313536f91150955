"""The largest request body the gateway takes (`max_body`): one request must not hold the
memory and the CPU that every other caller needs. Pure ASGI, outermost but for the access
log, so an XML body is measured before it is buffered for conversion.

A declared `Content-Length` beyond the limit is refused before anything is read; a body
sent without one (chunked) is counted as it arrives and refused when it passes the limit.
The refusal is raised from `receive`, where the route or the XML conversion reads the
body, so it becomes the usual 413 OperationOutcome in the negotiated format.
"""

from __future__ import annotations

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
