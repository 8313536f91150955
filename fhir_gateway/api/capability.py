"""The CapabilityStatement, derived from what the code actually supports.

Search parameters come from the same registry the store indexes with, so the statement
cannot drift from the behaviour.
"""

from __future__ import annotations

from functools import cache

from fhir_gateway import __version__
from fhir_gateway.identifiers import CANONICAL_BASE
from fhir_gateway.search.registry import params_for, resource_types

INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type",
                "create", "search-type"]
RESULT_PARAMS = [("_count", "number"), ("_offset", "number"), ("_sort", "string"),
                 ("_include", "string"), ("_revinclude", "string"), ("_summary", "token"),
                 ("_elements", "string")]

#: FHIR Bulk Data Access 2.0 (api/export.py): system-, Patient- and Group-level $export
BULK = "http://hl7.org/fhir/uv/bulkdata"
TYPE_EXPORTS = {"Patient": [{"name": "export", "definition":
                             f"{BULK}/OperationDefinition/patient-export"}],
                "Group": [{"name": "export", "definition": f"{BULK}/OperationDefinition/group-export"}]}


SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@cache
def capability_statement(base: str, validator=None, token_url: str | None = None) -> dict:
    """`validator` (the validation service, if any) adds each type's supportedProfile;
    `token_url` (authorization on) adds `rest.security` with SMART's oauth-uris."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "Health Home FHIR Gateway",
        "kind": "instance",
        "software": {"name": "fhir-gateway", "version": __version__},
        "implementation": {"description": "Health Home FHIR Gateway (embedded store)",
                           "url": base},
        "instantiates": [f"{BULK}/CapabilityStatement/bulk-data"],
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+xml", "xml", "application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            **({"security": _security(token_url)} if token_url else {}),
            "resource": [_resource(t, validator) for t in sorted(resource_types())],
            "interaction": [{"code": "transaction"}, {"code": "batch"},
                            {"code": "history-system"}],
            "operation": [{"name": "process-message", "definition":
                           "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"},
                          {"name": "generate-claims", "definition":
                           f"{CANONICAL_BASE}/OperationDefinition/generate-claims"},
                          {"name": "export", "definition": f"{BULK}/OperationDefinition/export"},
                          {"name": "potential-enrollees", "definition":
                           f"{CANONICAL_BASE}/OperationDefinition/potential-enrollees"}],
        }],
    }


def _security(token_url: str) -> dict:
    return {
        "extension": [{"url": SMART_OAUTH_URIS,
                       "extension": [{"url": "token", "valueUri": token_url}]}],
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR"}], "text": "SMART Backend Services (OAuth2 client "
                                               "credentials, private_key_jwt)"}],
        "description": "Every request but /metadata and /.well-known/smart-configuration "
                       "needs a bearer access token from the token endpoint; SMART v1 and v2 "
                       "system scopes."}


#: types served read-only (api/audit.py: the audit trail is append-only, written by the
#: gateway itself): their interactions, and no write capability
READ_ONLY = {"AuditEvent": ["read", "vread", "history-instance", "search-type"]}
_WRITES = ("versioning", "updateCreate", "conditionalCreate", "conditionalUpdate",
           "conditionalDelete")


def _resource(resource_type: str, validator) -> dict:
    entry = _served(resource_type, validator)
    if resource_type in READ_ONLY:
        entry["interaction"] = [{"code": code} for code in READ_ONLY[resource_type]]
        for key in _WRITES:
            entry.pop(key)
    return entry


def _served(resource_type: str, validator) -> dict:
    params = params_for(resource_type)
    references = sorted(p.code for p in params.values() if p.type == "reference")
    profiles = validator.profiles_for_type(resource_type) if validator else []
    return {
        **({"supportedProfile": profiles} if profiles else {}),
        "type": resource_type,
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-match",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchInclude": ["*", *(f"{resource_type}:{code}" for code in references)],
        "searchRevInclude": sorted({f"{p.resource_type}:{p.code}"
                                    for t in sorted(resource_types())
                                    for p in params_for(t).values()
                                    if p.type == "reference" and resource_type in p.targets}),
        "searchParam": [{"name": p.code, "definition": p.url, "type": p.type}
                        for p in sorted(params.values(), key=lambda p: p.code)]
                       + [{"name": n, "type": t} for n, t in RESULT_PARAMS],
        "operation": [{"name": "validate",
                       "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
                      *TYPE_EXPORTS.get(resource_type, [])],
    }
