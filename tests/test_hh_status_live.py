"""`$hh-status` against live lookup simulators over the imported extracts."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fhir_gateway.adapters.cimor.parser import parse as parse_cimor
from fhir_gateway.adapters.cimor.simulator import Simulator as CimorSimulator
from fhir_gateway.adapters.cyberaccess.parser import parse as parse_cyberaccess
from fhir_gateway.adapters.cyberaccess.simulator import Simulator as CyberAccessSimulator
from fhir_gateway.adapters.synth import write_extracts
from fhir_gateway.api.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.healthhome import status as hh
from fhir_gateway.identifiers import MO_HEALTHNET_DCN
from fhir_gateway.importer import import_extract

MEMBERS = 40


@pytest.fixture
def live(store, tmp_path):
    cimor, cyberaccess = write_extracts(MEMBERS, tmp_path / "x")
    import_extract(store, "cimor", cimor)
    import_extract(store, "cyberaccess", cyberaccess)
    sims = {"cimor": CimorSimulator(cimor), "cyberaccess": CyberAccessSimulator(cyberaccess)}
    urls = {name: sim.start() for name, sim in sims.items()}
    settings = Settings(cimor_url=urls["cimor"], cyberaccess_url=urls["cyberaccess"],
                        lookup_timeout=2.0)
    records = {"cimor": {r.data["DCN"]: r.data for r in parse_cimor(cimor)},
               "cyberaccess": {r.data["DCN"]: r.data for r in parse_cyberaccess(cyberaccess)}}
    with TestClient(create_app(store, settings)) as client:
        yield client, sims, records
    for sim in sims.values():
        sim.stop()


def sources(answer: dict) -> dict[str, dict]:
    out = {}
    for p in answer["parameter"]:
        if p["name"] == "source":
            parts = {}
            for part in p["part"]:
                value = next(v for k, v in part.items() if k.startswith("value") or k == "resource")
                parts.setdefault(part["name"], []).append(value)
            out[parts["system"][0]] = parts
    return out


def disagreeing_dcn(records) -> str:
    for dcn, data in records["cimor"].items():
        if hh.discrepancies([hh.from_cimor(data), hh.from_cyberaccess(records["cyberaccess"].get(dcn))]):
            return dcn
    raise AssertionError("the synthetic extracts should hold disagreeing sources")


def test_hh_status_asks_both_sources_and_names_the_discrepancies(live):
    client, _, records = live
    dcn = disagreeing_dcn(records)
    r = client.get(f"/fhir/Patient/$hh-status?identifier={MO_HEALTHNET_DCN}|{dcn}")
    assert r.status_code == 200, r.text
    answer = r.json()
    found = sources(answer)
    assert set(found) == {"cimor", "cyberaccess", "store"}
    assert all(s["reachable"] == [True] for s in found.values())
    expected_cimor = hh.from_cimor(records["cimor"][dcn])
    assert found["cimor"]["hhEnrolled"] == [expected_cimor.hh_enrolled]
    assert [p for p in answer["parameter"] if p["name"] == "discrepancy"]
    pid = client.get(f"/fhir/Patient?identifier={MO_HEALTHNET_DCN}|{dcn}").json()["entry"][0]["resource"]["id"]
    by_id = client.get(f"/fhir/Patient/{pid}/$hh-status").json()
    assert sources(by_id)["cimor"] == found["cimor"]


def test_a_stopped_source_is_unreachable_not_an_error(live):
    client, sims, records = live
    sims["cyberaccess"].stop()
    dcn = next(iter(records["cimor"]))
    r = client.get(f"/fhir/Patient/$hh-status?identifier={MO_HEALTHNET_DCN}|{dcn}")
    assert r.status_code == 200
    found = sources(r.json())
    assert found["cyberaccess"]["reachable"] == [False]
    assert found["cyberaccess"]["outcome"][0]["issue"][0]["severity"] == "warning"
    assert found["cimor"]["reachable"] == [True] and found["store"]["reachable"] == [True]


def test_unknown_member_is_404(live):
    client, _, _ = live
    r = client.get(f"/fhir/Patient/$hh-status?identifier={MO_HEALTHNET_DCN}|00000000")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
