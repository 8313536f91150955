"""Declarative mappings (mappings/*.yaml) from CIMOR and CyberAccess records to the IG's resources.

Records are hand-written `data` dicts as adapters/RECORDS.md defines them (repeating
elements always lists, attributes as `@name`, a leaf with attributes as `#text`); the last
tests run the adapters' real sample extracts through the same path.
"""

from __future__ import annotations

import copy
import datetime
import re
import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml

from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.identifiers import (CANONICAL_BASE, DMH_CONSUMER_ID, HH_PROGRAM, ICD10CM,
                                      MO_HEALTHNET_DCN, NPI, SOURCE_OF_PAYMENT)
from fhir_gateway.adapters.cimor import parser as cimor_parser
from fhir_gateway.adapters.cyberaccess import parser as cyberaccess_parser
from fhir_gateway.healthhome.transforms import TRANSFORMS
from fhir_gateway.mapping import MappingError, load_mapping, to_transaction
from fhir_gateway.mapping.paths import Condition, Context, getter, items, resolve
from fhir_gateway.store.sqlite import SQLiteStore
from fhir_gateway.validation.guard import ValidatingStore
from fhir_gateway.healthhome.checks import health_home_validator
from fhir_gateway.validation.service import errors

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "mappings"
SD = f"{CANONICAL_BASE}/StructureDefinition"
PROFILED = {"Patient": f"{SD}/hh-patient", "Condition": f"{SD}/hh-qualifying-condition",
            "CareTeam": f"{SD}/hh-care-team"}
EPISODES = {"enrollment": f"{SD}/hh-enrollment", "dd-episode": f"{SD}/hh-dd-episode"}
CATEGORY = f"{CANONICAL_BASE}/CodeSystem/hh-condition-category"
PROVIDER_TYPE = f"{CANONICAL_BASE}/CodeSystem/mo-provider-type"
DCN = "10000024"

CONSUMER = {
    "ConsumerId": "1000003", "DCN": DCN,
    "Name": {"Last": "Dunmore", "First": "Vera", "Middle": "I"},
    "BirthDate": "2008-06-19", "Sex": "F",
    "Address": {"Line1": "7190 Bluebird Ln", "City": "Kirksville", "State": "MO", "Zip": "63501"},
    "County": "Adair",
    "HealthHome": {"Indicator": "Y", "Program": "CMHC",
                   "Provider": {"Name": "Little Dixie CMHC", "NPI": "1800000030"},
                   "EffectiveDate": "2023-10-27"},
    "Episodes": {"Episode": [
        {"EpisodeId": "100000301", "AdmissionDate": "2011-12-18",
         "AdmissionReason": "Administrative Transfer", "Division": "DD", "ProviderType": "85",
         "WaiverProgram": "lopez",
         "Programs": {"Program": [{"@code": "DD-WAIVER", "#text": "HCBS Waiver Services"}]},
         "Diagnoses": {"Diagnosis": [
             {"@code": "G80.9", "@primary": "true", "#text": "Cerebral palsy, unspecified"},
             {"@code": "J06.9", "@primary": "false", "#text": "Acute URI"}]}},  # not HH
        {"EpisodeId": "100000302", "AdmissionDate": "2012-01-05",
         "AdmissionReason": "DD Intake and Evaluation", "Division": "DD", "ProviderType": "15",
         "Diagnoses": {"Diagnosis": [{"@code": "F84.0", "@primary": "true"}]}},
        {"EpisodeId": "100000303", "AdmissionDate": "2020-03-01",
         "AdmissionReason": "Criteria Met", "Division": "BH",
         "Diagnoses": {"Diagnosis": [{"@code": "F32.9", "@primary": "true"}]}}]},
    "ConsumerResources": {"SupportCoordinator": {
        "Name": "Emmett Abernathy", "Agency": "Big Muddy Support Coordination",
        "Phone": "660-555-0169"}},
}

PARTICIPANT = {
    "DCN": DCN, "Name": {"Last": "Dunmore", "First": "Vera"},
    "BirthDate": "2008-06-19", "Sex": "F",
    "Address": {"Line1": "7190 Bluebird Ln", "City": "Kirksville", "State": "MO", "Zip": "63501"},
    "Eligibility": {"Segment": [
        {"MECode": "71", "Description": "MO HealthNet for Kids", "StartDate": "2022-01-01",
         "EndDate": "2022-12-31"},
        {"MECode": "71", "Description": "MO HealthNet for Kids", "StartDate": "2023-01-01",
         "ManagedCarePlan": {"Name": "Show-Me Health Plan", "PlanId": "100000029"}}]},
    "HealthHome": {"Status": "Enrolled", "Program": "CMHC",
                   "Provider": {"Name": "Little Dixie CMHC", "NPI": "1800000030"},
                   "StartDate": "2023-10-27"},
    "Claims": {"Claim": [
        {"ClaimId": "2024000000001", "ServiceLines": {"Line": [
            {"FromDate": "2024-03-04", "ToDate": "2024-03-04", "ProviderNPI": "1500000011",
             "ProviderType": "15", "Procedure": "T1017", "Diagnoses": {"Code": ["G809"]}},
            {"FromDate": "2024-02-02", "ToDate": "2024-02-02", "ProviderNPI": "1500000011",
             "ProviderType": "15", "Procedure": "T1017", "Diagnoses": {"Code": ["G80.9"]}}]}},
        {"ClaimId": "2024000000002", "ServiceLines": {"Line": [
            {"FromDate": "2024-02-10", "ToDate": "2024-02-10", "ProviderNPI": "8500000012",
             "ProviderType": "85", "Procedure": "T2021"},
            {"FromDate": "2024-02-12", "ToDate": "2024-02-12", "ProviderNPI": "2000000013",
             "ProviderType": "20", "Procedure": "99213",
             "Diagnoses": {"Code": ["F90.2", "J06.9"]}}]}}]},
}


