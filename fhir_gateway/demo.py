"""The demo's Kansas members as FHIR: the synthetic population's people (`adapters/synth.py`)
for whom no source system writes an extract.

Why: the demo shows both states. Missouri members reach the store as a real feed would,
CIMOR and CyberAccess extracts imported through the adapters (`fhir-gateway serve --demo`
does both); KanCare has no extract here, so its members are written as FHIR transaction
Bundles: Patient, Coverage (CHIP children under code 23), Conditions, a BMI or smoking
Observation where a condition calls for one, and the Health Home enrollment.

- Deterministic: the same seed gives the same Bundles (the people come from synth.py; the
  urn:uuids from their own `random.Random(seed)`).
- Obviously fake, as synth.py's people are; every resource carries the HL7 `HTEST` (test
  health data) tag.
- Loadable more than once: Patients and Organizations are conditional creates on their
  identifier, and each Bundle carries the Organizations its members reference, so every
  urn:uuid reference resolves inside its own Bundle, whatever the order of loading.
"""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

from fhir_gateway.adapters.synth import KS_MCOS, Knobs, Person, people
from fhir_gateway.healthhome.categories import categories
from fhir_gateway.identifiers import (
    CANONICAL_BASE,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    HH_PROGRAM,
    ICD10CM,
    KANCARE_ID,
    LOINC,
    NPI,
    SNOMED,
    SOURCE_OF_PAYMENT,
)

UCUM = "http://unitsofmeasure.org"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ORGANIZATION_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
SUBSCRIBER_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
TEST_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST",
            "display": "test health data"}

#: Kansas people: no Division of DD episodes (a Missouri program), no source disagreements
KANSAS = Knobs(state="KS", dd_rate=0.0, disagree_rate=0.0)
MAX_ENTRIES = 100  # per transaction Bundle
PROGRAMS = {"SMI": ("ks-smi", "KanCare SMI Health Home"),
            "CC": ("ks-cc", "KanCare Chronic Conditions Health Home")}
PAYMENT = {False: ("2", "MEDICAID"), True: ("23", "Medicaid/SCHIP")}  # keyed by CHIP
GENDER = {"F": "female", "M": "male", "U": "unknown"}
OBESITY, TOBACCO = "E66.9", "F17.210"


def demo_population(members: int = 60, seed: int = 1945) -> list[dict]:
    """Transaction Bundles (at most MAX_ENTRIES entries each) for `members` Kansas people."""
    if members < 0:
        raise ValueError("members must be >= 0")
    urns = random.Random(seed)
    org_urls: dict[str, str] = {}  # NPI -> the Organization's fullUrl, in every Bundle
    bundles: list[dict] = []
    orgs: dict[str, dict] = {}  # NPI -> Organization entry, of the Bundle being filled
    entries: list[dict] = []
    for person in people(members, seed, KANSAS):
        new_entries, needed = _member(person, urns, org_urls)
        added = {npi: entry for npi, entry in needed.items() if npi not in orgs}
        if entries and len(orgs) + len(added) + len(entries) + len(new_entries) > MAX_ENTRIES:
            bundles.append(_bundle(orgs, entries))
            orgs, entries, added = {}, [], needed
        orgs.update(added)
        entries += new_entries
    if entries:
        bundles.append(_bundle(orgs, entries))
    return bundles


def _bundle(orgs: dict[str, dict], entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [*orgs.values(), *entries]}


def _member(p: Person, urns: random.Random, org_urls: dict[str, str]
            ) -> tuple[list[dict], dict[str, dict]]:
    """The member's entries, and the Organization entries (by NPI) they refer to."""
    needed: dict[str, dict] = {}

    def org(name_npi: tuple[str, str], kind: tuple[str, str]) -> dict:
        npi = name_npi[1]
        if npi not in org_urls:
            org_urls[npi] = _urn(urns)
        needed[npi] = _organization(name_npi, kind, org_urls[npi])
        return {"reference": org_urls[npi]}

    patient = _urn(urns)
    subject = {"reference": patient}
    entries = [_entry(patient, _patient(p), {"system": KANCARE_ID, "value": p.dcn}),
               _entry(_urn(urns), _coverage(p, subject, org(KS_MCOS[int(p.dcn) % 2],
                                                              ("pay", "Payer"))))]
    codes = dict([*(dx for ep in p.bh for dx in ep["dx"]), *p.chronic])
    onset = {code: ep["admitted"] for ep in reversed(p.bh) for code, _ in ep["dx"]}
    conditions = []
    for code, text in codes.items():
        when = onset.get(code) or max(p.birth + timedelta(days=365), p.eligible_from)
        conditions.append(_urn(urns))
        entries.append(_entry(conditions[-1], _condition(code, text, subject, when.isoformat())))
    seen = max(p.eligible_from, KANSAS.as_of - timedelta(days=90)).isoformat()
    if OBESITY in codes:
        bmi = {"value": 30 + int(p.dcn) % 12 + 0.5, "unit": "kg/m2", "system": UCUM,
               "code": "kg/m2"}
        entries.append(_entry(_urn(urns), _observation(
            "vital-signs", "39156-5", "Body mass index (BMI) [Ratio]", subject, seen,
            {"valueQuantity": bmi})))
    if TOBACCO in codes:
        daily = {"coding": [{"system": SNOMED, "code": "449868002",
                             "display": "Smokes tobacco daily"}]}
        entries.append(_entry(_urn(urns), _observation(
            "social-history", "72166-2", "Tobacco smoking status", subject, seen,
            {"valueCodeableConcept": daily})))
    if p.hh:
        home = org(p.hh.provider, ("prov", "Healthcare Provider"))
        entries.append(_entry(_urn(urns), _enrollment(p, subject, home, conditions)))
    return entries, needed


