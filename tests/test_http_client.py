"""The gateway's one HTTP client (`fhir_gateway/http_client.py`) as the HAPI store uses it:
what is asked again when a connection breaks, and what the FHIR client then sees.

The lookup clients' side (the same rules) is in test_adapters_parse.py, against the
simulators; attempts are counted by the server, never timed.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

import pytest
from fastapi.testclient import TestClient

from conftest import FHIR_JSON, patient
from fhir_gateway.api.app import create_app
from fhir_gateway.store import open_store


class ResettingServer(socketserver.ThreadingTCPServer):
    """Reads each request, then resets the connection (TCP RST) without answering: a FHIR
    server that crashed, or a proxy that gave up, after the request went out."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.connections = 0
        super().__init__(("127.0.0.1", 0), self.Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.server.connections += 1
            self.request.recv(65536)
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.request.close()  # now, before socketserver's shutdown() would send a FIN

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fhir"


@pytest.fixture
def resetting():
    server = ResettingServer()
    yield server
    server.shutdown()
    server.server_close()


def test_a_reset_connection_is_a_503_outcome_and_only_safe_requests_are_sent_again(resetting):
    client = TestClient(create_app(open_store(resetting.url)), raise_server_exceptions=False)
    read = client.get("/fhir/Patient/p1")
    assert read.status_code == 503, read.text
    issue = read.json()["issue"][0]
    assert issue["code"] == "transient" and "unreachable" in issue["diagnostics"]
    assert resetting.connections == 3  # a GET: asked again twice (HapiStore retries=2)

    resetting.connections = 0
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}]}
    written = client.post("/fhir", json=bundle, headers={"Content-Type": FHIR_JSON})
    assert written.status_code == 503, written.text
    assert resetting.connections == 1  # a POST that HAPI may have applied is not sent twice

    resetting.connections = 0
    guarded = client.post("/fhir/Patient", json=patient(), headers={
        "Content-Type": FHIR_JSON, "If-None-Exist": "identifier=urn:x|1"})
    assert guarded.status_code == 503, guarded.text
    assert resetting.connections == 3  # If-None-Exist makes a create safe to send again
