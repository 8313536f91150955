"""Whether a resource is substance use disorder (SUD) information, as `part2.yaml` says.

The rule is data: the Health Home categories that are SUD (the IG's ConceptMap, the same
list eligibility uses, so the two cannot drift apart), extra ICD-10-CM prefixes, SNOMED CT
disorders, the treatment code lists, and which CodeableConcepts of which resource types
are read. A resource is SUD when any coding of those elements is in the lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.healthhome.categories import categories
from fhir_gateway.identifiers import CANONICAL_BASE, ICD10CM, SNOMED

RULES = Path(__file__).with_name("part2.yaml")
HH_CATEGORY = f"{CANONICAL_BASE}/CodeSystem/hh-condition-category"


@dataclass(frozen=True)
class Rules:
    """`part2.yaml`, read: what counts as SUD and where to look for it."""

    condition_categories: frozenset[str]
    icd10cm_prefixes: tuple[str, ...]
    codes: dict[str, frozenset[str]]  # system -> SUD codes (disorders and treatment)
    aliases: dict[str, str]
    elements: dict[str, tuple[tuple[str, ...], ...]]
    package_dir: str

    @classmethod
    def load(cls, path: str | Path = RULES, package_dir: str = DEFAULT_PROFILES) -> Rules:
        data = yaml.safe_load(Path(path).read_text())
        codes: dict[str, set[str]] = {SNOMED: set(map(str, data.get("snomed_disorders") or {}))}
        for system, listed in (data.get("treatment") or {}).items():
            codes.setdefault(system, set()).update(map(str, listed or {}))
        return cls(frozenset(data.get("condition_categories") or ()),
                   tuple(_plain(p) for p in data.get("icd10cm_prefixes") or ()),
                   {s: frozenset(c) for s, c in codes.items()},
                   dict(data.get("system_aliases") or {}),
                   {rtype: tuple(tuple(path.split(".")) for path in paths)
                    for rtype, paths in (data.get("elements") or {}).items()},
                   package_dir)

    def coding_is_sud(self, coding: dict) -> bool:
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str) or not code.strip():
            return False
        system = self.aliases.get(system, system)
        if system == ICD10CM:
            return self._icd_is_sud(code)
        if system == HH_CATEGORY:
            return code in self.condition_categories
        return code.strip() in self.codes.get(system, ())

    def _icd_is_sud(self, code: str) -> bool:
        plain = _plain(code)
        if any(plain.startswith(prefix) for prefix in self.icd10cm_prefixes):
            return True
        return any(c["code"] in self.condition_categories
                   for c in categories(code, self.package_dir))

    def is_sud(self, resource: dict) -> bool:
        paths = self.elements.get(resource.get("resourceType", ""), ())
        return any(self.coding_is_sud(coding) for path in paths
                   for concept in _values(resource, path) if isinstance(concept, dict)
                   for coding in concept.get("coding") or () if isinstance(coding, dict))


@cache
def rules() -> Rules:
    return Rules.load()


def is_sud(resource: dict) -> bool:
    """Whether the resource's codes say substance use disorder (diagnosis or treatment)."""
    return isinstance(resource, dict) and rules().is_sud(resource)


def _plain(code: str) -> str:
    return code.strip().upper().replace(".", "")


def _values(node: object, path: tuple[str, ...]) -> list:
    """The values at a dotted path, lists flattened at every step."""
    found = [node]
    for key in path:
        step = []
        for value in found:
            child = value.get(key) if isinstance(value, dict) else None
            step.extend(child if isinstance(child, list) else [child] if child is not None else [])
        found = step
    return found
