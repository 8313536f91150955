"""Naming systems the gateway stamps on identifiers and codes.

One place for every system URI so that adapters, demo data, profiles and tests agree on
how a MO HealthNet DCN or a KanCare ID is spelled on the wire. The canonical base is the
IG package's (`canonical` in `profiles/package/package.json`; tests/test_package.py holds the
two equal): a constant, so that importing this module reads no settings and no file.
"""

CANONICAL_BASE = "http://fhir.health-home-gateway.org"

MO_HEALTHNET_DCN = f"{CANONICAL_BASE}/sid/mo-healthnet-dcn"
KANCARE_ID = f"{CANONICAL_BASE}/sid/kancare-id"
DMH_CONSUMER_ID = f"{CANONICAL_BASE}/sid/mo-dmh-consumer-id"
NPI = "http://hl7.org/fhir/sid/us-npi"

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
SOURCE_OF_PAYMENT = "urn:oid:2.16.840.1.113883.3.221.5"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
HH_PROGRAM = f"{CANONICAL_BASE}/CodeSystem/hh-program"
#: a registered Backend Services client's id (AuditEvent.agent.who.identifier)
CLIENT_ID = f"{CANONICAL_BASE}/sid/client-id"
