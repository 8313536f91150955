"""The generic value transforms a mapping may name, and the ConceptMaps it translates with.

Transforms are few on purpose: everything that is a *table* (program codes, sex, waiver
names, statuses) is a FHIR ConceptMap in `mappings/conceptmaps/`, so changing a translation
is a data edit. Code is only for what a table cannot say (date formats here; ICD-10-CM's dot
and the prefix rule of the Health Home category map in fhir_gateway.healthhome.transforms,
which the importer hands to `load_mapping`: the engine knows no source system or domain).

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

from fhir_gateway.mapping.paths import MappingError

_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%m/%d/%Y")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T")
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ZONE = re.compile(r"(Z|[+-]\d{2}:\d{2})$")


class TransformError(ValueError):
    """A value a transform cannot take (the message says why, not where)."""


#: name -> fn(value, argument), raising TransformError
TransformTable = dict[str, Callable[[Any, Any], Any]]


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


def registry(concept_maps: ConceptMaps, extra: TransformTable) -> TransformTable:
    """The generic transforms and `extra` (a domain's: they may not redefine a generic one,
    which would change what every mapping file means). `concat` and `const` are
    expressions, not transforms (they make values rather than change one): see engine.py."""
    generic: TransformTable = {
        "date": to_date,
        "upper": lambda v, _a: str(v).upper(),
        "lower": lambda v, _a: str(v).lower(),
        "translate": lambda v, map_id: concept_maps.translate(map_id, v),
    }
    clash = sorted(set(generic) & set(extra))
    if clash:
        raise MappingError(str(concept_maps.folder), f"transforms {clash} are generic ones")
    return {**generic, **extra}
