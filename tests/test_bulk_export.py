"""FHIR Bulk Data export over HTTP, on both stores: kick-off, polling, the manifest, the
NDJSON files read back, `_type`/`_since`/`_typeFilter`, Patient- and Group-level exports,
cancelling, bad parameters, and jobs surviving the gateway's end."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from conftest import LiveServer, patient
from fhir_gateway.api.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.export.jobs import MAX_ATTEMPTS, JobStore
from fhir_gateway.export.request import parse_kickoff
from fhir_gateway.search.registry import resource_types

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


class Gate:
    """The test's store, whose searches on the export threads wait until `release()`: a
    job can be watched (and cancelled) while it runs."""

    def __init__(self, inner):
        self.inner = inner
        self.opened = threading.Event()
        self.reached = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def search(self, *args, **kwargs):
        if threading.current_thread().name.startswith("export-"):
            self.reached.set()
            assert self.opened.wait(60)
        return self.inner.search(*args, **kwargs)

    def release(self):
        self.opened.set()


@pytest.fixture
def gate(store):
    gate = Gate(store)
    gate.release()  # open unless a test closes it
    return gate


@pytest.fixture
def exports(tmp_path):
    return tmp_path / "exports"


@pytest.fixture
def http(gate, exports):
    app = create_app(gate, Settings(export_dir=str(exports), export_page_size=2, demo=False))
    return TestClient(app, base_url="http://gateway.test")


def post(http, resource: dict) -> dict:
    r = http.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return r.json()


def observation(pid: str, code: str) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}}


@pytest.fixture
def data(http):
    """Two members with their Observations and an Encounter, an Organization of no one."""
    ann = post(http, patient("11111111", "Ann"))
    bob = post(http, patient("22222222", "Bob"))
    made = {"Patient": [ann, bob], "Observation": [], "Encounter": [],
            "Organization": [post(http, {"resourceType": "Organization", "name": "HH"})]}
    for who, codes in ((ann, ["1-1", "2-2", "3-3"]), (bob, ["1-1", "4-4"])):
        made["Observation"] += [post(http, observation(who["id"], c)) for c in codes]
        made["Encounter"].append(post(http, {
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"}, "subject": {"reference": f"Patient/{who['id']}"}}))
    return made


def kickoff(http, path: str, **params) -> str:
    r = http.get(path, params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    assert r.headers["Content-Location"].startswith("http://gateway.test/fhir/$export-status/")
    return r.headers["Content-Location"]


def finished(http, status_url: str) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline:
        r = http.get(status_url)
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("application/json")
            return r.json()
        assert r.status_code == 202, r.text
        assert r.headers["X-Progress"] and r.headers["Retry-After"]
        time.sleep(0.05)
    raise AssertionError("the export did not finish")


def read_back(http, manifest: dict) -> dict[str, list[dict]]:
    """Each output file fetched from its URL, its lines parsed; their count as announced."""
    out = {}
    for entry in manifest["output"]:
        r = http.get(entry["url"])
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [orjson.loads(line) for line in r.content.splitlines()]
        assert len(lines) == entry["count"] and all(x["resourceType"] == entry["type"]
                                                    for x in lines)
        out[entry["type"]] = lines
    return out


def ids(resources) -> set[str]:
    return {r["id"] for r in resources}


def test_a_system_export_has_every_resource_of_the_store(http, data):
    url = kickoff(http, "/fhir/$export")
    manifest = finished(http, url)
    assert manifest["request"] == "http://gateway.test/fhir/$export"
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    assert manifest["transactionTime"].endswith("Z")
    files = read_back(http, manifest)
    assert set(files) == set(data)
    for resource_type, lines in files.items():
        total = http.get(f"/fhir/{resource_type}", params={"_summary": "count"}).json()["total"]
        assert len(lines) == total == len(data[resource_type])
        assert ids(lines) == ids(data[resource_type])
        for line in lines:  # the resources themselves, as the store has them
            assert line == http.get(f"/fhir/{resource_type}/{line['id']}").json()


def test_decimals_are_exported_as_they_were_sent(http, data):
    pid = data["Patient"][0]["id"]
    body = (b'{"resourceType":"Observation","status":"final","code":{"text":"weight"},'
            b'"subject":{"reference":"Patient/' + pid.encode() + b'"},'
            b'"valueQuantity":{"value":70.10,"unit":"kg"}}')
    r = http.post("/fhir/Observation", content=body,
                  headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.text
    manifest = finished(http, kickoff(http, "/fhir/$export", _type="Observation"))
    assert b'"value":70.10' in http.get(manifest["output"][0]["url"]).content


def test_type_since_and_type_filter_choose_what_is_exported(http, data):
    files = read_back(http, finished(http, kickoff(http, "/fhir/$export",
                                                   _type="Patient,Encounter")))
    assert set(files) == {"Patient", "Encounter"}

    time.sleep(0.05)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 0.01))
    since += f".{int(time.time() * 1000) % 1000:03d}Z"
    time.sleep(0.05)
    later = post(http, observation(data["Patient"][0]["id"], "9-9"))
    files = read_back(http, finished(http, kickoff(http, "/fhir/$export", _since=since)))
    assert {t: ids(v) for t, v in files.items()} == {"Observation": {later["id"]}}

    code = "Observation?code=http://loinc.org|1-1"
    files = read_back(http, finished(http, kickoff(
        http, "/fhir/$export", _type="Observation", _typeFilter=f"{code},{code}",
        _outputFormat="application/fhir+ndjson")))
    ones = [o for o in data["Observation"] if o["code"]["coding"][0]["code"] == "1-1"]
    assert len(files["Observation"]) == 2 and ids(files["Observation"]) == ids(ones)


def test_patient_and_group_exports_keep_their_patients_compartments(http, data):
    ann, bob = data["Patient"]
    files = read_back(http, finished(http, kickoff(http, "/fhir/Patient/$export")))
    assert set(files) == {"Patient", "Observation", "Encounter"}  # no Organization
    assert len(files["Observation"]) == 5

    group = post(http, {"resourceType": "Group", "type": "person", "actual": True,
                        "member": [{"entity": {"reference": f"Patient/{ann['id']}"}}]})
    files = read_back(http, finished(http, kickoff(http, f"/fhir/Group/{group['id']}/$export",
                                                   _type="Patient,Observation")))
    assert ids(files["Patient"]) == {ann["id"]}
    assert {o["subject"]["reference"] for o in files["Observation"]} == {f"Patient/{ann['id']}"}
    assert len(files["Observation"]) == 3
    assert bob["id"] not in str(files)


def test_a_running_export_reports_progress_and_can_be_cancelled(http, gate, data, exports):
    gate.opened.clear()
    url = kickoff(http, "/fhir/$export", _type="Observation")
    assert gate.reached.wait(30)
    r = http.get(url)
    assert r.status_code == 202 and r.headers["X-Progress"] == "started"
    assert r.headers["Retry-After"] == "2"
    job = url.rsplit("/", 1)[1]
    assert http.delete(url).status_code == 202
    gate.release()
    assert http.get(url).status_code == 404
    assert http.delete(url).status_code == 404
    deadline = time.time() + 30
    while (exports / job).exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not (exports / job).exists()


def test_what_is_written_after_the_kickoff_is_not_exported(http, gate, data):
    gate.opened.clear()
    url = kickoff(http, "/fhir/$export", _type="Observation")
    assert gate.reached.wait(30)
    time.sleep(0.01)
    later = post(http, observation(data["Patient"][1]["id"], "5-5"))
    gate.release()
    files = read_back(http, finished(http, url))
    assert ids(files["Observation"]) == ids(data["Observation"])
    assert later["id"] not in ids(files["Observation"])


def test_a_finished_export_can_be_deleted_with_its_files(http, data, exports):
    url = kickoff(http, "/fhir/$export", _type="Patient")
    file_url = finished(http, url)["output"][0]["url"]
    assert http.delete(url).status_code == 202
    assert http.get(file_url).status_code == 404
    assert not (exports / url.rsplit("/", 1)[1]).exists()


@pytest.mark.parametrize("path, params, headers, where", [
    ("/fhir/$export", {}, {}, "Prefer"),
    ("/fhir/$export", {"_outputFormat": "application/json"}, ASYNC, "_outputFormat"),
    ("/fhir/$export", {"_type": "Patient,Nothing"}, ASYNC, "_type"),
    ("/fhir/Patient/$export", {"_type": "Organization"}, ASYNC, "_type"),
    ("/fhir/$export", {"_since": "yesterday"}, ASYNC, "_since"),
    ("/fhir/$export", {"_typeFilter": "Observation?nonsense=1"}, ASYNC, "_typeFilter"),
    ("/fhir/$export", {"_typeFilter": "Observation"}, ASYNC, "_typeFilter"),
    ("/fhir/$export", {"_typeFilter": "Observation?_count=5"}, ASYNC, "_typeFilter"),
    ("/fhir/$export", {"patient": "Patient/1"}, ASYNC, "patient"),
])
def test_bad_kickoffs_are_refused_with_the_parameter_named(http, path, params, headers, where):
    r = http.get(path, params=params, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["expression"] == [where]


def test_unknown_groups_jobs_and_files_are_404(http):
    assert http.get("/fhir/Group/none/$export", headers=ASYNC).status_code == 404
    assert http.get("/fhir/$export-status/none").status_code == 404
    url = kickoff(http, "/fhir/$export", _type="Patient")
    finished(http, url)
    job = url.rsplit("/", 1)[1]
    assert http.get(f"/fhir/$export-file/{job}/..%2Fjobs.db").status_code == 404
    assert http.get(f"/fhir/$export-file/{job}/Patient.ndjson").status_code == 404  # empty


def test_a_job_left_running_by_a_dead_gateway_is_run_again_at_start(store, data, exports):
    """A dead process leaves its job 'in-progress' in jobs.db: the next app runs it again,
    with the same transaction time; one interrupted too often fails with an outcome."""
    jobs = JobStore(exports)
    request = parse_kickoff("system", [("_type", "Patient,Observation")], [])
    resumed = jobs.add("http://gateway.test/fhir/$export", request)
    jobs.start(resumed.id)
    doomed = jobs.add("http://gateway.test/fhir/$export", request)
    for _ in range(MAX_ATTEMPTS):
        jobs.start(doomed.id)
    http = TestClient(create_app(store, Settings(export_dir=str(exports), demo=False)),
                      base_url="http://gateway.test")
    manifest = finished(http, f"/fhir/$export-status/{resumed.id}")
    assert manifest["transactionTime"] == resumed.transaction_time
    assert {o["type"]: o["count"] for o in manifest["output"]} == {"Patient": 2, "Observation": 5}
    deadline = time.time() + 30
    while (r := http.get(f"/fhir/$export-status/{doomed.id}")).status_code == 202:
        assert time.time() < deadline
        time.sleep(0.05)
    assert r.status_code == 500 and "interrupted" in r.json()["issue"][0]["diagnostics"]


def test_an_export_survives_the_gateway_being_killed(store, on_hapi, tmp_path):
    """`fhir-gateway serve` killed (SIGKILL) while an export runs; started again, the
    export completes with every resource."""
    db = tmp_path / "live.db"
    store_url = store.inner.base if on_hapi else None
    if not on_hapi:
        store.close()
    env = {"FHIR_GATEWAY_EXPORT_DIR": str(tmp_path / "exports"),
           "FHIR_GATEWAY_EXPORT_PAGE_SIZE": "1"}
    first = LiveServer(db, env=env, store=store_url)
    try:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient(f"{n:08d}", f"Member{n}"),
             "request": {"method": "POST", "url": "Patient"}} for n in range(60)]}
        assert httpx.post(f"{first.base}", json=bundle, timeout=60).status_code == 200
        r = httpx.get(f"{first.base}/$export", headers=ASYNC, timeout=30)
        assert r.status_code == 202
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
    finally:
        first.stop()
    status_url = r.headers["Content-Location"].rsplit("/fhir/", 1)[1]
    with sqlite3.connect(tmp_path / "exports" / "jobs.db") as jobs:
        left = jobs.execute("SELECT status FROM job").fetchone()[0]
    assert left in ("accepted", "in-progress")  # killed mid-export
    second = LiveServer(db, env=env, store=store_url)
    try:
        with httpx.Client(timeout=30) as client:
            class Http:  # `finished` and `read_back` on the second server
                get = staticmethod(lambda url, **kw: client.get(
                    url if url.startswith("http") else f"{second.base}/{url}", **kw))
            manifest = finished(Http, status_url)
            files = read_back(Http, manifest)
        assert {t: len(v) for t, v in files.items()} == {"Patient": 60}
        assert len(ids(files["Patient"])) == 60
    finally:
        second.stop()


def test_the_capability_statement_declares_the_exports(http):
    rest = http.get("/fhir/metadata").json()["rest"][0]
    assert any(o["name"] == "export" for o in rest["operation"])
    by_type = {r["type"]: r for r in rest["resource"]}
    for resource_type in ("Patient", "Group"):
        assert any(o["definition"].endswith(f"{resource_type.lower()}-export")
                   for o in by_type[resource_type]["operation"])
    assert "Observation" in resource_types()
