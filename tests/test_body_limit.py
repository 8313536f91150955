"""Request bodies beyond `max_body` are refused with a 413 OperationOutcome, before they are
read whole (a 63 MB Patient was accepted after 165 s and about 3 GB)."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from conftest import patient
from fhir_gateway.api.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.store.sqlite import SQLiteStore

LIMIT = 2000


@pytest.fixture
def client(tmp_path):
    store = SQLiteStore(tmp_path / "limit.db")
    with TestClient(create_app(store, Settings(max_body=LIMIT))) as c:
        yield c
    store.close()


def _big_patient() -> dict:
    return patient(name=[{"family": "Long", "given": ["Given"] * 400}])


def test_a_declared_body_beyond_the_limit_is_413(client):
    r = client.post("/fhir/Patient", content=orjson.dumps(_big_patient()),
                    headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 413, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "too-costly" and f"larger than {LIMIT} bytes" in issue["diagnostics"]
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


def test_a_chunked_body_is_counted_as_it_arrives(client):
    body = orjson.dumps(_big_patient())

    def chunks():
        for start in range(0, len(body), 500):
            yield body[start:start + 500]

    r = client.post("/fhir/Patient", content=chunks(),
                    headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 413, r.text
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


def test_an_xml_body_beyond_the_limit_is_413_in_xml(client):
    given = "".join('<given value="Given"/>' for _ in range(200))
    xml = (f'<Patient xmlns="http://hl7.org/fhir"><name><family value="Long"/>{given}</name>'
           "</Patient>").encode()
    r = client.post("/fhir/Patient", content=xml,
                    headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/fhir+xml")
    assert b"too-costly" in r.content


def test_a_body_within_the_limit_is_stored(client):
    r = client.post("/fhir/Patient", json=patient())
    assert r.status_code == 201, r.text


def test_a_url_beyond_what_the_server_reads_is_an_operation_outcome(tmp_path):
    """Through `fhir-gateway serve`: uvicorn's own refusal was a plain-text 400."""
    import socket

    from conftest import LiveServer

    server = LiveServer(tmp_path / "url.db")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(b"GET /fhir/Patient?name=" + b"a" * 100_000 + b" HTTP/1.1\r\n"
                         b"Host: gateway\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), head
        assert b"content-type: application/fhir+json" in head.lower()
        outcome = orjson.loads(body)
        assert outcome["resourceType"] == "OperationOutcome"
        assert "POST [type]/_search" in outcome["issue"][0]["diagnostics"]
    finally:
        server.stop()


def test_an_id_of_dots_alone_is_refused_it_could_never_be_read_back(client):
    for rid in (".", ".."):
        r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient(id=rid), "request": {"method": "PUT", "url": f"Patient/{rid}"}}]})
        assert r.status_code == 400, r.text
    assert client.put("/fhir/Patient/a..b", json=patient(id="a..b")).status_code == 201
