"""The Health Home IG on the wire: every example gets its expected verdict through POST and
`$validate` on both stores, HAPI's validator agrees with ours, and every element a profile
makes required really is required."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import httpx
import pytest

from conftest import FHIR_JSON
from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.healthhome.checks import health_home_validator
from fhir_gateway.validation.service import errors

EXAMPLES = Path(DEFAULT_PROFILES).parent / "examples"
MANIFEST = json.loads((EXAMPLES / "manifest.json").read_text())
VALIDATOR = health_home_validator(DEFAULT_PROFILES)


def example(entry: dict) -> dict:
    return json.loads((EXAMPLES / entry["file"]).read_text())


VALID = [e for e in MANIFEST if e["valid"]]
INVALID = [e for e in MANIFEST if not e["valid"]]


def paths(outcome: dict) -> list[str]:
    return [e for i in outcome["issue"] if i["severity"] in ("error", "fatal")
            for e in i.get("expression", []) + i.get("location", [])]


def expected_path_found(entry: dict, outcome: dict) -> bool:
    found = paths(outcome)
    texts = " ".join(i.get("diagnostics", "") for i in outcome["issue"]).lower()
    return all(any(err["path"] in p for p in found) or err["path"].lower() in texts
               for err in entry["errors"])


def references(node) -> set[str]:
    if isinstance(node, dict):
        ref = node.get("reference")
        own = {ref} if isinstance(ref, str) and ref.count("/") == 1 else set()
        return own.union(*(references(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(references(v) for v in node)) if node else set()
    return set()


def seed_targets(client) -> None:
    """Make every example's reference resolvable (referential integrity is on): the valid
    examples themselves, and a minimal stand-in for anything else they point at. Not the
    HH Monthly Claims, which nothing refers to: posted again, each would bill its month a
    second time (409)."""
    valid = {f"{r['resourceType']}/{r['id']}": r for r in map(example, VALID)
             if "id" in r and r["resourceType"] != "Claim"}
    wanted = set().union(*(references(example(e)) for e in MANIFEST)) | set(valid)
    entries = []
    for ref in sorted(wanted):
        rtype, rid = ref.split("/")
        resource = valid.get(ref) or STAND_INS.get(rtype, lambda: None)()
        if resource is None:
            continue
        resource = {**copy.deepcopy(resource), "id": rid}
        entries.append({"resource": resource, "request": {"method": "PUT", "url": ref}})
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction",
                                   "entry": entries})
    assert r.status_code == 200, r.text


STAND_INS = {
    "Patient": lambda: {"resourceType": "Patient"},
    "Organization": lambda: {"resourceType": "Organization", "name": "Stand-in"},
    "Practitioner": lambda: {"resourceType": "Practitioner"},
    "PractitionerRole": lambda: {"resourceType": "PractitionerRole"},
    "RelatedPerson": lambda: {"resourceType": "RelatedPerson",
                              "patient": {"reference": "Patient/hh-patient-mo"}},
    "Location": lambda: {"resourceType": "Location"},
    "Encounter": lambda: {"resourceType": "Encounter", "status": "finished",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                    "code": "IMP"}},
    "Group": lambda: {"resourceType": "Group", "type": "person", "actual": True},
    "Coverage": lambda: {"resourceType": "Coverage", "status": "active",
                         "beneficiary": {"reference": "Patient/hh-patient-mo"},
                         "payor": [{"display": "MO HealthNet"}]},
}


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda e: e["file"])
def test_validate_operation_gives_the_expected_verdict(client, entry):
    resource = example(entry)
    r = client.post(f"/fhir/{resource['resourceType']}/$validate", json=resource)
    assert r.status_code == 200, r.text
    outcome = r.json()
    has_errors = bool(paths(outcome)) or any(i["severity"] in ("error", "fatal")
                                              for i in outcome["issue"])
    assert has_errors != entry["valid"], outcome
    if not entry["valid"]:
        assert expected_path_found(entry, outcome), (entry["errors"], outcome)


def test_every_example_gets_its_verdict_through_post(client):
    seed_targets(client)
    wrong = []
    for entry in MANIFEST:
        resource = {k: v for k, v in example(entry).items() if k != "id"}
        r = client.post(f"/fhir/{resource['resourceType']}", json=resource)
        if entry["valid"] and r.status_code != 201:
            wrong.append(f"{entry['file']}: expected 201, got {r.status_code} {r.text[:300]}")
        elif not entry["valid"]:
            if r.status_code not in (400, 422) or not expected_path_found(entry, r.json()):
                wrong.append(f"{entry['file']}: expected 422 at {entry['errors']}, got "
                             f"{r.status_code} {r.text[:300]}")
    assert not wrong, "\n".join(wrong)


def test_validate_takes_parameters_with_a_profile(client):
    entry = VALID[0]
    resource = example(entry)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": resource},
        {"name": "profile", "valueUri": entry["profile"]}]}
    r = client.post(f"/fhir/{resource['resourceType']}/$validate", json=body)
    assert r.status_code == 200 and r.json()["issue"][0]["severity"] == "information"
    body["parameter"][1]["valueUri"] = "http://example.org/not-a-profile"
    r = client.post(f"/fhir/{resource['resourceType']}/$validate", json=body)
    assert any(i["severity"] == "error" for i in r.json()["issue"])


def _required_paths(profile_url: str) -> list[str]:
    """Elements the differential makes required (min >= 1), outside slices and choices."""
    sd = VALIDATOR.conformance.structure_definition(profile_url)
    return [e["path"] for e in sd["differential"]["element"]
            if e.get("min", 0) >= 1 and ":" not in e["id"] and "[x]" not in e["path"]
            and e["path"].count(".") in (1, 2)]


def _without(resource: dict, path: str) -> dict | None:
    """A copy of the resource without `path` (every occurrence), or None if it has none."""
    parts = path.split(".")[1:]
    broken = copy.deepcopy(resource)
    parents = [broken]
    for part in parts[:-1]:
        found = [p.get(part) for p in parents if isinstance(p, dict) and part in p]
        parents = [i for f in found for i in (f if isinstance(f, list) else [f])]
    holders = [p for p in parents if isinstance(p, dict) and parts[-1] in p]
    for holder in holders:
        del holder[parts[-1]]
    return broken if holders else None


@pytest.mark.parametrize("entry", VALID, ids=lambda e: e["file"])
def test_removing_any_required_element_makes_a_valid_example_invalid(entry):
    resource = example(entry)
    checked = 0
    for path in _required_paths(entry["profile"]):
        broken = _without(resource, path)
        if broken is None:
            continue
        checked += 1
        issues = errors(VALIDATOR.validate(broken, entry["profile"]))
        # named itself, or the object its removal left empty (not FHIR JSON: a 400 there)
        assert any(path in e or (path.startswith(e) and "empty object" in i.diagnostics)
                   for i in issues for e in i.expression) \
            or any(path in i.diagnostics for i in issues), f"removing {path}: {issues}"
    assert checked, "the valid example has none of its profile's required elements?"


def test_capability_statement_lists_profiles_and_validate(client):
    statement = client.get("/fhir/metadata").json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert VALIDATOR.conformance.canonical + "/StructureDefinition/hh-patient" in \
        patient["supportedProfile"]
    assert {"name": "validate", "definition":
            "http://hl7.org/fhir/OperationDefinition/Resource-validate"} in patient["operation"]


def install_package(hapi: httpx.Client) -> None:
    """Store the IG's conformance resources in HAPI (hapi-local installs the package at start,
    but other tests' `$expunge` wipes everything), so its validator can resolve them."""
    for path in sorted(Path(DEFAULT_PROFILES).glob("*.json")):
        resource = json.loads(path.read_text())
        if resource.get("resourceType") in (None, "ImplementationGuide"):
            continue
        r = hapi.put(f"{resource['resourceType']}/{resource['id']}", json=resource,
                     headers={"Content-Type": FHIR_JSON})
        assert r.status_code in (200, 201), r.text


