"""What a /fhir request was, as a FHIR R4 AuditEvent (DICOM/IHE "RESTful operation" shape,
as the IHE Basic Audit Log Patterns profile it): who asked (the client, its organization,
its address), what it did (the REST interaction and the resource or the query), when, and
how it ended (the HTTP status as an R4 outcome code).

Pure functions of what the middleware saw, so the event is built without touching a store
and the middleware stays cheap; a route adds what only it knows (the entries of a Bundle)
through `note_bundle`, read back by the middleware after the answer.
"""

from __future__ import annotations

import base64
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fhir_gateway.identifiers import CANONICAL_BASE, CLIENT_ID
from fhir_gateway.search.dates import now_instant

EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
              "code": "rest", "display": "RESTful Operation"}
INTERACTION = "http://hl7.org/fhir/restful-interaction"
#: the operation's name (`$hh-status`) next to the `operation` interaction: FHIR has no code
#: system for operation names, so the gateway names its own
OPERATION = f"{CANONICAL_BASE}/CodeSystem/fhir-operation"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
QUERY_ROLE = {"system": OBJECT_ROLE, "code": "24", "display": "Query"}
PART2 = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "42CFRPart2"}
SOURCE = {"observer": {"display": "Health Home FHIR Gateway"},
          "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4", "display": "Application Server"}]}
#: FHIR R4 AuditEvent.action for each interaction: searches and operations are "execute"
ACTION = {"read": "R", "vread": "R", "history-instance": "R", "history-type": "R",
          "history-system": "R", "search-type": "E", "search-system": "E", "create": "C",
          "update": "U", "patch": "U", "delete": "D", "transaction": "E", "batch": "E",
          "operation": "E"}
#: entities a request's event lists at most (a Bundle's entries, withheld references)
MAX_ENTITIES = 1000

#: what a route noted for the request's event (`note_bundle`); one dict per request, made
#: by the middleware (`begin`) in the request's task, so a route in a worker thread shares it
_noted: ContextVar[dict | None] = ContextVar("audit_noted", default=None)


def begin() -> dict:
    """A fresh note for this request (the middleware calls it first)."""
    noted: dict = {}
    _noted.set(noted)
    return noted


def note_bundle(bundle: dict) -> None:
    """The kind of a transaction or batch and each entry's method and URL, for its event."""
    noted = _noted.get()
    if noted is None:
        return
    noted["bundle"] = bundle.get("type")
    entries = []
    for entry in (bundle.get("entry") or [])[:MAX_ENTITIES]:
        if not isinstance(entry, dict):
            continue
        request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else {}
        entries.append((str(request.get("method", "")).upper(), str(request.get("url", "")),
                        resource.get("resourceType")))
    noted["entries"] = entries


@dataclass
class Seen:
    """What the middleware saw of one request and its answer."""

    method: str
    path: str  # below /fhir, without the query
    query: str  # as sent (percent-encoded); a `_search` POST's form body appended
    status: int
    client_id: str | None = None  # None: no valid token (a 401)
    organization: str | None = None
    address: str | None = None
    location: str | None = None  # the answer's Location header (creates, updates)
    withheld: list[tuple[str, str]] = field(default_factory=list)
    noted: dict = field(default_factory=dict)


def interaction(method: str, segments: list[str], noted: dict) -> tuple[str | None, str | None,
                                                                          str | None]:
    """(restful-interaction code, operation name, `Type/id` of the instance) of a request,
    from its method and its path below /fhir (split at '/'); code None for a shape that is
    no FHIR interaction (it is audited all the same)."""
    method = "GET" if method == "HEAD" else method
    at = next((i for i, s in enumerate(segments) if s.startswith("$")), None)
    if at is not None:
        prefix = segments[:at]
        return "operation", segments[at], "/".join(prefix) if len(prefix) == 2 else None
    if not segments:
        if method == "POST":
            return (noted.get("bundle") if noted.get("bundle") in ("transaction", "batch")
                    else "transaction"), None, None
        return ("search-system" if method == "GET" else None), None, None
    if segments == ["_history"]:
        return ("history-system" if method == "GET" else None), None, None
    head, rest = segments[0], segments[1:]
    instance = f"{head}/{rest[0]}" if rest and not rest[0].startswith("_") else None
    code = {("GET", 0): "search-type", ("POST", 0): "create", ("PUT", 0): "update",
            ("DELETE", 0): "delete", ("PATCH", 0): "patch", ("GET", 1): "read",
            ("PUT", 1): "update", ("DELETE", 1): "delete", ("PATCH", 1): "patch",
            ("GET", 2): "history-instance", ("GET", 3): "vread"}.get((method, len(rest)))
    if rest and rest[0] in ("_search", "_history"):
        code = {("POST", "_search"): "search-type", ("GET", "_history"): "history-type"
                }.get((method, rest[0])) if len(rest) == 1 else None
    elif len(rest) >= 2 and rest[1] != "_history":
        code = None
    return code, None, instance