def load_hh(path: Path):
    """A mapping file with the Health Home transforms, as the importer loads it."""
    return load_mapping(path, TRANSFORMS)


def consumer(**changes) -> dict:
    data = copy.deepcopy(CONSUMER)
    data.update(changes)
    return data


def participant(**changes) -> dict:
    data = copy.deepcopy(PARTICIPANT)
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def cimor():
    return load_hh(MAPPINGS / "cimor.yaml")


@pytest.fixture(scope="module")
def cyberaccess():
    return load_hh(MAPPINGS / "cyberaccess.yaml")


@pytest.fixture(scope="module")
def rules():
    return health_home_validator(DEFAULT_PROFILES)


@pytest.fixture
def store(tmp_path, rules):
    s = ValidatingStore(SQLiteStore(tmp_path / "store.db"), rules)
    yield s
    s.close()


def by_key(mapped) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in mapped:
        out.setdefault(m.key, []).append(m.resource)
    return out


def one(mapped, key: str) -> dict:
    found = by_key(mapped).get(key, [])
    assert len(found) == 1, f"{key}: {len(found)}"
    return found[0]


def codes(codeable: dict) -> list[tuple[str, str]]:
    return [(c.get("system"), c.get("code")) for c in codeable.get("coding", [])]


def extension(resource: dict, name: str) -> dict | None:
    return next((e for e in resource.get("extension", []) if e["url"] == f"{SD}/{name}"), None)


def history_total(store) -> int:
    return store.history(count=1).total


# -- CIMOR ------------------------------------------------------------------------------
def test_cimor_consumer_maps_to_the_ig_resources(cimor):
    mapped = cimor.apply(consumer())
    assert Counter(m.key for m in mapped) == {
        "patient": 1, "condition": 3, "hh-provider": 1, "enrollment": 1, "dd-episode": 2,
        "dd-agency": 1, "coordinator": 1, "care-team": 1}

    patient = one(mapped, "patient")
    assert patient["identifier"] == [{"system": MO_HEALTHNET_DCN, "value": DCN},
                                     {"system": DMH_CONSUMER_ID, "value": "1000003"}]
    assert patient["name"] == [{"use": "official", "family": "Dunmore", "given": ["Vera", "I"]}]
    assert (patient["gender"], patient["birthDate"]) == ("female", "2008-06-19")
    assert patient["address"] == [{"use": "home", "line": ["7190 Bluebird Ln"],
                                   "city": "Kirksville", "district": "Adair", "state": "MO",
                                   "postalCode": "63501"}]

    conditions = {c["code"]["coding"][0]["code"]: c for c in by_key(mapped)["condition"]}
    assert set(conditions) == {"G80.9", "F84.0", "F32.9"}  # J06.9 qualifies for nothing
    g809 = conditions["G80.9"]
    assert g809["identifier"][0]["value"] == f"{DCN}/G80.9"
    assert codes(g809["code"]) == [(ICD10CM, "G80.9")]
    assert codes(g809["clinicalStatus"])[0][1] == "active"
    assert [codes(c) for c in conditions["F32.9"]["category"]] == [
        [(CATEGORY, "smi")], [(CATEGORY, "depression")]]  # one ICD code, two HH categories
    assert g809["subject"]["reference"] == \
        f"Patient?identifier={MO_HEALTHNET_DCN}|{DCN}"

    enrollment = one(mapped, "enrollment")
    assert codes(enrollment["type"][0]) == [(HH_PROGRAM, "mo-cmhc")]
    assert enrollment["status"] == "active"
    assert enrollment["period"] == {"start": "2023-10-27"}
    assert codes(extension(enrollment, "hh-enrollment-source")["valueCodeableConcept"]) == [
        (f"{CANONICAL_BASE}/CodeSystem/hh-enrollment-source", "claims-list")]
    assert enrollment["managingOrganization"]["reference"] == \
        f"Organization?identifier={NPI}|1800000030"
    assert len(enrollment["diagnosis"]) == 3
    assert one(mapped, "hh-provider")["name"] == "Little Dixie CMHC"


def test_dd_episodes_by_provider_type(cimor):
    mapped = cimor.apply(consumer())
    episodes = {e["identifier"][0]["value"]: e for e in by_key(mapped)["dd-episode"]}
    assert set(episodes) == {"100000301", "100000302"}  # the BH episode is none
    waiver, tcm = episodes["100000301"], episodes["100000302"]
    assert codes(waiver["type"][0]) == [(PROVIDER_TYPE, "85")]
    assert codes(extension(waiver, "hh-dd-waiver-program")["valueCodeableConcept"]) == [
        (f"{CANONICAL_BASE}/CodeSystem/hh-dd-waiver", "lopez")]
    assert codes(tcm["type"][0]) == [(PROVIDER_TYPE, "15")]
    assert extension(tcm, "hh-dd-waiver-program") is None
    assert waiver["period"] == {"start": "2011-12-18"} and waiver["status"] == "active"
    assert waiver["diagnosis"] == [{"condition": {"reference": (
        f"Condition?identifier={CANONICAL_BASE}/sid/hh-condition|{DCN}/G80.9")}, "rank": 1}]
    assert waiver["managingOrganization"]["reference"].endswith(
        "/sid/mo-dd-agency|Big%20Muddy%20Support%20Coordination")
    assert waiver["careManager"]["reference"].startswith("Practitioner?identifier=")
    team = one(mapped, "care-team")
    assert team["participant"][0]["member"] == waiver["careManager"]
    assert one(mapped, "coordinator")["telecom"] == [
        {"system": "phone", "use": "work", "value": "660-555-0169"}]

    other = consumer()
    for episode in other["Episodes"]["Episode"]:
        episode["ProviderType"] = "20"
    assert "dd-episode" not in by_key(cimor.apply(other))