def test_hapi_validator_agrees_with_ours(hapi_url):
    """Parity: HAPI's $validate and the gateway give every example the same verdict; the
    agreement is printed."""
    rows, disagreements = [], []
    with httpx.Client(base_url=hapi_url + "/", timeout=120) as hapi:
        install_package(hapi)
        for entry in MANIFEST:
            resource = example(entry)
            ours = bool(errors(VALIDATOR.validate(resource, entry["profile"])))
            r = hapi.post(f"{resource['resourceType']}/$validate", params={"profile": entry["profile"]},
                          json=resource, headers={"Content-Type": FHIR_JSON})
            theirs = any(i["severity"] in ("error", "fatal") for i in r.json()["issue"])
            rows.append((entry["file"], not entry["valid"], ours, theirs))
            if ours != theirs:
                disagreements.append(f"{entry['file']}: gateway invalid={ours}, HAPI invalid="
                                     f"{theirs}: {[i['diagnostics'] for i in r.json()['issue'] if i['severity'] == 'error']}")
    agree = sum(ours == theirs for _, _, ours, theirs in rows)
    print(f"\nHAPI parity: {agree}/{len(rows)} examples get the same verdict")
    assert not disagreements, "\n".join(disagreements)


def test_validate_all_holds_unclaimed_resources_to_their_type_profiles(tmp_path):
    from fastapi.testclient import TestClient

    from fhir_gateway.api.app import create_app
    from fhir_gateway.store.sqlite import SQLiteStore
    from fhir_gateway.validation.guard import ValidatingStore

    plain = {"resourceType": "Patient", "name": [{"family": "Unclaimed"}]}
    for validate_all, expected in ((False, 201), (True, 422)):
        store = ValidatingStore(SQLiteStore(tmp_path / f"{validate_all}.db"),
                                health_home_validator(DEFAULT_PROFILES, validate_all))
        with TestClient(create_app(store)) as client:
            r = client.post("/fhir/Patient", json=plain)
        assert r.status_code == expected, r.text
        store.close()
    issues = r.json()["issue"]
    assert any("hh-pat-1" in i["diagnostics"] or "birthDate" in i["diagnostics"] for i in issues)


