"""Reads and searches on HAPI pass HAPI's bytes through: same answers, the gateway's URLs.

Every request is sent to two gateways over the same HAPI: one as served (passing HAPI's
bytes through where it can) and one whose store hides its pass-through methods, so the
gateway parses and re-serialises everything as it did before. Their answers must parse to
the same JSON (a searchset's own id and timestamp aside) with the same headers.
"""

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from conftest import FHIR_JSON, expunge
from fhir_gateway.api.app import create_app
from fhir_gateway.store import open_store

DCN = "http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn"
GATEWAY = "http://gateway.test/fhir"
PATIENTS = 25


class ParsedOnly:
    """The same store with its pass-through methods hidden: the gateway parses every answer."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        if name.endswith("_raw"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def put(resource: dict) -> dict:
    return {"resource": resource,
            "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}


def member(n: int) -> dict:
    return {"resourceType": "Patient", "id": f"pt-{n}",
            "identifier": [{"system": DCN, "value": f"{41000000 + n:08d}"}],
            "name": [{"family": "Passthrough", "given": [f"Member{n}"]}],
            "gender": "female" if n % 2 else "male", "birthDate": f"19{50 + n}-03-0{n % 9 + 1}"}


def hapi_data(hapi_url: str) -> list[dict]:
    """Written straight into HAPI: the gateway's own write path would round 31.50 to 31.5."""
    condition = {"resourceType": "Condition", "id": "cond-1",
                 "subject": {"reference": "Patient/pt-1"},
                 "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                      "code": "F20.9"}]}}
    bmi = {"resourceType": "Observation", "id": "bmi-1", "status": "final",
           "code": {"text": "BMI"}, "subject": {"reference": "Patient/pt-1"},
           "valueQuantity": {"value": "DECIMAL", "unit": "kg/m2"}}
    # a stored Bundle whose entry names HAPI's own base: not the gateway's to re-base
    stored = {"resourceType": "Bundle", "id": "stored-1", "type": "collection",
              "entry": [{"fullUrl": f"{hapi_url}/Patient/pt-1", "resource": member(1)}]}
    entries = [put(member(n)) for n in range(1, PATIENTS + 1)]
    return entries + [put(condition), put(bmi), put(stored)]


@pytest.fixture(scope="module")
def gateways(hapi_url):
    expunge(hapi_url)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": hapi_data(hapi_url)}
    body = orjson.dumps(bundle).replace(b'"DECIMAL"', b"31.50")
    with httpx.Client(base_url=hapi_url + "/", timeout=60,
                      headers={"Content-Type": FHIR_JSON}) as hapi:
        assert hapi.post("", content=body).status_code == 200
        assert hapi.put("Patient/pt-3", json={**member(3), "gender": "unknown"}).status_code == 200
        assert hapi.delete("Patient/pt-4").status_code == 200
    passing = TestClient(create_app(open_store(hapi_url)), base_url="http://gateway.test")
    parsing = TestClient(create_app(ParsedOnly(open_store(hapi_url))),
                         base_url="http://gateway.test")
    with passing, parsing:
        yield passing, parsing


def comparable(response: httpx.Response) -> tuple:
    body = response.json() if response.content else None
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        body = {k: v for k, v in body.items() if k not in ("id", "meta")}  # each its own
    headers = {k: response.headers.get(k) for k in ("content-type", "etag", "last-modified")}
    return response.status_code, headers, body


REQUESTS = [
    ("GET", "Patient/pt-1"), ("GET", "Observation/bmi-1"), ("GET", "Patient/pt-3"),
    ("GET", "Patient/pt-3/_history/1"), ("GET", "Patient/pt-3/_history/2"),
    ("GET", "Patient/pt-1?_format=json"), ("GET", "Patient/pt-1?_summary=false"),
    ("GET", "Patient/pt-1?_elements=name"), ("GET", "Patient/pt-1?_summary=true"),
    ("GET", "Patient/never-was"), ("GET", "Patient/pt-4"), ("GET", "Patient/pt-3/_history/9"),
    ("GET", f"Patient?identifier={DCN}|41000001"),
    ("GET", "Patient?identifier=http://example.org/none|x"),
    ("GET", "Patient?_count=10"), ("GET", "Patient?_count=10&_offset=10"),
    ("GET", "Patient?_count=10&_offset=20"), ("GET", "Patient?family=Passthrough&_sort=birthdate"),
    ("GET", "Condition?subject=Patient/pt-1&_include=Condition:subject"),
    ("GET", "Patient?_id=pt-1&_revinclude=Condition:subject&_revinclude=Observation:subject"),
    ("GET", "Observation?subject=Patient/pt-1"), ("GET", "Patient?_elements=name&_count=5"),
    ("GET", "Patient?_summary=count"), ("GET", "Patient?_summary=true&_count=3"),
    ("GET", "Patient?no-such-param=1&_count=3"), ("GET", "Bundle?_id=stored-1"),
    ("GET", "Patient?_count=3&_pretty=true"), ("GET", "Patient?birthdate=notadate"),
    ("POST", "Patient/_search"),
]


@pytest.mark.parametrize(("method", "path"), REQUESTS, ids=[p for _, p in REQUESTS])
def test_passing_hapis_bytes_through_answers_as_parsing_them(gateways, method, path):
    form = {"family": "Passthrough", "_count": "4"} if method == "POST" else None
    ours, before = (g.request(method, f"/fhir/{path}", data=form) for g in gateways)
    assert comparable(ours) == comparable(before)
    assert ours.status_code < 500


def test_hapis_decimals_keep_their_precision(gateways):
    """FHIR decimals keep their precision (31.50 is not 31.5); parsing them lost it."""
    passing, _ = gateways
    for path in ("Observation/bmi-1", "Observation?subject=Patient/pt-1",
                 "Patient?_id=pt-1&_revinclude=Observation:subject"):
        assert b'"value":31.50' in passing.get(f"/fhir/{path}").content, path


def test_searchsets_name_the_gateway_and_page_through_it(gateways, hapi_url):
    passing, _ = gateways
    url, seen = f"{GATEWAY}/Patient?family=Passthrough&_count=10", []
    while url:
        page = passing.get(url)
        assert hapi_url.encode() not in page.content and b"_getpages" not in page.content
        bundle = page.json()
        assert all(e["fullUrl"] == f"{GATEWAY}/Patient/{e['resource']['id']}"
                   for e in bundle["entry"])
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == sorted(f"pt-{n}" for n in range(1, PATIENTS + 1) if n != 4)


def test_a_stored_bundle_keeps_its_own_full_urls(gateways, hapi_url):
    passing, _ = gateways
    entry = passing.get("/fhir/Bundle?_id=stored-1").json()["entry"][0]
    assert entry["fullUrl"] == f"{GATEWAY}/Bundle/stored-1"
    assert entry["resource"]["entry"][0]["fullUrl"] == f"{hapi_url}/Patient/pt-1"


def test_passed_through_reads_keep_version_headers_and_conditional_reads(gateways):
    passing, _ = gateways
    read = passing.get("/fhir/Patient/pt-3")
    assert read.headers["etag"] == 'W/"2"' and read.headers["last-modified"].endswith(" GMT")
    assert read.headers["content-type"] == FHIR_JSON
    again = passing.get("/fhir/Patient/pt-3", headers={"If-None-Match": 'W/"2"'})
    assert again.status_code == 304 and again.headers["etag"] == 'W/"2"'
    assert passing.get("/fhir/Patient/pt-3", headers={"If-None-Match": 'W/"1"'}).status_code == 200


def test_unknown_parameters_still_warn_or_fail_strict(gateways):
    passing, _ = gateways
    bundle = passing.get("/fhir/Patient?no-such-param=1&_count=1").json()
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "no-such-param" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = passing.get("/fhir/Patient?no-such-param=1", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and strict.json()["resourceType"] == "OperationOutcome"