def test_discharged_episode_and_ended_enrollment_are_finished(cimor):
    data = consumer()
    data["HealthHome"]["EndDate"] = "2024-06-30"
    data["Episodes"]["Episode"][0]["DischargeDate"] = "2015-01-31"
    mapped = cimor.apply(data)
    enrollment = one(mapped, "enrollment")
    assert enrollment["status"] == "finished"
    assert enrollment["period"] == {"start": "2023-10-27", "end": "2024-06-30"}
    assert enrollment["identifier"][0]["value"] == f"{DCN}/hh/mo-cmhc/2023-10-27"
    episode = next(e for e in by_key(mapped)["dd-episode"]
                   if e["identifier"][0]["value"] == "100000301")
    assert (episode["status"], episode["period"]["end"]) == ("finished", "2015-01-31")


def test_health_home_indicator_n_means_no_enrollment(cimor):
    data = consumer(HealthHome={"Indicator": "N"})
    keys = by_key(cimor.apply(data))
    assert "enrollment" not in keys and "hh-provider" not in keys
    assert "patient" in keys and "dd-episode" in keys


def test_pchh_program_translates(cimor):
    data = consumer()
    data["HealthHome"]["Program"] = "PCHH"
    enrollment = one(cimor.apply(data), "enrollment")
    assert codes(enrollment["type"][0]) == [(HH_PROGRAM, "mo-pchh")]


def test_no_support_coordinator_means_no_care_team_but_dd_episode_needs_the_agency(cimor):
    data = consumer()
    del data["ConsumerResources"]
    data["Episodes"]["Episode"] = data["Episodes"]["Episode"][2:]  # BH only: no DD episode
    keys = by_key(cimor.apply(data))
    assert not {"care-team", "coordinator", "dd-agency", "dd-episode"} & set(keys)
    data = consumer()
    del data["ConsumerResources"]
    with pytest.raises(MappingError) as err:
        cimor.apply(data)
    assert err.value.path == "ConsumerResources.SupportCoordinator.Agency"


# -- CyberAccess ------------------------------------------------------------------------
def test_cyberaccess_chip_segment_is_sopt_23(cyberaccess):
    """ME codes become SOPT codes through conceptmaps/mo-me-code-payment: CHIP 23, else 2
    (the eligibility rules then decide whether CHIP counts: mo.yaml's mo-no-chip)."""
    data = participant()
    data["Eligibility"]["Segment"][1].update(MECode="73", Description="CHIP")
    coverages = {c["class"][0]["value"]: c for c in by_key(cyberaccess.apply(data))["coverage"]}
    assert codes(coverages["73"]["type"]) == [(SOURCE_OF_PAYMENT, "23")]
    assert codes(coverages["71"]["type"]) == [(SOURCE_OF_PAYMENT, "2")]


def test_cyberaccess_participant_maps(cyberaccess):
    mapped = cyberaccess.apply(participant())
    assert Counter(m.key for m in mapped) == {
        "patient": 1, "condition": 2, "mo-healthnet": 1, "mco-plan": 1, "coverage": 2,
        "hh-provider": 1, "enrollment": 1, "dd-provider": 2, "dd-episode": 2}
    assert {m.write for m in mapped if m.key in ("patient", "condition", "hh-provider")} == \
        {"create"}  # CIMOR's when CIMOR has the person

    conditions = sorted(c["code"]["coding"][0]["code"] for c in by_key(mapped)["condition"])
    assert conditions == ["F90.2", "G80.9"]  # G809 and G80.9 are one; J06.9 qualifies for nothing

    coverages = {c["period"]["start"]: c for c in by_key(mapped)["coverage"]}
    ffs, mco = coverages["2022-01-01"], coverages["2023-01-01"]
    assert codes(ffs["type"]) == [(SOURCE_OF_PAYMENT, "2")]
    assert ffs["identifier"][0]["value"] == f"{DCN}/71/2022-01-01"
    assert ffs["period"] == {"start": "2022-01-01", "end": "2022-12-31"}
    assert ffs["payor"] == [{"reference": f"Organization?identifier={CANONICAL_BASE}"
                                          "/sid/payer|mo-healthnet"}]
    assert mco["payor"] == [{"reference": f"Organization?identifier={CANONICAL_BASE}"
                                          "/sid/mo-healthnet-mco-plan|100000029"}]
    assert ffs["subscriberId"] == DCN and ffs["class"][0]["value"] == "71"

    enrollment = one(mapped, "enrollment")
    assert (enrollment["status"], codes(enrollment["type"][0])) == \
        ("active", [(HH_PROGRAM, "mo-cmhc")])
    assert len(enrollment["diagnosis"]) == 2


