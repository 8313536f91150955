"""`POST /fhir/$generate-claims` and the checks on every HH Monthly Claim write, over HTTP on
both stores: who is billed for a month (an enrollment in force and a core service from that
Health Home in the month), the claim's content (S0281, the KanCare Lead Entity as insurer,
the Health Home Partner as provider, the services and qualifying conditions), a second run
creating nothing, one claim per member and month (409), and a claim whose services fall
outside its month or whose provider had no enrollment (422)."""

from __future__ import annotations

import pytest

from fhir_gateway.identifiers import CANONICAL_BASE, HH_PROGRAM

JSON = {"Content-Type": "application/fhir+json"}
CORE = f"{CANONICAL_BASE}/CodeSystem/hh-core-service"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
LEAD = f"{CANONICAL_BASE}/StructureDefinition/hh-lead-entity"
MONTHLY = f"{CANONICAL_BASE}/StructureDefinition/hh-monthly-claim"

#: member -> (program, Health Home, enrollment start, end, services as (day, organization))
MEMBERS = {
    "billed-ks": ("ks-smi", "hh-a", "2026-01-01", None, [("2026-06-10", None)]),
    "may-only": ("ks-smi", "hh-a", "2026-01-01", None, [("2026-05-31", None)]),
    "starts-july": ("ks-smi", "hh-a", "2026-07-01", None, [("2026-06-15", None)]),
    "billed-mo": ("mo-cmhc", "hh-b", "2026-03-01", "2026-06-05", [("2026-06-02", "hh-b")]),
    "other-home": ("ks-cc", "hh-a", "2026-01-01", None, [("2026-06-20", "hh-b")]),
}


def put(client, resource: dict) -> dict:
    answer = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def generate(client, month: str = "2026-06", provider: str | None = None):
    params = [{"name": "month", "valueDate": month}]
    if provider:
        params.append({"name": "provider", "valueReference": {"reference": provider}})
    return client.post("/fhir/$generate-claims",
                       json={"resourceType": "Parameters", "parameter": params})


def parts(answer: dict, name: str) -> list[dict]:
    """Each `name` parameter's parts as {part name: value}."""
    out = []
    for p in answer["parameter"]:
        if p["name"] == name:
            out.append({q["name"]: q.get("valueReference", {}).get("reference")
                        or q.get("valueString") or q.get("valueInteger") for q in p["part"]})
    return out