def _urn(rng: random.Random) -> str:
    return f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"


def _concept(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _entry(full_url: str, resource: dict, identifier: dict | None = None,
           profile: str | None = None) -> dict:
    """A POST entry, tagged as test data; conditional on `identifier`; claiming `profile`
    (so the gateway holds the demo data to the IG on load)."""
    request = {"method": "POST", "url": resource["resourceType"]}
    if identifier:
        request["ifNoneExist"] = f"identifier={identifier['system']}|{identifier['value']}"
    profile = resource.pop("_profile", profile)
    meta = {"tag": [dict(TEST_TAG)]}
    if profile:
        meta["profile"] = [f"{CANONICAL_BASE}/StructureDefinition/{profile}"]
    return {"fullUrl": full_url, "resource": {"resourceType": resource["resourceType"],
                                               "meta": meta, **resource}, "request": request}


def _organization(name_npi: tuple[str, str], kind: tuple[str, str], full_url: str) -> dict:
    identifier = {"system": NPI, "value": name_npi[1]}
    return _entry(full_url, {
        "resourceType": "Organization", "identifier": [identifier], "active": True,
        "type": [_concept(ORGANIZATION_TYPE, *kind)], "name": name_npi[0],
        "address": [{"state": "KS", "country": "US"}]}, identifier)


def _patient(p: Person) -> dict:
    city, county, postal_code, area = p.place
    return {
        "resourceType": "Patient", "_profile": "hh-patient",
        "identifier": [{"system": KANCARE_ID, "value": p.dcn}],
        "active": True,
        "name": [{"use": "official", "family": p.last,
                  "given": [p.first, *([p.middle] if p.middle else [])]}],
        "telecom": [{"system": "phone", "value": f"{area}-555-01{p.dcn[-2:]}", "use": "home"}],
        "gender": GENDER[p.sex],
        "birthDate": p.birth.isoformat(),
        "address": [{"use": "home", "line": [p.line1, *([p.line2] if p.line2 else [])],
                     "city": city, "district": county, "state": "KS",
                     "postalCode": postal_code, "country": "US"}],
    }


def _coverage(p: Person, subject: dict, payor: dict) -> dict:
    return {
        "resourceType": "Coverage", "status": "active",
        "type": _concept(SOURCE_OF_PAYMENT, *PAYMENT[p.chip]),
        "subscriberId": p.dcn, "beneficiary": subject,
        "relationship": _concept(SUBSCRIBER_RELATIONSHIP, "self", "Self"),
        "period": {"start": p.eligible_from.isoformat()}, "payor": [payor],
    }


def _condition(code: str, text: str, subject: dict, onset: str) -> dict:
    """A Condition; it claims hh-qualifying-condition where the code counts toward a Health
    Home category (the profile requires one), as the mappings' Conditions do."""
    found = categories(code)
    return {
        "resourceType": "Condition", "_profile": "hh-qualifying-condition" if found else None,
        "clinicalStatus": _concept(CONDITION_CLINICAL, "active", "Active"),
        "verificationStatus": _concept(CONDITION_VERIFICATION, "confirmed", "Confirmed"),
        "category": [_concept(CONDITION_CATEGORY, "problem-list-item", "Problem List Item"),
                     *({"coding": [category]} for category in found)],
        "code": {**_concept(ICD10CM, code, text), "text": text},
        "subject": subject,
        "onsetDateTime": onset,
    }


def _observation(category: str, code: str, display: str, subject: dict, when: str,
                 value: dict) -> dict:
    return {
        "resourceType": "Observation", "status": "final",
        "category": [_concept(OBSERVATION_CATEGORY, category,
                              category.replace("-", " ").title())],
        "code": {**_concept(LOINC, code, display), "text": display},
        "subject": subject, "effectiveDateTime": when, **value,
    }


def _enrollment(p: Person, subject: dict, home: dict, conditions: list[str]) -> dict:
    period = {"start": p.hh.start.isoformat()}
    if p.hh.end:
        period["end"] = p.hh.end.isoformat()
    return {
        "resourceType": "EpisodeOfCare", "_profile": "hh-enrollment",
        "status": "finished" if p.hh.end else "active",
        "type": [_concept(HH_PROGRAM, *PROGRAMS[p.hh.program])],
        "diagnosis": [{"condition": {"reference": url}, "rank": rank}
                      for rank, url in enumerate(conditions, start=1)],
        "patient": subject, "managingOrganization": home, "period": period,
    }
