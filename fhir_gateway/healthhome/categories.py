"""ICD-10-CM diagnosis -> Health Home condition categories, from the IG's ConceptMap.

The mapping is data (`ConceptMap/icd10cm-to-hh-category` in the IG package): a state can
change which diagnoses count without code. It maps by prefix; the longest matching element
wins (F43.10 -> F43.1 -> smi, though F43 alone is mental health).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import orjson

from fhir_gateway.config import Settings
from fhir_gateway.identifiers import ICD10CM
from fhir_gateway.outcome import Issue

CONCEPT_MAP = "ConceptMap-icd10cm-to-hh-category.json"


@cache
def _default_package() -> str:
    return Settings().profiles  # read the environment once, not per diagnosis


@cache
def _prefixes(package_dir: str) -> tuple[str, dict[str, tuple[dict, ...]]]:
    concept_map = orjson.loads((Path(package_dir) / CONCEPT_MAP).read_bytes())
    group = concept_map["group"][0]
    table = {e["code"]: tuple({"system": group["target"], "code": t["code"],
                               "display": t.get("display")} for t in e.get("target", []))
             for e in group["element"]}
    return group["target"], table


def categories(icd10_code: str, package_dir: str | None = None) -> list[dict]:
    """The category Codings an ICD-10-CM code counts toward (empty if it qualifies for none)."""
    _, table = _prefixes(package_dir or _default_package())
    code = icd10_code.strip().upper()
    for end in range(len(code), 2, -1):
        found = table.get(code[:end])
        if found:
            return [dict(c) for c in found]
    return []


def category_issues(condition: dict, package_dir: str | None = None) -> list[Issue]:
    """Warnings when a Condition's Health Home categories disagree with its ICD-10-CM code.

    The profile makes a category required but cannot say *which*; the ConceptMap can. These
    are warnings: the diagnosis may be recorded before the map knows it, and the verdict
    must stay the one HAPI's validator gives.
    """
    package_dir = package_dir or _default_package()
    system, _ = _prefixes(package_dir)
    icd = [c["code"] for c in (condition.get("code") or {}).get("coding", [])
           if c.get("system") == ICD10CM and c.get("code")]
    given = {c["code"] for cc in condition.get("category", []) for c in cc.get("coding", [])
             if c.get("system") == system and isinstance(c.get("code"), str)}
    if not icd or not given:
        return []
    mapped = {c["code"] for code in icd for c in categories(code, package_dir)}
    if not mapped:
        return [Issue(f"ICD-10-CM {', '.join(icd)} is not a Health Home qualifying condition "
                      "(ConceptMap icd10cm-to-hh-category)", "business-rule", "warning",
                      ["Condition.code"])]
    wrong = sorted(given - mapped)
    if wrong:
        return [Issue(f"Category {', '.join(wrong)} does not follow from ICD-10-CM "
                      f"{', '.join(icd)}, which maps to {', '.join(sorted(mapped))}",
                      "business-rule", "warning", ["Condition.category"])]
    return []