def outcome(status: int) -> str:
    """R4 AuditEvent.outcome: 0 success, 4 minor failure (the client's request was refused
    or wrong: 4xx), 8 serious failure (the server failed: 5xx)."""
    return "0" if status < 400 else "4" if status < 500 else "8"


def _query_entity(resource_type: str | None, query: str) -> dict:
    entity: dict = {"role": QUERY_ROLE, "query": base64.b64encode(query.encode()).decode()}
    if resource_type:
        entity["type"] = {"system": RESOURCE_TYPES, "code": resource_type}
    return entity


def _what(reference: str, version: str | None = None) -> dict:
    entity: dict = {"what": {"reference": reference},
                    "type": {"system": RESOURCE_TYPES, "code": reference.split("/")[0]}}
    if version:
        entity["what"]["reference"] = f"{reference}/_history/{version}"
    return entity


def _located(location: str | None) -> tuple[str, str | None] | None:
    """(`Type/id`, version) of a Location header (`<base>/Patient/1/_history/2`)."""
    if not location:
        return None
    parts = [p for p in urlsplit(location).path.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        return f"{parts[-4]}/{parts[-3]}", parts[-1]
    return (f"{parts[-2]}/{parts[-1]}", None) if len(parts) >= 2 else None


def _bundle_entities(entries: list[tuple[str, str, str | None]]) -> list[dict]:
    """An entity per entry of a transaction or batch: its instance, or its type and query."""
    out = []
    for method, url, resource_type in entries:
        path, _, query = url.partition("?")
        segments = [s for s in path.split("/") if s]
        kind = segments[0] if segments else resource_type
        if len(segments) >= 2 and not segments[1].startswith(("_", "$")):
            entity = _what(f"{segments[0]}/{segments[1]}")
        elif query:
            entity = _query_entity(kind, query)
        else:
            entity = {"type": {"system": RESOURCE_TYPES, "code": kind}} if kind else {}
        entity["description"] = f"{method} {path}"[:200]
        out.append(entity)
    return out


def _withheld(withheld: list[tuple[str, str]]) -> list[dict]:
    out = []
    for reference, reason in withheld:
        entity = {**_what(reference), "description": f"withheld: {reason}",
                  "detail": [{"type": "withheld", "valueString": reason}]}
        if reason == "42CFRPart2":
            entity["securityLabel"] = [PART2]
        out.append(entity)
    return out


def audit_event(seen: Seen) -> dict:
    """The AuditEvent of one request (`id` assigned here, so the trail can be asked for it)."""
    segments = [s for s in seen.path.split("/") if s]
    code, operation, instance = interaction(seen.method, segments, seen.noted)
    event: dict = {"resourceType": "AuditEvent", "id": str(uuid.uuid4()), "type": EVENT_TYPE}
    if code:
        event["subtype"] = [{"system": INTERACTION, "code": code}]
        if operation:
            event["subtype"].append({"system": OPERATION, "code": operation})
    event["action"] = ACTION.get(code or "", "E")
    event["recorded"] = now_instant()[0]
    event["outcome"] = outcome(seen.status)
    event["outcomeDesc"] = f"HTTP {seen.status} on {seen.method} /fhir{seen.path}"[:300] \
        if instance is None else f"HTTP {seen.status} on {seen.method} /fhir/{instance}"
    client: dict = {"requestor": True}
    if seen.client_id is not None:
        client["who"] = {"identifier": {"system": CLIENT_ID, "value": seen.client_id}}
        client["altId"] = seen.client_id
    else:
        client["who"] = {"display": "unidentified (no valid access token)"}
    if seen.address:
        client["network"] = {"address": seen.address, "type": "2"}
    event["agent"] = [client]
    if seen.organization:
        event["agent"].append({"who": {"reference": seen.organization}, "requestor": False,
                               "type": {"text": "organization of the requesting client"}})
    event["source"] = SOURCE
    entities = []
    located = _located(seen.location) if code in ("create", "update") else None
    if located:
        entities.append(_what(*located))
    elif instance:
        entities.append(_what(instance, segments[3] if code == "vread" else None))
    if seen.query:
        entities.append(_query_entity(segments[0] if segments and segments[0][:1].isupper()
                                      else None, seen.query))
    entities += _bundle_entities(seen.noted.get("entries", []))
    entities += _withheld(seen.withheld)
    if entities:
        event["entity"] = entities[:MAX_ENTITIES * 2]
    return event
