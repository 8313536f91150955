"""The fixed set of value transforms a mapping may name, and the ConceptMaps it translates with.

Transforms are few on purpose: everything that is a *table* (program codes, sex, waiver
names, statuses) is a FHIR ConceptMap in `mappings/conceptmaps/`, so changing a translation
is a data edit. Code is only for what a table cannot say (date formats, ICD-10-CM's dot, the
prefix rule of the Health Home category map).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Callable

import orjson

from fhir_gateway.healthhome.categories import categories
from fhir_gateway.mapping.paths import MappingError

_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%m/%d/%Y")


def to_date(value: Any, _arg: Any, path: str) -> str:
    """A FHIR `date` (YYYY-MM-DD) from xs:date, xs:dateTime, YYYYMMDD or MM/DD/YYYY."""
    raw = str(value).strip()
    candidate = raw[:10] if re.match(r"\d{4}-\d{2}-\d{2}T", raw) else raw
    candidate = re.sub(r"(Z|[+-]\d{2}:\d{2})$", "", candidate)  # xs:date may carry a zone
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(candidate, fmt).date().isoformat()
        except ValueError:
            continue
    raise MappingError(path, f"'{raw}' is not a date")


def icd10cm(value: Any, _arg: Any, path: str) -> str:
    """ICD-10-CM as FHIR spells it: upper case, dot after the category (F209 -> F20.9).

    Claims carry codes without the dot, CIMOR with it; one spelling keeps one Condition
    per diagnosis and lets the category map (which is by prefix, with dots) match.
    """
    code = re.sub(r"\s", "", str(value)).upper().replace(".", "")
    if not re.fullmatch(r"[A-Z][0-9][0-9A-Z]{1,5}", code):
        raise MappingError(path, f"'{value}' is not an ICD-10-CM code")
    return code if len(code) == 3 else f"{code[:3]}.{code[3:]}"


def hh_categories(value: Any, _arg: Any, path: str) -> list[dict]:
    """The Health Home category Codings of an ICD-10-CM code (the IG's ConceptMap)."""
    found = categories(icd10cm(value, None, path))
    return [{k: v for k, v in c.items() if v is not None} for c in found]


class ConceptMaps:
    """FHIR ConceptMaps of a folder, by id; `translate` follows the first group that knows
    the code (as `$translate` would), else the group's `unmapped` rule, else an error."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.maps: dict[str, dict] = {}
        for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            cm = orjson.loads(file.read_bytes())
            if cm.get("resourceType") == "ConceptMap" and cm.get("id"):
                self.maps[cm["id"]] = cm

    def get(self, map_id: str) -> dict:
        if map_id not in self.maps:
            raise MappingError(map_id, f"no ConceptMap with id '{map_id}' in {self.folder}")
        return self.maps[map_id]

    def translate(self, map_id: str, code: Any, path: str) -> str:
        cm = self.get(map_id)
        source = str(code).strip()
        for exact in (True, False):
            for group in cm.get("group", []):
                for element in group.get("element", []):
                    given = element.get("code", "")
                    if (given == source) if exact else (given.casefold() == source.casefold()):
                        targets = [t for t in element.get("target", [])
                                   if t.get("equivalence") not in ("unmatched", "disjoint")]
                        if targets:
                            return targets[0]["code"]
        for group in cm.get("group", []):
            unmapped = group.get("unmapped") or {}
            if unmapped.get("mode") == "fixed":
                return unmapped["code"]
            if unmapped.get("mode") == "provided":
                return source
        raise MappingError(path, f"'{source}' has no translation in ConceptMap {map_id}")


def registry(concept_maps: ConceptMaps) -> dict[str, Callable[[Any, Any, str], Any]]:
    """name -> fn(value, argument, source path). `concat` and `const` are expressions, not
    transforms (they make values rather than change one): see engine.py."""
    return {
        "date": to_date,
        "upper": lambda v, _a, _p: str(v).upper(),
        "lower": lambda v, _a, _p: str(v).lower(),
        "translate": lambda v, map_id, p: concept_maps.translate(map_id, v, p),
        "icd10cm": icd10cm,
        "categories": hh_categories,
    }
