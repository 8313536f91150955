"""`$hh-eligibility` through HTTP, on both stores: stored members (GET) and posted Bundles."""

from __future__ import annotations

import pytest

from fhir_gateway.identifiers import (CONDITION_CLINICAL, ICD10CM, KANCARE_ID, LOINC,
                                      MO_HEALTHNET_DCN, SOURCE_OF_PAYMENT)

AS_OF = "2026-06-01"


def member(state: str, birth: str = "1980-05-01") -> dict:
    system, value = (MO_HEALTHNET_DCN, "20260001") if state == "MO" else (KANCARE_ID, "20260000001")
    return {"resourceType": "Patient", "id": "m1", "identifier": [{"system": system, "value": value}],
            "name": [{"family": "Eligible"}], "gender": "female", "birthDate": birth,
            "address": [{"state": state}]}


def condition(code: str, status: str = "active", **onset) -> dict:
    return {"resourceType": "Condition", "subject": {"reference": "Patient/m1"},
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": status}]},
            "code": {"coding": [{"system": ICD10CM, "code": code}]}, **onset}


def coverage(code: str = "2") -> dict:
    return {"resourceType": "Coverage", "status": "active", "beneficiary": {"reference": "Patient/m1"},
            "payor": [{"display": "Medicaid"}], "period": {"start": "2020-01-01"},
            "type": {"coding": [{"system": SOURCE_OF_PAYMENT, "code": code}]}}


def bmi(value: float, loinc: str = "39156-5", unit: str = "kg/m2") -> dict:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/m1"},
            "code": {"coding": [{"system": LOINC, "code": loinc}]},
            "effectiveDateTime": "2026-01-10",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                              "code": unit}}


def bmi_for_age(percentile: float) -> dict:
    return bmi(percentile, "59576-9", "%")


ONSET_AT_5 = {"onsetAge": {"value": 5, "unit": "a", "system": "http://unitsofmeasure.org",
                           "code": "a"}}


CASES = [  # (name, state, birthDate, extra resources, coverage code, {program: eligible})
    ("MO SMI alone", "MO", "1980-05-01", [condition("F20.9")], "2",
     {"mo-cmhc": True}),
    ("MO hypertension alone", "MO", "1980-05-01", [condition("I10")], "2",
     {"mo-cmhc": False, "mo-pchh": False}),
    ("MO diabetes alone (PCHH)", "MO", "1980-05-01", [condition("E11.9")], "2",
     {"mo-pchh": True}),
    ("MO resolved SMI", "MO", "1980-05-01", [condition("F20.9", "resolved")], "2",
     {"mo-cmhc": False}),
    ("MO depression + overweight", "MO", "1980-05-01", [condition("F32.9"), bmi(27)], "2",
     {"mo-cmhc": True}),
    ("KS SMI", "KS", "1980-05-01", [condition("F31.9")], "2", {"ks-smi": True}),
    ("KS SMI with SUD", "KS", "1980-05-01", [condition("F31.9"), condition("F10.20")], "2",
     {"ks-smi": False}),
    ("KS child on CHIP", "KS", "2015-05-01", [condition("F31.9")], "23",
     {"ks-smi": False, "ks-cc": False}),
    # ConceptMap corrections
    ("MO F32.A depression unspecified is not SMI", "MO", "1980-05-01", [condition("F32.A")], "2",
     {"mo-cmhc": False}),
    ("MO MH + history of nicotine dependence", "MO", "1980-05-01",
     [condition("F99"), condition("Z87.891")], "2", {"mo-cmhc": False}),
    ("MO E66.3 overweight alone", "MO", "1980-05-01", [condition("E66.3")], "2",
     {"mo-pchh": False}),
    ("MO MH + epilepsy, onset unknown", "MO", "1980-05-01",
     [condition("F99"), condition("G40.909")], "2", {"mo-cmhc": False}),
    ("MO MH + epilepsy from age 5", "MO", "1980-05-01",
     [condition("F99"), condition("G40.909", **ONSET_AT_5)], "2", {"mo-cmhc": True}),
    ("KS child disintegrative disorder", "KS", "1980-05-01", [condition("F84.3")], "2",
     {"ks-smi": True}),
    ("MO COPD + cardiomyopathy", "MO", "1980-05-01", [condition("J44.9"), condition("I42.9")],
     "2", {"mo-pchh": True}),
    # MO PCHH behavioral health: anxiety, depression, substance use disorder
    ("MO schizophrenia + asthma is not PCHH", "MO", "1980-05-01",
     [condition("F20.9"), condition("J45.909")], "2", {"mo-pchh": False, "mo-cmhc": True}),
    # children's weight: BMI-for-age
    ("MO child BMI-for-age 97th (obesity)", "MO", "2016-05-01", [bmi_for_age(97)], "2",
     {"mo-pchh": True}),
    ("MO child adult-scale BMI 31", "MO", "2016-05-01", [bmi(31)], "2", {"mo-pchh": False}),
    # coverage: the state's own Medicaid; dual eligibles count
    ("MO Medicaid out of state (25)", "MO", "1980-05-01", [condition("F20.9")], "25",
     {"mo-cmhc": False, "mo-pchh": False}),
    ("KS dual eligible (14)", "KS", "1980-05-01", [condition("F31.9")], "14", {"ks-smi": True}),
]


