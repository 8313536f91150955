"""Searches that would ask the store for unbounded work are refused first: a 400
OperationOutcome naming the parameter, on both stores (each was a 500 on the embedded store:
SQLite's parser stack, expression tree and ORDER BY limits, integer overflow)."""

from __future__ import annotations

import pytest

from conftest import patient


def _refused(r, code: str, where: str | None, words: str) -> None:
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == code and words in issue["diagnostics"], issue
    assert issue.get("expression") == ([where] if where else None)


CHAIN_4 = "subject:Patient.link:Patient.link:Patient.link:Patient.name"


@pytest.mark.parametrize("query, code, where, words", [
    ("Observation?" + "subject:Patient." + ".".join(["link:Patient"] * 8) + ".name=x",
     "too-costly", "subject:Patient." + ".".join(["link:Patient"] * 8) + ".name",
     "at most 3 levels"),
    (f"Observation?{CHAIN_4}=x", "too-costly", CHAIN_4, "at most 3 levels"),
    ("Patient?name=" + ",".join(f"v{i}" for i in range(101)), "too-costly", "name",
     "at most 100 values"),
    ("Patient?" + "&".join("name=Ring1" for _ in range(1000)), "too-costly", None,
     "at most 40 parameters"),
    ("Patient?_sort=" + ",".join(["name"] * 2100), "too-costly", "_sort", "at most 5 keys"),
    ("Patient?_offset=99999999999999999999", "invalid", "_offset", "at most 2147483647"),
    ("Patient?_count=%C2%B2", "invalid", "_count", "non-negative integer"),
    ("Patient/_history?_offset=99999999999999999999999", "invalid", "_offset", "at most"),
])
def test_searches_beyond_the_limits_are_400_naming_the_parameter(client, query, code, where,
                                                                   words):
    _refused(client.get(f"/fhir/{query}"), code, where, words)


def test_searches_within_the_limits_answer(client):
    client.post("/fhir/Patient", json=patient(family="Ring"))
    assert client.get("/fhir/Patient?" + "&".join(
        f"name:contains=in{'' if i % 2 else 'g'}" for i in range(40))).json()["total"] == 1
    assert client.get("/fhir/Patient?name=" + ",".join(
        ["Ring"] + [f"v{i}" for i in range(99)])).json()["total"] == 1
    assert client.get("/fhir/Patient?_sort=family,given,-birthdate,gender,_id").status_code == 200
    assert client.get("/fhir/Observation?subject:Patient.organization.partof.name=x"
                      ).json()["total"] == 0


def test_a_version_beyond_any_integer_is_not_found(client):
    created = client.post("/fhir/Patient", json=patient()).json()
    r = client.get(f"/fhir/Patient/{created['id']}/_history/99999999999999999999")
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("query", ["_lastUpdated=", "_id=", "name=", "general-practitioner:Practitioner=",
                                   "name=,,"])
def test_a_parameter_without_a_value_is_ignored_with_a_warning(client, query):
    """Found by tests/test_fuzz.py: `_lastUpdated=` and `_id=` were SQL syntax errors (500)."""
    client.post("/fhir/Patient", json=patient())
    r = client.get(f"/fhir/Patient?{query}")
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 1
    outcome = next(e["resource"] for e in r.json()["entry"]
                   if e["search"]["mode"] == "outcome")
    assert "has no value" in outcome["issue"][0]["diagnostics"]


def test_missing_on_what_every_resource_has_is_a_400(client):
    """Found by tests/test_fuzz.py: `_lastUpdated:missing=true` was a 500 (HAPI ignores it)."""
    for query in ("_lastUpdated:missing=true", "_id:missing=false"):
        _refused(client.get(f"/fhir/Patient?{query}"), "invalid", query.split("=")[0],
                 "cannot apply")
