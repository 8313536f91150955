"""Lookup sources that stall or flood: `$hh-status` keeps its deadline and its memory, and
the rest of the API keeps answering. (Before: a source sending one byte a second held a
call for minutes although the timeout was 2 s, 45 such calls starved plain reads, and a
200 MB answer was read whole.)"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from conftest import free_port, patient
from fhir_gateway.api.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.store.sqlite import SQLiteStore
from test_hh_status_live import sources

DCN = "10000034"


class HostileSource:
    """A lookup service that answers every request with a status line and headers, then
    either drips its body one byte per `drip` seconds or floods `flood` bytes at once."""

    def __init__(self, drip: float = 0.0, flood: int = 0):
        self.drip, self.flood = drip, flood
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.listen(200)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            length = self.flood or 100_000
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
                         b"Content-Length: " + str(length).encode() + b"\r\n\r\n")
            if self.flood:
                chunk = b"<" * 1_000_000
                for _ in range(self.flood // len(chunk)):
                    conn.sendall(chunk)
            while not self.stopped.is_set():
                conn.sendall(b" ")
                time.sleep(self.drip)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.fixture
def gateway(tmp_path, request):
    """A gateway served by uvicorn (real worker threads) with CIMOR pointing at a hostile
    source; CyberAccess is not configured."""
    source = HostileSource(**request.param)
    store = SQLiteStore(tmp_path / "hostile.db")
    settings = Settings(cimor_url=source.url, lookup_timeout=1.0, lookup_concurrency=4)
    server = uvicorn.Server(uvicorn.Config(create_app(store, settings), port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}/fhir",
                      timeout=60) as http:
        created = http.post("/Patient", json=patient(DCN)).json()
        yield http, created["id"]
    server.should_exit = True
    thread.join()
    source.stop()
    store.close()


def _cimor(answer: dict) -> dict:
    return sources(answer)["cimor"]


@pytest.mark.parametrize("gateway", [{"drip": 0.2}], indirect=True)
def test_a_source_that_drips_is_cut_off_at_the_deadline(gateway):
    http, _ = gateway
    started = time.monotonic()
    answer = http.get("/Patient/$hh-status", params={
        "identifier": f"http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn|{DCN}"})
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    cimor = _cimor(answer.json())
    assert cimor["reachable"] == [False]
    problem = cimor["outcome"][0]["issue"][0]["diagnostics"]
    assert "no complete answer within 1.0s" in problem
    assert DCN not in problem and "127.0.0.1" not in problem  # no key, no internal address
    assert took < 10, took  # the deadline (1 s) plus one stalled read, not the whole drip


@pytest.mark.parametrize("gateway", [{"drip": 0.2}], indirect=True)
def test_stalled_lookups_do_not_starve_reads_and_writes(gateway):
    http, patient_id = gateway
    with ThreadPoolExecutor(45) as pool:
        lookups = [pool.submit(http.get, f"/Patient/{patient_id}/$hh-status")
                   for _ in range(45)]
        time.sleep(1.0)  # all 45 in flight
        started = time.monotonic()
        assert http.get(f"/Patient/{patient_id}").status_code == 200
        assert http.post("/Organization", json={"resourceType": "Organization",
                                                "name": "Still served"}).status_code == 201
        assert time.monotonic() - started < 5
        answers = [f.result() for f in lookups]
    assert all(a.status_code == 200 and _cimor(a.json())["reachable"] == [False]
               for a in answers)


@pytest.mark.parametrize("gateway", [{"flood": 200_000_000, "drip": 0.2}], indirect=True)
def test_an_oversized_answer_is_refused_as_it_arrives(gateway):
    http, patient_id = gateway
    answer = http.get(f"/Patient/{patient_id}/$hh-status")
    assert answer.status_code == 200, answer.text
    cimor = _cimor(answer.json())
    assert cimor["reachable"] == [False]
    assert "larger than 1000000 bytes" in cimor["outcome"][0]["issue"][0]["diagnostics"]
