"""Naming systems the gateway stamps on identifiers and codes.

One place for every system URI so that adapters, demo data, profiles and tests agree on
how a MO HealthNet DCN or a KanCare ID is spelled on the wire. The canonical base itself is
defined once, by the IG package (`profiles/package/package.json`).
"""

from pathlib import Path

import orjson

from fhir_gateway.config import Settings

CANONICAL_BASE: str = orjson.loads((Path(Settings().profiles) / "package.json").read_bytes())[
    "canonical"]

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