def test_claim_lines_of_provider_type_15_or_85_are_dd_episodes(cyberaccess):
    episodes = {e["identifier"][0]["value"]: e
                for e in by_key(cyberaccess.apply(participant()))["dd-episode"]}
    assert set(episodes) == {f"{DCN}/dd/15/1500000011", f"{DCN}/dd/85/8500000012"}
    tcm = episodes[f"{DCN}/dd/15/1500000011"]
    assert tcm["period"] == {"start": "2024-02-02"}  # two lines, one episode, earliest start
    assert codes(tcm["type"][0]) == [(PROVIDER_TYPE, "15")]
    assert tcm["managingOrganization"]["reference"] == f"Organization?identifier={NPI}|1500000011"

    data = participant()
    for claim in data["Claims"]["Claim"]:
        for line in claim["ServiceLines"]["Line"]:
            line["ProviderType"] = "11"
    keys = by_key(cyberaccess.apply(data))
    assert "dd-episode" not in keys and "dd-provider" not in keys


@pytest.mark.parametrize("status, expected", [("Enrolled", "active"), ("Disenrolled", "finished"),
                                              ("Not Enrolled", None)])
def test_cyberaccess_health_home_status(cyberaccess, rules, status, expected):
    data = participant()
    data["HealthHome"]["Status"] = status
    if status == "Disenrolled":
        data["HealthHome"]["EndDate"] = "2024-04-30"
    found = by_key(cyberaccess.apply(data)).get("enrollment", [])
    assert [e["status"] for e in found] == ([expected] if expected else [])
    for e in found:
        assert not errors(rules.validate(e))


# -- profiles ---------------------------------------------------------------------------
@pytest.mark.parametrize("system, data", [("cimor", CONSUMER), ("cyberaccess", PARTICIPANT)])
def test_every_mapped_resource_claims_its_profile_and_validates(system, data, cimor,
                                                                cyberaccess, rules):
    mapping = {"cimor": cimor, "cyberaccess": cyberaccess}[system]
    for m in mapping.apply(copy.deepcopy(data)):
        claimed = m.resource.get("meta", {}).get("profile", [])
        expected = PROFILED.get(m.type) or EPISODES.get(m.key)
        assert claimed == ([expected] if expected else []), m.key  # Coverage etc.: none in the IG
        assert "id" not in m.resource
        assert m.resource["identifier"][0] == {"system": m.identifier[0],
                                               "value": m.identifier[1]}
        problems = errors(rules.validate(m.resource))
        assert not problems, (m.key, [p.diagnostics for p in problems])


def test_conceptmaps_are_fhir_conceptmaps(rules):
    for file in (MAPPINGS / "conceptmaps").glob("*.json"):
        cm = orjson.loads(file.read_bytes())
        assert cm["resourceType"] == "ConceptMap" and file.stem == cm["id"]
        assert not errors(rules.validate(cm)), file.name


# -- the transaction --------------------------------------------------------------------
def test_transaction_uses_conditional_updates_and_bundle_local_references(cimor):
    bundle = to_transaction(cimor.apply(consumer()))
    assert bundle["type"] == "transaction"
    entries = {e["request"]["url"]: e for e in bundle["entry"]}
    patient = entries[f"Patient?identifier={MO_HEALTHNET_DCN}|{DCN}"]
    assert patient["request"]["method"] == "PUT" and patient["fullUrl"].startswith("urn:uuid:")
    condition = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition")
    # the gateway resolves conditional references against stored resources only, so the
    # Patient this Bundle creates is referenced by its fullUrl
    assert condition["resource"]["subject"] == {"reference": patient["fullUrl"]}
    create_only = [e for e in bundle["entry"] if e["request"]["method"] == "POST"]
    assert [e["request"] for e in create_only] == [{
        "method": "POST", "url": "EpisodeOfCare",
        "ifNoneExist": (f"identifier={CANONICAL_BASE}/sid/hh-enrollment"
                        f"|{DCN}/hh/mo-cmhc/2023-10-27")}]
    assert to_transaction(cimor.apply(consumer())) == bundle  # deterministic fullUrls


def test_references_to_entries_are_localized_in_the_json_escapes_and_all(cimor, cyberaccess):
    records = [(cimor, consumer()), (cyberaccess, participant())]
    mapped = [m for mapping, data in records for m in mapping.apply(data)]
    # an identifier that needs escapes in its reference (`\\,` in the search), and a quote
    odd = copy.deepcopy(mapped[0])
    odd.identifier = (odd.identifier[0], 'x,y"z')
    odd.resource["identifier"][0]["value"] = 'x,y"z'
    other = copy.deepcopy(mapped[-1])
    other.identifier = (other.identifier[0], "other")
    outside = f"Patient?identifier={DMH_CONSUMER_ID}|not-in-the-bundle"
    other.resource["subject"] = {"reference": odd.reference}
    other.resource["extension"] = [{"url": "http://example.org/x",
                                    "valueReference": {"reference": outside}},
                                   {"url": "http://example.org/y",
                                    "valueString": '"reference":"' + odd.reference + '"'}]
    before = copy.deepcopy(mapped + [odd, other])
    bundle = to_transaction(mapped + [odd, other])
    assert mapped + [odd, other] == before  # it changes nothing it was given
    full_url = {e["request"].get("url") if e["request"]["method"] == "PUT"
                else f'{e["request"]["url"]}?{e["request"]["ifNoneExist"]}': e["fullUrl"]
                for e in bundle["entry"]}
    last = bundle["entry"][-1]["resource"]
    assert last["subject"] == {"reference": full_url[odd.reference]}  # the escaped one too
    assert last["extension"][0]["valueReference"] == {"reference": outside}  # stays conditional
    assert last["extension"][1]["valueString"] == '"reference":"' + odd.reference + '"'
    for entry in bundle["entry"]:  # every reference to an entry is its fullUrl
        for ref in re.findall(r'"reference": ?"([^"]*)"', orjson.dumps(entry["resource"]).decode()):
            assert ref not in full_url


