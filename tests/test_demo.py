"""The demo's synthetic population: Kansas members as FHIR (fhir_gateway/demo.py), drawn
from the one generator of people (adapters/synth.py) that also writes the Missouri extracts."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_gateway import demo
from fhir_gateway.adapters import synth
from fhir_gateway.adapters.cimor import parser as cimor
from fhir_gateway.demo import demo_population
from fhir_gateway.identifiers import HH_PROGRAM, ICD10CM, KANCARE_ID, NPI, SOURCE_OF_PAYMENT

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = 60
AS_OF = synth.Knobs().as_of
URN_UUID = re.compile(
    r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SMI_CODES = {code for code, _ in synth.DX_SMI}


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


def age(patient) -> int:
    born = date.fromisoformat(patient["birthDate"])
    return AS_OF.year - born.year - ((AS_OF.month, AS_OF.day) < (born.month, born.day))


def test_the_kansas_members_are_the_generators_people(bundles):
    """One generator: the demo's Patients are synth.people() of the same seed, in order."""
    people = list(synth.people(MEMBERS, 1945, demo.KANSAS))
    patients = resources(bundles, "Patient")
    assert [p["identifier"][0]["value"] for p in patients] == [p.dcn for p in people]
    assert [(p["name"][0]["family"], p["birthDate"]) for p in patients] == [
        (p.last, p.birth.isoformat()) for p in people]


def test_kansas_people_leave_the_missouri_extracts_unchanged(tmp_path):
    """The state knob draws nothing new for Missouri: the committed samples regenerate
    byte for byte (same seed, size and mix as `synth --samples`)."""
    written = synth.write_extracts(synth.SAMPLE_MEMBERS, tmp_path, synth.SAMPLE_SEED,
                                   synth.SAMPLE_KNOBS)
    for path, system in zip(written, ("cimor", "cyberaccess")):
        sample = (ROOT / "adapters" / system / "sample.xml").read_text(encoding="utf-8")
        assert sample.split("\n", 2)[2] == path.read_text(encoding="utf-8").split("\n", 1)[1]
    assert [r.record_id for r in cimor.parse(written[0])]
    with pytest.raises(ValueError, match="Missouri"):
        synth.write_extracts(1, tmp_path, knobs=demo.KANSAS)


def test_same_seed_same_population_other_seed_differs(bundles):
    assert demo_population(MEMBERS) == bundles
    other = demo_population(MEMBERS, seed=7)
    assert other != bundles
    assert {e["fullUrl"] for b in other for e in b["entry"]}.isdisjoint(
        {e["fullUrl"] for b in bundles for e in b["entry"]})


def test_zero_members_and_negative():
    assert demo_population(0) == []
    with pytest.raises(ValueError):
        demo_population(-1)


def test_bundles_are_transactions_within_size(bundles):
    assert len(bundles) > 1
    for bundle in bundles:
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        assert 0 < len(bundle["entry"]) <= demo.MAX_ENTRIES
        urls = [e["fullUrl"] for e in bundle["entry"]]
        assert len(urls) == len(set(urls)), "duplicate fullUrl inside a bundle"
        for entry in bundle["entry"]:
            assert URN_UUID.match(entry["fullUrl"]), entry["fullUrl"]
            assert entry["request"] == {"method": "POST", "url": entry["resource"]["resourceType"],
                                        **({"ifNoneExist": entry["request"]["ifNoneExist"]}
                                           if "ifNoneExist" in entry["request"] else {})}
            assert entry["resource"]["meta"]["tag"] == [demo.TEST_TAG]


def test_patients_have_one_unique_kancare_id(bundles):
    patients = resources(bundles, "Patient")
    assert len(patients) == MEMBERS
    ids = [p["identifier"] for p in patients]
    assert all(len(i) == 1 and i[0]["system"] == KANCARE_ID and re.fullmatch(r"\d{11}", i[0]["value"])
               for i in ids)
    assert len({i[0]["value"] for i in ids}) == MEMBERS
    assert {p["address"][0]["state"] for p in patients} == {"KS"}
    assert all(re.fullmatch(r"\d{3}-555-01\d{2}", p["telecom"][0]["value"]) for p in patients)
    ages = [age(p) for p in patients]
    assert any(a < 18 for a in ages) and any(a >= 18 for a in ages)


def test_conditional_creates_match_their_identifier(bundles):
    for entry in (e for b in bundles for e in b["entry"]):
        resource = entry["resource"]
        if resource["resourceType"] not in ("Patient", "Organization"):
            assert "ifNoneExist" not in entry["request"]
            continue
        system, value = entry["request"]["ifNoneExist"].removeprefix("identifier=").split("|")
        assert {"system": system, "value": value} in resource["identifier"]


