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


def condition(code: str, status: str = "active") -> dict:
    return {"resourceType": "Condition", "subject": {"reference": "Patient/m1"},
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": status}]},
            "code": {"coding": [{"system": ICD10CM, "code": code}]}}


def coverage(code: str = "2") -> dict:
    return {"resourceType": "Coverage", "status": "active", "beneficiary": {"reference": "Patient/m1"},
            "payor": [{"display": "Medicaid"}], "period": {"start": "2020-01-01"},
            "type": {"coding": [{"system": SOURCE_OF_PAYMENT, "code": code}]}}


def bmi(value: float) -> dict:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/m1"},
            "code": {"coding": [{"system": LOINC, "code": "39156-5"}]},
            "effectiveDateTime": "2026-01-10",
            "valueQuantity": {"value": value, "unit": "kg/m2", "system": "http://unitsofmeasure.org",
                              "code": "kg/m2"}}


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


@pytest.mark.parametrize("name, state, birth, extra, cov, expected", CASES[:3], ids=[c[0] for c in CASES[:3]])
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