def test_import_twice_changes_nothing(cimor, cyberaccess, store):
    for mapping, data in ((cimor, consumer()), (cyberaccess, participant())):
        first = store.transaction(to_transaction(mapping.apply(data)))
        assert "201 Created" in {e["response"]["status"] for e in first["entry"]}
        total = history_total(store)
        again = store.transaction(to_transaction(mapping.apply(data)))
        assert {e["response"]["status"] for e in again["entry"]} == {"200 OK"}
        assert [e["response"]["location"] for e in again["entry"]] == \
            [e["response"]["location"] for e in first["entry"]]  # same ids, same versions
        assert history_total(store) == total


@pytest.mark.parametrize("order", ["cimor-first", "cyberaccess-first"])
def test_both_systems_merge_into_one_patient(cimor, cyberaccess, store, order):
    imports = [(cimor, consumer()), (cyberaccess, participant())]
    if order == "cyberaccess-first":
        imports.reverse()
    for mapping, data in imports:
        store.transaction(to_transaction(mapping.apply(data)))
    total = history_total(store)
    for mapping, data in imports:  # and again, in the same order: nothing moves
        response = store.transaction(to_transaction(mapping.apply(data)))
        assert {e["response"]["status"] for e in response["entry"]} == {"200 OK"}
    assert history_total(store) == total

    patients = store.search("Patient", [("identifier", f"{MO_HEALTHNET_DCN}|{DCN}")]).matches
    assert len(patients) == 1 and store.search("Patient", []).total == 1
    assert {"system": DMH_CONSUMER_ID, "value": "1000003"} in patients[0]["identifier"]  # CIMOR's
    g809 = store.search("Condition", [("code", f"{ICD10CM}|G80.9")])
    assert g809.total == 1  # reported by both, one Condition
    enrollments = store.search("EpisodeOfCare", [("type", f"{HH_PROGRAM}|mo-cmhc")]).matches
    assert len(enrollments) == 1
    assert enrollments[0]["patient"]["reference"] == f"Patient/{patients[0]['id']}"


def test_one_bundle_for_both_records(cimor, cyberaccess, store, rules):
    mapped = cimor.apply(consumer()) + cyberaccess.apply(participant())
    response = store.transaction(to_transaction(mapped))
    assert len(response["entry"]) == len({m.reference for m in mapped})
    assert store.search("Patient", []).total == 1
    for rtype in ("Patient", "Condition", "EpisodeOfCare", "CareTeam", "Coverage"):
        for resource in store.search(rtype, [("_count", "100")]).matches:
            assert not errors(rules.validate(resource)), resource["id"]


# -- mappings are data ------------------------------------------------------------------
def test_adding_a_field_is_a_mapping_edit(tmp_path):
    folder = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, folder)
    doc = yaml.safe_load((folder / "cimor.yaml").read_text())
    condition = next(r for r in doc["resources"] if r["key"] == "condition")
    condition["resource"]["code"]["text"] = "$#text"  # the diagnosis' description
    episode = next(r for r in doc["resources"] if r["key"] == "dd-episode")
    episode["resource"]["statusHistory"] = [{"status": "active",
                                             "period": {"start": {"path": "AdmissionDate",
                                                                  "date": True}}}]
    (folder / "cimor.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    before = by_key(load_hh(MAPPINGS / "cimor.yaml").apply(consumer()))
    after = by_key(load_hh(folder / "cimor.yaml").apply(consumer()))
    text = {c["code"]["coding"][0]["code"]: c["code"].get("text") for c in after["condition"]}
    assert text == {"G80.9": "Cerebral palsy, unspecified", "F84.0": None, "F32.9": None}
    assert all("text" not in c["code"] for c in before["condition"])
    assert after["dd-episode"][0]["statusHistory"] == [
        {"status": "active", "period": {"start": "2011-12-18"}}]


def test_a_code_translation_is_a_conceptmap_edit(tmp_path):
    folder = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, folder)
    data = consumer()
    data["HealthHome"]["Program"] = "BHH"
    with pytest.raises(MappingError, match="'BHH' has no translation in ConceptMap hh-program"):
        load_hh(folder / "cimor.yaml").apply(data)
    cm_file = folder / "conceptmaps" / "hh-program.json"
    cm_file.write_text(cm_file.read_text().replace('"code": "CMHC"', '"code": "BHH"'))
    enrollment = one(load_hh(folder / "cimor.yaml").apply(data), "enrollment")
    assert codes(enrollment["type"][0]) == [(HH_PROGRAM, "mo-cmhc")]


