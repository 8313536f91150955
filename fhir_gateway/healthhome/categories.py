"""ICD-10-CM diagnosis -> Health Home condition categories, from the IG's ConceptMap.

The mapping is data (`ConceptMap/icd10cm-to-hh-category` in the IG package): a state can
change which diagnoses count without code. It maps by prefix; the longest matching element
wins (F43.10 -> F43.1 -> smi, though F43 alone is mental health).

Some targets hold only in a context, said by the target's `dependsOn` (see `Target`): epilepsy
is a developmental disability only with onset before age 22, child disintegrative disorder is
SMI only for KanCare. `categories()` lists every category a code can count toward (what a
Condition.category may carry); `targets()` keeps the conditions for the eligibility logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson

from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.identifiers import ICD10CM
from fhir_gateway.outcome import Issue

CONCEPT_MAP = "ConceptMap-icd10cm-to-hh-category.json"
#: `dependsOn.property` values the eligibility logic understands (fragments of the map's url)
ONSET_BEFORE_AGE = "onset-before-age"  # value: age in years the onset must precede
STATE = "state"  # value: the state whose programs the target is for


@dataclass(frozen=True)
class Target:
    """One category a code maps to, and the context it needs: (property fragment, value)."""

    coding: dict
    depends_on: tuple[tuple[str, str], ...] = ()


@cache
def _prefixes(package_dir: str) -> tuple[str, dict[str, tuple[Target, ...]]]:
    concept_map = orjson.loads((Path(package_dir) / CONCEPT_MAP).read_bytes())
    group = concept_map["group"][0]
    table = {e["code"]: tuple(_target(t, group["target"]) for t in e.get("target", []))
             for e in group["element"]}
    return group["target"], table


def _target(target: dict, system: str) -> Target:
    coding = {"system": system, "code": target["code"], "display": target.get("display")}
    return Target(coding, tuple((d["property"].rpartition("#")[2], d["value"])
                                for d in target.get("dependsOn", ())))


def targets(icd10_code: str, package_dir: str = DEFAULT_PROFILES) -> tuple[Target, ...]:
    """The targets of the longest element an ICD-10-CM code starts with (empty: none)."""
    _, table = _prefixes(package_dir)
    code = icd10_code.strip().upper()
    for end in range(len(code), 2, -1):
        found = table.get(code[:end])
        if found:
            return found
    return ()


def categories(icd10_code: str, package_dir: str = DEFAULT_PROFILES) -> list[dict]:
    """Every category Coding an ICD-10-CM code can count toward (empty if it qualifies for
    none), whatever its targets depend on: what a Condition's category may say."""
    return [dict(t.coding) for t in targets(icd10_code, package_dir)]


def category_issues(condition: dict, package_dir: str = DEFAULT_PROFILES) -> list[Issue]:
    """Warnings when a Condition's Health Home categories disagree with its ICD-10-CM code.

    The profile makes a category required but cannot say *which*; the ConceptMap can. These
    are warnings: the diagnosis may be recorded before the map knows it, and the verdict
    must stay the one HAPI's validator gives.
    """
    system, _ = _prefixes(package_dir)
    icd = sorted(_codes([condition.get("code")], ICD10CM))
    given = _codes(condition.get("category"), system)
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


def _codes(concepts: list | None, system: str) -> set[str]:
    """The codes of `system` in CodeableConcepts. A JSON null (which the structure checks
    let through: the models read it as absent) is absent here too."""
    return {c["code"] for cc in concepts or [] if isinstance(cc, dict)
            for c in cc.get("coding") or [] if isinstance(c, dict)
            and c.get("system") == system and isinstance(c.get("code"), str) and c["code"]}
