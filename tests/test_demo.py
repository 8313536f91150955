"""Tests for the synthetic Health Home population (fhir_gateway/demo.py)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_gateway import demo
from fhir_gateway.demo import AS_OF, demo_population
from fhir_gateway.identifiers import (
    ICD10CM,
    HH_PROGRAM,
    KANCARE_ID,
    MO_HEALTHNET_DCN,
    NPI,
    SOURCE_OF_PAYMENT,
)

MEMBERS = 60
CONDITIONAL_REF = re.compile(r"^(?P<type>[A-Za-z]+)\?identifier=(?P<ident>[^|]+\|.+)$")
URN_UUID = re.compile(
    r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
DIGEST_CODES = {"F20.9", "F31.9", "F33.1", "F32.9", "F41.1", "F10.20", "F11.20", "F17.210",
                "J45.909", "J44.9", "E11.9", "I10", "I50.9", "E66.9", "F84.0", "F70", "B20"}


@pytest.fixture(scope="module")
def bundles() -> list[dict]:
    return demo_population(MEMBERS)


def resources(bundles, resource_type=None):
    return [e["resource"] for b in bundles for e in b["entry"]
            if resource_type is None or e["resource"]["resourceType"] == resource_type]


def by_url(bundle):
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def references(node):
    """Every Reference.reference string anywhere inside a resource."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def member_id(patient):
    ids = [i for i in patient["identifier"] if i["system"] in (MO_HEALTHNET_DCN, KANCARE_ID)]
    assert len(ids) == 1, patient["identifier"]
    return ids[0]


def age(patient) -> int:
    born = date.fromisoformat(patient["birthDate"])
    return AS_OF.year - born.year - ((AS_OF.month, AS_OF.day) < (born.month, born.day))


def test_same_seed_same_population_other_seed_differs(bundles):
    assert demo_population(MEMBERS) == bundles
    assert demo_population(MEMBERS, seed=1945) == bundles
    other = demo_population(MEMBERS, seed=7)
    assert other != bundles
    assert {e["fullUrl"] for b in other for e in b["entry"]}.isdisjoint(
        {e["fullUrl"] for b in bundles for e in b["entry"]})


def test_zero_members_and_negative():
    assert demo_population(0) == []
    with pytest.raises(ValueError):
        demo_population(-1)


def test_bundles_are_transactions_within_size(bundles):
    assert bundles
    for bundle in bundles:
        assert bundle["resourceType"] == "Bundle"
        assert bundle["type"] == "transaction"
        assert 0 < len(bundle["entry"]) <= 100
        urls = [e["fullUrl"] for e in bundle["entry"]]
        assert len(urls) == len(set(urls)), "duplicate fullUrl inside a bundle"
        for entry in bundle["entry"]:
            assert URN_UUID.match(entry["fullUrl"]), entry["fullUrl"]
            request = entry["request"]
            assert request["method"] == "POST"
            assert request["url"] == entry["resource"]["resourceType"]


def test_small_bundle_limit_holds_for_larger_population():
    big = demo_population(250, seed=3)
    assert len(resources(big, "Patient")) == 250
    assert all(len(b["entry"]) <= 100 for b in big)


def test_patients_have_one_unique_member_id_of_right_length(bundles):
    patients = resources(bundles, "Patient")
    assert len(patients) >= MEMBERS
    seen = set()
    for patient in patients:
        ident = member_id(patient)
        state = patient["address"][0]["state"]
        if ident["system"] == MO_HEALTHNET_DCN:
            assert re.fullmatch(r"\d{8}", ident["value"]) and state == "MO"
        else:
            assert re.fullmatch(r"\d{11}", ident["value"]) and state == "KS"
        assert ident["value"] not in seen
        seen.add(ident["value"])
        assert re.fullmatch(r"\d{3}-555-01\d{2}", patient["telecom"][0]["value"])


def test_state_mix_dmh_ids_and_children(bundles):
    patients = resources(bundles, "Patient")
    states = Counter(p["address"][0]["state"] for p in patients)
    assert 0.5 <= states["MO"] / len(patients) <= 0.7
    assert states["MO"] + states["KS"] == len(patients)
    assert any(i["system"] == demo.DMH_CONSUMER_ID for p in patients for i in p["identifier"])
    ages = [age(p) for p in patients]
    assert any(a < 18 for a in ages) and any(a >= 18 for a in ages)