# -- errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("system, change, path", [
    ("cimor", lambda d: d.pop("DCN"), "DCN"),
    ("cimor", lambda d: d.pop("BirthDate"), "BirthDate"),
    ("cimor", lambda d: d["HealthHome"].pop("EffectiveDate"), "HealthHome.EffectiveDate"),
    ("cimor", lambda d: d["Episodes"]["Episode"][1].pop("AdmissionDate"),
     "Episodes.Episode[1].AdmissionDate"),
    ("cimor", lambda d: d["Episodes"]["Episode"][0].update(AdmissionDate="12/40/2011"),
     "Episodes.Episode[0].AdmissionDate"),
    ("cimor", lambda d: d["Episodes"]["Episode"][0]["Diagnoses"]["Diagnosis"][1].update(
        {"@code": "2024-01-01"}), "Episodes.Episode[0].Diagnoses.Diagnosis[1].@code"),  # `when:`
    ("cyberaccess", lambda d: d["Eligibility"]["Segment"][1].pop("StartDate"),
     "Eligibility.Segment[1].StartDate"),
    ("cyberaccess", lambda d: d["Claims"]["Claim"][0]["ServiceLines"]["Line"][1].pop(
        "ProviderNPI"), "Claims.Claim[0].ServiceLines.Line[1].ProviderNPI"),
])
def test_missing_or_bad_source_field_names_it(cimor, cyberaccess, system, change, path):
    data = consumer() if system == "cimor" else participant()
    change(data)
    with pytest.raises(MappingError) as err:
        {"cimor": cimor, "cyberaccess": cyberaccess}[system].apply(data)
    assert err.value.path == path
    record = "cimor 1000003" if system == "cimor" else f"cyberaccess {DCN}"
    assert str(err.value).startswith(f"{record}: {path}: ")


def test_paths_and_conditions():
    data = {"Claims": {"Claim": [{"ClaimId": "1", "ServiceLines": {"Line": [
        {"ProviderType": "15"}, {"ProviderType": "20"}]}}]}, "DCN": "9"}
    line = items(Context(data), "Claims.Claim[].ServiceLines.Line[]")[1]
    assert line.where == "Claims.Claim[0].ServiceLines.Line[1]"
    assert (resolve(line, "../ClaimId"), resolve(line, "/DCN"), resolve(line, ".")) == \
        ("1", "9", {"ProviderType": "20"})
    assert resolve(Context(data), "Claims.Claim[].ServiceLines.Line[].ProviderType") == \
        ["15", "20"]
    with pytest.raises(MappingError, match="address it with"):
        resolve(Context(data), "Claims.Claim.ClaimId")
    for path in ("Claims.Claim[].ServiceLines[]", "Claims.Claim[].ServiceLines.Line.X"):
        with pytest.raises(MappingError, match=r"^Claims\.Claim\[0\]\.ServiceLines"):
            getter(path)(Context(data))  # the error names the item
    fns = {"upper": lambda v, p: v.upper()}
    root = Context(data)
    assert Condition("Claims.Claim[].ServiceLines.Line[].ProviderType in ['85', '15']", fns)(root)
    assert Condition("ProviderType not in ['15', '85']", fns)(line)  # the line's is 20
    assert not Condition("not DCN or DCN != '9'", fns)(root)
    assert Condition("upper(DCN) == '9' and (Missing or DCN)", fns)(root)


# What a condition answers on the odd values an extract may hold: absent and empty are the
# same (RECORDS.md), a leaf with attributes compares by its text, a step through something
# that is no element is absent, and a list where no `[]` is is an error naming the path.
ODD_RECORDS = {
    "absent": {}, "x": {"A": {"B": "x"}, "C": "z"}, "empty": {"A": {"B": ""}, "C": ""},
    "attributes": {"A": {"B": {"#text": "x", "@n": "1"}}},
    "repeats": {"A": {"B": ["x", "y"]}}, "text step": {"A": "x"},
    "items": {"L": [{"B": "x"}, {"B": "q"}]}}
REPEATS = "A.B: repeats: address it with '[]'"


@pytest.mark.parametrize("expr, expected", [
    ("A.B", {"x": True, "attributes": True, "repeats": REPEATS}),
    ("not A.B", {"absent": True, "empty": True, "text step": True, "items": True,
                 "repeats": REPEATS}),
    ("A.B in ['x', 'y']", {"x": True, "attributes": True, "repeats": REPEATS}),
    ("A.B == 'x' or C != 'z'", {"absent": True, "x": True, "empty": True, "attributes": True,
                                "text step": True, "items": True, "repeats": REPEATS}),
    ("A.B not in ['x'] and not (C == 'z')", {"absent": True, "empty": True, "text step": True,
                                             "items": True, "repeats": REPEATS}),
    ("upper(A.B) == 'X'", {"x": True, "attributes": True, "repeats": REPEATS}),
    ("L[].B in ['x']", {"items": True}),  # any of the values
    ("L[].B == 'q' and L[].B != 'x'", {}),  # `!=` holds for a list only if no value equals
    ("/C == 'z'", {"x": True}),
])
def test_conditions_on_odd_values(expr, expected):
    fns = {"upper": lambda v, p: v.upper()}
    for name, data in ODD_RECORDS.items():
        try:
            got = bool(Condition(expr, fns)(Context(data)))
        except MappingError as err:
            got = str(err)
        assert got == expected.get(name, False), (name, data)


def test_identifier_values_are_escaped_for_the_match(cimor, store):
    data = consumer()
    data["ConsumerResources"]["SupportCoordinator"]["Agency"] = "Smith, Jones | Co $5 & 100%"
    for _ in range(2):
        store.transaction(to_transaction(cimor.apply(data)))
    found = store.search("Organization", [(
        "identifier", f"{CANONICAL_BASE}/sid/mo-dd-agency|Smith\\, Jones \\| Co \\$5 & 100%")])
    assert found.total == 1 and history_total(store) == 11