@pytest.fixture
def members(client):
    for org in ("hh-a", "hh-b", "mco", "mo-healthnet"):
        put(client, {"resourceType": "Organization", "id": org, "name": f"Org {org}"})
    put(client, {"resourceType": "Practitioner", "id": "care-manager", "name": [{"family": "Cm"}]})
    for member, (program, home, start, end, services) in MEMBERS.items():
        put(client, {"resourceType": "Patient", "id": member, "name": [{"family": "Synthetic"}]})
        put(client, {"resourceType": "Coverage", "id": f"cov-{member}", "status": "active",
                     "beneficiary": {"reference": f"Patient/{member}"},
                     "payor": [{"reference": "Organization/"
                                + ("mco" if program.startswith("ks") else "mo-healthnet")}],
                     "period": {"start": "2025-01-01"}})
        put(client, {"resourceType": "Condition", "id": f"dx-{member}",
                     "subject": {"reference": f"Patient/{member}"},
                     "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                          "code": "F20.0"}]}})
        episode = {"resourceType": "EpisodeOfCare", "id": f"enr-{member}",
                   "status": "finished" if end else "active",
                   "type": [{"coding": [{"system": HH_PROGRAM, "code": program}]}],
                   "patient": {"reference": f"Patient/{member}"},
                   "managingOrganization": {"reference": f"Organization/{home}"},
                   "diagnosis": [{"condition": {"reference": f"Condition/dx-{member}"}}],
                   "period": {"start": start, **({"end": end} if end else {})}}
        if program.startswith("ks"):
            episode["extension"] = [{"url": LEAD, "valueReference": {"reference": "Organization/mco"}}]
        put(client, episode)
        for n, (day, org) in enumerate(services):
            performer = {"actor": {"reference": "Practitioner/care-manager"}}
            if org:
                performer["onBehalfOf"] = {"reference": f"Organization/{org}"}
            put(client, {"resourceType": "Procedure", "id": f"svc-{member}-{n}",
                         "status": "completed", "subject": {"reference": f"Patient/{member}"},
                         "code": {"coding": [{"system": CORE, "code": "care-coordination"}]},
                         "performedDateTime": f"{day}T09:00:00-05:00", "performer": [performer]})
    return client


def test_the_month_bills_members_with_a_core_service_from_their_health_home(members):
    answer = generate(members)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    created = {p["patient"]: p for p in parts(body, "created")}
    assert set(created) == {"Patient/billed-ks", "Patient/billed-mo"}
    not_billed = {p["patient"]: p["reason"] for p in parts(body, "notBilled")}
    assert set(not_billed) == {"Patient/may-only", "Patient/other-home"}  # starts-july: not enrolled
    assert "no Health Home core service from Organization/hh-a in 2026-06" in not_billed["Patient/may-only"]
    assert "from Organization/hh-a" in not_billed["Patient/other-home"]
    counts = {p["name"]: p.get("valueInteger") for p in body["parameter"]}
    assert counts["claimsCreated"] == 2 and counts["membersNotBilled"] == 2

    ks = members.get(f"/fhir/{created['Patient/billed-ks']['claim']}").json()
    assert ks["meta"]["profile"] == [MONTHLY] and ks["use"] == "claim"
    assert ks["billablePeriod"] == {"start": "2026-06-01", "end": "2026-06-30"}
    assert ks["provider"] == {"reference": "Organization/hh-a"}
    assert ks["insurer"] == {"reference": "Organization/mco"}  # the KanCare Lead Entity
    assert ks["item"][0]["productOrService"]["coding"][0]["code"] == "S0281"
    assert [i["valueReference"]["reference"] for i in ks["supportingInfo"]] == ["Procedure/svc-billed-ks-0"]
    assert ks["diagnosis"][0]["diagnosisReference"] == {"reference": "Condition/dx-billed-ks"}
    assert ks["insurance"][0]["coverage"] == {"reference": "Coverage/cov-billed-ks"}
    mo = members.get(f"/fhir/{created['Patient/billed-mo']['claim']}").json()
    assert mo["insurer"] == {"reference": "Organization/mo-healthnet"}  # no Lead Entity in MO
    assert mo["provider"] == {"reference": "Organization/hh-b"}


def test_a_second_run_creates_nothing(members):
    first = parts(generate(members).json(), "created")
    second = generate(members).json()
    assert parts(second, "created") == []
    again = {p["patient"]: p for p in parts(second, "notBilled")}
    for claim in first:
        assert again[claim["patient"]]["reason"] == "2026-06 is already billed"
        assert again[claim["patient"]]["claim"] == claim["claim"]
    total = members.get("/fhir/Claim", params={"_summary": "count"}).json()["total"]
    assert total == 2


def test_provider_limits_the_run_to_one_health_home(members):
    body = generate(members, provider="Organization/hh-b").json()
    assert [p["patient"] for p in parts(body, "created")] == ["Patient/billed-mo"]
    assert parts(body, "notBilled") == []


def _claim(member: str, service: str, provider: str = "hh-a", month: str = "2026-06") -> dict:
    return {"resourceType": "Claim", "meta": {"profile": [MONTHLY]}, "status": "active",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                                 "code": "professional"}]},
            "use": "claim", "patient": {"reference": f"Patient/{member}"},
            "billablePeriod": {"start": f"{month}-01", "end": f"{month}-30"},
            "created": "2026-07-01", "provider": {"reference": f"Organization/{provider}"},
            "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority",
                                     "code": "normal"}]},
            "supportingInfo": [{"sequence": 1, "category": {"coding": [{
                "system": f"{CANONICAL_BASE}/CodeSystem/hh-codes", "code": "core-service"}]},
                "valueReference": {"reference": service}}],
            "diagnosis": [{"sequence": 1, "diagnosisReference": {"reference": f"Condition/dx-{member}"}}],
            "insurance": [{"sequence": 1, "focal": True,
                           "coverage": {"reference": f"Coverage/cov-{member}"}}],
            "item": [{"sequence": 1, "productOrService": {"coding": [{"system": HCPCS,
                                                                     "code": "S0281"}]}}]}


def test_a_second_claim_for_the_member_and_month_is_refused(members):
    generate(members)
    answer = members.post("/fhir/Claim", json=_claim("billed-ks", "Procedure/svc-billed-ks-0"))
    assert answer.status_code == 409, answer.text
    assert "2026-06 is already billed" in answer.json()["issue"][0]["diagnostics"]


