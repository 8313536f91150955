"""42 CFR Part 2 on both stores: substance use disorder resources labelled on every write
path (REST, transaction, batch, conditional update, loader, importer), the recorder taken
from the writing client's organization and never handed over, forged recorders stripped,
labels never duplicated nor dropped, `_security` search, `fhir-gateway relabel`, and the
consent rule (`privacy/consent.py`) over a real store."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT, patient
from test_auth import ES, _gateway, bearer
from fhir_gateway.config import Settings
from fhir_gateway.demo import demo_population
from fhir_gateway.privacy.consent import (DISCLOSE, disclosable, part2_consenting_patients,
                                          permits)
from fhir_gateway.privacy.labels import (PART2_TOKEN, RECORDED_BY, is_part2, recorded_by)
from fhir_gateway.privacy.relabel import relabel_one
from fhir_gateway.privacy.sud import is_sud
from fhir_gateway.store import backend
from fhir_gateway.store.hapi import HapiStore

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
SNOMED = "http://snomed.info/sct"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
HH_PROGRAM = "http://fhir.health-home-gateway.org/CodeSystem/hh-program"
ALL = "system/*.cruds"


def condition(pid: str, code: str, **extra) -> dict:
    return {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": ICD10, "code": code}]}, **extra}


def procedure(pid: str, system: str, code: str) -> dict:
    return {"resourceType": "Procedure", "status": "completed",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": system, "code": code}]}}


def encounter(pid: str, **extra) -> dict:
    return {"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"}, **extra}


def security(resource: dict) -> list[tuple[str, str]]:
    return sorted((c["system"], c["code"]) for c in resource.get("meta", {}).get("security", []))


def recorders(resource: dict) -> list[str]:
    return [c["code"] for c in resource.get("meta", {}).get("tag", [])
            if c.get("system") == RECORDED_BY]


LABELS = [(ACT_CODE, "42CFRPart2"), (CONF, "R")]


def post(client, resource: dict) -> dict:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return r.json()


def read(client, reference: str) -> dict:
    r = client.get(f"/fhir/{reference}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def pid(client) -> str:
    return post(client, patient())["id"]


# -- what is SUD --------------------------------------------------------------------------
def test_what_part2_yaml_counts_as_sud():
    assert is_sud(condition("p", "F11.20")) and is_sud(condition("p", "F10.239"))
    assert not is_sud(condition("p", "J45.909"))
    assert not is_sud(condition("p", "F17.210")), "nicotine is tobacco use, not SUD"
    assert not is_sud(condition("p", "F20.9"))
    assert is_sud({"resourceType": "Condition", "code": {"coding": [
        {"system": SNOMED, "code": "7200002"}]}})
    assert is_sud({"resourceType": "Condition", "category": [{"coding": [
        {"system": "http://fhir.health-home-gateway.org/CodeSystem/hh-condition-category",
         "code": "sud"}]}]})
    assert is_sud(procedure("p", HCPCS, "H0020"))
    assert is_sud(procedure("p", "urn:oid:2.16.840.1.113883.6.285", "H0001"))
    assert not is_sud(procedure("p", HCPCS, "S0281"))
    assert is_sud(encounter("p", reasonCode=[{"coding": [{"system": ICD10, "code": "F11.20"}]}]))
    assert is_sud({"resourceType": "Observation", "code": {"text": "x"},
                   "valueCodeableConcept": {"coding": [{"system": ICD10, "code": "F14.10"}]}})
    assert is_sud({"resourceType": "Claim", "item": [{"productOrService": {"coding": [
        {"system": "http://www.ama-assn.org/go/cpt", "code": "99408"}]}}]})
    assert not is_sud({"resourceType": "Patient"})


# -- labelled on write ----------------------------------------------------------------------
def test_a_sud_condition_is_labelled_and_asthma_is_not(client, pid):
    sud = post(client, condition(pid, "F11.20"))
    asthma = post(client, condition(pid, "J45.909"))
    assert security(sud) == LABELS and security(read(client, f"Condition/{sud['id']}")) == LABELS
    assert security(asthma) == [] and "security" not in read(
        client, f"Condition/{asthma['id']}").get("meta", {})


def test_sud_treatment_procedures_and_encounters_are_labelled(client, pid):
    assert security(post(client, procedure(pid, HCPCS, "H0020"))) == LABELS
    assert security(post(client, procedure(pid, HCPCS, "S0281"))) == []
    treated = post(client, encounter(pid, type=[{"coding": [{"system": SNOMED,
                                                            "code": "20093000"}]}]))
    assert security(read(client, f"Encounter/{treated['id']}")) == LABELS
    assert security(post(client, encounter(pid))) == []


def test_put_and_conditional_update_are_labelled(client, pid):
    r = client.put("/fhir/Condition/sud-put", json={**condition(pid, "F12.20"), "id": "sud-put"})
    assert r.status_code == 201 and security(r.json()) == LABELS
    ident = {"system": "urn:test", "value": "c-1"}
    r = client.put("/fhir/Condition?identifier=urn:test|c-1",
                   json=condition(pid, "F19.20", identifier=[ident]))
    assert r.status_code == 201, r.text
    assert security(read(client, f"Condition/{r.json()['id']}")) == LABELS


def test_transaction_and_batch_entries_are_labelled(client, pid):
    def bundle(kind):
        return {"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": condition(pid, "F10.20"), "request": {"method": "POST", "url": "Condition"}},
            {"resource": condition(pid, "E11.9"), "request": {"method": "POST", "url": "Condition"}},
            {"resource": {**procedure(pid, HCPCS, "H0005"), "id": f"{kind}-proc"},
             "request": {"method": "PUT", "url": f"Procedure/{kind}-proc"}}]}

    for kind in ("transaction", "batch"):
        r = client.post("/fhir", json=bundle(kind))
        assert r.status_code == 200, r.text
        refs = [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]]
        assert [security(read(client, ref)) for ref in refs] == [LABELS, [], LABELS], kind


def test_client_labels_are_kept_never_duplicated_and_never_dropped_on_update(client, pid):
    sent = condition(pid, "F11.20", meta={"security": [
        {"system": CONF, "code": "R"}, {"system": ACT_CODE, "code": "ETH"}]})
    created = post(client, sent)
    assert security(created) == sorted([*LABELS, (ACT_CODE, "ETH")])
    again = client.put(f"/fhir/Condition/{created['id']}", json=created)
    assert again.status_code == 200 and security(again.json()) == security(created)
    # the diagnosis corrected to a non-SUD code: the Part 2 labels stay (conservative)
    corrected = {**condition(pid, "F41.1"), "id": created["id"]}
    r = client.put(f"/fhir/Condition/{created['id']}", json=corrected)
    assert r.status_code == 200, r.text
    assert set(LABELS) <= set(security(read(client, f"Condition/{created['id']}")))


def test_a_recorded_by_tag_sent_without_an_organization_is_stripped(client, pid):
    forged = post(client, condition(pid, "F11.20", meta={"tag": [
        {"system": RECORDED_BY, "code": "Organization/hh-x"},
        {"system": "urn:keep", "code": "mine"}]}))
    stored = read(client, f"Condition/{forged['id']}")
    assert recorders(stored) == [] and recorded_by(stored) is None
    assert {"system": "urn:keep", "code": "mine"} in stored["meta"]["tag"]


def test_security_search_finds_the_labelled_resources(client, pid):
    sud = post(client, condition(pid, "F15.20"))
    post(client, condition(pid, "J45.909"))
    r = client.get("/fhir/Condition", params={"_security": PART2_TOKEN})
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json().get("entry", [])] == [sud["id"]]
    r = client.get("/fhir/Condition", params={"_security:not": PART2_TOKEN})
    assert sud["id"] not in [e["resource"]["id"] for e in r.json().get("entry", [])]


# -- recorded-by, with authorization on ----------------------------------------------------
@pytest.fixture
def gateway(store, tmp_path):
    settings = Settings(auth=True, data_dir=str(tmp_path / "data"), external_issuer="",
                        external_jwks_url="")
    yield from _gateway(store, settings)


def org_token(gw, organization: str | None) -> dict:
    cid = gw.registry.add("part2 test", ALL, jwks=ES.jwks, organization=organization).id
    answer = gw.ask(cid, ALL)
    assert answer.status_code == 200, answer.text
    return bearer(answer.json()["access_token"])


def enrolled_patient(store) -> str:
    """A member enrolled with both Health Homes (so both may write about them)."""
    pid = store.create(patient()).resource["id"]
    for org in ("hh-a", "hh-b"):
        store.update("Organization", org, {"resourceType": "Organization", "id": org,
                                           "name": f"Health Home {org}"})
        store.create({"resourceType": "EpisodeOfCare", "status": "active",
                      "type": [{"coding": [{"system": HH_PROGRAM, "code": "mo-cmhc"}]}],
                      "patient": {"reference": f"Patient/{pid}"},
                      "managingOrganization": {"reference": f"Organization/{org}"},
                      "period": {"start": "2024-01-01"}})
    return pid


def test_the_recorder_is_the_writing_clients_organization_and_stays(gateway, store):
    pid = enrolled_patient(store)
    a, b, state = (org_token(gateway, "Organization/hh-a"), org_token(gateway, "Organization/hh-b"),
                   org_token(gateway, None))
    http, base = gateway.http, gateway.base
    ident = {"system": "urn:test", "value": "recorded-1"}
    r = http.post(f"{base}/Condition", headers=a,
                  content=json.dumps(condition(pid, "F11.20", identifier=[ident])))
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert recorders(r.json()) == ["Organization/hh-a"] and security(r.json()) == LABELS
    # another Health Home updates it, claiming to be the recorder: hh-a stays the recorder
    update = {**condition(pid, "F11.21", identifier=[ident]), "id": cid, "meta": {"tag": [
        {"system": RECORDED_BY, "code": "Organization/hh-b"}]}}
    r = http.put(f"{base}/Condition/{cid}", headers=b, content=json.dumps(update))
    assert r.status_code == 200, r.text
    stored = store.read("Condition", cid)
    assert recorders(stored) == ["Organization/hh-a"] and stored["code"]["coding"][0]["code"] == "F11.21"
    # by a conditional update on its identifier (alone, and with another in a transaction)
    r = http.put(f"{base}/Condition?identifier=urn:test|recorded-1", headers=b,
                 content=json.dumps(condition(pid, "F11.23", identifier=[ident])))
    assert r.status_code == 200, r.text
    assert recorders(store.read("Condition", cid)) == ["Organization/hh-a"]
    other = {"system": "urn:test", "value": "recorded-2"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": condition(pid, "F11.24", identifier=[ident]),
         "request": {"method": "PUT", "url": "Condition?identifier=urn:test|recorded-1"}},
        {"resource": condition(pid, "F11.25", identifier=[other]),
         "request": {"method": "PUT", "url": "Condition?identifier=urn:test|recorded-2"}}]}
    r = http.post(base, headers=b, content=json.dumps(bundle))
    assert r.status_code == 200, r.text
    assert recorders(store.read("Condition", cid)) == ["Organization/hh-a"]
    made = store.search("Condition", [("identifier", "urn:test|recorded-2")]).matches
    assert [recorders(c) for c in made] == [["Organization/hh-b"]]
    # in a transaction too
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**condition(pid, "F11.22", identifier=[ident]), "id": cid},
         "request": {"method": "PUT", "url": f"Condition/{cid}"}},
        {"resource": condition(pid, "F10.20"), "request": {"method": "POST", "url": "Condition"}}]}
    r = http.post(base, headers=b, content=json.dumps(bundle))
    assert r.status_code == 200, r.text
    new = r.json()["entry"][1]["response"]["location"].split("/")[1]
    assert recorders(store.read("Condition", cid)) == ["Organization/hh-a"]
    assert recorders(store.read("Condition", new)) == ["Organization/hh-b"]
    # a forged recorder from a Health Home is replaced by its own organization
    forged = {**condition(pid, "F13.20"), "meta": {"tag": [
        {"system": RECORDED_BY, "code": "Organization/hh-a"}]}}
    r = http.post(f"{base}/Condition", headers=b, content=json.dumps(forged))
    assert r.status_code == 201 and recorders(r.json()) == ["Organization/hh-b"]
    # a client without organization records nothing, and cannot claim a recorder
    r = http.post(f"{base}/Condition", headers=state, content=json.dumps(forged))
    assert r.status_code == 201 and recorders(r.json()) == [] and security(r.json()) == LABELS


# -- the loader, the importer and relabel ---------------------------------------------------
def store_url(store) -> str:
    inner = backend(store)
    return inner.base if isinstance(inner, HapiStore) else f"sqlite:///{inner.path}"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fhir_gateway.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_loader_labels(store, tmp_path):
    pid = store.create(patient()).resource["id"]
    lines = [condition(pid, "F11.20", id="loaded-sud"), condition(pid, "I10", id="loaded-htn"),
             {**procedure(pid, HCPCS, "H0015"), "id": "loaded-proc"}]
    path = tmp_path / "part2.ndjson"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = cli("load", str(path), "--store", store_url(store))
    assert result.returncode == 0, result.stdout + result.stderr
    assert security(store.read("Condition", "loaded-sud")) == LABELS
    assert security(store.read("Condition", "loaded-htn")) == []
    assert security(store.read("Procedure", "loaded-proc")) == LABELS


def test_the_importer_labels_the_sud_diagnoses_of_an_extract(store):
    sample = ROOT / "adapters" / "cyberaccess" / "sample.xml"
    result = cli("import", "cyberaccess", str(sample), "--store", store_url(store))
    assert result.returncode == 0, result.stdout + result.stderr
    found = store.search("Condition", [("code", f"{ICD10}|F11.20"), ("_count", "100")]).matches
    assert found and all(is_part2(c) for c in found)
    others = store.search("Condition", [("code", f"{ICD10}|F43.10"), ("_count", "100")]).matches
    assert others and not any(is_part2(c) for c in others)


def test_the_demo_populations_sud_diagnoses_are_labelled(store):
    bundles = demo_population()
    sud = [e["resource"]["code"]["coding"][0]["code"] for b in bundles for e in b["entry"]
           if is_sud(e["resource"])]
    assert sud, "the demo has members with a substance use disorder"
    for bundle in bundles:
        store.transaction(bundle)
    found = store.search("Condition", [("_security", PART2_TOKEN), ("_count", "1000")]).matches
    assert sorted(c["code"]["coding"][0]["code"] for c in found) == sorted(sud)


def test_relabel_labels_what_was_stored_before_and_then_changes_nothing(store):
    raw = backend(store)  # as a store filled before labelling on write
    pid = raw.create(patient()).resource["id"]
    old = raw.create(condition(pid, "F16.20", meta={"tag": [
        {"system": RECORDED_BY, "code": "Organization/hh-a"}]})).resource["id"]
    plain = raw.create(condition(pid, "J45.909")).resource["id"]
    assert not is_part2(raw.read("Condition", old))
    result = cli("relabel", "--store", store_url(store))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Labelled 1 resource(s)" in " ".join(result.stderr.split())
    stored = raw.read("Condition", old)
    assert security(stored) == LABELS and recorders(stored) == ["Organization/hh-a"]
    assert raw.read("Condition", plain)["meta"]["versionId"] == "1"
    again = cli("relabel", "--store", store_url(store))
    assert "Labelled 0 resource(s)" in " ".join(again.stderr.split())
    assert raw.read("Condition", old)["meta"]["versionId"] == stored["meta"]["versionId"]


def test_relabel_never_undoes_a_write_made_after_it_read(store):
    raw = backend(store)
    pid = raw.create(patient()).resource["id"]
    first = raw.create(condition(pid, "F11.20")).resource
    raw.update("Condition", first["id"], {**condition(pid, "F11.21"), "id": first["id"]})
    assert relabel_one(raw, first) == 1  # `first` is stale: the newer version is labelled
    stored = raw.read("Condition", first["id"])
    assert stored["code"]["coding"][0]["code"] == "F11.21" and security(stored) == LABELS


# -- the consent rule ---------------------------------------------------------------------
def consent(pid: str, org: str = "hh-a", status: str = "active", kind: str = "permit",
            labels: bool = True, period: dict | None = None) -> dict:
    provision = {"type": kind, "actor": [{
        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                             "code": "IRCP"}]},
        "reference": {"reference": f"Organization/{org}"}}]}
    if labels:
        provision["securityLabel"] = [{"system": ACT_CODE, "code": "42CFRPart2"}]
    if period:
        provision["period"] = period
    return {"resourceType": "Consent", "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{pid}"},
            "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
            "provision": provision}


def test_part2_consenting_patients_reads_the_active_permits_for_the_organization(store):
    for org in ("hh-a", "hh-b"):
        store.update("Organization", org, {"resourceType": "Organization", "id": org})
    people = {name: store.create(patient(f"{n:08d}", family=name)).resource["id"]
              for n, name in enumerate(["yes", "inactive", "deny", "other", "expired",
                                        "unlabelled", "current", "open"])}
    for name, resource in [("yes", consent(people["yes"])),
                           ("inactive", consent(people["inactive"], status="inactive")),
                           ("deny", consent(people["deny"], kind="deny")),
                           ("other", consent(people["other"], org="hh-b")),
                           ("expired", consent(people["expired"], period={
                               "start": "2020-01-01", "end": "2021-12-31"})),
                           ("unlabelled", consent(people["unlabelled"], labels=False)),
                           ("current", consent(people["current"], period={
                               "start": "2020-01-01", "end": "2999-12-31"})),
                           ("open", consent(people["open"], period={"start": "2020-01-01"}))]:
        written = store.create(resource)
        assert written.created, name
    expected = {people["yes"], people["current"], people["open"]}
    assert part2_consenting_patients(store, "Organization/hh-a") == expected
    assert part2_consenting_patients(store, "hh-a") == expected
    assert part2_consenting_patients(store, "Organization/hh-b") == {people["other"]}
    assert part2_consenting_patients(store, "Organization/hh-c") == frozenset()
    # the same consent, judged before its period started
    assert part2_consenting_patients(store, "Organization/hh-a",
                                     now=time.mktime((2019, 6, 1, 0, 0, 0, 0, 0, 0))) == {
        people["yes"]}


def test_a_nested_deny_takes_part2_back():
    granted = consent("p1")
    assert permits(granted, "Organization/hh-a", time.time())
    granted["provision"]["provision"] = [{"type": "deny", "securityLabel": [
        {"system": ACT_CODE, "code": "42CFRPart2"}]}]
    assert not permits(granted, "Organization/hh-a", time.time())


def test_disclosable():
    sud = {**condition("p1", "F11.20"), "meta": {
        "security": [{"system": ACT_CODE, "code": "42CFRPart2"}],
        "tag": [{"system": RECORDED_BY, "code": "Organization/hh-a"}]}}
    plain = condition("p1", "J45.909")
    nobody = frozenset()
    assert disclosable(plain, "Organization/hh-b", nobody)
    assert disclosable(plain, None, nobody)
    assert disclosable(sud, "Organization/hh-a", nobody), "the recorder sees it"
    assert not disclosable(sud, "Organization/hh-b", nobody)
    assert disclosable(sud, "Organization/hh-b", frozenset({"p1"})), "the patient consented"
    assert not disclosable(sud, "Organization/hh-b", frozenset({"p2"}))
    assert not disclosable(sud, None, nobody), "withheld from clients without organization"
    assert disclosable(sud, None, nobody, unaffiliated=DISCLOSE)
    about_nobody = {**sud, "subject": None}
    assert not disclosable(about_nobody, "Organization/hh-b", frozenset({"p1"}))
