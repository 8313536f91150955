"""Subscription notifications sent to partners are PHI leaving the gateway outside any
request: each attempt leaves an AuditEvent too (type `rest`, subtype `transmit`), naming the
Subscription's endpoint as the recipient and the resource version sent as the entity, with
the partner's answer as the outcome.

`audit_deliveries(engine, trail)` wraps the delivery engine's sender where `serve` makes the
engine (`cli._engine`), so the delivery code itself is unchanged.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from fhir_gateway.audit.events import ACTION, EVENT_TYPE, RESOURCE_TYPES, SOURCE
from fhir_gateway.audit.trail import Trail
from fhir_gateway.identifiers import CANONICAL_BASE
from fhir_gateway.search.dates import now_instant

TRANSMIT = {"system": f"{CANONICAL_BASE}/CodeSystem/audit-event-subtype", "code": "transmit",
            "display": "Subscription notification sent to a partner"}


class AuditedSender:
    """The engine's sender, recording each attempt in the trail (the partner's refusal
    or silence included), then answering or raising as the sender did."""

    def __init__(self, sender, trail: Trail):
        self.sender, self.trail = sender, trail

    def send(self, subscription, row, resource):
        try:
            status = self.sender.send(subscription, row, resource)
        except Exception as err:
            self.trail.record(delivery_event(subscription, row, "4", str(err)))
            raise
        self.trail.record(delivery_event(subscription, row, "0", f"HTTP {status}"))
        return status

    def close(self) -> None:
        """The engine stops: the sender's connections, and the trail written."""
        self.sender.close()
        self.trail.close()

    def __getattr__(self, name):
        return getattr(self.sender, name)


def audit_deliveries(engine, trail: Trail):
    """Have `engine` (exchange/engine.py) record each delivery in `trail`."""
    engine.sender = AuditedSender(engine.sender, trail)
    return engine


def delivery_event(subscription, row, outcome: str, said: str) -> dict:
    endpoint = urlsplit(subscription.endpoint)
    recipient = {"who": {"display": f"{endpoint.scheme}://{endpoint.netloc}{endpoint.path}"},
                 "requestor": False, "type": {"text": "Subscription endpoint (recipient)"}}
    if endpoint.hostname:
        recipient["network"] = {"address": endpoint.hostname,
                                "type": "2" if endpoint.hostname[:1].isdigit() else "1"}
    return {
        "resourceType": "AuditEvent", "id": str(uuid.uuid4()), "type": EVENT_TYPE,
        "subtype": [TRANSMIT], "action": ACTION["operation"], "recorded": now_instant()[0],
        "outcome": outcome,
        "outcomeDesc": f"notification {row.id} of Subscription/{subscription.id}: {said}"[:300],
        "agent": [{"who": {"display": "Health Home FHIR Gateway (Subscription delivery)"},
                   "requestor": True}, recipient],
        "source": SOURCE,
        "entity": [{"what": {"reference": f"{row.type}/{row.rid}/_history/{row.version}"},
                    "type": {"system": RESOURCE_TYPES, "code": row.type}},
                   {"what": {"reference": f"Subscription/{subscription.id}"},
                    "type": {"system": RESOURCE_TYPES, "code": "Subscription"},
                    "description": "the Subscription the notification is for"}],
    }
