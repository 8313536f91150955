"""The enrollment lifecycle through HTTP, on both stores: enroll, conflict, override,
disenroll and opt-out."""

from __future__ import annotations

from conftest import FHIR_JSON
from test_eligibility_http import condition, coverage, member

SD = "http://fhir.health-home-gateway.org/StructureDefinition"


def setup_member(client, state: str, codes: list[str]) -> None:
    client.put("/fhir/Patient/m1", json=member(state))
    for resource in [*(condition(c) for c in codes), coverage()]:
        assert client.post(f"/fhir/{resource['resourceType']}", json=resource).status_code == 201
    org = {"resourceType": "Organization", "id": "hh1", "name": "Demo Health Home"}
    assert client.put("/fhir/Organization/hh1", json=org).status_code in (200, 201)


def enroll_params(program: str, source: str = "referral", override: str | None = None) -> dict:
    params = [{"name": "program", "valueCode": program},
              {"name": "provider", "valueReference": {"reference": "Organization/hh1"}},
              {"name": "start", "valueDate": "2026-06-01"},
              {"name": "source", "valueCode": source}]
    if override:
        params += [{"name": "override", "valueBoolean": True},
                   {"name": "reason", "valueString": override}]
    return {"resourceType": "Parameters", "parameter": params}


def test_enroll_links_the_qualifying_conditions_and_meets_the_profile(client):
    setup_member(client, "MO", ["F20.9", "I10"])
    r = client.post("/fhir/Patient/m1/$enroll", json=enroll_params("mo-cmhc"))
    assert r.status_code == 201, r.text
    episode = r.json()
    assert r.headers["location"].endswith("/_history/1")
    assert episode["meta"]["profile"] == [f"{SD}/hh-enrollment"]
    assert episode["status"] == "active" and episode["period"]["start"] == "2026-06-01"
    linked = [client.get(f"/fhir/{d['condition']['reference']}").json() for d in episode["diagnosis"]]
    assert [c["code"]["coding"][0]["code"] for c in linked] == ["F20.9"]  # SMI, not hypertension
    assert client.post("/fhir/EpisodeOfCare/$validate", json=episode).json()["issue"][0]["severity"] \
        == "information"


def test_one_health_home_at_a_time(client):
    setup_member(client, "MO", ["F20.9", "E11.9"])
    assert client.post("/fhir/Patient/m1/$enroll", json=enroll_params("mo-cmhc")).status_code == 201
    r = client.post("/fhir/Patient/m1/$enroll", json=enroll_params("mo-pchh"))
    assert r.status_code == 409 and r.headers["content-type"].startswith(FHIR_JSON)
    assert "mo-cmhc" in r.json()["issue"][0]["diagnostics"]


def test_not_eligible_is_422_unless_overridden_with_a_reason(client):
    setup_member(client, "MO", ["I10"])
    r = client.post("/fhir/Patient/m1/$enroll", json=enroll_params("mo-cmhc"))
    assert r.status_code == 422 and "Not eligible" in r.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/EpisodeOfCare?patient=m1").json()["total"] == 0
    r = client.post("/fhir/Patient/m1/$enroll",
                    json=enroll_params("mo-pchh", override="clinician attests a second condition"))
    assert r.status_code == 201, r.text
    provenance = client.get(f"/fhir/Provenance?target=EpisodeOfCare/{r.json()['id']}").json()
    assert provenance["total"] == 1
    assert "clinician attests" in provenance["entry"][0]["resource"]["reason"][0]["text"]


def test_disenroll_and_opt_out_record_the_reason_and_reassessment(client):
    setup_member(client, "KS", ["F31.9"])
    episode = client.post("/fhir/Patient/m1/$enroll",
                          json=enroll_params("ks-smi", "mco-assignment")).json()
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "program", "valueCode": "ks-smi"}, {"name": "reason", "valueCode": "opt-out"},
        {"name": "end", "valueDate": "2026-09-30"}]}
    r = client.post("/fhir/Patient/m1/$disenroll", json=body)
    assert r.status_code == 200, r.text
    closed = r.json()
    assert closed["id"] == episode["id"] and closed["status"] == "finished"
    assert closed["period"]["end"] == "2026-09-30" and closed["meta"]["versionId"] == "2"
    values = {x["url"].rsplit("/", 1)[1]: x for x in closed["extension"]}
    assert values["hh-annual-reassessment-date"]["valueDate"] == "2027-09-30"
    assert values["hh-disenrollment-reason"]["valueCodeableConcept"]["coding"][0]["code"] == "opt-out"
    again = client.post("/fhir/Patient/m1/$disenroll", json=body)
    assert again.status_code == 404
    # after disenrolling, a new enrollment is allowed again
    assert client.post("/fhir/Patient/m1/$enroll", json=enroll_params("ks-smi")).status_code == 201


