"""`fhir-gateway serve --store http://…/fhir`: the whole API served through HAPI FHIR."""

import httpx
import pytest
from fastapi.testclient import TestClient
from fhirpy import SyncFHIRClient

from conftest import FHIR_JSON, LiveServer, expunge, free_port, patient
from fhir_gateway.api.app import create_app
from fhir_gateway.store import open_store

DCN = "http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn"


@pytest.fixture(scope="module")
def gateway_on_hapi(hapi_url, tmp_path_factory):
    expunge(hapi_url)
    server = LiveServer(tmp_path_factory.mktemp("gw") / "unused.db", demo=True, store=hapi_url)
    yield server
    server.stop()


def test_serve_with_demo_data_stores_everything_in_hapi(gateway_on_hapi, hapi_url):
    direct = httpx.get(f"{hapi_url}/Patient?_summary=count").json()["total"]
    via_gateway = httpx.get(f"{gateway_on_hapi.base}/Patient?_summary=count").json()["total"]
    assert direct == via_gateway >= 50
    episodes = httpx.get(f"{hapi_url}/EpisodeOfCare?_summary=count").json()["total"]
    assert episodes >= 5


def test_fhir_client_round_trip_through_the_gateway(gateway_on_hapi, hapi_url):
    fhir = SyncFHIRClient(gateway_on_hapi.base)
    created = fhir.resource("Patient", **patient("30000001"))
    created.save()
    assert httpx.get(f"{hapi_url}/Patient/{created.id}").status_code == 200  # it is in HAPI
    created["gender"] = "male"
    created.save()
    assert fhir.get("Patient", created.id)["meta"]["versionId"] == "2"
    found = fhir.resources("Patient").search(identifier=f"{DCN}|30000001").fetch_all()
    assert [p.id for p in found] == [created.id]


def test_paging_links_point_at_the_gateway(gateway_on_hapi):
    first = httpx.get(f"{gateway_on_hapi.base}/Patient?_count=10").json()
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert links["next"].startswith(gateway_on_hapi.base)
    second = httpx.get(links["next"]).json()
    first_ids = {e["resource"]["id"] for e in first["entry"]}
    assert len(second["entry"]) == 10 and first_ids.isdisjoint(
        e["resource"]["id"] for e in second["entry"])


def test_hapi_outcomes_pass_through_unchanged(gateway_on_hapi):
    r = httpx.get(f"{gateway_on_hapi.base}/Patient/never-was")
    assert r.status_code == 404 and r.headers["content-type"].startswith(FHIR_JSON)
    assert r.json()["issue"][0]["diagnostics"].startswith("HAPI-2001")


def test_hapi_down_is_a_503_outcome_not_a_stack_trace():
    store = open_store(f"http://127.0.0.1:{free_port()}/fhir")
    client = TestClient(create_app(store), raise_server_exceptions=False)
    for response in (client.get("/fhir/Patient"), client.post("/fhir/Patient", json=patient())):
        assert response.status_code == 503
        issue = response.json()["issue"][0]
        assert issue["code"] == "transient" and "unreachable" in issue["diagnostics"]
