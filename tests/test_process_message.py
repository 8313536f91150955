"""`POST /fhir/$process-message` (Da Vinci Unsolicited Notifications) over HTTP, on both
stores: the admit -> transfer -> discharge flow of one member, replay, out-of-order delivery,
patient matching (DCN, MRN, none, ambiguous) and each refusal, with nothing half-stored."""

from __future__ import annotations

import base64
import copy
import re
import threading
from pathlib import Path

import orjson
import pytest


from exchange_messages import dcn, kancare, message, mrn
from fhir_gateway.identifiers import MO_HEALTHNET_DCN

URL = "/fhir/$process-message"


def send(client, bundle: dict, status: int = 200) -> dict:
    r = client.post(URL, json=bundle)
    assert r.status_code == status, r.text
    return r.json()


def search(client, path: str) -> dict:
    r = client.get(f"/fhir/{path}")
    assert r.status_code == 200, r.text
    return r.json()


def total(client, path: str) -> int:
    return search(client, path + ("&" if "?" in path else "?") + "_total=accurate")["total"]


def member(client, *identifiers: dict, pid: str = "member1") -> dict:
    patient = {"resourceType": "Patient", "id": pid, "identifier": list(identifiers),
               "name": [{"family": "Member", "given": ["Enrolled"]}], "gender": "female",
               "birthDate": "1980-02-02"}
    r = client.put(f"/fhir/Patient/{pid}", json=patient)
    assert r.status_code == 201, r.text
    return r.json()


def encounters(client, stay: str) -> list[dict]:
    found = search(client, f"Encounter?identifier=urn:oid:2.16.840.1.113883.3.9999.1.3|{stay}")
    return [e["resource"] for e in found.get("entry", [])]


def stored_counts(client) -> dict[str, int]:
    return {t: total(client, t) for t in ("Patient", "Encounter", "MessageHeader", "Location",
                                          "Condition", "Coverage", "Organization", "Task")}


def test_admit_transfer_discharge_updates_one_encounter_of_the_member(client):
    member(client, dcn())
    for kind in ("admit", "transfer", "discharge"):
        bundle = message(kind, [dcn(), mrn()])
        answer = send(client, bundle)
        header = answer["entry"][0]["resource"]
        assert answer["type"] == "message" and header["resourceType"] == "MessageHeader"
        assert header["response"] == {"identifier": bundle["entry"][0]["resource"]["id"],
                                      "code": "ok"}
        assert header["eventCoding"]["code"] == f"notification-{kind}"
    (stay,) = encounters(client, "V1001")
    assert stay["status"] == "finished" and stay["class"]["code"] == "IMP"
    assert stay["subject"] == {"reference": "Patient/member1"}
    assert stay["period"] == {"start": "2026-03-01T09:40:00-06:00",
                              "end": "2026-03-04T10:30:00-06:00"}
    patient = client.get("/fhir/Patient/member1").json()
    assert patient["name"][0]["family"] == "Member"  # demographics stay the member's
    assert [i["system"] for i in patient["identifier"]] == [MO_HEALTHNET_DCN, mrn()["system"]]
    assert stored_counts(client) == {"Patient": 1, "Encounter": 1, "MessageHeader": 3,
                                     "Location": 1, "Condition": 1, "Coverage": 1,
                                     "Organization": 2, "Task": 0}
    condition = search(client, "Condition")["entry"][0]["resource"]
    assert condition["encounter"] == {"reference": f"Encounter/{stay['id']}"}
    assert condition["subject"] == {"reference": "Patient/member1"}


def test_a_message_seen_before_changes_nothing_and_gets_the_same_answer(client):
    member(client, dcn())
    first = send(client, message("admit", [dcn(), mrn()]))
    before = encounters(client, "V1001")
    history = search(client, "_history")["total"]
    again = send(client, message("admit", [dcn(), mrn()]))
    assert again == first
    assert encounters(client, "V1001") == before
    assert search(client, "_history")["total"] == history
    changed = message("admit", [dcn(), mrn()])  # same MessageHeader.id, other content
    changed["entry"][3]["resource"]["name"] = "Renamed"
    assert send(client, changed) == first
    assert search(client, "Location")["entry"][0]["resource"]["name"] == "Test Hospital ED"
    assert search(client, "_history")["total"] == history


@pytest.mark.parametrize("order", [("discharge", "admit", "transfer"),
                                   ("transfer", "discharge", "admit")])