def test_a_broken_mapping_fails_at_load(tmp_path):
    folder = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, folder)
    text = (folder / "cimor.yaml").read_text()
    for bad, message in ((text.replace("date: true", "dates: true", 1), "unknown transform"),
                         (text.replace("translate: hh-program", "translate: nope", 1),
                          "no ConceptMap with id 'nope'"),
                         (text.replace("{ref: patient,", "{ref: person,", 1), "no resource"),
                         (text.replace("when: HealthHome.Indicator == 'Y'",
                                       "when: HealthHome.Indicator = 'Y'", 1), "cannot read")):
        (folder / "cimor.yaml").write_text(bad)
        with pytest.raises(MappingError, match=message):
            load_hh(folder / "cimor.yaml")


# -- the adapters' sample extracts --------------------------------------------------------
def _samples():
    return (list(cimor_parser.parse(ROOT / "adapters" / "cimor" / "sample.xml")) +
            list(cyberaccess_parser.parse(ROOT / "adapters" / "cyberaccess" / "sample.xml")))


def test_sample_extracts_map_validate_and_import_idempotently(cimor, cyberaccess, store, rules):
    records = _samples()
    mappings = {"cimor": cimor, "cyberaccess": cyberaccess}
    assert records and all(not r.errors for r in records)
    counts = Counter()
    for record in records:
        mapped = mappings[record.system].apply(record.data)
        counts.update(f"{record.system}:{m.type}" for m in mapped)
        for m in mapped:
            if m.type in PROFILED:
                assert m.resource["meta"]["profile"] == [PROFILED[m.type]]
            problems = errors(rules.validate(m.resource))
            assert not problems, (record.record_id, m.key, [p.diagnostics for p in problems])
        store.transaction(to_transaction(mapped))
    assert counts["cimor:Patient"] + counts["cyberaccess:Patient"] == len(records)
    assert counts["cimor:EpisodeOfCare"] and counts["cyberaccess:Coverage"]

    total = history_total(store)
    for record in records:
        response = store.transaction(to_transaction(mappings[record.system].apply(record.data)))
        assert {e["response"]["status"] for e in response["entry"]} == {"200 OK"}
    assert history_total(store) == total
    dcns = {r.data["DCN"] for r in records}
    assert store.search("Patient", [("_count", "100")]).total == len(dcns)  # one per DCN
    for rtype in ("Patient", "Condition", "EpisodeOfCare", "CareTeam"):
        for resource in store.search(rtype, [("_count", "500")]).matches:
            assert not errors(rules.validate(resource)), (rtype, resource["id"])


@pytest.mark.parametrize("raw, date", [
    ("2024-02-29", "2024-02-29"), ("2024-02-29T08:30:00-06:00", "2024-02-29"),
    ("2024-02-29Z", "2024-02-29"), ("20240229", "2024-02-29"), ("02/29/2024", "2024-02-29"),
    ("2024-2-9", "2024-02-09"), ("２０２４-02-29", "2024-02-29"),
    ("2023-02-29", None), ("2024-13-01", None), ("0000-01-01", None), ("yesterday", None)])
def test_dates_in_every_spelling_the_extracts_use(raw, date):
    from fhir_gateway.mapping.transforms import TransformError, to_date

    if date is None:
        with pytest.raises(TransformError, match="is not a date"):
            to_date(raw)
    else:
        assert to_date(raw) == date


# -- damaged records and odd mapping files ----------------------------------------------------
def _damaged(data, rng):
    """A copy of a record with leaves dropped, blanked, given odd values, or repeated."""
    data = copy.deepcopy(data)

    def walk(node):
        if isinstance(node, dict):
            for key in list(node):
                roll = rng.random()
                if roll < 0.05:
                    del node[key]
                elif roll < 0.09 and isinstance(node[key], str):
                    node[key] = rng.choice(["", "x", "12/40/2011", "20240101", "f 20.9 ", "Z99",
                                            "2024-01-01T10:00:00Z", "BHH", "15"])
                elif roll < 0.1 and isinstance(node[key], (str, dict)):
                    node[key] = [node[key], copy.deepcopy(node[key])]  # repeats where it may not
                elif roll < 0.11 and isinstance(node[key], str):
                    node[key] = {"#text": node[key], "@type": "x"}  # an attribute on a leaf
                else:
                    walk(node[key])
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(data)
    return data


_ABSENT = object()


