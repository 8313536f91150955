"""Several processes on one embedded store: a `serve` and a CLI import into the same file.

The README tells users to import while the gateway serves; whatever process wrote the data,
the running gateway's searches must find it and its writes must not fail.
"""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.conftest import ROOT, LiveServer, patient

DCN = "http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn"


def test_a_cli_import_into_a_served_store_is_found_and_writes_go_on(tmp_path):
    server = LiveServer(tmp_path / "shared.db")
    try:
        # the gateway has written (and so cached its search parameters) before the import
        assert httpx.post(f"{server.base}/Organization", json={
            "resourceType": "Organization", "name": "Before the import"}).status_code == 201
        imported = subprocess.run(
            [sys.executable, "-m", "fhir_gateway.cli", "import", "cimor",
             str(ROOT / "adapters/cimor/sample.xml"), "--store", f"sqlite:///{server.db}",
             "--quarantine", str(tmp_path / "q.ndjson")],
            capture_output=True, text=True, cwd=ROOT)
        assert imported.returncode == 0, imported.stderr

        count = httpx.get(f"{server.base}/Patient", params={"_summary": "count"}).json()
        assert count["total"] == 10
        found = httpx.get(f"{server.base}/Patient",
                          params={"identifier": f"{DCN}|10000034"}).json()
        assert found["total"] == 1, found
        assert found["entry"][0]["resource"]["birthDate"] == "1969-11-17"
        by_birth = httpx.get(f"{server.base}/Patient", params={"birthdate": "1969-11-17"}).json()
        assert by_birth["total"] >= 1

        written = httpx.post(f"{server.base}/Patient", json=patient("99990001"))
        assert written.status_code == 201, written.text
        again = httpx.get(f"{server.base}/Patient", params={"identifier": f"{DCN}|99990001"})
        assert again.json()["total"] == 1
    finally:
        server.stop()