def test_conditional_create_matches_identifier(bundles):
    for entry in (e for b in bundles for e in b["entry"]):
        resource = entry["resource"]
        if resource["resourceType"] not in ("Patient", "Organization"):
            assert "ifNoneExist" not in entry["request"]
            continue
        system, value = entry["request"]["ifNoneExist"].removeprefix("identifier=").split("|")
        assert {"system": system, "value": value} in resource["identifier"]


def test_every_reference_resolves(bundles):
    created: set[tuple[str, str]] = set()  # (type, "system|value") conditionally created so far
    for bundle in bundles:
        urls = by_url(bundle)
        for entry in bundle["entry"]:
            if "ifNoneExist" in entry["request"]:
                ident = entry["request"]["ifNoneExist"].removeprefix("identifier=")
                created.add((entry["resource"]["resourceType"], ident))
        for entry in bundle["entry"]:
            for ref in references(entry["resource"]):
                if ref in urls:
                    continue
                match = CONDITIONAL_REF.match(ref)
                assert match, f"unresolved reference {ref}"
                assert match["type"] == "Organization"
                assert (match["type"], match["ident"]) in created, ref


def test_reference_targets_have_expected_types(bundles):
    for bundle in bundles:
        urls = by_url(bundle)
        target = lambda ref: urls[ref["reference"]]["resourceType"]  # noqa: E731
        for res in bundle["entry"]:
            res = res["resource"]
            if res["resourceType"] == "Coverage":
                assert target(res["beneficiary"]) == "Patient"
                assert [target(p) for p in res["payor"]] == ["Organization"]
            if res["resourceType"] in ("Condition", "Observation"):
                assert target(res["subject"]) == "Patient"
            if res["resourceType"] == "EpisodeOfCare":
                assert target(res["patient"]) == "Patient"
                assert target(res["managingOrganization"]) == "Organization"
                assert all(target(d["condition"]) == "Condition" for d in res["diagnosis"])


def test_every_resource_validates_with_fhir_resources(bundles):
    for bundle in bundles:
        get_fhir_model_class("Bundle").model_validate(bundle)
    for resource in resources(bundles):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_organizations_have_fake_valid_npis(bundles):
    orgs = {}
    for org in resources(bundles, "Organization"):
        (npi,) = [i["value"] for i in org["identifier"] if i["system"] == NPI]
        orgs[npi] = org["name"]
    assert len(orgs) == 8  # 4 Health Homes, 2 KanCare MCOs, 1 DD Regional Office, MO HealthNet
    assert "MO HealthNet" in orgs.values()
    for npi in orgs:
        assert re.fullmatch(r"\d{10}", npi)
        digits = [int(d) for d in "80840" + npi]
        total = sum(d if i % 2 == 0 else (2 * d - 9 if 2 * d > 9 else 2 * d)
                    for i, d in enumerate(reversed(digits)))
        assert total % 10 == 0, f"NPI {npi} fails the Luhn check"


def test_coverage_per_member_and_kansas_chip_children(bundles):
    chip_children = 0
    for bundle in bundles:
        urls = by_url(bundle)
        coverages = [r for r in urls.values() if r["resourceType"] == "Coverage"]
        patients = [r for r in urls.values() if r["resourceType"] == "Patient"]
        assert len(coverages) == len(patients)
        for coverage in coverages:
            patient = urls[coverage["beneficiary"]["reference"]]
            payor = urls[coverage["payor"][0]["reference"]]
            assert coverage["status"] == "active"
            assert coverage["subscriberId"] == member_id(patient)["value"]
            (coding,) = coverage["type"]["coding"]
            assert coding["system"] == SOURCE_OF_PAYMENT
            state = patient["address"][0]["state"]
            if state == "MO":
                assert payor["name"] == "MO HealthNet"
            else:
                assert payor["address"][0]["state"] == "KS"
            if coding["code"] == "23":
                assert state == "KS" and age(patient) < 18
                chip_children += 1
            else:
                assert coding["code"] == "2"
    assert chip_children >= 2