def test_every_reference_resolves_inside_its_bundle_to_the_right_type(bundles):
    for bundle in bundles:
        urls = by_url(bundle)
        for resource in urls.values():
            assert all(ref in urls for ref in references(resource))
        target = lambda ref: urls[ref["reference"]]["resourceType"]  # noqa: E731
        for res in urls.values():
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
        orgs[npi] = org["type"][0]["coding"][0]["code"]
    assert Counter(orgs.values()) == {"pay": 2, "prov": 2}  # KanCare MCOs, Health Home Partners
    for npi in orgs:
        digits = [int(d) for d in "80840" + npi]
        total = sum(d if i % 2 == 0 else (2 * d - 9 if 2 * d > 9 else 2 * d)
                    for i, d in enumerate(reversed(digits)))
        assert len(npi) == 10 and total % 10 == 0, f"NPI {npi} fails the Luhn check"


def test_coverage_per_member_and_chip_children_are_not_enrolled(bundles):
    chip_children = 0
    for bundle in bundles:
        urls = by_url(bundle)
        enrolled = {r["patient"]["reference"] for r in urls.values()
                    if r["resourceType"] == "EpisodeOfCare"}
        coverages = [r for r in urls.values() if r["resourceType"] == "Coverage"]
        assert len(coverages) == sum(r["resourceType"] == "Patient" for r in urls.values())
        for coverage in coverages:
            patient = urls[coverage["beneficiary"]["reference"]]
            assert coverage["subscriberId"] == patient["identifier"][0]["value"]
            (coding,) = coverage["type"]["coding"]
            assert coding["system"] == SOURCE_OF_PAYMENT and coding["code"] in ("2", "23")
            if coding["code"] == "23":
                assert age(patient) < 18
                assert coverage["beneficiary"]["reference"] not in enrolled
                chip_children += 1
    assert chip_children >= 2


def test_conditions_claim_the_profile_where_they_qualify(bundles):
    conditions = resources(bundles, "Condition")
    assert len({c["subject"]["reference"] for c in conditions}) == MEMBERS  # everyone has one
    for condition in conditions:
        (coding,) = condition["code"]["coding"]
        assert coding["system"] == ICD10CM and coding["display"]
        qualifying = len(condition["category"]) > 1  # problem-list-item + Health Home categories
        assert ("profile" in condition["meta"]) == qualifying
    assert any("profile" in c["meta"] for c in conditions)


def test_observations_follow_the_conditions(bundles):
    for bundle in bundles:
        urls = by_url(bundle)
        codes = Counter()
        for res in urls.values():
            if res["resourceType"] == "Condition":
                codes[(res["subject"]["reference"], res["code"]["coding"][0]["code"])] += 1
        for obs in (r for r in urls.values() if r["resourceType"] == "Observation"):
            loinc = obs["code"]["coding"][0]["code"]
            subject = obs["subject"]["reference"]
            if loinc == "39156-5":
                assert (subject, demo.OBESITY) in codes and obs["valueQuantity"]["value"] >= 30
            else:
                assert loinc == "72166-2" and (subject, demo.TOBACCO) in codes


def test_enrollments_in_both_kansas_programs(bundles):
    programs = Counter()
    for bundle in bundles:
        urls = by_url(bundle)
        for res in (r for r in urls.values() if r["resourceType"] == "EpisodeOfCare"):
            (coding,) = res["type"][0]["coding"]
            assert coding["system"] == HH_PROGRAM
            assert urls[res["managingOrganization"]["reference"]]["type"][0]["coding"][0]["code"] == "prov"
            diagnoses = {urls[d["condition"]["reference"]]["code"]["coding"][0]["code"]
                         for d in res["diagnosis"]}
            assert diagnoses and all(urls[d["condition"]["reference"]]["subject"] == res["patient"]
                                     for d in res["diagnosis"])
            assert (coding["code"] == "ks-smi") == bool(diagnoses & SMI_CODES)
            assert (res["status"] == "finished") == ("end" in res["period"])
            programs[coding["code"]] += 1
    assert programs["ks-smi"] >= 3 and programs["ks-cc"] >= 3


def test_dates_are_coherent(bundles):
    for bundle in bundles:
        urls = by_url(bundle)
        for res in urls.values():
            if res["resourceType"] == "Condition":
                born = date.fromisoformat(urls[res["subject"]["reference"]]["birthDate"])
                assert born < date.fromisoformat(res["onsetDateTime"]) <= AS_OF
            if res["resourceType"] in ("Coverage", "EpisodeOfCare"):
                assert date.fromisoformat(res["period"]["start"]) <= AS_OF
