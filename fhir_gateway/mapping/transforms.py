"""The fixed set of value transforms a mapping may name, and the ConceptMaps it translates with.

Transforms are few on purpose: everything that is a *table* (program codes, sex, waiver
names, statuses) is a FHIR ConceptMap in `mappings/conceptmaps/`, so changing a translation
is a data edit. Code is only for what a table cannot say (date formats, ICD-10-CM's dot, the
prefix rule of the Health Home category map).

A transform says what is wrong with a value (`TransformError`); its caller, which knows where
the value came from, turns that into a `MappingError` naming the source path, only when it
happens.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from fhir_gateway.healthhome.categories import categories
from fhir_gateway.mapping.paths import MappingError

_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%m/%d/%Y")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T")
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ZONE = re.compile(r"(Z|[+-]\d{2}:\d{2})$")
_SPACE = re.compile(r"\s")
_ICD10CM = re.compile(r"[A-Z][0-9][0-9A-Z]{1,5}")


class TransformError(ValueError):
    """A value a transform cannot take (the message says why, not where)."""


def to_date(value: Any, _arg: Any = None) -> str:
    """A FHIR `date` (YYYY-MM-DD) from xs:date, xs:dateTime, YYYYMMDD or MM/DD/YYYY."""
    raw = str(value).strip()
    date = _iso_date(raw)
    if date is None:
        raise TransformError(f"'{raw}' is not a date")
    return date


@lru_cache(maxsize=1 << 14)
def _iso_date(raw: str) -> str | None:
    """`to_date` of a stripped value, None if it is no date; cached because an extract
    repeats the same few thousand dates (service dates, eligibility months) endlessly."""
    candidate = raw[:10] if _DATETIME.match(raw) else raw
    candidate = _ZONE.sub("", candidate)  # xs:date may carry a zone
    if _ISO_DAY.fullmatch(candidate):  # the usual spelling: checked in C, not by strptime
        try:
            return dt.date.fromisoformat(candidate).isoformat()
        except ValueError:
            return None
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(candidate, fmt).date().isoformat()
        except ValueError:
            continue
    return None


def icd10cm(value: Any, _arg: Any = None) -> str:
    """ICD-10-CM as FHIR spells it: upper case, dot after the category (F209 -> F20.9).

    Claims carry codes without the dot, CIMOR with it; one spelling keeps one Condition
    per diagnosis and lets the category map (which is by prefix, with dots) match.
    """
    code = _icd10cm(str(value))
    if code is None:
        raise TransformError(f"'{value}' is not an ICD-10-CM code")
    return code


@lru_cache(maxsize=1 << 14)
def _icd10cm(raw: str) -> str | None:
    """`icd10cm` of a value, None if it is no code; cached: a record asks for each of its
    codes several times (identifier, code, categories, conditions)."""
    code = _SPACE.sub("", raw).upper().replace(".", "")
    if not _ICD10CM.fullmatch(code):
        return None
    return code if len(code) == 3 else f"{code[:3]}.{code[3:]}"


def hh_categories(value: Any, _arg: Any = None) -> list[dict]:
    """The Health Home category Codings of an ICD-10-CM code (the IG's ConceptMap)."""
    return [dict(c) for c in _categories(icd10cm(value))]


@lru_cache(maxsize=1 << 14)
def _categories(code: str) -> tuple[dict, ...]:
    """The Codings of a normalised code, cached (callers get copies: they end up in resources)."""
    return tuple({k: v for k, v in c.items() if v is not None} for c in categories(code))


class ConceptMaps:
    """FHIR ConceptMaps of a folder, by id; `translate` follows the first group that knows
    the code (as `$translate` would), else the group's `unmapped` rule, else an error.

    Each map is indexed once into dicts: translating is a look-up, not a scan of the map.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.maps: dict[str, dict] = {}
        self._tables: dict[str, _Table] = {}
        for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            cm = orjson.loads(file.read_bytes())
            if cm.get("resourceType") == "ConceptMap" and cm.get("id"):
                self.maps[cm["id"]] = cm
                self._tables[cm["id"]] = _Table(cm)

    def get(self, map_id: str) -> dict:
        if map_id not in self.maps:
            raise MappingError(map_id, f"no ConceptMap with id '{map_id}' in {self.folder}")
        return self.maps[map_id]

    def translate(self, map_id: str, code: Any) -> str:
        self.get(map_id)
        return self._tables[map_id].translate(str(code).strip())


class _Table:
    """One ConceptMap as look-ups: exact codes first, then case-insensitive, then `unmapped`.

    Within each kind the first element (in group and element order) with a usable target
    wins, which is what scanning the groups in order would find.
    """

    def __init__(self, cm: dict):
        self.id = cm["id"]
        self.exact: dict[str, dict] = {}  # code -> its first usable target
        self.folded: dict[str, dict] = {}
        for group in cm.get("group", []):
            for element in group.get("element", []):
                targets = [t for t in element.get("target", [])
                           if t.get("equivalence") not in ("unmatched", "disjoint")]
                if targets:
                    given = element.get("code", "")
                    self.exact.setdefault(given, targets[0])
                    self.folded.setdefault(given.casefold(), targets[0])
        self.unmapped = next((g["unmapped"] for g in cm.get("group", [])
                              if (g.get("unmapped") or {}).get("mode") in ("fixed", "provided")),
                             None)

    def translate(self, source: str) -> str:
        target = self.exact.get(source)
        if target is None:
            target = self.folded.get(source.casefold())
        if target is not None:
            return target["code"]
        if self.unmapped is not None:
            return self.unmapped["code"] if self.unmapped["mode"] == "fixed" else source
        raise TransformError(f"'{source}' has no translation in ConceptMap {self.id}")


def registry(concept_maps: ConceptMaps) -> dict[str, Callable[[Any, Any], Any]]:
    """name -> fn(value, argument), raising TransformError. `concat` and `const` are
    expressions, not transforms (they make values rather than change one): see engine.py."""
    return {
        "date": to_date,
        "upper": lambda v, _a: str(v).upper(),
        "lower": lambda v, _a: str(v).lower(),
        "translate": lambda v, map_id: concept_maps.translate(map_id, v),
        "icd10cm": icd10cm,
        "categories": hh_categories,
    }
