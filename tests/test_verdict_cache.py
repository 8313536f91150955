"""The verdict cache (`validation/canonical.py`, `reads.py`) never changes a verdict.

A seeded random mutator changes the IG's examples and the demo population -- values
swapped for others of the same or another JSON type, elements dropped or added, array
items doubled or dropped, codes and references taken from elsewhere -- and every mutant's
verdict through the cache (`Validator.check`) must be the verdict of the full checks
(`Validator.validate`, which never uses it): passing or not, and the same errors.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.demo import demo_population
from fhir_gateway.healthhome.checks import CHECKS
from fhir_gateway.outcome import FhirError
from fhir_gateway.validation.service import Validator, errors
from fhir_gateway.validation.structure import check_resource

EXAMPLES = Path(DEFAULT_PROFILES).parent / "examples"
MUTANTS_PER_SEED = 12
SEED = 20261202


def seeds() -> list[dict]:
    manifest = json.loads((EXAMPLES / "manifest.json").read_text())
    examples = [json.loads((EXAMPLES / e["file"]).read_text()) for e in manifest]
    demo = [e["resource"] for bundle in demo_population() for e in bundle["entry"]]
    by_type: dict[str, list[dict]] = {}
    for resource in demo:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    return examples + [r for found in by_type.values() for r in found[:6]]


def leaves(node, path=()):
    """Every (path, value) in a JSON tree, containers included."""
    yield path, node
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from leaves(value, path + (key,))


def strings(resources: list[dict]) -> list[str]:
    """Every string the seeds hold: codes, systems, references, dates, names."""
    return sorted({v for r in resources for _, v in leaves(r) if isinstance(v, str)})


OTHER = ["", " ", "x", "2020-13-45", "2001-02-03", "2001-02-03T04:05:06Z", "Patient/p1",
         "Group/g1", "#c1", "urn:uuid:0e0d1a4e-0000-4000-8000-000000000001", "final",
         "active", 0, -1, 7, 2.5, True, False, None, [], {}, {"text": "x"}, ["x"]]


def mutate(resource: dict, rng: random.Random, pool: list[str]) -> dict:
    """The resource with one to three random changes (never to resourceType: that is
    the shape check's, before any cache)."""
    mutant = copy.deepcopy(resource)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p, _ in leaves(mutant) if p and p != ("resourceType",)]
        if not paths:
            break
        path = rng.choice(paths)
        parent = mutant
        for key in path[:-1]:
            parent = parent[key]
        key, value = path[-1], parent[path[-1]]
        move = rng.random()
        if move < 0.35 and isinstance(value, str):
            parent[key] = rng.choice(pool)  # another value of the same JSON type
        elif move < 0.5:
            parent[key] = copy.deepcopy(rng.choice(OTHER))
        elif move < 0.65:
            del parent[key]
        elif move < 0.75 and isinstance(value, list) and value:
            value.append(copy.deepcopy(rng.choice(value)))
        elif move < 0.85 and isinstance(value, dict):
            value[rng.choice(["extra", "id", "text", "code", "system", "value", "url"])] = \
                copy.deepcopy(rng.choice(OTHER + pool[:50]))
        elif isinstance(value, str):
            parent[key] = value + rng.choice(["", "1", "-x", " "])  # unread values change too
    return mutant


def cached_verdict(validator: Validator, resource: dict):
    try:
        validator.check(resource)
    except FhirError as err:
        return err.status, shown(err.issues)
    return None


def full_verdict(validator: Validator, resource: dict):
    """What `$validate` finds (never cached); 400 when the structure checks fail."""
    found = errors(validator.validate(resource))
    if not found:
        return None
    try:
        check_resource(resource)
    except FhirError:
        return 400, shown(found)
    return 422, shown(found)


def shown(issues) -> list[tuple]:
    return [(i.severity, i.code, i.diagnostics, tuple(i.expression)) for i in issues]


@pytest.mark.parametrize("all_of_profiled_types", [False, True])
def test_cached_and_full_verdicts_agree_on_mutated_examples(all_of_profiled_types):
    validator = Validator(DEFAULT_PROFILES, all_of_profiled_types, CHECKS)  # a cache of its own
    originals = seeds()
    pool = strings(originals)
    rng = random.Random(SEED + all_of_profiled_types)
    verdicts = {"pass": 0, 400: 0, 422: 0}
    shared = 0  # mutants judged by a form an earlier, other resource had
    disagreements = []
    for original in originals:
        for mutant in [original] + [mutate(original, rng, pool) for _ in range(MUTANTS_PER_SEED)]:
            full = full_verdict(validator, mutant)
            for attempt in range(2):  # the second time, a passing form comes from the cache
                hits = validator._passes.cache_info().hits
                cached = cached_verdict(validator, mutant)
                shared += attempt == 0 and validator._passes.cache_info().hits > hits
                if cached != full:
                    disagreements.append((mutant, full, cached))
            verdicts["pass" if full is None else full[0]] += 1
    assert not disagreements, disagreements[:3]
    # the property means something only if all three verdicts occur and forms are shared
    assert min(verdicts.values()) > 100 and shared > 100, (verdicts, shared)


def test_the_exact_json_of_a_passed_resource_passes_again_and_nothing_else_does():
    validator = Validator(DEFAULT_PROFILES, False, CHECKS)
    resource = seeds()[0]
    validator.check(copy.deepcopy(resource))
    assert len(validator._exact_passes) == 1
    validator.check(copy.deepcopy(resource))  # the same bytes: no new entry
    assert len(validator._exact_passes) == 1
    broken = {**copy.deepcopy(resource), "status": 17}
    with pytest.raises(FhirError):
        validator.check(broken)
    assert len(validator._exact_passes) == 1