def test_a_claim_must_bill_services_of_its_month_and_an_enrollment_in_force(members):
    outside = members.post("/fhir/Claim", json=_claim("may-only", "Procedure/svc-may-only-0"))
    assert outside.status_code == 422, outside.text
    issue = outside.json()["issue"][0]
    assert "delivered on 2026-05-31, outside the billed month 2026-06" in issue["diagnostics"]
    assert issue["expression"] == ["Claim.supportingInfo[0].valueReference"]
    no_enrollment = members.post("/fhir/Claim", json=_claim("billed-ks", "Procedure/svc-billed-ks-0",
                                                            provider="hh-b"))
    assert no_enrollment.status_code == 422, no_enrollment.text
    assert "no Health Home enrollment with Organization/hh-b" in no_enrollment.text
    someone_else = members.post("/fhir/Claim", json=_claim("may-only", "Procedure/svc-billed-ks-0"))
    assert someone_else.status_code == 422
    assert "is not a completed Health Home core service of Patient/may-only" in someone_else.text
    # the same checks inside a transaction, naming the entry
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _claim("may-only", "Procedure/svc-may-only-0"),
         "request": {"method": "POST", "url": "Claim"}}]}
    answer = members.post("/fhir", json=bundle)
    assert answer.status_code == 422, answer.text
    assert "Bundle.entry[0]" in answer.text
    assert members.get("/fhir/Claim", params={"_summary": "count"}).json()["total"] == 0


@pytest.mark.parametrize("params, where", [
    ([{"name": "month", "valueDate": "2026-13"}], "month"),
    ([], "month"),
    ([{"name": "month", "valueDate": "2026-06"},
      {"name": "provider", "valueReference": {"reference": "Patient/x"}}], "provider"),
])
def test_bad_parameters_are_400_naming_them(client, params, where):
    answer = client.post("/fhir/$generate-claims",
                         json={"resourceType": "Parameters", "parameter": params})
    assert answer.status_code == 400, answer.text
    assert answer.json()["issue"][0]["expression"] == [where]


def test_a_withdrawn_claim_frees_the_month_for_a_claim_by_hand(members):
    claim_ref = parts(generate(members).json(), "created")[0]["claim"]
    claim = members.get(f"/fhir/{claim_ref}").json()
    member = claim["patient"]["reference"].split("/")[1]
    withdrawn = members.put(f"/fhir/{claim_ref}", json={**claim, "status": "cancelled"})
    assert withdrawn.status_code == 200, withdrawn.text
    again = {p["patient"]: p for p in parts(generate(members).json(), "notBilled")}
    assert "withdrawn (cancelled)" in again[claim["patient"]["reference"]]["reason"]
    by_hand = members.post("/fhir/Claim", json=_claim(member, claim["supportingInfo"][0][
        "valueReference"]["reference"], provider=claim["provider"]["reference"].split("/")[1]))
    assert by_hand.status_code == 201, by_hand.text


def test_a_transaction_may_carry_the_service_with_the_claim_that_bills_it(members):
    service = {"resourceType": "Procedure", "status": "completed",
               "subject": {"reference": "Patient/may-only"},
               "code": {"coding": [{"system": CORE, "code": "care-coordination"}]},
               "performedDateTime": "2026-06-03T10:00:00-05:00"}
    url = "urn:uuid:0b6f9a0e-5d1c-4a57-9d0c-2b1f8e0c6a11"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": url, "resource": service, "request": {"method": "POST", "url": "Procedure"}},
        {"resource": _claim("may-only", url), "request": {"method": "POST", "url": "Claim"}}]}
    answer = members.post("/fhir", json=bundle)
    assert answer.status_code == 200, answer.text
    claim = members.get(f"/fhir/{answer.json()['entry'][1]['response']['location']}").json()
    assert claim["supportingInfo"][0]["valueReference"]["reference"].startswith("Procedure/")
    # two claims of one member and month in one transaction: the second is refused
    entry = {"resource": _claim("billed-ks", "Procedure/svc-billed-ks-0"),
             "request": {"method": "POST", "url": "Claim"}}
    twice = members.post("/fhir", json={**bundle, "entry": [entry, entry]})
    assert twice.status_code == 409, twice.text
    assert members.get("/fhir/Claim", params={"patient": "Patient/billed-ks"}).json().get("entry") is None
