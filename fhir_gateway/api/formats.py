"""FHIR XML on every endpoint, as one pure-ASGI middleware: the routes speak JSON only.

On the way in, an XML body (`application/fhir+xml`, `application/xml`, `text/xml`) becomes
JSON before any route reads it. On the way out, when the client asked for XML, every FHIR
JSON answer (resources, Bundles, OperationOutcomes, HAPI's bytes passed through) becomes
XML. Negotiation follows HAPI (`RestfulServerUtils.determineResponseEncodingNoDefault`):
`_format` first, then `Accept` by q-value, else JSON; `_format` is taken out of the query
string here, so search never sees it as a parameter.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import Request

from fhir_gateway.formats.xml import to_xml, xml_to_json
from fhir_gateway.outcome import FhirError

FHIR_XML = "application/fhir+xml;charset=utf-8"
FHIR_JSON = "application/fhir+json"
XML_TYPES = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}
JSON_TYPES = {"json", "text/json", "application/json", "application/fhir+json",
              "application/json+fhir"}
#: where the negotiated format is kept in the ASGI scope (`request.state.fhir_format`)
STATE_KEY = "fhir_format"


def _media(value: str) -> str:
    return value.split(";")[0].strip().lower()


def negotiate(format_param: str | None, accept: str, content_type: str = "") -> str:
    """'xml' or 'json'. An unknown `_format` is a 406. When neither `_format` nor `Accept`
    names a FHIR format, the answer is in the request body's format (as HAPI does: an XML
    POST without Accept is answered in XML), else JSON."""
    if format_param:
        media = _media(format_param.replace(" ", "+"))  # '+' arrives as a space when unescaped
        if media in XML_TYPES:
            return "xml"
        if media in JSON_TYPES:
            return "json"
        raise FhirError(406, f"_format={format_param} is not supported; use json or xml",
                        "not-supported", "_format")
    best, best_q = "xml" if _media(content_type) in XML_TYPES else "json", 0.0
    for part in accept.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        kind = "xml" if media in XML_TYPES else "json" if media in JSON_TYPES else None
        q = next((_quality(p) for p in params if p.strip().startswith("q=")), 1.0)
        if kind and q > best_q:
            best, best_q = kind, q
    return best


def _quality(param: str) -> float:
    try:
        return float(param.split("=", 1)[1])
    except ValueError:
        return 0.0


def wants_xml(request: Request) -> bool:
    """For handlers outside the middleware (the 500 handler): whether XML was negotiated
    (nothing recorded: JSON)."""
    return request.scope.get("state", {}).get(STATE_KEY) == "xml"


def outcome_body(err: FhirError, xml: bool) -> tuple[bytes, str]:
    """(body, media type) of an error's OperationOutcome in the negotiated format."""
    return (to_xml(err.outcome), FHIR_XML) if xml else (orjson.dumps(err.outcome), FHIR_JSON)


class FhirFormats:
    """Pure ASGI (no BaseHTTPMiddleware): a request that mentions XML nowhere (query,
    Accept, Content-Type) costs about 3 µs here, against a request's ~1 ms (measured in
    front of a bare ASGI app; negotiating every request cost twice that)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        query = scope.get("query_string", b"")
        if b"_format" not in query and b"xml" not in headers.get(b"accept", b"") \
                and b"xml" not in headers.get(b"content-type", b""):
            return await self.app(scope, receive, send)  # JSON, as it always was
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True) \
            if b"_format" in query else []
        format_param = next((v for k, v in reversed(pairs) if k == "_format"), None)
        try:
            fmt = negotiate(format_param, headers.get(b"accept", b"").decode("latin-1"),
                            content_type)
        except FhirError as err:
            return await _send_outcome(send, err, "json")
        scope.setdefault("state", {})[STATE_KEY] = fmt
        if format_param is not None:
            scope["query_string"] = urlencode([p for p in pairs if p[0] != "_format"]).encode()
        if _media(content_type) in XML_TYPES:
            try:
                receive = await _json_body(scope, receive)
            except FhirError as err:
                return await _send_outcome(send, err, fmt)
        if fmt == "xml":
            send = _xml_sender(send, b"_pretty=true" in query, format_param)
        await self.app(scope, receive, send)


async def _json_body(scope, receive):
    """Read the whole XML body, convert it, and hand the app a JSON body instead."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise FhirError(400, "The client went away while sending the body", "incomplete")
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    converted = xml_to_json(body) if body.strip() else b""
    scope["headers"] = _replace(_replace(scope["headers"], b"content-type", FHIR_JSON.encode()),
                                b"content-length", str(len(converted)).encode())
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": converted, "more_body": False}
    return replay


def _xml_sender(send, pretty: bool, format_param: str | None):
    """Buffer FHIR JSON answers and send them as XML; anything else passes unchanged.

    Decimals keep the text they had in the JSON (HAPI's `31.50` stays `31.50`)."""
    state: dict = {}

    async def convert(message):
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if _media(content_type.decode("latin-1")) != FHIR_JSON:
                return await send(message)
            state["start"], state["chunks"] = message, []
            return None
        if "start" not in state:
            return await send(message)
        state["chunks"].append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        body = b"".join(state["chunks"])
        xml = to_xml(_with_format(json.loads(body, parse_float=str), format_param),
                     pretty) if body else b""
        start = state.pop("start")
        headers = _replace(_replace(start.get("headers", []), b"content-type", FHIR_XML.encode()),
                           b"content-length", str(len(xml)).encode())
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": xml, "more_body": False})
    return convert


def _with_format(resource: dict, format_param: str | None) -> dict:
    """A Bundle's links keep the client's `_format`, so paging stays in XML (as HAPI's)."""
    if format_param and resource.get("resourceType") == "Bundle":
        for link in resource.get("link", []):
            sep = "&" if "?" in link.get("url", "") else "?"
            link["url"] += f"{sep}{urlencode({'_format': format_param})}"
    return resource


def _replace(headers, name: bytes, value: bytes) -> list:
    return [(k, v) for k, v in headers if k.lower() != name] + [(name, value)]


async def _send_outcome(send, err: FhirError, fmt: str) -> None:
    body, media = outcome_body(err, fmt == "xml")
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", media.encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
