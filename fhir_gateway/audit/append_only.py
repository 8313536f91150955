"""The trail is append-only: the gateway writes AuditEvents, clients only read them. The
refusals for the REST routes (`api/audit.py`) and for AuditEvent entries of a transaction or
batch (`check_bundle`, called by the Bundle route), in one place.
"""

from __future__ import annotations

from fhir_gateway.audit.events import note_bundle
from fhir_gateway.outcome import FhirError

APPEND_ONLY = ("The audit trail is append-only: the gateway writes one AuditEvent per request "
               "itself; AuditEvents cannot be created, changed or deleted through the API")


def refused(where: str | None = None) -> FhirError:
    return FhirError(405, APPEND_ONLY, "not-supported", where)


def check_bundle(bundle: dict) -> None:
    """Refuse a transaction or batch with an AuditEvent entry (405 for a write; 400 for a
    read, which would not reach the trail: search /fhir/AuditEvent itself), before anything
    is written; and note its entries for the request's own AuditEvent."""
    for index, entry in enumerate(bundle.get("entry") or []):
        if not isinstance(entry, dict):
            continue
        request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else {}
        url = str(request.get("url", "")).split("?")[0]
        kind = next((s for s in url.split("/") if s), None) or resource.get("resourceType")
        if kind != "AuditEvent" and resource.get("resourceType") != "AuditEvent":
            continue
        where = f"Bundle.entry[{index}]"
        if str(request.get("method", "")).upper() in ("GET", "HEAD"):
            raise FhirError(400, f"{where}: AuditEvents are read from the audit trail: search "
                                 "/fhir/AuditEvent on its own, not inside a batch",
                            "not-supported", where)
        raise refused(where)
    note_bundle(bundle)