def test_out_of_order_delivery_ends_in_the_same_state(client, order):
    member(client, dcn())
    for kind in ("admit", "transfer", "discharge"):
        send(client, message(kind, [dcn(), mrn()], stay="IN-ORDER"))
    for kind in order:
        send(client, message(kind, [dcn(), mrn()], stay="SHUFFLED"))

    def state(stay: str) -> dict:
        (encounter,) = encounters(client, stay)
        return {k: v for k, v in encounter.items()
                if k not in ("id", "meta", "identifier", "extension", "participant",
                             "location", "serviceProvider")}

    assert state("SHUFFLED") == state("IN-ORDER")
    assert state("SHUFFLED")["status"] == "finished"


def test_a_member_is_matched_by_dcn_and_gains_the_mrn_once(client):
    member(client, {**mrn(), "type": {"text": "MRN"}}, dcn())
    member(client, kancare(), pid="other")  # shares nothing with the message
    send(client, message("admit", [dcn(), mrn("MRN-OTHER-HOSPITAL")]))
    send(client, message("discharge", [mrn(), dcn(), mrn("MRN-OTHER-HOSPITAL")]))
    (stay,) = encounters(client, "V1001")
    assert stay["subject"] == {"reference": "Patient/member1"}
    assert total(client, "Patient") == 2
    patient = client.get("/fhir/Patient/member1").json()
    assert [i["value"] for i in patient["identifier"]] == ["MRN-0001", "900000001",
                                                          "MRN-OTHER-HOSPITAL"]


def test_a_patient_is_matched_by_mrn_and_updated_not_duplicated(client):
    member(client, mrn(), pid="known")
    send(client, message("admit", [mrn()], plain_ids=True))  # plain Type/id references
    (stay,) = encounters(client, "V1001")
    assert stay["subject"] == {"reference": "Patient/known"}
    assert total(client, "Patient") == 1
    coverage = search(client, "Coverage")["entry"][0]["resource"]
    assert coverage["beneficiary"] == {"reference": "Patient/known"}


def test_an_unknown_patient_is_created_once(client):
    send(client, message("admit", [mrn("MRN-NEW")]))
    send(client, message("discharge", [mrn("MRN-NEW")]))
    assert total(client, "Patient?identifier=urn:oid:2.16.840.1.113883.3.9999.1.2|MRN-NEW") == 1
    assert len(encounters(client, "V1001")) == 1


def test_two_candidates_hold_the_message_for_review_and_merge_nothing(client):
    member(client, dcn(), pid="a")
    member(client, mrn(), pid="b")  # the DCN names one Patient, the MRN another
    bundle = message("admit", [dcn(), mrn()])
    answer = send(client, bundle)
    header = answer["entry"][0]["resource"]
    assert header["response"]["code"] == "ok"
    outcome = answer["entry"][1]["resource"]
    assert header["response"]["details"] == {"reference": answer["entry"][1]["fullUrl"]}
    issue = outcome["issue"][0]
    assert issue["severity"] == "warning" and issue["code"] == "multiple-matches"
    assert "Patient/a" in issue["diagnostics"] and "Patient/b" in issue["diagnostics"]
    (task,) = [e["resource"] for e in search(client, "Task")["entry"]]
    assert task["status"] == "requested"
    assert task["identifier"][0]["value"] == bundle["entry"][0]["resource"]["id"]
    assert f"Task/{task['id']}" in issue["diagnostics"]
    named = {i["valueReference"]["reference"] for i in task["input"] if "valueReference" in i}
    assert named == {"Patient/a", "Patient/b"}
    (attachment,) = [i["valueAttachment"] for i in task["input"] if "valueAttachment" in i]
    assert orjson.loads(base64.b64decode(attachment["data"])) == bundle
    assert stored_counts(client) == {"Patient": 2, "Encounter": 0, "MessageHeader": 0,
                                     "Location": 0, "Condition": 0, "Coverage": 0,
                                     "Organization": 0, "Task": 1}
    for pid in ("a", "b"):
        assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"
    assert send(client, bundle) == answer  # replayed: same answer, still one Task
    assert total(client, "Task") == 1


def _without_focus(bundle):
    del bundle["entry"][0]["resource"]["focus"]


def _focus_elsewhere(bundle):
    bundle["entry"][0]["resource"]["focus"] = [{"reference": "urn:uuid:not-in-the-message"}]


def _unknown_event(bundle):
    bundle["entry"][0]["resource"]["eventCoding"]["code"] = "notification-lab-report"


def _bad_birth_date(bundle):
    bundle["entry"][2]["resource"]["birthDate"] = "last spring"


def _not_a_message(bundle):
    bundle["type"] = "transaction"