def verdicts(parameters: dict) -> dict[str, bool]:
    out = {}
    for p in parameters["parameter"]:
        if p["name"] == "program":
            parts = {q["name"]: q for q in p["part"]}
            out[parts["code"]["valueCode"]] = parts["eligible"]["valueBoolean"]
            assert parts["rule"]["valueString"] and parts["explanation"]["valueString"]
    return out


@pytest.mark.parametrize("name, state, birth, extra, cov, expected", CASES, ids=[c[0] for c in CASES])
def test_stored_member_through_get(client, name, state, birth, extra, cov, expected):
    patient = member(state, birth)
    assert client.put("/fhir/Patient/m1", json=patient).status_code == 201
    for resource in [*extra, coverage(cov)]:
        assert client.post(f"/fhir/{resource['resourceType']}", json=resource).status_code == 201
    r = client.get(f"/fhir/Patient/m1/$hh-eligibility?asOf={AS_OF}")
    assert r.status_code == 200, r.text
    got = verdicts(r.json())
    assert {k: got[k] for k in expected} == expected


POSTED = [c for c in CASES if c[0] in (
    "MO SMI alone", "MO hypertension alone", "MO diabetes alone (PCHH)",
    "MO MH + epilepsy, onset unknown", "MO child BMI-for-age 97th (obesity)")]


@pytest.mark.parametrize("name, state, birth, extra, cov, expected", POSTED, ids=[c[0] for c in POSTED])
def test_posted_bundle(client, name, state, birth, extra, cov, expected):
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in [member(state, birth), *extra, coverage(cov)]]}
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "bundle", "resource": bundle}, {"name": "asOf", "valueDate": AS_OF}]}
    r = client.post("/fhir/Patient/$hh-eligibility", json=body)
    assert r.status_code == 200, r.text
    got = verdicts(r.json())
    assert {k: got[k] for k in expected} == expected
    categories = [p["valueCode"] for p in r.json()["parameter"] if p["name"] == "category"]
    assert categories


def test_bad_input_is_400(client):
    assert client.post("/fhir/Patient/$hh-eligibility", json={"resourceType": "Patient"}).status_code == 400
    no_patient = {"resourceType": "Parameters", "parameter": [
        {"name": "bundle", "resource": {"resourceType": "Bundle", "type": "collection", "entry": []}}]}
    r = client.post("/fhir/Patient/$hh-eligibility", json=no_patient)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    client.put("/fhir/Patient/m1", json=member("MO"))
    assert client.get("/fhir/Patient/m1/$hh-eligibility?asOf=June").status_code == 400


def test_batch_eligibility_cli_from_ndjson_and_from_the_store(tmp_path):
    import csv
    import json
    import subprocess
    import sys

    from conftest import ROOT

    lines = []
    for i, (state, code) in enumerate((("MO", "F20.9"), ("MO", "I10"), ("KS", "F31.9"))):
        patient = member(state)
        patient["id"] = f"m{i}"
        patient["identifier"][0]["value"] = patient["identifier"][0]["value"][:-1] + str(i)
        others = [condition(code), coverage()]
        for r in others:
            r[{"Condition": "subject", "Coverage": "beneficiary"}[r["resourceType"]]] = \
                {"reference": f"Patient/m{i}"}
        lines += [json.dumps(r) for r in (patient, *others)]
    source = tmp_path / "members.ndjson"
    source.write_text("\n".join(lines) + "\n")

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "fhir_gateway.cli", "eligibility", *args],
                                capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        return result

    report = tmp_path / "report.csv"
    run("--input", str(source), "--as-of", AS_OF, "--out", str(report))
    rows = list(csv.DictReader(report.open()))
    verdict = {(r["patient"], r["program"]): r["eligible"] for r in rows}
    assert verdict[("m0", "mo-cmhc")] == "True" and verdict[("m1", "mo-cmhc")] == "False"
    assert verdict[("m2", "ks-smi")] == "True"
    store = f"sqlite:///{tmp_path / 'batch.db'}"
    subprocess.run([sys.executable, "-m", "fhir_gateway.cli", "load", str(source), "--store", store],
                   capture_output=True, cwd=ROOT, timeout=120, check=True)
    out = tmp_path / "report.ndjson"
    run("--store", store, "--as-of", AS_OF, "--out", str(out))
    stored = {(r["patient"], r["program"]): r["eligible"]
              for r in map(json.loads, out.read_text().splitlines())}
    assert stored == {k: v == "True" for k, v in verdict.items()}


