"""Profile validation cost on write: each IG example validated against its profile.

Prints the median and slowest time per resource next to the structural R4 check (the
fhir.resources models) measured in the same run, as the baseline every write pays anyway.

    .venv/bin/python bench/validation_bench.py
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.validation.conformance import prepare, validate
from fhir_gateway.validation.profiles import Conformance
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
    conformance = Conformance.load(Path(DEFAULT_PROFILES))
    prepare(conformance)
    manifest = json.loads((EXAMPLES / "manifest.json").read_text())
    profile_ms, structure_ms = [], []
    for case in manifest:
        resource = json.loads((EXAMPLES / case["file"]).read_text())
        profile_ms.append(per_call_ms(lambda: validate(resource, case["profile"], conformance)))
        if case["valid"]:
            structure_ms.append(per_call_ms(lambda: check_resource(resource)))
    print(f"profile validation: median {statistics.median(profile_ms):.3f} ms, slowest "
          f"{max(profile_ms):.3f} ms per resource ({len(profile_ms)} examples)")
    print(f"baseline, structural R4 check: median {statistics.median(structure_ms):.3f} ms; "
          f"ratio {statistics.median(profile_ms) / statistics.median(structure_ms):.2f}")


if __name__ == "__main__":
    main()