def _at(data, path: str):
    """What a MappingError's path (`A.B[1].C`) names in a record: the value, or _ABSENT."""
    node = data
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        if index:
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) \
                else _ABSENT
        else:
            node = node.get(name, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is _ABSENT:
            return node
    return node


@pytest.mark.parametrize("system", ["cimor", "cyberaccess"])
def test_damaged_records_map_or_fail_naming_a_damaged_element(system, tmp_path, rules):
    """Synthetic records, intact and damaged: the intact ones all map to valid resources; a
    damaged one maps the same way twice, or fails with a MappingError whose path names an
    element the damage changed (dropped, repeated, given an odd value)."""
    import random

    from fhir_gateway.adapters.byte_ranges import parse_file
    from fhir_gateway.adapters.synth import write_extracts
    from fhir_gateway.importer import _format

    write_extracts(150, tmp_path)
    records = [r.data for r in parse_file(_format(system), tmp_path / f"{system}.xml")]
    mapping = load_hh(MAPPINGS / f"{system}.yaml")
    for data in records:
        for m in mapping.apply(data):
            assert not errors(rules.validate(m.resource)), m.key
    rng = random.Random(1945)
    outcomes = Counter()
    for intact, data in [(data, _damaged(data, rng)) for data in records for _ in range(4)]:
        before = copy.deepcopy(data)
        try:
            mapped = mapping.apply(data)
        except MappingError as err:
            outcomes["error"] += 1
            assert str(err).startswith(f"{system} ") or err.path == mapping.record_id
            named = err.path.split(" + ")  # a concat names its absent parts
            assert any(_at(data, path) != _at(intact, path) for path in named), str(err)
        else:
            outcomes["mapped"] += 1
            assert [m.resource for m in mapping.apply(data)] == [m.resource for m in mapped]
            for m in mapped:
                assert m.resource["identifier"][0] == dict(zip(("system", "value"),
                                                               m.identifier))
        assert data == before  # mapping never changes the record
    assert outcomes["error"] > 20 and outcomes["mapped"] > len(records)  # both ways were taken


def test_odd_mapping_files_map(tmp_path):
    folder = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, folder)
    doc = yaml.safe_load((folder / "cimor.yaml").read_text())
    patient = next(r for r in doc["resources"] if r["key"] == "patient")
    patient["identifier"]["value"] = {"concat": []}  # an empty identifier: ''
    day = datetime.date(2024, 1, 1)
    patient["resource"][day] = {"x": float("inf"), "y": "$DCN"}  # YAML keys need not be text
    (folder / "cimor.yaml").write_text(yaml.dump(doc, sort_keys=False))
    mapped = one(load_hh(folder / "cimor.yaml").apply(consumer()), "patient")
    assert mapped["identifier"][0]["value"] == ""
    assert mapped[day] == {"x": float("inf"), "y": DCN}


@pytest.mark.parametrize("extra, expected", [
    ("Z99.89", None), ("F20.9", [{"system": CATEGORY, "code": "smi",
                                  "display": "Serious mental illness"}]),
    ("not a code", "cimor 1000003: Extra: 'not a code' is not an ICD-10-CM code")])
def test_a_registered_transform_gives_its_results_and_errors(tmp_path, extra, expected):
    folder = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, folder)
    doc = yaml.safe_load((folder / "cimor.yaml").read_text())
    patient = next(r for r in doc["resources"] if r["key"] == "patient")
    patient["resource"]["categories"] = {"path": "Extra", "categories": True}
    (folder / "cimor.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    data = consumer()
    data["Extra"] = extra
    mapping = load_hh(folder / "cimor.yaml")
    if isinstance(expected, str):
        with pytest.raises(MappingError) as err:
            mapping.apply(data)
        assert str(err.value) == expected
    else:  # no category: an empty list, so no member
        assert one(mapping.apply(data), "patient").get("categories") == expected


# -- the package: no Health Home knowledge (no import cycle: tests/test_architecture.py) --
def test_the_engine_knows_no_health_home_transform_unless_given_it(tmp_path):
    import subprocess
    import sys

    imported = subprocess.run(
        [sys.executable, "-c", "import sys, fhir_gateway.mapping; "
         "print(sorted(m for m in sys.modules if m.startswith('fhir_gateway.healthhome')))"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert imported == "[]"
    with pytest.raises(MappingError, match=r"icd10cm: unknown transform"):
        load_mapping(MAPPINGS / "cimor.yaml")  # no transforms given: `icd10cm` is not generic
    mapped = load_mapping(MAPPINGS / "cimor.yaml", TRANSFORMS).apply(consumer())
    assert any(m.type == "Condition" for m in mapped)
    with pytest.raises(MappingError, match=r"transforms \['date'\] are generic ones"):
        load_mapping(MAPPINGS / "cimor.yaml", {**TRANSFORMS, "date": lambda v, _a: v})


# Paths with `[]` are walked depth first; an extract that breaks one is named breadth first,
# the first step that goes astray at the shallowest level (as before the walk changed).
@pytest.mark.parametrize("path, data, expected", [
    ("L[].B[]", {"L": [{"B": ["x"]}, {"B": "y"}]},
     "L[1].B: expected a list (a repeating element)"),
    ("L[].B.C[]", {"L": [{"B": {"C": ["1"]}}, {"B": [{"C": ["2"]}]}]},
     "L[1].B: repeats: address it with '[]'"),
    ("L[].M[].B", {"L": [{"M": [{"B": "x"}, {"B": ["z"]}]}, {"M": "q"}]},
     "L[1].M: expected a list (a repeating element)"),
])
def test_a_path_that_goes_astray_names_the_shallowest_step(path, data, expected):
    for reach in (items, resolve):
        with pytest.raises(MappingError) as err:
            reach(Context(data), path)
        assert str(err.value) == expected


def test_items_keep_the_source_order_and_paths():
    data = {"L": [{"M": [{"B": "x"}]}, {"M": [None, "", {"B": "y"}]}]}
    found = items(Context(data), "L[].M[].B")
    assert [(c.item, c.where, c.parent.where) for c in found] == [
        ("x", "L[0].M[0].B", "L[0].M[0]"), ("y", "L[1].M[2].B", "L[1].M[2]")]
    assert resolve(Context(data), "L[].M[]") == [{"B": "x"}, {"B": "y"}]