def program_parts(parameters: dict, name: str) -> dict[str, str]:
    """Each program's part `name` (explanation, rule), by program code."""
    return {parts["code"]["valueCode"]: parts[name]["valueString"]
            for p in parameters["parameter"] if p["name"] == "program"
            for parts in [{q["name"]: q for q in p["part"]}]}


def test_onset_not_verified_is_said(client):
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": r} for r in [member("MO"), condition("F99"), condition("G40.909"),
                                  coverage()]]}
    r = client.post("/fhir/Patient/$hh-eligibility", json={
        "resourceType": "Parameters", "parameter": [
            {"name": "bundle", "resource": bundle}, {"name": "asOf", "valueDate": AS_OF}]})
    assert r.status_code == 200, r.text
    said = program_parts(r.json(), "explanation")["mo-cmhc"]
    assert "G40.909 is not counted as developmental-disability" in said
    assert "onset was not verified" in said


def test_primary_diagnosis_of_stored_episodes_and_encounters(client):
    """The SMI must be the primary diagnosis where one is ranked; unranked, it is not verified."""
    assert client.put("/fhir/Patient/m1", json=member("MO")).status_code == 201
    assert client.post("/fhir/Coverage", json=coverage()).status_code == 201
    for cid, code in (("scz", "F20.9"), ("uri", "J06.9")):
        assert client.put(f"/fhir/Condition/{cid}", json={**condition(code), "id": cid}
                          ).status_code == 201

    def cmhc() -> tuple[bool, str]:
        r = client.get(f"/fhir/Patient/m1/$hh-eligibility?asOf={AS_OF}")
        assert r.status_code == 200, r.text
        return verdicts(r.json())["mo-cmhc"], program_parts(r.json(), "explanation")["mo-cmhc"]

    eligible, said = cmhc()
    assert eligible and "primary diagnosis was not verified" in said
    encounter = {"resourceType": "Encounter", "status": "finished", "subject": {"reference": "Patient/m1"},
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "period": {"start": "2026-02-01"},
                 "diagnosis": [{"condition": {"reference": "Condition/uri"}, "rank": 1},
                               {"condition": {"reference": "Condition/scz"}, "rank": 2}]}
    assert client.post("/fhir/Encounter", json=encounter).status_code == 201
    assert cmhc()[0] is False  # the primary diagnosis (rank 1) is not the SMI
    episode = {"resourceType": "EpisodeOfCare", "status": "active",
               "patient": {"reference": "Patient/m1"}, "period": {"start": "2026-03-01"},
               "diagnosis": [{"condition": {"reference": "Condition/scz"}, "rank": 1}]}
    assert client.post("/fhir/EpisodeOfCare", json=episode).status_code == 201
    eligible, said = cmhc()
    assert eligible and "not verified" not in said


def test_missouri_chip_child_imported_from_cyberaccess(client, store):
    """CyberAccess's CHIP segment (ME 73) becomes SOPT 23, which mo.yaml's gate reads."""
    from conftest import ROOT

    from fhir_gateway.importer import import_extract

    summary = import_extract(store, "cyberaccess", ROOT / "adapters/cyberaccess/sample.xml",
                             workers=0)
    assert summary.quarantined == 0
    found = store.search("Patient", [("identifier", f"{MO_HEALTHNET_DCN}|10000084")]).matches
    coverages = store.search("Coverage", [("beneficiary", f"Patient/{found[0]['id']}")]).matches
    assert [c["type"]["coding"][0]["code"] for c in coverages] == ["23"]
    r = client.get(f"/fhir/Patient/{found[0]['id']}/$hh-eligibility?asOf={AS_OF}")
    assert r.status_code == 200, r.text
    assert program_parts(r.json(), "rule") == {"mo-cmhc": "mo-no-chip", "mo-pchh": "mo-no-chip"}
