"""Bad input: a 4xx OperationOutcome that says what and where, and nothing half-written."""

import orjson
import pytest

from conftest import patient


def _issue(r):
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def test_malformed_json(client):
    r = client.post("/fhir/Patient", content=b'{"resourceType": "Patient",',
                    headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400
    issue = _issue(r)
    assert issue["severity"] == "error" and "Malformed JSON" in issue["diagnostics"]
    assert "line 1" in issue["diagnostics"]


def test_wrong_resource_type_for_the_url(client):
    r = client.post("/fhir/Observation", json=patient())
    assert r.status_code == 400
    assert _issue(r)["expression"] == ["resourceType"]


def test_id_mismatch_on_put(client):
    r = client.put("/fhir/Patient/a", json=patient(id="b"))
    assert r.status_code == 400
    assert _issue(r)["expression"] == ["Patient.id"]


def test_put_without_id(client):
    assert client.put("/fhir/Patient/a", json=patient()).status_code == 400


@pytest.mark.parametrize("change, path", [
    ({"colour": "blue"}, "Patient.colour"),
    ({"birthDate": "1980-13-45"}, "Patient.birthDate"),
    ({"active": "yes"}, "Patient.active"),
    ({"name": [{"family": ["x"]}]}, "Patient.name[0].family"),
    ({"gender": "sometimes"}, "Patient.gender"),
])
def test_structurally_invalid_resources_name_the_path(client, change, path):
    r = client.post("/fhir/Patient", json=patient(**change))
    assert r.status_code == 400
    paths = [e for i in r.json()["issue"] for e in i.get("expression", [])]
    assert path in paths
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_unknown_resource_type_is_404(client):
    assert client.get("/fhir/Spaceship").status_code == 404
    assert client.post("/fhir/Spaceship", json={"resourceType": "Spaceship"}).status_code == 404
    assert _issue(client.get("/fhir/Spaceship/1"))["code"] == "not-supported"


def test_unknown_endpoint_and_method_are_outcomes(client):
    r = client.get("/fhir/Patient/1/_history/1/extra")
    assert r.status_code == 404 and _issue(r)
    r = client.patch("/fhir/Patient/1", json={})
    assert r.status_code == 405 and _issue(r)


def test_bad_search_values_are_400_naming_the_parameter(client):
    r = client.get("/fhir/Patient?birthdate=1980-02-31x")
    assert r.status_code == 400 and _issue(r)["expression"] == ["birthdate"]
    r = client.get("/fhir/Patient?_count=lots")
    assert r.status_code == 400 and _issue(r)["expression"] == ["_count"]
    r = client.get("/fhir/Patient?name:sounds=x")
    assert r.status_code == 400


def test_empty_body(client):
    r = client.post("/fhir/Patient", content=b"")
    assert r.status_code == 400 and _issue(r)["code"] == "required"


@pytest.mark.parametrize("nested", ["Foo", "EffectEvidenceSynthesis", ["Patient"]],
                         ids=["unknown", "r4-only", "not-a-name"])
def test_unknown_type_of_a_nested_resource_is_a_400_naming_it(client, nested):
    r = client.post("/fhir/Bundle", json={"resourceType": "Bundle", "type": "collection",
                                          "entry": [{"resource": {"resourceType": nested}}]})
    assert r.status_code == 400
    issue = _issue(r)
    assert str(nested[0] if isinstance(nested, list) else nested) in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[0].resource.resourceType"]


def test_a_category_coding_without_a_code_is_judged_not_a_500_error(client):
    import json

    from fhir_gateway.config import DEFAULT_PROFILES
    from fhir_gateway.identifiers import CANONICAL_BASE, CONDITION_CLINICAL, ICD10CM

    with open(f"{DEFAULT_PROFILES}/ConceptMap-icd10cm-to-hh-category.json") as fh:
        categories = json.load(fh)["group"][0]["target"]
    client.put("/fhir/Patient/cat", json={**patient(), "id": "cat"})
    r = client.post("/fhir/Condition", json={
        "resourceType": "Condition",
        "meta": {"profile": [f"{CANONICAL_BASE}/StructureDefinition/hh-qualifying-condition"]},
        "subject": {"reference": "Patient/cat"},
        "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
        "code": {"coding": [{"system": ICD10CM, "code": "F20.9"}]},
        "category": [{"coding": [{"system": categories, "code": "smi"}, {"system": categories}]}]})
    assert r.status_code == 201, r.text  # a Coding may lack a code; the smi one is checked
    assert r.json()["category"][0]["coding"][0]["code"] == "smi"


def _nested_extensions(depth: int) -> dict:
    extension = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(depth):
        extension = {"url": "http://example.org/x", "extension": [extension]}
    return extension


@pytest.mark.parametrize("depth", [60, 150, 400])
def test_a_resource_nested_too_deep_is_a_400_naming_where(client, depth):
    """Legal but deep nesting was a 500 (RecursionError, then the serialiser's limit)."""
    r = client.post("/fhir/Patient", json=patient(extension=[_nested_extensions(depth)]))
    assert r.status_code == 400, r.text
    issue = _issue(r)
    assert "deeper than 100" in issue["diagnostics"]
    # the path names the first level beyond the limit: Patient(1) extension(2) [0](3) ...
    path = issue["expression"][0]
    assert path.startswith("Patient.extension[0].extension[0]")
    assert path.count(".") + path.count("[") == 100


def test_nesting_within_the_limit_is_stored_and_read_back(client):
    resource = patient(extension=[_nested_extensions(45)])
    created = client.post("/fhir/Patient", json=resource)
    assert created.status_code == 201, created.text
    read = client.get(f"/fhir/Patient/{created.json()['id']}").json()
    assert read["extension"] == resource["extension"]


@pytest.mark.parametrize("change, path", [
    ({"name": None}, "Patient.name"),
    ({"name": []}, "Patient.name"),
    ({"name": [{}]}, "Patient.name[0]"),
    ({"name": [{"family": "X", "given": []}]}, "Patient.name[0].given"),
    ({"contained": [{}]}, "Patient.contained[0]"),
    ({"name": [{"given": ["A", None]}]}, "Patient.name[0].given[1]"),
    ({"address": [{"line": [["nested"]]}]}, "Patient.address[0].line[0]"),
])
def test_what_fhir_json_forbids_is_a_400_at_its_path(client, change, path):
    """Nulls, empty arrays and objects were stored as sent."""
    r = client.post("/fhir/Patient", json=patient(**change))
    assert r.status_code == 400, r.text
    assert _issue(r)["expression"] == [path]


def test_a_null_in_a_primitive_array_with_its_twin_is_fhir_json(client):
    given = {"given": ["A", None], "_given": [None, {"extension": [
        {"url": "http://example.org/x", "valueString": "no second given name"}]}]}
    r = client.post("/fhir/Patient", json=patient(name=[{"family": "X", **given}]))
    assert r.status_code == 201, r.text
    assert client.get(f"/fhir/Patient/{r.json()['id']}").json()["name"][0]["_given"][0] is None


@pytest.mark.parametrize("body", [
    b'{"resourceType":"Observation","resourceType":"Patient"}',
    b'{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}',
])
def test_a_key_twice_in_one_object_is_a_400(client, body):
    r = client.post("/fhir/Patient", content=body, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400, r.text
    assert "appears twice" in _issue(r)["diagnostics"]
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


def test_keys_that_only_look_alike_in_strings_are_fine(client):
    """A string with '":' in it counts as a key end for the quick test: the exact one runs."""
    r = client.post("/fhir/Patient", json=patient(name=[{"family": '":x', "given": ['a":']}]))
    assert r.status_code == 201, r.text


def test_a_body_that_is_not_json_is_415(client):
    r = client.post("/fhir/Patient", content=orjson.dumps(patient()),
                    headers={"Content-Type": "text/plain"})
    assert r.status_code == 415, r.text
    assert "text/plain" in _issue(r)["diagnostics"]


def test_an_unknown_identifier_is_not_echoed_in_the_answer(client):
    """Answers are logged by clients other than the one that asked: no DCN in them."""
    r = client.get("/fhir/Patient/$hh-status", params={
        "identifier": "http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn|87654321"})
    assert r.status_code == 404, r.text
    assert "87654321" not in r.text and _issue(r)["expression"] == ["identifier"]
