"""42 CFR Part 2 disclosure over HTTP with real tokens, on both stores: substance use
disorder data is withheld from a Health Home's client that did not record it — reads,
searches and totals, history, `$hh-eligibility`, bulk export — until the patient's Consent
permits it; and from clients without an organization unless FHIR_GATEWAY_PART2_UNAFFILIATED
says disclose."""

from __future__ import annotations

import pytest

from fhir_gateway.config import Settings
from test_auth import _gateway
from test_eligibility_http import condition
from test_member_access import _export, _seed, get, home_clients, ids, send

PART2 = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "42CFRPart2"}


@pytest.fixture
def homes(store, tmp_path):
    yield from home_clients(store, tmp_path)


def opioid(pid: str) -> dict:
    return condition("F11.20") | {"subject": {"reference": f"Patient/{pid}"}}


def consent(pid: str, home: str) -> dict:
    return {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{pid}"}, "dateTime": "2026-05-01",
            "policy": [{"uri": "https://www.ecfr.gov/current/title-42/part-2"}],
            "provision": {"type": "permit", "securityLabel": [PART2],
                          "actor": [{"role": {"coding": [{
                              "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                              "code": "IRCP"}]},
                              "reference": {"reference": f"Organization/{home}"}}]}}


def categories(gw, who: str, pid: str) -> set[str]:
    answer = get(gw, who, f"Patient/{pid}/$hh-eligibility")
    assert answer.status_code == 200, answer.text
    return {p["valueCode"] for p in answer.json()["parameter"] if p["name"] == "category"}


def test_withheld_from_a_health_home_that_did_not_record_it_until_consent(homes):
    # an HIE (no organization) records pa's opioid use disorder: labelled, recorded by no one
    written = send(homes, "state", "POST", "Condition", opioid("pa"))
    assert written.status_code == 201, written.text
    sud_id = written.json()["id"]
    assert PART2 in [{k: s[k] for k in ("system", "code")}
                     for s in written.json()["meta"]["security"]]
    # Health Home A's member, but A did not record it and pa has not consented
    assert get(homes, "a", f"Condition/{sud_id}").status_code == 404
    assert get(homes, "a", f"Condition/{sud_id}/_history/1").status_code == 404
    found = get(homes, "a", "Condition?patient=Patient/pa").json()
    assert found["total"] == 1 and ids(found) == {"Condition/c-pa"}
    assert get(homes, "a", "Condition?code=F11.20").json()["total"] == 0
    assert get(homes, "a", "Condition?_summary=count").json()["total"] == 1
    # each withholding is on the request's AuditEvent, with the Part 2 label
    for interaction in ("read", "search-type"):
        events = get(homes, "state", f"AuditEvent?subtype={interaction}"
                                     "&agent=Organization/hh-a").json()["entry"]
        withheld = [e for event in events for e in event["resource"].get("entity", [])
                    if e.get("description") == "withheld: 42CFRPart2"]
        assert f"Condition/{sud_id}" in {e["what"]["reference"] for e in withheld}
        assert all(e["securityLabel"][0]["code"] == "42CFRPart2" for e in withheld)
    patients = get(homes, "a", "Patient?_revinclude=Condition:patient").json()
    assert f"Condition/{sud_id}" not in ids(patients)
    assert f"Condition/{sud_id}" not in ids(get(homes, "a", "Condition/_history").json())
    assert "sud" not in categories(homes, "a", "pa")
    exported = _export(homes, "a", "Patient/$export")
    assert sud_id not in {r["id"] for r in exported.get("Condition", [])}
    # the patient consents to disclosure to A: now A sees it everywhere
    assert send(homes, "state", "POST", "Consent", consent("pa", "hh-a")).status_code == 201
    assert get(homes, "a", f"Condition/{sud_id}").status_code == 200
    found = get(homes, "a", "Condition?patient=Patient/pa").json()
    assert found["total"] == 2 and f"Condition/{sud_id}" in ids(found)
    assert "sud" in categories(homes, "a", "pa")
    exported = _export(homes, "a", "Patient/$export")
    assert sud_id in {r["id"] for r in exported["Condition"]}
    # a Consent for A discloses nothing to B
    assert send(homes, "state", "POST", "Condition", opioid("pb")).status_code == 201
    assert get(homes, "b", "Condition?code=F11.20").json()["total"] == 0


def test_the_recording_health_home_sees_its_own(homes):
    mine = send(homes, "a", "POST", "Condition", opioid("pa"))
    assert mine.status_code == 201, mine.text
    assert get(homes, "a", f"Condition/{mine.json()['id']}").status_code == 200
    assert get(homes, "a", "Condition?code=F11.20").json()["total"] == 1
    # the state's client (no organization): withheld by default
    assert get(homes, "state", f"Condition/{mine.json()['id']}").status_code == 404
    assert get(homes, "state", "Condition?code=F11.20").json()["total"] == 0
    assert get(homes, "state", "Condition").json()["total"] == 3  # the three F20.0
    # a transaction's reads leave it out too
    reads = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"Condition/{mine.json()['id']}"}},
        {"request": {"method": "GET", "url": "Condition?code=F11.20,F20.0"}}]}
    answer = send(homes, "state", "POST", "", reads)
    assert answer.status_code == 200, answer.text
    [read, search] = answer.json()["entry"]
    assert read["response"]["status"].startswith("404") and "resource" not in read
    assert ids(search["resource"]) == {"Condition/c-pa", "Condition/c-pb", "Condition/c-pn"}


@pytest.fixture
def disclosing(store, tmp_path):
    """A gateway whose clients without an organization see Part 2 data."""
    _seed(store)
    settings = Settings(auth=True, data_dir=str(tmp_path / "data"), external_issuer="",
                        external_jwks_url="", part2_unaffiliated="disclose")
    for gateway in _gateway(store, settings):
        gateway.tokens = {"state": gateway.token("system/*.cruds")}
        yield gateway


def test_clients_without_organization_see_it_when_configured(disclosing):
    written = send(disclosing, "state", "POST", "Condition", opioid("pn"))
    assert written.status_code == 201
    assert get(disclosing, "state", f"Condition/{written.json()['id']}").status_code == 200
    assert get(disclosing, "state", "Condition?code=F11.20").json()["total"] == 1
