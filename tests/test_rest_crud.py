"""Create, read, vread, update, delete, history and the HTTP conventions around them."""

from datetime import datetime

from conftest import FHIR_JSON, patient


def test_create_answers_201_with_location_etag_and_last_modified(client):
    r = client.post("/fhir/Patient", json=patient())
    assert r.status_code == 201
    body = r.json()
    assert r.headers["content-type"].startswith(FHIR_JSON)
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"http://gateway.test/fhir/Patient/{body['id']}/_history/1"
    assert "GMT" in r.headers["last-modified"]
    assert body["meta"]["versionId"] == "1"
    assert datetime.fromisoformat(body["meta"]["lastUpdated"]).tzinfo is not None


def test_create_ignores_a_client_id_and_keeps_the_json_as_sent(client):
    sent = patient(id="mine", extension=[{"url": "http://x/ext", "valueString": "kept"}])
    body = client.post("/fhir/Patient", json=sent).json()
    assert body["id"] != "mine"
    assert body["extension"] == sent["extension"]
    assert list(body)[:2] == ["resourceType", "id"]


def test_prefer_return_minimal_and_operation_outcome(client):
    r = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b"" and r.headers["location"]
    r = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["severity"] == "information"


def test_read_vread_and_update_keep_every_version(client):
    created = client.post("/fhir/Patient", json=patient()).json()
    pid = created["id"]
    changed = {**created, "gender": "male"}
    r = client.put(f"/fhir/Patient/{pid}", json=changed)
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"'
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "male"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json()["gender"] == "female"
    assert client.get(f"/fhir/Patient/{pid}/_history/2").json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{pid}/_history/3").status_code == 404


def test_update_without_changes_makes_no_new_version(client):
    created = client.post("/fhir/Patient", json=patient()).json()
    r = client.put(f"/fhir/Patient/{created['id']}", json=created)
    assert r.status_code == 200 and r.headers["etag"] == 'W/"1"'
    history = client.get(f"/fhir/Patient/{created['id']}/_history").json()
    assert history["total"] == 1


def test_update_with_a_client_id_creates(client):
    r = client.put("/fhir/Patient/hh-001", json=patient(id="hh-001"))
    assert r.status_code == 201 and r.headers["etag"] == 'W/"1"'
    assert client.get("/fhir/Patient/hh-001").json()["id"] == "hh-001"


def test_if_match_mismatch_is_412_and_changes_nothing(client, issue_code):
    created = client.post("/fhir/Patient", json=patient()).json()
    url = f"/fhir/Patient/{created['id']}"
    ok = client.put(url, json={**created, "gender": "male"}, headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = client.put(url, json={**created, "gender": "other"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["issue"][0]["code"] == issue_code("conflict")
    assert client.get(url).json()["gender"] == "male"


def test_delete_then_read_is_410_and_history_keeps_the_delete(client, issue_code):
    pid = client.post("/fhir/Patient", json=patient()).json()["id"]
    r = client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 200 and r.json()["resourceType"] == "OperationOutcome"
    gone = client.get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == issue_code("deleted")
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410
    assert client.get("/fhir/Patient?_id=" + pid).json()["total"] == 0


def test_read_unknown_is_404_outcome(client, issue_code):
    r = client.get("/fhir/Patient/nobody")
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == issue_code("not-found")


def test_conditional_read_with_if_none_match(client):
    pid = client.post("/fhir/Patient", json=patient()).json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"0"'}).status_code == 200


def test_conditional_create(client):
    criteria = {"If-None-Exist": "identifier=http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn|555"}
    first = client.post("/fhir/Patient", json=patient("555"), headers=criteria)
    again = client.post("/fhir/Patient", json=patient("555"), headers=criteria)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    client.post("/fhir/Patient", json=patient("555"))  # a duplicate, made on purpose
    multiple = client.post("/fhir/Patient", json=patient("555"), headers=criteria)
    assert multiple.status_code == 412


def test_conditional_update_creates_then_updates(client):
    url = "/fhir/Patient?identifier=http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn|777"
    created = client.put(url, json=patient("777"))
    assert created.status_code == 201
    updated = client.put(url, json=patient("777", gender="male"))
    assert updated.status_code == 200 and updated.json()["id"] == created.json()["id"]
    assert updated.headers["etag"] == 'W/"2"'


def test_conditional_delete(client):
    client.post("/fhir/Patient", json=patient("888"))
    r = client.delete("/fhir/Patient?identifier=888")
    assert r.status_code == 200
    assert client.get("/fhir/Patient?identifier=888").json()["total"] == 0


def test_type_and_system_history(client):
    for i in range(3):
        client.post("/fhir/Patient", json=patient(str(i)))
    client.post("/fhir/Organization", json={"resourceType": "Organization", "name": "HH"})
    assert client.get("/fhir/Patient/_history").json()["total"] == 3
    system = client.get("/fhir/_history?_count=2").json()
    assert system["total"] == 4 and len(system["entry"]) == 2
    assert any(link["relation"] == "next" for link in system["link"])


def test_elements_and_summary_on_read(client):
    pid = client.post("/fhir/Patient", json=patient()).json()["id"]
    body = client.get(f"/fhir/Patient/{pid}?_elements=name").json()
    assert set(body) == {"resourceType", "id", "meta", "name"}
    assert body["meta"]["tag"][0]["code"] == "SUBSETTED"


def test_references_must_resolve_on_write(client):
    dangling = {"resourceType": "Condition", "subject": {"reference": "Patient/nobody"}}
    r = client.post("/fhir/Condition", json=dangling)
    assert r.status_code == 400 and "Patient/nobody" in r.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Condition").json()["total"] == 0


def test_a_referenced_resource_cannot_be_deleted(client):
    pid = client.post("/fhir/Patient", json=patient()).json()["id"]
    cid = client.post("/fhir/Condition", json={"resourceType": "Condition",
                                               "subject": {"reference": f"Patient/{pid}"}}).json()["id"]
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 409
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200
    client.delete(f"/fhir/Condition/{cid}")
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
