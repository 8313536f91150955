"""End to end: a real FHIR client library (fhirpy) against `fhir-gateway serve`.

Every test talks HTTP to a subprocess started the way a user starts it; httpx is used
only where fhirpy cannot say something (raw status codes, If-Match, paging links).
The `live_server` is shared by the module, so every test uses its own identifiers.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from conftest import FHIR_JSON, LiveServer, patient
from fhir_gateway.identifiers import ICD10CM, MO_HEALTHNET_DCN

TEST_CODES = "http://example.org/CodeSystem/e2e-test-run"


def unique(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


@pytest.fixture
def fhir(live_server) -> SyncFHIRClient:
    return SyncFHIRClient(live_server.base)


@pytest.fixture
def http(live_server):
    with httpx.Client(base_url=live_server.base, timeout=30,
                      headers={"Accept": FHIR_JSON}) as c:
        yield c


def post_transaction(http: httpx.Client, entries: list[dict]) -> dict:
    response = http.post("/", json={"resourceType": "Bundle", "type": "transaction",
                                    "entry": entries})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "transaction-response"
    return body


def location_id(entry: dict) -> str:
    """The id in a transaction-response entry's `Type/id/_history/n` location."""
    return entry["response"]["location"].split("/")[1]


def post_entry(resource: dict, full_url: str | None = None) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def links(bundle: dict) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle.get("link", [])}


def entry_ids(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def count(http: httpx.Client, resource_type: str, **params) -> int:
    response = http.get(f"/{resource_type}", params={**params, "_summary": "count"})
    assert response.status_code == 200, response.text
    assert "entry" not in response.json()
    return response.json()["total"]


def assert_outcome(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code, body
    return body


# -- 1. CRUD through fhirpy ---------------------------------------------------------------

def test_crud_lifecycle_through_fhirpy(fhir, http):
    dcn = unique()
    created = fhir.resource("Patient", **patient(dcn, family="Original"))
    created.save()
    pid = created.id
    assert pid and created["meta"]["versionId"] == "1"

    read = fhir.get("Patient", pid)
    assert read["name"][0]["family"] == "Original"
    assert read["identifier"][0] == {"system": MO_HEALTHNET_DCN, "value": dcn}

    created["name"][0]["family"] = "Renamed"
    created.save()  # an id: fhirpy PUTs
    assert created.id == pid
    assert created["meta"]["versionId"] == "2"
    assert fhir.get("Patient", pid)["name"][0]["family"] == "Renamed"

    found = fhir.resources("Patient").search(identifier=f"{MO_HEALTHNET_DCN}|{dcn}").fetch_all()
    assert [(p.id, p["name"][0]["family"]) for p in found] == [(pid, "Renamed")]

    created.delete()
    with pytest.raises(ResourceNotFound):
        fhir.get("Patient", pid)
    gone = assert_outcome(http.get(f"/Patient/{pid}"), 410, "deleted")
    assert pid in gone["issue"][0]["diagnostics"]
    assert fhir.resources("Patient").search(identifier=f"{MO_HEALTHNET_DCN}|{dcn}").fetch() == []


def test_read_of_unknown_id_is_404_not_410(http):
    assert_outcome(http.get(f"/Patient/{unique('never-')}"), 404, "not-found")


# -- 2. Paging ------------------------------------------------------------------------------

OBSERVATIONS = 125
PAGE = 20


@pytest.fixture(scope="module")
def observation_run(live_server) -> tuple[str, set[str]]:
    """125 Observations with one run-specific code, created in one transaction."""
    run = unique("run-")
    entries = [post_entry({"resourceType": "Observation", "status": "final",
                           "code": {"coding": [{"system": TEST_CODES, "code": run}]},
                           "valueQuantity": {"value": i}})
               for i in range(OBSERVATIONS)]
    with httpx.Client(base_url=live_server.base, timeout=60) as http:
        body = post_transaction(http, entries)
    statuses = {e["response"]["status"] for e in body["entry"]}
    assert statuses == {"201 Created"}
    ids = {location_id(e) for e in body["entry"]}
    assert len(ids) == OBSERVATIONS
    return f"{TEST_CODES}|{run}", ids


def test_fhirpy_fetch_all_follows_next_links(fhir, observation_run):
    code, created = observation_run
    search = fhir.resources("Observation").search(code=code).limit(PAGE)
    assert len(search.fetch()) == PAGE  # one page really is 20
    ids = [o.id for o in search.fetch_all()]
    assert len(ids) == OBSERVATIONS
    assert set(ids) == created
    assert search.count() == OBSERVATIONS


def test_paging_links_by_hand(http, observation_run):
    code, created = observation_run
    first = http.get("/Observation", params={"code": code, "_count": PAGE}).json()
    assert first["total"] == OBSERVATIONS
    assert "previous" not in links(first)

    pages = [first]
    while "next" in links(pages[-1]):
        assert len(pages) <= OBSERVATIONS // PAGE, "next links do not stop"
        page = http.get(links(pages[-1])["next"])
        assert page.status_code == 200, page.text
        pages.append(page.json())

    sizes = [len(entry_ids(p)) for p in pages]
    assert sizes == [PAGE] * 6 + [OBSERVATIONS - 6 * PAGE]
    seen = [i for p in pages for i in entry_ids(p)]
    assert len(seen) == len(set(seen)) == OBSERVATIONS and set(seen) == created
    assert all(p["total"] == OBSERVATIONS for p in pages)

    previous_of_2 = http.get(links(pages[1])["previous"]).json()
    assert entry_ids(previous_of_2) == entry_ids(first)
    last = http.get(links(first)["last"]).json()
    assert entry_ids(last) == entry_ids(pages[-1])
    # the links keep the search criteria
    assert all(code.split("|")[1] in links(p)["self"] for p in pages)


# -- 3. Transaction with urn:uuid references -------------------------------------------------

def condition(subject: str, icd: str) -> dict:
    return {"resourceType": "Condition", "subject": {"reference": subject},
            "code": {"coding": [{"system": ICD10CM, "code": icd}]}}


def test_transaction_resolves_urn_uuid_references(fhir):
    p_url, c1_url, c2_url = urn(), urn(), urn()
    episode = {"resourceType": "EpisodeOfCare", "status": "active",
               "patient": {"reference": p_url},
               "diagnosis": [{"condition": {"reference": c1_url}},
                             {"condition": {"reference": c2_url}}]}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        post_entry(patient(unique()), p_url),
        post_entry(condition(p_url, "F20.9"), c1_url),
        post_entry(condition(p_url, "E11.9"), c2_url),
        post_entry(episode, urn()),
    ]}
    result = fhir.execute("/", method="post", data=bundle)

    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created"] * 4
    locations = [e["response"]["location"].split("/") for e in result["entry"]]
    assert [loc[0] for loc in locations] == ["Patient", "Condition", "Condition", "EpisodeOfCare"]
    stored = [{"id": loc[1]} for loc in locations]
    pid = stored[0]["id"]
    condition_ids = {stored[1]["id"], stored[2]["id"]}

    for cid in condition_ids:
        assert fhir.get("Condition", cid)["subject"]["reference"] == f"Patient/{pid}"
    saved_episode = fhir.get("EpisodeOfCare", stored[3]["id"])
    assert saved_episode["patient"]["reference"] == f"Patient/{pid}"
    assert {d["condition"]["reference"] for d in saved_episode["diagnosis"]} == \
        {f"Condition/{c}" for c in condition_ids}

    by_subject = fhir.resources("Condition").search(subject=f"Patient/{pid}").fetch_all()
    assert {c.id for c in by_subject} == condition_ids

    raw = fhir.resources("Patient").search(_id=pid).revinclude("Condition", "subject").fetch_raw()
    assert entry_ids(raw) == [pid]
    assert set(entry_ids(raw, "include")) == condition_ids