def test_conditions_are_coded_from_digest(bundles):
    per_patient: dict[str, list[str]] = {}
    for bundle in bundles:
        for res in by_url(bundle).values():
            if res["resourceType"] != "Condition":
                continue
            (coding,) = res["code"]["coding"]
            assert coding["system"] == ICD10CM and coding["code"] in DIGEST_CODES
            assert coding["display"]
            assert res["clinicalStatus"]["coding"][0]["code"] == "active"
            assert res["verificationStatus"]["coding"][0]["code"] == "confirmed"
            assert res["category"][0]["coding"][0]["code"] == "problem-list-item"
            per_patient.setdefault(res["subject"]["reference"], []).append(coding["code"])
    assert len(per_patient) == MEMBERS
    assert all(1 <= len(codes) <= 3 for codes in per_patient.values())
    sets = [frozenset(c) for c in per_patient.values()]
    assert frozenset({"F20.9"}) in sets  # SMI alone
    assert frozenset({"F32.9", "F10.20"}) in sets  # MH + SUD
    assert frozenset({"E11.9", "I10"}) in sets  # diabetes + hypertension
    assert sets.count(frozenset({"I10"})) >= 2  # clearly not qualifying


def test_observations(bundles):
    observations = resources(bundles, "Observation")
    codes = Counter(o["code"]["coding"][0]["code"] for o in observations)
    assert codes["39156-5"] > 0 and codes["72166-2"] > 0
    for obs in observations:
        assert obs["status"] == "final" and obs["effectiveDateTime"]
        if obs["code"]["coding"][0]["code"] == "39156-5":
            q = obs["valueQuantity"]
            assert (q["unit"], q["system"], q["code"]) == ("kg/m2", demo.UCUM, "kg/m2")
            assert obs["category"][0]["coding"][0]["code"] == "vital-signs"
        else:
            assert obs["valueCodeableConcept"]["coding"][0]["code"] in {
                "449868002", "8517006", "266919005"}


def test_enrollments_and_dd_episodes(bundles):
    hh, dd = [], []
    for bundle in bundles:
        urls = by_url(bundle)
        for res in urls.values():
            if res["resourceType"] != "EpisodeOfCare":
                continue
            assert res["status"] == "active" and res["period"]["start"]
            (coding,) = res["type"][0]["coding"]
            patient = urls[res["patient"]["reference"]]
            org = urls[res["managingOrganization"]["reference"]]
            state = patient["address"][0]["state"]
            diagnoses = [urls[d["condition"]["reference"]] for d in res["diagnosis"]]
            assert diagnoses
            assert all(c["subject"]["reference"] == res["patient"]["reference"]
                       for c in diagnoses)
            if coding["system"] == HH_PROGRAM:
                assert coding["code"].startswith(state.lower() + "-")
                assert org["address"][0]["state"] == state
                assert org["type"][0]["coding"][0]["code"] == "prov"
                assert not any(c["code"]["coding"][0]["code"] == "I10" and len(diagnoses) == 1
                               for c in diagnoses), "single hypertension enrolled"
                hh.append(coding["code"])
            else:
                assert coding["system"] == demo.MO_PROVIDER_TYPE
                assert coding["code"] in {"15", "85"} and state == "MO"
                assert "Regional Office" in org["name"]
                assert {c["code"]["coding"][0]["code"] for c in diagnoses} <= {"F84.0", "F70"}
                dd.append(coding["code"])
    assert len(hh) >= 5
    assert set(hh) == {"mo-cmhc", "mo-pchh", "ks-smi", "ks-cc"}
    assert sorted(dd) == ["15", "85"]


def test_member_ids_stay_unique_when_the_id_space_is_tiny(monkeypatch):
    monkeypatch.setattr(demo, "MEMBER_ID", {"MO": (MO_HEALTHNET_DCN, 2), "KS": (KANCARE_ID, 2)})
    values = [member_id(p)["value"] for p in resources(demo_population(80, seed=11), "Patient")]
    assert len(values) == len(set(values)) == 80


def test_dates_are_coherent(bundles):
    for bundle in bundles:
        urls = by_url(bundle)
        for res in urls.values():
            if res["resourceType"] == "Condition":
                patient = urls[res["subject"]["reference"]]
                born = date.fromisoformat(patient["birthDate"])
                onset = date.fromisoformat(res["onsetDateTime"])
                assert born < onset <= AS_OF
                if res["code"]["coding"][0]["code"] in ("F84.0", "F70"):
                    assert (onset - born).days < 22 * 365  # DD: onset before age 22
            if res["resourceType"] in ("Coverage", "EpisodeOfCare"):
                assert date.fromisoformat(res["period"]["start"]) <= AS_OF
