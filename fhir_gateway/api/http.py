"""FHIR's HTTP conventions in one place: media type, ETag/Last-Modified, Prefer, bodies."""

from __future__ import annotations

import json
import re
from datetime import datetime

import orjson
from fastapi import Request
from fastapi.responses import Response

from fhir_gateway.formats import fhirjson
from fhir_gateway.outcome import FhirError, Issue, operation_outcome
from fhir_gateway.search.dates import http_date

FHIR_JSON = "application/fhir+json"
_ACCEPTED = ("application/fhir+json", "application/json", "application/json+fhir", "*/*",
             "application/*", "")


def fhir_response(body: dict | bytes | None, status: int = 200, headers: dict | None = None,
                  pretty: bool = False) -> Response:
    """A FHIR JSON response; `bytes` are a body already serialised (passed through)."""
    content = body if isinstance(body, bytes) else b"" if body is None else fhirjson.dumps(
        body, option=orjson.OPT_INDENT_2 if pretty else 0)
    return Response(content, status_code=status, headers=headers, media_type=FHIR_JSON)


def outcome_response(err: FhirError) -> Response:
    return fhir_response(err.outcome, err.status)


def version_headers(resource: dict, base: str | None = None) -> dict:
    meta = resource.get("meta", {})
    headers = {"ETag": f'W/"{meta.get("versionId")}"'}
    if meta.get("lastUpdated"):
        when = datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
        headers["Last-Modified"] = http_date(when.timestamp())
    if base is not None:
        url = f"{base}/{resource['resourceType']}/{resource['id']}/_history/{meta.get('versionId')}"
        headers["Location"] = url
        headers["Content-Location"] = url
    return headers


def prefer(request: Request) -> dict[str, str]:
    """`Prefer: return=minimal, handling=strict` -> {'return': 'minimal', 'handling': 'strict'}"""
    out = {}
    for part in request.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key:
            out[key.strip().lower()] = value.strip().strip('"').lower()
    return out


def written_response(request: Request, resource: dict, status: int, base: str) -> Response:
    """Answer a create/update as the client's `Prefer: return=` asks."""
    headers = version_headers(resource, base)
    wanted = prefer(request).get("return", "representation")
    if wanted == "minimal":
        return fhir_response(None, status, headers)
    if wanted == "operationoutcome":
        verb = "created" if status == 201 else "updated"
        outcome = operation_outcome([Issue(
            f"Successfully {verb} resource {resource['resourceType']}/{resource['id']}/_history/"
            f"{resource['meta']['versionId']}", "informational", "information")])
        return fhir_response(outcome, status, headers)
    return fhir_response(resource, status, headers, is_pretty(request))


def is_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty") == "true"


async def read_body(request: Request) -> object:
    """The JSON body (an XML one was made JSON already by `api.formats.FhirFormats`).

    Refused: a body declared as something else than JSON (415; no Content-Type is taken as
    JSON), and an object with a key twice, which JSON parsers settle by keeping the last
    (`"resourceType":"Observation","resourceType":"Patient"` would be stored as a Patient)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and "json" not in media:
        raise FhirError(415, f"A body of type {media} cannot be read: send "
                             "application/fhir+json or application/fhir+xml", "not-supported")
    body = await request.body()
    if not body.strip():
        raise FhirError(400, "The request has no body; a FHIR resource was expected", "required")
    try:
        parsed = fhirjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, f"Malformed JSON: {exc}", "structure") from None
    if len(_KEY_END.findall(body)) != _keys(parsed):
        json.loads(body, object_pairs_hook=_no_repeated_key)
    return parsed


#: where a key ends: every key's closing quote is followed by a colon, and other strings'
#: quotes rarely are, so when this counts as many keys as the parsed body holds, no key was
#: repeated (the exact check, `_no_repeated_key`, costs 10x the parse: only when they differ)
_KEY_END = re.compile(rb'"\s*:')


def _keys(node: object) -> int:
    """The keys of every object in `node` (a loop, not recursion: any depth parses)."""
    count, todo = 0, [node]
    while todo:
        node = todo.pop()
        if type(node) is dict:
            count += len(node)
            node = node.values()
        elif type(node) is not list:
            continue
        todo.extend(v for v in node if type(v) is dict or type(v) is list)
    return count


def _no_repeated_key(pairs: list[tuple[str, object]]) -> None:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise FhirError(400, f"The key '{key[:60]}' appears twice in one JSON object",
                            "structure")
        seen.add(key)


def check_accept(request: Request) -> None:
    """406 for an Accept naming neither JSON nor XML (`api.formats.FhirFormats` negotiates
    between the two, and answers an unknown `_format` itself)."""
    accept = request.headers.get("accept", "")
    wanted = [a.split(";")[0].strip().lower() for a in accept.split(",")]
    if accept and not any(w in _ACCEPTED or "json" in w or "xml" in w for w in wanted):
        raise FhirError(406, f"Cannot produce {accept}; this server returns "
                             "application/fhir+json or application/fhir+xml", "not-supported")
