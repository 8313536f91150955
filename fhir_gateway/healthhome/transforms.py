"""The Health Home transforms mappings name: `icd10cm` and `categories`.

They are Health Home knowledge (ICD-10-CM's spelling, the IG's category ConceptMap), so
they live here and the importer hands `TRANSFORMS` to `load_mapping`; the mapping engine
itself knows no source system and no domain.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from fhir_gateway.healthhome.categories import categories
from fhir_gateway.mapping.transforms import TransformError, TransformTable

_SPACE = re.compile(r"\s")
_ICD10CM = re.compile(r"[A-Z][0-9][0-9A-Z]{1,5}")


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


#: what the Health Home mappings (mappings/*.yaml) may name beyond the generic transforms
TRANSFORMS: TransformTable = {"icd10cm": icd10cm, "categories": hh_categories}
