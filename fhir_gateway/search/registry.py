"""The search parameters the gateway knows, from the FHIR R4 definitions (data, not code).

`r4-definitions.json` is vendored from the spec (see scripts/vendor_r4_definitions.py);
the SearchParameter resources of the gateway's IG package (profiles/package/, e.g. `Task`
`due`) are registered the same way, so both stores know them (HAPI installs the package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import orjson

from fhir_gateway.config import DEFAULT_PROFILES

from fhir_gateway.search.fhirpath import Extractor, compile_expression

#: parameter types the embedded store indexes and searches
INDEXED_TYPES = ("token", "string", "reference", "date", "quantity", "number", "uri")


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str
    url: str
    resource_type: str
    expression: str
    targets: tuple[str, ...] = ()
    extract: Extractor | None = field(default=None, compare=False, repr=False)
    #: elements `extract` starts from (see `fhirpath.Compiled`); None: always run it
    roots: frozenset[str] | None = field(default=None, compare=False, repr=False)


@cache
def _definitions() -> dict:
    raw = resources.files("fhir_gateway.search").joinpath("r4-definitions.json").read_bytes()
    definitions = orjson.loads(raw)
    definitions["searchParameters"] += ig_search_parameters(DEFAULT_PROFILES)
    return definitions


def ig_search_parameters(package: str) -> list[dict]:
    """The SearchParameter resources of an IG package folder (`SearchParameter-*.json`)."""
    return [orjson.loads(path.read_bytes())
            for path in sorted(Path(package).glob("SearchParameter-*.json"))]


@cache
def resource_types() -> frozenset[str]:
    return frozenset(_definitions()["resourceTypes"])


@cache
def params_for(resource_type: str) -> dict[str, SearchParam]:
    """Searchable parameters of a resource type, keyed by code (incl. `_id`, `_lastUpdated`)."""
    found: dict[str, SearchParam] = {}
    bases = {resource_type, "Resource", "DomainResource"}
    for sp in _definitions()["searchParameters"]:
        if sp["type"] not in INDEXED_TYPES or not sp.get("expression"):
            continue
        if not bases.intersection(sp["base"]):
            continue
        compiled = compile_expression(sp["expression"], resource_type)
        if compiled is None:
            continue
        found[sp["code"]] = SearchParam(
            code=sp["code"], type=sp["type"], url=sp["url"], resource_type=resource_type,
            expression=sp["expression"], targets=tuple(sp.get("target", ())),
            extract=compiled.extract, roots=compiled.roots,
        )
    return found


def indexed_params(resource_type: str) -> tuple[SearchParam, ...]:
    """Parameters whose values the store writes to its index (`_id` lives on the row)."""
    return tuple(p for p in params_for(resource_type).values()
                 if p.code not in ("_id", "_lastUpdated"))