def _header_not_first(bundle):
    bundle["entry"].reverse()


def _encounter_without_identifier(bundle):
    del bundle["entry"][1]["resource"]["identifier"]


def _unknown_element(bundle):
    bundle["entry"][7]["resource"]["colour"] = "blue"


@pytest.mark.parametrize("change, status, code, where", [
    (_not_a_message, 400, "structure", "Bundle.type"),
    (_header_not_first, 400, "structure", "Bundle.entry[0].resource"),
    (_unknown_event, 422, "not-supported", "Bundle.entry[0].resource.eventCoding"),
    (_without_focus, 400, "required", "Bundle.entry[0].resource.focus"),
    (_focus_elsewhere, 400, "not-found", "Bundle.entry[0].resource.focus[0].reference"),
    (_encounter_without_identifier, 400, "required", "Bundle.entry[1].resource.identifier"),
    (_bad_birth_date, 400, None, "Bundle.entry[2].resource.birthDate"),
    (_unknown_element, 400, None, "Bundle.entry[7].resource.colour"),
])
def test_a_message_that_cannot_be_processed_is_refused_and_nothing_is_stored(
        client, change, status, code, where):
    bundle = message("admit", [dcn(), mrn()])
    change(bundle)
    outcome = send(client, bundle, status)
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert where in issue["expression"], issue
    if code:
        assert issue["code"] == code
    assert set(stored_counts(client).values()) == {0}


def test_a_resource_the_store_refuses_leaves_nothing_half_stored(client):
    bundle = message("admit", [dcn(), mrn()])
    bundle["entry"][1]["resource"]["location"] = [{"location": {"reference": "Location/nowhere"}}]
    outcome = send(client, bundle, 400)
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Location/nowhere" in outcome["issue"][0]["diagnostics"]
    assert set(stored_counts(client).values()) == {0}
    send(client, copy.deepcopy(message("admit", [dcn(), mrn()])))  # a good copy then passes


def test_not_a_bundle_is_400_and_asynchronous_processing_422(client):
    outcome = send(client, {"resourceType": "Patient"}, 400)
    assert outcome["issue"][0]["expression"] == ["Bundle"]
    r = client.post(URL + "?async=true", json=message("admit", [dcn()]))
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["async"]
    assert set(stored_counts(client).values()) == {0}


def test_the_capability_statement_lists_the_operation(client):
    statement = client.get("/fhir/metadata").json()
    assert {"name": "process-message",
            "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"
            } in statement["rest"][0]["operation"]


def test_the_readme_message_is_processed(client):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = re.search(r"process-message\" -H 'Content-Type: application/fhir\+json' -d '(.*?)'\n",
                     readme, re.S).group(1)
    answer = send(client, orjson.loads(body))
    assert answer["entry"][0]["resource"]["response"]["code"] == "ok"
    assert total(client, "Encounter") == 1


def test_a_resource_whose_identifier_names_two_stored_ones_is_422(client):
    hospital = {"resourceType": "Organization", "name": "Test Hospital",
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999992"}]}
    for _ in range(2):
        assert client.post("/fhir/Organization", json=hospital).status_code == 201
    outcome = send(client, message("admit", [dcn(), mrn()]), 422)
    issue = outcome["issue"][0]
    assert issue["code"] == "multiple-matches"
    assert issue["expression"] == ["Bundle.entry[5].resource.identifier[0]"]
    counts = stored_counts(client)
    assert counts.pop("Organization") == 2 and set(counts.values()) == {0}


@pytest.mark.parametrize("round_", range(3))
def test_the_messages_of_a_stay_sent_at_once_end_discharged(live, round_):
    """Admit, transfer and discharge of each stay sent together: whatever the interleaving,
    one Encounter per stay, finished (each message reads the Encounter, then writes it)."""
    member(live, dcn())
    stays = [f"R{round_}-{n}" for n in range(4)]
    work = [message(kind, [dcn(), mrn()], stay=stay) for stay in stays
            for kind in ("admit", "transfer", "discharge")]
    start, answers = threading.Barrier(len(work)), []

    def post(bundle: dict) -> None:
        start.wait()
        answers.append(live.post(URL, json=bundle))

    threads = [threading.Thread(target=post, args=(bundle,)) for bundle in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [200] * len(work), \
        [r.text[:300] for r in answers if r.status_code != 200]
    for stay in stays:
        (encounter,) = encounters(live, stay)
        assert (encounter["status"], encounter["class"]["code"]) == ("finished", "IMP")
    assert total(live, "Patient") == 1
