"""Synthetic Health Home population for demos and tests.

Why this exists: the gateway's eligibility, enrollment and DD-coordination features need
data that exercises the rules of both states (members who clearly qualify, members who
clearly do not, Kansas children on CHIP who are excluded, Missouri DD members with a
Regional Office episode) without ever touching real member data.

Design choices:
- Pure and deterministic: everything is drawn from one ``random.Random(seed)``, and dates
  are relative to the fixed ``AS_OF`` date, so the same seed gives the same bundles on
  every machine and every day. No I/O: callers decide where the bundles go.
- Obviously fake: NATO-alphabet given names, "Demo"/"Sample" family names, 555-01xx phone
  numbers, "Demo Lane" streets, fictitious organizations with fake (check-digit valid)
  NPIs. Every resource carries the HL7 ``HTEST`` (test health data) tag.
- Loadable more than once: Patients and Organizations are conditional creates
  (``ifNoneExist`` on their business identifier). Each Bundle is self-contained: it
  carries, as conditional creates, the Organizations its members reference, so bundles
  can be posted in any order and every urn:uuid reference resolves inside its own Bundle.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import date, timedelta

from fhir_gateway.healthhome.categories import categories
from fhir_gateway.identifiers import (
    CANONICAL_BASE,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    DMH_CONSUMER_ID,
    HH_PROGRAM,
    ICD10CM,
    KANCARE_ID,
    LOINC,
    MO_HEALTHNET_DCN,
    NPI,
    SNOMED,
    SOURCE_OF_PAYMENT,
)

# Systems not (yet) in identifiers.py; standard HL7/UCUM URIs plus one local code system.
UCUM = "http://unitsofmeasure.org"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ORGANIZATION_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
SUBSCRIBER_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
MO_PROVIDER_TYPE = f"{CANONICAL_BASE}/CodeSystem/mo-provider-type"

#: the IG profile each demo resource claims (EpisodeOfCare: enrollment or DD episode)
CLAIMED = {"Patient": "hh-patient", "Condition": "hh-qualifying-condition"}

AS_OF = date(2025, 7, 1)  # "today" for ages, onsets and periods
MAX_ENTRIES = 100  # per transaction Bundle
MISSOURI_SHARE = 0.6
ENROLLED_EVERY = 6  # about one member in six has a Health Home EpisodeOfCare
MIN_ENROLLED = 5
TEST_TAG = {"system": ACT_REASON, "code": "HTEST", "display": "test health data"}

# --- Organizations --------------------------------------------------------------------


@dataclass(frozen=True)
class Org:
    key: str
    name: str
    npi: str  # fake, but passes the NPI Luhn check (prefix 80840)
    type_code: str  # organization-type: prov | pay | govt
    kind: str
    state: str
    city: str
    postal_code: str


ORGS = (
    Org("mo-healthnet", "MO HealthNet", "1999000015", "pay",
        "State Medicaid agency", "MO", "Jefferson City", "65101"),
    Org("mo-cmhc-1", "Demo Prairie Community Mental Health Center", "1999000023", "prov",
        "CMHC Health Home", "MO", "Springfield", "65806"),
    Org("mo-cmhc-2", "Sample Ozark Behavioral Health CMHC", "1999000031", "prov",
        "CMHC Health Home", "MO", "Columbia", "65201"),
    Org("mo-fqhc", "Example River Community Health Center (FQHC)", "1999000049", "prov",
        "Primary Care Health Home", "MO", "Joplin", "64801"),
    Org("ks-hhp", "Demo Flint Hills Health Home Partner", "1999000056", "prov",
        "KanCare Health Home Partner", "KS", "Topeka", "66603"),
    Org("ks-mco-1", "Demo Tallgrass Health Plan", "1999000064", "pay",
        "KanCare MCO (Lead Entity)", "KS", "Wichita", "67202"),
    Org("ks-mco-2", "Sample Prairie Wind Care", "1999000072", "pay",
        "KanCare MCO (Lead Entity)", "KS", "Lawrence", "66044"),
    Org("mo-dd-ro", "Demo Ozark Regional Office (Division of DD)", "1999000080", "govt",
        "DD Regional Office", "MO", "Springfield", "65806"),
)
ORG_TYPES = {"prov": "Healthcare Provider", "pay": "Payer", "govt": "Government"}
KS_MCOS = ("ks-mco-1", "ks-mco-2")
DD_REGIONAL_OFFICE = "mo-dd-ro"

PROGRAMS = {  # HH_PROGRAM code -> (display, Health Home organizations)
    "mo-cmhc": ("Missouri CMHC Health Home", ("mo-cmhc-1", "mo-cmhc-2")),
    "mo-pchh": ("Missouri Primary Care Health Home", ("mo-fqhc",)),
    "ks-smi": ("KanCare SMI Health Home", ("ks-hhp",)),
    "ks-cc": ("KanCare Chronic Conditions Health Home", ("ks-hhp",)),
}
DD_SERVICES = (("15", "Targeted Case Management"), ("85", "Waiver"))

# --- Clinical content -----------------------------------------------------------------

CONDITIONS = {  # ICD-10-CM code -> display
    "F20.9": "Schizophrenia, unspecified",
    "F31.9": "Bipolar disorder, unspecified",
    "F33.1": "Major depressive disorder, recurrent, moderate",
    "F32.9": "Major depressive disorder, single episode, unspecified",
    "F41.1": "Generalized anxiety disorder",
    "F10.20": "Alcohol dependence, uncomplicated",
    "F11.20": "Opioid dependence, uncomplicated",
    "F17.210": "Nicotine dependence, cigarettes, uncomplicated",
    "J45.909": "Unspecified asthma, uncomplicated",
    "J44.9": "Chronic obstructive pulmonary disease, unspecified",
    "E11.9": "Type 2 diabetes mellitus without complications",
    "I10": "Essential (primary) hypertension",
    "I50.9": "Heart failure, unspecified",
    "E66.9": "Obesity, unspecified",
    "F84.0": "Autistic disorder",
    "F70": "Mild intellectual disabilities",
    "B20": "Human immunodeficiency virus [HIV] disease",
}
DD_CODES = ("F84.0", "F70")  # onset in childhood; Missouri DD episodes
OBESITY, TOBACCO = "E66.9", "F17.210"


@dataclass(frozen=True)
class Profile:
    """A clinical archetype; members are dealt these in rotation, then shuffled."""

    state: str
    codes: tuple[str, ...]
    child: bool = False
    program: str | None = None  # HH_PROGRAM code when the member can be enrolled
    chip: bool = False  # Kansas CHIP: not eligible for KanCare Health Homes


PROFILES = (
    Profile("MO", ("F20.9",), program="mo-cmhc"),  # SMI alone
    Profile("MO", ("F31.9",), program="mo-cmhc"),  # SMI alone
    Profile("MO", ("F32.9", "F10.20"), program="mo-cmhc"),  # MH + SUD
    Profile("MO", ("F41.1", TOBACCO), program="mo-cmhc"),  # MH + tobacco
    Profile("MO", ("E11.9", "I10"), program="mo-pchh"),  # diabetes + hypertension
    Profile("MO", ("J44.9", TOBACCO), program="mo-pchh"),  # COPD + tobacco
    Profile("MO", ("J45.909",), child=True, program="mo-pchh"),  # pediatric asthma
    Profile("MO", ("F84.0", "F41.1"), child=True, program="mo-cmhc"),  # DD + MH
    Profile("MO", ("F70", OBESITY), program="mo-pchh"),  # DD + obesity
    Profile("MO", ("I10",)),  # single hypertension: does not qualify
    Profile("KS", ("F33.1",), program="ks-smi"),  # SMI alone
    Profile("KS", ("F20.9",), program="ks-smi"),  # SMI alone
    Profile("KS", ("F33.1", "F11.20"), program="ks-cc"),  # SMI + SUD: not the SMI HH
    Profile("KS", ("E11.9", "I10", "I50.9"), program="ks-cc"),  # diabetes + heart
    Profile("KS", ("B20", "F32.9"), program="ks-cc"),  # HIV + depression
    Profile("KS", ("J45.909", "F41.1"), child=True, program="ks-cc"),  # asthma + MH
    Profile("KS", ("J45.909", OBESITY), child=True, chip=True),  # CHIP: excluded
    Profile("KS", ("J45.909",), child=True, chip=True),  # CHIP: excluded
    Profile("KS", ("I10",)),  # single hypertension: does not qualify
)

PAYMENT = {False: ("2", "MEDICAID"), True: ("23", "Medicaid/SCHIP")}  # keyed by chip
SMOKING = {
    "daily": ("449868002", "Smokes tobacco daily"),
    "ex": ("8517006", "Ex-smoker"),
    "never": ("266919005", "Never smoked tobacco"),
}

# --- Obviously fake demographics ------------------------------------------------------

GIVEN_NAMES = ("Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot",
               "Golf", "Hotel", "India", "Juliet", "Kilo", "Lima")
FAMILY_NAMES = ("Demo", "Sample", "Example", "Testcase", "Placeholder", "Synthetic",
                "Fixture", "Mockup")
STREETS = ("Demo Lane", "Sample Avenue", "Example Street", "Test Road")
CITIES = {  # state -> (city, postal code, area code)
    "MO": (("Springfield", "65806", "417"), ("Columbia", "65201", "573"),
           ("Kansas City", "64106", "816"), ("St. Louis", "63101", "314"),
           ("Joplin", "64801", "417")),
    "KS": (("Wichita", "67202", "316"), ("Topeka", "66603", "785"),
           ("Kansas City", "66101", "913"), ("Lawrence", "66044", "785"),
           ("Salina", "67401", "785")),
}
MEMBER_ID = {"MO": (MO_HEALTHNET_DCN, 8), "KS": (KANCARE_ID, 11)}  # system, digits
DMH_ID_DIGITS = 7

# --- Small helpers --------------------------------------------------------------------


def _urn(rng: random.Random) -> str:
    return f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"


def _years(n: int) -> timedelta:
    return timedelta(days=round(365.25 * n))


def _between(rng: random.Random, start: date, end: date) -> date:
    if end <= start:
        return start
    return start + timedelta(days=rng.randrange((end - start).days + 1))


def _digits(rng: random.Random, n: int, used: set[str]) -> str:
    while True:
        value = str(rng.randrange(10 ** (n - 1), 10**n))
        if value not in used:
            used.add(value)
            return value


def _concept(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _ref(full_url: str) -> dict:
    return {"reference": full_url}


def _entry(full_url: str, resource: dict, identifier: dict | None = None) -> dict:
    request = {"method": "POST", "url": resource["resourceType"]}
    if identifier:
        request["ifNoneExist"] = f"identifier={identifier['system']}|{identifier['value']}"
    meta = {"tag": [dict(TEST_TAG)]}
    profile = resource.pop("_profile", None) or CLAIMED.get(resource["resourceType"])
    if profile:  # claimed, so the gateway holds the demo data to the IG on load
        meta["profile"] = [f"{CANONICAL_BASE}/StructureDefinition/{profile}"]
    tagged = {"resourceType": resource["resourceType"], "meta": meta, **resource}
    return {"fullUrl": full_url, "resource": tagged, "request": request}


# --- Resources ------------------------------------------------------------------------


def _organization_entry(org: Org, full_url: str) -> dict:
    identifier = {"system": NPI, "value": org.npi}
    resource = {
        "resourceType": "Organization",
        "identifier": [identifier],
        "active": True,
        "type": [{**_concept(ORGANIZATION_TYPE, org.type_code, ORG_TYPES[org.type_code]),
                  "text": org.kind}],
        "name": org.name,
        "address": [{"city": org.city, "state": org.state, "postalCode": org.postal_code,
                     "country": "US"}],
    }
    return _entry(full_url, resource, identifier)


def _patient(rng: random.Random, profile: Profile, used: set[str]) -> tuple[dict, dict, date]:
    system, n_digits = MEMBER_ID[profile.state]
    member_id = {"system": system, "value": _digits(rng, n_digits, used)}
    identifiers = [member_id]
    if profile.state == "MO" and any(
            c.startswith("F") and c != TOBACCO for c in profile.codes):
        identifiers.append({"system": DMH_CONSUMER_ID,
                            "value": _digits(rng, DMH_ID_DIGITS, used)})
    age = rng.randint(3, 16) if profile.child else rng.randint(19, 79)
    birth = AS_OF - _years(age) - timedelta(days=rng.randrange(1, 360))
    city, postal_code, area = rng.choice(CITIES[profile.state])
    patient = {
        "resourceType": "Patient",
        "identifier": identifiers,
        "active": True,
        "name": [{"use": "official", "family": rng.choice(FAMILY_NAMES),
                  "given": [rng.choice(GIVEN_NAMES)]}],
        "telecom": [{"system": "phone", "value": f"{area}-555-01{rng.randrange(100):02d}",
                     "use": "home"}],
        "gender": rng.choice(("female", "male")),
        "birthDate": birth.isoformat(),
        "address": [{"use": "home",
                     "line": [f"{rng.randint(100, 9999)} {rng.choice(STREETS)}"],
                     "city": city, "state": profile.state, "postalCode": postal_code,
                     "country": "US"}],
    }
    return patient, member_id, birth


def _coverage(profile: Profile, patient_url: str, payor_url: str, member_id: str,
              start: date) -> dict:
    code, display = PAYMENT[profile.chip]
    return {
        "resourceType": "Coverage",
        "status": "active",
        "type": _concept(SOURCE_OF_PAYMENT, code, display),
        "subscriberId": member_id,
        "beneficiary": _ref(patient_url),
        "relationship": _concept(SUBSCRIBER_RELATIONSHIP, "self", "Self"),
        "period": {"start": start.isoformat()},
        "payor": [_ref(payor_url)],
    }


def _condition(code: str, patient_url: str, onset: date) -> dict:
    return {
        "resourceType": "Condition",
        "clinicalStatus": _concept(CONDITION_CLINICAL, "active", "Active"),
        "verificationStatus": _concept(CONDITION_VERIFICATION, "confirmed", "Confirmed"),
        "category": [_concept(CONDITION_CATEGORY, "problem-list-item", "Problem List Item"),
                     *({"coding": [category]} for category in categories(code))],
        "code": {**_concept(ICD10CM, code, CONDITIONS[code]), "text": CONDITIONS[code]},
        "subject": _ref(patient_url),
        "onsetDateTime": onset.isoformat(),
    }


def _observation(category: str, code: str, display: str, patient_url: str, when: date,
                 value: dict) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [_concept(OBSERVATION_CATEGORY, category, category.replace("-", " ").title())],
        "code": {**_concept(LOINC, code, display), "text": display},
        "subject": _ref(patient_url),
        "effectiveDateTime": when.isoformat(),
        **value,
    }


def _bmi(rng: random.Random, profile: Profile, patient_url: str, when: date) -> dict:
    # Obese members get BMI >= 30; everyone else stays < 25 so BMI never changes who qualifies.
    value = rng.uniform(30, 42) if OBESITY in profile.codes else rng.uniform(19, 24.9)
    quantity = {"value": round(value, 1), "unit": "kg/m2", "system": UCUM, "code": "kg/m2"}
    return _observation("vital-signs", "39156-5", "Body mass index (BMI) [Ratio]",
                        patient_url, when, {"valueQuantity": quantity})


def _smoking(rng: random.Random, profile: Profile, patient_url: str, when: date) -> dict:
    if TOBACCO in profile.codes:
        status = "daily"
    else:  # ex-smoker (a possible risk factor) only where the member qualifies anyway
        status = rng.choice(("never", "ex")) if profile.program else "never"
    code, display = SMOKING[status]
    return _observation("social-history", "72166-2", "Tobacco smoking status", patient_url,
                        when, {"valueCodeableConcept": _concept(SNOMED, code, display)})


def _episode(type_concept: dict, patient_url: str, org_url: str, start: date,
             condition_urls: list[str]) -> dict:
    dd = type_concept["coding"][0]["system"] == MO_PROVIDER_TYPE
    return {
        "resourceType": "EpisodeOfCare",
        "_profile": "hh-dd-episode" if dd else "hh-enrollment",
        "status": "active",
        "type": [type_concept],
        "diagnosis": [{"condition": _ref(url), "rank": rank}
                      for rank, url in enumerate(condition_urls, start=1)],
        "patient": _ref(patient_url),
        "managingOrganization": _ref(org_url),
        "period": {"start": start.isoformat()},
    }


# --- Population -----------------------------------------------------------------------


@dataclass
class _Plan:
    """What one member gets beyond the profile: enrollment and DD service decisions."""

    profile: Profile
    program: str | None = None
    dd_service: tuple[str, str] | None = None


def _plan(rng: random.Random, members: int) -> list[_Plan]:
    """Deal profiles in rotation per state, shuffle, then pick enrollments round-robin."""
    n_mo = round(members * MISSOURI_SHARE)
    by_state = {s: [p for p in PROFILES if p.state == s] for s in ("MO", "KS")}
    plans = [_Plan(by_state["MO"][i % len(by_state["MO"])]) for i in range(n_mo)]
    plans += [_Plan(by_state["KS"][i % len(by_state["KS"])]) for i in range(members - n_mo)]
    rng.shuffle(plans)

    queues = {code: [p for p in plans if p.profile.program == code] for code in PROGRAMS}
    target = max(members // ENROLLED_EVERY, MIN_ENROLLED)
    enrolled = 0
    while enrolled < target and any(queues.values()):
        for queue in queues.values():
            if queue and enrolled < target:
                plan = queue.pop(0)
                plan.program = plan.profile.program
                enrolled += 1

    dd_members = [p for p in plans
                  if p.profile.state == "MO" and any(c in DD_CODES for c in p.profile.codes)]
    for plan, service in zip(dd_members, DD_SERVICES):
        plan.dd_service = service
    return plans


def _member_entries(rng: random.Random, plan: _Plan, used: set[str],
                    org_urls: dict[str, str]) -> tuple[list[dict], list[str]]:
    """All entries for one member, plus the keys of the Organizations they reference."""
    profile = plan.profile
    patient, member_id, birth = _patient(rng, profile, used)
    patient_url = _urn(rng)
    entries = [_entry(patient_url, patient, member_id)]

    payor = rng.choice(KS_MCOS) if profile.state == "KS" else "mo-healthnet"
    coverage_start = _between(rng, max(birth, AS_OF - _years(6)), AS_OF - timedelta(days=90))
    entries.append(_entry(_urn(rng), _coverage(profile, patient_url, org_urls[payor],
                                               member_id["value"], coverage_start)))
    org_keys = [payor]

    condition_urls: dict[str, str] = {}
    onsets = []
    for code in profile.codes:
        if code in DD_CODES:  # developmental disability: onset in early childhood
            onset = _between(rng, birth + _years(1), min(birth + _years(5), AS_OF))
        else:
            onset = _between(rng, max(birth + _years(2), AS_OF - _years(12)),
                             AS_OF - timedelta(days=60))
        onsets.append(onset)
        condition_urls[code] = _urn(rng)
        entries.append(_entry(condition_urls[code], _condition(code, patient_url, onset)))

    seen = _between(rng, AS_OF - timedelta(days=365), AS_OF - timedelta(days=7))
    if OBESITY in profile.codes or rng.random() < 0.6:
        entries.append(_entry(_urn(rng), _bmi(rng, profile, patient_url, seen)))
    if not profile.child and (TOBACCO in profile.codes or rng.random() < 0.6):
        entries.append(_entry(_urn(rng), _smoking(rng, profile, patient_url, seen)))

    episode_from = max([coverage_start, *onsets])
    if plan.program:
        display, orgs = PROGRAMS[plan.program]
        home = rng.choice(orgs)
        start = _between(rng, max(episode_from, AS_OF - _years(2)), AS_OF - timedelta(days=30))
        episode = _episode(_concept(HH_PROGRAM, plan.program, display), patient_url,
                           org_urls[home], start, list(condition_urls.values()))
        entries.append(_entry(_urn(rng), episode))
        org_keys.append(home)
    if plan.dd_service:
        code, display = plan.dd_service
        dd_urls = [url for c, url in condition_urls.items() if c in DD_CODES]
        start = _between(rng, episode_from, AS_OF - timedelta(days=30))
        episode = _episode(_concept(MO_PROVIDER_TYPE, code, display), patient_url,
                           org_urls[DD_REGIONAL_OFFICE], start, dd_urls)
        entries.append(_entry(_urn(rng), episode))
        org_keys.append(DD_REGIONAL_OFFICE)
    return entries, org_keys


def _bundle(org_keys: list[str], member_entries: list[dict], org_urls: dict[str, str]) -> dict:
    orgs = [_organization_entry(o, org_urls[o.key]) for o in ORGS if o.key in org_keys]
    return {"resourceType": "Bundle", "type": "transaction", "entry": orgs + member_entries}


def demo_population(members: int = 60, seed: int = 1945) -> list[dict]:
    """Return FHIR R4 transaction Bundles (dicts), each with at most 100 entries.

    Each member's resources sit in one Bundle together with conditional creates of the
    Organizations they reference; Organizations appear first in the Bundle. Roughly 60% of
    the members are Missouri (MO HealthNet DCN), the rest Kansas (KanCare ID).
    """
    if members < 0:
        raise ValueError("members must be >= 0")
    rng = random.Random(seed)
    org_urls = {o.key: _urn(rng) for o in ORGS}
    used_ids: set[str] = set()

    bundles: list[dict] = []
    org_keys: list[str] = []
    entries: list[dict] = []
    for plan in _plan(rng, members):
        new_entries, new_orgs = _member_entries(rng, plan, used_ids, org_urls)
        added_orgs = [k for k in dict.fromkeys(new_orgs) if k not in org_keys]
        size = len(org_keys) + len(added_orgs) + len(entries) + len(new_entries)
        if entries and size > MAX_ENTRIES:
            bundles.append(_bundle(org_keys, entries, org_urls))
            org_keys, entries = [], []
            added_orgs = list(dict.fromkeys(new_orgs))
        org_keys += added_orgs
        entries += new_entries
    if entries:
        bundles.append(_bundle(org_keys, entries, org_urls))
    return bundles