def test_bad_parameters_are_400(client):
    setup_member(client, "MO", ["F20.9"])
    bad_source = enroll_params("mo-cmhc", source="walk-in")
    assert client.post("/fhir/Patient/m1/$enroll", json=bad_source).status_code == 400
    no_reason = enroll_params("mo-cmhc")
    no_reason["parameter"].append({"name": "override", "valueBoolean": True})
    assert client.post("/fhir/Patient/m1/$enroll", json=no_reason).status_code == 400
    wrong_state = client.post("/fhir/Patient/m1/$enroll", json=enroll_params("ks-cc"))
    assert wrong_state.status_code == 400


def test_mco_assignment_sends_the_assignment_letter(client):
    import base64

    setup_member(client, "KS", ["F31.9"])
    episode = client.post("/fhir/Patient/m1/$enroll",
                          json=enroll_params("ks-smi", "mco-assignment")).json()
    letters = client.get("/fhir/Communication?subject=Patient/m1").json()
    assert letters["total"] == 1
    letter = letters["entry"][0]["resource"]
    assert letter["about"][0]["reference"] == f"EpisodeOfCare/{episode['id']}"
    html = base64.b64decode(letter["payload"][0]["contentAttachment"]["data"]).decode()
    for part in ("Why you are eligible", "Demo Health Home", "Choosing another", "Opting out"):
        assert part in html
    # a referral enrollment sends no letter
    client.post("/fhir/Patient/m1/$disenroll", json={"resourceType": "Parameters", "parameter": [
        {"name": "program", "valueCode": "ks-smi"}, {"name": "reason", "valueCode": "other"},
        {"name": "end", "valueDate": "2026-07-01"}]})
    client.post("/fhir/Patient/m1/$enroll", json=enroll_params("ks-smi", "referral"))
    assert client.get("/fhir/Communication?subject=Patient/m1").json()["total"] == 1


MO_PROVIDER_TYPE = "http://fhir.health-home-gateway.org/CodeSystem/mo-provider-type"


def test_dd_member_gets_a_care_team_with_the_support_coordinator_and_tcm_agency(client):
    setup_member(client, "MO", ["F20.9", "F84.0"])
    client.put("/fhir/Practitioner/sc1", json={"resourceType": "Practitioner", "id": "sc1",
                                               "name": [{"family": "Coordinator"}]})
    client.put("/fhir/Organization/tcm1", json={"resourceType": "Organization", "id": "tcm1",
                                                "name": "Demo TCM Agency"})
    dd = {"resourceType": "EpisodeOfCare", "status": "active", "patient": {"reference": "Patient/m1"},
          "type": [{"coding": [{"system": MO_PROVIDER_TYPE, "code": "15"}]}],
          "managingOrganization": {"reference": "Organization/tcm1"},
          "careManager": {"reference": "Practitioner/sc1"}}
    assert client.post("/fhir/EpisodeOfCare", json=dd).status_code == 201
    episode = client.post("/fhir/Patient/m1/$enroll", json=enroll_params("mo-cmhc")).json()
    team = client.get(f"/fhir/{episode['team'][0]['reference']}").json()
    members = {p["member"]["reference"] for p in team["participant"]}
    assert members == {"Practitioner/sc1", "Organization/tcm1"}
    drafts = client.get("/fhir/ServiceRequest?status=draft&code=dd-regional-office-referral").json()
    assert drafts["total"] == 0  # the DD episode is open: no referral needed


def test_dd_condition_without_a_dd_episode_becomes_a_regional_office_work_item(client):
    setup_member(client, "MO", ["F20.9", "F84.0"])
    assert client.post("/fhir/Patient/m1/$enroll", json=enroll_params("mo-cmhc")).status_code == 201
    drafts = client.get("/fhir/ServiceRequest?status=draft&code=dd-regional-office-referral").json()
    assert drafts["total"] == 1
    assert drafts["entry"][0]["resource"]["subject"]["reference"] == "Patient/m1"