def test_demo_population_conforms_to_the_ig_it_claims():
    from fhir_gateway.demo import demo_population

    validator = health_home_validator(DEFAULT_PROFILES, True)
    claimed = [e["resource"] for b in demo_population() for e in b["entry"]
               if e["resource"].get("meta", {}).get("profile")]
    assert len(claimed) > 150
    assert [r for r in claimed if errors(validator.validate(r))] == []


def test_categories_must_follow_from_the_icd10_code_by_the_concept_map(client):
    condition = example(next(e for e in VALID if "qualifying-condition-smi" in e["file"]))
    assert not [i for i in VALIDATOR.validate(condition) if i.code == "business-rule"]  # consistent
    hh_system = VALIDATOR.conformance.canonical + "/CodeSystem/hh-condition-category"
    wrong = copy.deepcopy(condition)
    for cc in wrong["category"]:
        for coding in cc.get("coding", []):
            if coding.get("system") == hh_system:
                coding["code"] = "asthma"
    warnings = [i for i in VALIDATOR.validate(wrong) if i.severity == "warning"
                and i.expression == ["Condition.category"]]
    assert warnings and "asthma" in warnings[0].diagnostics
    r = client.post("/fhir/Condition/$validate", json=wrong)
    assert any(i["severity"] == "warning" and "asthma" in i["diagnostics"]
               for i in r.json()["issue"])


@pytest.mark.parametrize("nulled", [{"category": None}, {"code": {"coding": None}}])
def test_a_json_null_in_a_condition_is_a_400_naming_it_not_a_crash(client, nulled):
    """FHIR JSON has no nulls (but in a primitive array's twins): refused at its path, by
    `$validate` too; it was a 500 once, then judged as if absent."""
    condition = {**example(next(e for e in VALID if "qualifying-condition-smi" in e["file"])),
                 **nulled}
    condition.pop("id", None)
    where = "Condition.category" if "category" in nulled else "Condition.code.coding"
    r = client.post("/fhir/Condition", json=condition)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == [where]
    r = client.post("/fhir/Condition/$validate", json=condition)  # not FHIR JSON: unparsed
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == [where]
