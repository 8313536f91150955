"""FHIR R4 Subscriptions (rest-hook): what the gateway accepts, and whether a change matches.

Why checked on write (the store guard calls `accept`): a Subscription the gateway cannot
serve should be refused when it is made, with the element at fault, not fail quietly at
its first notification. What is served: `criteria` a search URL of a known type with valid
parameters (no result parameters such as `_sort` or `_include`: they shape a result, not a
match), `channel.type` rest-hook, an absolute http(s) `channel.endpoint`, `channel.payload`
`application/fhir+json` (the full resource, PUT to `[endpoint]/[type]/[id]` as R4 and HAPI
do it) or absent (id-only: an empty POST to the endpoint), `channel.header` lines
`Name: value`. A Subscription written as `requested` is stored `active` (HAPI activates
them the same way); `active`, `error` and `off` are stored as given.

A change matches when the criteria find that resource in the store (criteria plus `_id`):
the store's own search decides, so a Subscription matches exactly what the same search
URL would return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlsplit

from fhir_gateway.auth.audience import owner
from fhir_gateway.outcome import FhirError, invalid
from fhir_gateway.search.query import RESULT_PARAMS, parse_query
from fhir_gateway.search.registry import resource_types

FHIR_JSON = "application/fhir+json"
#: payload types taken as "the full resource as FHIR JSON"
JSON_PAYLOADS = {FHIR_JSON, "application/json", "application/json+fhir"}
#: statuses whose Subscriptions get notifications queued (an `error` one keeps its queue
#: until `fhir-gateway exchange retry`, so nothing is lost while a partner is down)
QUEUEING = ("active", "error")

#: (resource type, id, search pairs) -> whether the search finds that resource
Search = Callable[[str, str, tuple[tuple[str, str], ...]], bool]


@dataclass(frozen=True)
class Subscription:
    """What delivery needs of a stored, accepted Subscription."""

    id: str
    status: str
    resource_type: str
    params: tuple[tuple[str, str], ...]
    endpoint: str
    full: bool  # payload: the full resource (else id-only)
    headers: tuple[tuple[str, str], ...]
    end: float | None = None  # epoch seconds of `end`, if any
    #: the Health Home whose client created it: it is sent only what that client may see
    organization: str | None = None

    @classmethod
    def of(cls, resource: dict) -> Subscription:
        """From a stored Subscription (accepted on write, so well-formed)."""
        rtype, params = parse_criteria(resource.get("criteria", ""))
        channel = resource.get("channel") or {}
        return cls(resource["id"], resource.get("status", ""), rtype, tuple(params),
                   channel.get("endpoint", ""), bool(channel.get("payload")),
                   tuple(parse_header(h, i) for i, h in enumerate(channel.get("header", []))),
                   _epoch(resource.get("end")), owner(resource))

    def queues(self, now: float) -> bool:
        return self.status in QUEUEING and (self.end is None or now < self.end)

    def matches(self, search: Search, resource_type: str, resource_id: str) -> bool:
        return resource_type == self.resource_type and search(
            resource_type, resource_id, self.params)


def accept(resource: dict) -> dict:
    """Check a Subscription the gateway is asked to store (in place: `requested` becomes
    `active`); a 400 OperationOutcome naming the element for what it cannot serve."""
    parse_criteria(resource.get("criteria"))
    channel = resource.get("channel")
    if not isinstance(channel, dict):
        raise invalid("A Subscription needs a channel", "Subscription.channel")
    if channel.get("type") != "rest-hook":
        raise FhirError(400, f"Channel type '{channel.get('type')}' is not served: this "
                             "gateway delivers rest-hook only", "not-supported",
                        "Subscription.channel.type")
    endpoint = channel.get("endpoint")
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("A rest-hook channel needs an absolute http(s) endpoint",
                      "Subscription.channel.endpoint")
    payload = channel.get("payload")
    if payload is not None and payload.split(";")[0].strip() not in JSON_PAYLOADS:
        raise FhirError(400, f"Payload '{payload}' is not served: use {FHIR_JSON} (the full "
                             "resource) or no payload (id-only)", "not-supported",
                        "Subscription.channel.payload")
    for index, header in enumerate(channel.get("header", [])):
        parse_header(header, index)
    if resource.get("end") is not None and _epoch(resource["end"]) is None:
        raise invalid("Subscription.end is not a valid instant", "Subscription.end")
    if resource.get("status") == "requested":
        resource["status"] = "active"
    return resource


def served(store: object, resource: dict, unit: dict[str, dict]) -> None:
    """`accept` as a store check of the validation service (healthhome/checks.py): run on
    every write of a Subscription, whatever the path (REST, Bundles, load)."""
    accept(resource)


def parse_criteria(criteria: object) -> tuple[str, list[tuple[str, str]]]:
    """`Type?name=value&...` as the type and its search pairs, checked as a strict search."""
    where = "Subscription.criteria"
    if not isinstance(criteria, str) or not criteria.strip():
        raise invalid("A Subscription needs criteria: a search URL such as "
                      "Task?owner=Organization/x", where)
    rtype, _, query = criteria.strip().partition("?")
    rtype = rtype.rsplit("/", 1)[-1]
    if rtype not in resource_types():
        raise invalid(f"Criteria '{criteria}': '{rtype}' is not a resource type", where)
    pairs = parse_qsl(query, keep_blank_values=True)
    for name, _ in pairs:
        if name in RESULT_PARAMS or name.split(":")[0] in ("_include", "_revinclude"):
            raise invalid(f"Criteria '{criteria}': '{name}' shapes a search result and "
                          "cannot select changes", where)
    try:
        parse_query(rtype, pairs, strict=True)
    except FhirError as err:
        raise invalid(f"Criteria '{criteria}': {err}", where) from None
    return rtype, pairs


def parse_header(header: object, index: int) -> tuple[str, str]:
    name, sep, value = header.partition(":") if isinstance(header, str) else ("", "", "")
    name = name.strip()
    if not sep or not name or not all(33 <= ord(c) < 127 and c not in "()<>@,;\\\"/[]?={}"
                                      for c in name) or "\n" in value or "\r" in value:
        raise invalid("A channel header is 'Name: value'", f"Subscription.channel.header[{index}]")
    return name, value.strip()


def _epoch(instant: object) -> float | None:
    if not isinstance(instant, str):
        return None
    try:
        parsed = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
