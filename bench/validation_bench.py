"""Validation cost on write, over the IG examples, through the validation service.

- profile validation: each example against its profile (`conformance.validate`);
- baseline: the structural R4 check (the fhir.resources models), which every write pays;
- write path: `Validator.check` of each valid example as a store write runs it, in full
  (verdict cache emptied first) and when its canonical form passed before (an import).

Prints the median (and slowest) time per resource.

    .venv/bin/python bench/validation_bench.py
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.healthhome.checks import health_home_validator
from fhir_gateway.validation.conformance import validate
from fhir_gateway.validation.structure import check_resource

EXAMPLES = Path(DEFAULT_PROFILES).parent / "examples"
ROUNDS = 50


def per_call_ms(fn) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(ROUNDS):
        fn()
    return (time.perf_counter() - started) / ROUNDS * 1000


def main() -> None:
    validator = health_home_validator(DEFAULT_PROFILES)
    manifest = json.loads((EXAMPLES / "manifest.json").read_text())
    profile_ms, structure_ms, full_ms, cached_ms = [], [], [], []

    def full(resource: dict) -> None:
        validator._passes.cache_clear()
        validator.check(resource)

    for case in manifest:
        resource = json.loads((EXAMPLES / case["file"]).read_text())
        profile_ms.append(per_call_ms(
            lambda: validate(resource, case["profile"], validator.conformance)))
        if case["valid"]:
            structure_ms.append(per_call_ms(lambda: check_resource(resource)))
            full_ms.append(per_call_ms(lambda: full(resource)))
            cached_ms.append(per_call_ms(lambda: validator.check(resource)))
    median = statistics.median
    print(f"profile validation: median {median(profile_ms):.3f} ms, slowest "
          f"{max(profile_ms):.3f} ms per resource ({len(profile_ms)} examples)")
    print(f"baseline, structural R4 check: median {median(structure_ms):.3f} ms; "
          f"ratio {median(profile_ms) / median(structure_ms):.2f}")
    print(f"write path (Validator.check, {len(full_ms)} valid examples): full median "
          f"{median(full_ms):.3f} ms, cached median {median(cached_ms):.3f} ms")


if __name__ == "__main__":
    main()
