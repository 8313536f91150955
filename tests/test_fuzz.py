"""Generated hostile and odd input against the running app: whatever comes, the answer is
never a 5xx (issue "Robustness": "Hostile or odd input is a 4xx, never a 500").

Hypothesis generates bodies (arbitrary JSON; valid IG examples with a random part replaced
by random JSON), search queries (any parameter of the type, modifiers, chains, prefixes,
odd values) and paths. Derandomized, so CI runs the same examples each time; set
FUZZ_EXAMPLES (default 150 per test) for a longer hunt, FUZZ_RANDOM=1 for new examples.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_gateway.api.app import create_app
from fhir_gateway.search.registry import params_for
from fhir_gateway.store import open_store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [json.loads(p.read_text()) for p in sorted((ROOT / "profiles/examples/valid")
                                                       .glob("*.json"))]
TYPES = sorted({e["resourceType"] for e in EXAMPLES} | {"Observation", "Encounter"})
BUDGET = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None,
                  derandomize=not os.environ.get("FUZZ_RANDOM"),
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                    st.sampled_from(["", "2026-13-45", "Patient/x", "urn:uuid:1", "0.10",
                                     "\u0000", "..", "a" * 300]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=25)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}")  # as served
    with TestClient(create_app(store), raise_server_exceptions=False) as c:
        for example in EXAMPLES:  # something to find, refer to and update
            if example["resourceType"] in ("Patient", "Organization", "Practitioner"):
                c.put(f"/fhir/{example['resourceType']}/{example['id']}", json=example)
        yield c
    store.close()


def _no_5xx(response) -> None:
    assert response.status_code < 500, (response.request.method, str(response.request.url)[:300],
                                        response.text[:500])


def _replace(node, path: list[int], value):
    """`node` with the element that `path` picks (indices into keys / items) replaced."""
    if not path or not isinstance(node, (dict, list)) or not node:
        return value
    if isinstance(node, dict):
        key = list(node)[path[0] % len(node)]
        return {**node, key: _replace(node[key], path[1:], value)}
    i = path[0] % len(node)
    return [*node[:i], _replace(node[i], path[1:], value), *node[i + 1:]]


@BUDGET
@given(example=st.sampled_from(EXAMPLES), path=st.lists(st.integers(0, 50), max_size=5),
       value=json_values, method=st.sampled_from(["POST", "PUT", "VALIDATE"]))
def test_damaged_resources_are_never_a_5xx(client, example, path, value, method):
    damaged = _replace(example, path, value)
    rtype = example["resourceType"]
    if method == "POST":
        r = client.post(f"/fhir/{rtype}", json=damaged)
    elif method == "PUT":
        r = client.put(f"/fhir/{rtype}/{example['id']}", json=damaged)
    else:
        r = client.post(f"/fhir/{rtype}/$validate", json=damaged)
    _no_5xx(r)


@BUDGET
@given(body=json_values, kind=st.sampled_from(["transaction", "batch", "resource", "message"]))
def test_arbitrary_json_bodies_are_never_a_5xx(client, body, kind):
    if kind in ("transaction", "batch"):
        r = client.post("/fhir", json={"resourceType": "Bundle", "type": kind,
                                       "entry": [body] if not isinstance(body, list) else body})
    elif kind == "message":
        r = client.post("/fhir/$process-message", json=body)
    else:
        r = client.post("/fhir/Patient", json=body)
    _no_5xx(r)


@st.composite
def search_terms(draw, rtype: str) -> tuple[str, str]:
    params = sorted(params_for(rtype))
    name = draw(st.sampled_from(params + ["_sort", "_count", "_offset", "_include",
                                          "_revinclude", "_summary", "_elements", "unknown"]))
    suffix = draw(st.sampled_from(["", ":missing", ":exact", ":contains", ":not", ":text",
                                   ":below", ":Patient", ":identifier", ".name",
                                   ":Patient.name", ".identifier:exact", ":x"]))
    value = draw(st.one_of(
        st.text(max_size=30),
        st.sampled_from(["eq2026", "lt2026-01-01", "ap1", "gt-1e400", "sa", "2026-02-30",
                         "http://x|", "|a", "a|b|c", "Patient/x", "1,2,,3", "\\,", "true",
                         "Patient:subject", "*", "-name", "99999999999999999999", "²"])))
    return f"{name}{suffix}", value


@BUDGET
@given(data=st.data(), rtype=st.sampled_from(TYPES))
def test_generated_searches_are_never_a_5xx(client, data, rtype):
    terms = data.draw(st.lists(search_terms(rtype), max_size=6))
    query = "&".join(f"{quote(n, safe=':.')}={quote(v, safe='')}" for n, v in terms)
    _no_5xx(client.get(f"/fhir/{rtype}?{query}"))
    _no_5xx(client.post(f"/fhir/{rtype}/_search", content=query,
                        headers={"Content-Type": "application/x-www-form-urlencoded"}))


@BUDGET
@given(segments=st.lists(st.one_of(st.sampled_from(TYPES + ["_history", "$validate",
                                                            "$hh-status", "metadata", "..",
                                                            "Patient", "%00", "1"]),
                                   st.text(max_size=12)), min_size=1, max_size=4),
       method=st.sampled_from(["GET", "DELETE", "HEAD", "OPTIONS", "PATCH"]))
def test_generated_paths_are_never_a_5xx(client, segments, method):
    path = "/fhir/" + "/".join(quote(s, safe="$") for s in segments)
    _no_5xx(client.request(method, path))