# -- 4. If-Match ------------------------------------------------------------------------------

def test_second_writer_with_stale_if_match_gets_412(fhir, live_server):
    created = fhir.resource("Patient", **patient(unique(), family="Before"))
    created.save()
    url = f"{live_server.base}/Patient/{created.id}"

    with httpx.Client(timeout=30) as alice, httpx.Client(timeout=30) as bob:
        copies = [client.get(url) for client in (alice, bob)]
        assert [c.headers["etag"] for c in copies] == ['W/"1"', 'W/"1"']
        mine, theirs = (dict(c.json(), name=[{"family": who}])
                        for c, who in zip(copies, ("Alice", "Bob")))

        first = alice.put(url, json=mine, headers={"If-Match": 'W/"1"'})
        assert first.status_code == 200, first.text
        assert first.headers["etag"] == 'W/"2"'

        second = bob.put(url, json=theirs, headers={"If-Match": 'W/"1"'})
        outcome = assert_outcome(second, 412, "conflict")
        assert 'W/"2"' in outcome["issue"][0]["diagnostics"]

    final = fhir.get("Patient", created.id)
    assert final["name"] == [{"family": "Alice"}]
    assert final["meta"]["versionId"] == "2"


# -- 5. Conditional create race --------------------------------------------------------------

RACERS = 10


@pytest.mark.parametrize("attempt", range(3))
def test_conditional_create_race_creates_one(live_server, http, attempt):
    dcn = unique(f"race{attempt}-")
    criteria = f"identifier={MO_HEALTHNET_DCN}|{dcn}"
    start = threading.Barrier(RACERS)

    def racer(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as c:
            start.wait()
            return c.post(f"{live_server.base}/Patient", json=patient(dcn),
                          headers={"If-None-Exist": criteria, "Content-Type": FHIR_JSON})

    with ThreadPoolExecutor(RACERS) as pool:
        responses = list(pool.map(racer, range(RACERS)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * (RACERS - 1) + [201], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert count(http, "Patient", identifier=f"{MO_HEALTHNET_DCN}|{dcn}") == 1


# -- 6. CapabilityStatement --------------------------------------------------------------------

def test_capability_statement(fhir, http):
    statement = fhir.execute("metadata", method="get")
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}

    def params(resource_type: str) -> set[str]:
        return {p["name"] for p in resources[resource_type]["searchParam"]}

    assert {"identifier", "name", "birthdate"} <= params("Patient")
    assert {"subject", "code"} <= params("Condition")
    assert "Condition:subject" in resources["Patient"]["searchRevInclude"]
    assert http.get("/metadata").headers["content-type"].startswith(FHIR_JSON)


# -- 7. serve --demo ---------------------------------------------------------------------------

def demo_counts(base: str) -> dict[str, int]:
    with httpx.Client(base_url=base, timeout=30) as http:
        return {t: count(http, t) for t in ("Patient", "Condition", "EpisodeOfCare")}


def test_serve_demo_loads_once(tmp_path):
    db = tmp_path / "demo.db"
    server = LiveServer(db, demo=True)
    try:
        first = demo_counts(server.base)
    finally:
        server.stop()
    assert first["Patient"] >= 50
    assert first["EpisodeOfCare"] >= 5
    assert first["Condition"] >= first["Patient"]  # every demo member has a condition

    server = LiveServer(db, demo=True)
    try:
        # Patients are conditional creates, so Conditions show a second load too
        assert demo_counts(server.base) == first
    finally:
        server.stop()
    assert server.proc.returncode is not None
