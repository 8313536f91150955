"""Evaluate search-parameter expressions on resource JSON, fast.

Every write indexes a resource by all of its type's search parameters, so the expressions
run thousands of times a second. The R4 definitions use a tiny corner of FHIRPath (paths,
`as`/`ofType` on choice elements, `where(field='x')`, `where(resolve() is Type)`, `[0]`),
which we compile once into plain Python steps over dicts. Anything outside that corner is
handed to fhirpathpy, which is complete but much slower (`bench/store_bench.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Extractor = Callable[[dict], list]

_FIELD = re.compile(r"[a-z][A-Za-z0-9]*")
_AS = re.compile(r"^\((?P<path>[^()]+) as (?P<type>[A-Za-z]+)\)(?P<rest>(\.[A-Za-z]+)*)$")
_WHERE_EQ = re.compile(r"^where\((?P<field>[a-z][A-Za-z]*)\s*=\s*'(?P<value>[^']*)'\)$")
_WHERE_RESOLVE = re.compile(r"^where\(resolve\(\) is (?P<type>[A-Z][A-Za-z]*)\)$")
_CALL_AS = re.compile(r"^(?:as|ofType)\((?P<type>[A-Za-z]+)\)$")


def split_union(expression: str) -> list[str]:
    """Split `a | b | (c as T)` at top-level pipes."""
    parts, depth, current = [], 0, []
    for ch in expression:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "|" and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


@dataclass(frozen=True)
class Compiled:
    """An expression compiled for one resource type.

    `roots` names the top-level elements the expression starts from. Most of a type's
    parameters point at elements a given resource does not have: when `roots` and the
    `element_names` of its keys are disjoint, the extractor would return [] and need not
    run. None means the extractor must always run.
    """

    extract: Extractor
    roots: frozenset[str] | None


def compile_expression(expression: str, resource_type: str) -> Compiled | None:
    """Compile the parts of `expression` that apply to `resource_type` into one extractor.

    Returns None when no part of the expression applies to the type.
    """
    parts = []
    for part in split_union(expression):
        head = part.lstrip("(").split(".", 1)[0]
        if head not in (resource_type, "Resource", "DomainResource"):
            continue
        parts.append(_compile_part(part, resource_type))
    if not parts:
        return None
    roots = None if any(p.roots is None for p in parts) \
        else frozenset().union(*(p.roots for p in parts))
    if len(parts) == 1:
        return Compiled(parts[0].extract, roots)
    extractors = [p.extract for p in parts]
    return Compiled(lambda resource: [v for extract in extractors for v in extract(resource)],
                    roots)


def element_names(keys: Iterable[str]) -> set[str]:
    """The names under which a resource with these keys has elements, for `Compiled.roots`.

    That is its keys, plus each key's prefixes that end before an upper-case letter: path
    steps resolve `onset` to `onsetDateTime` (see `_choice_value`).
    """
    return {name for key in keys
            for name in (key, *(key[:i] for i, c in enumerate(key) if c.isupper()))}


def _compile_part(part: str, resource_type: str) -> Compiled:
    steps = _steps(part)
    if steps is None:
        return Compiled(_fallback(part, resource_type), None)
    return Compiled(_chain([_STEPS[s[0]](*s[1:]) for s in steps]), _roots(steps))


def _roots(steps: list[tuple]) -> frozenset[str] | None:
    """The element the first step reads from the resource; None if it reads none."""
    if steps and steps[0][0] == "field":
        return frozenset([steps[0][1]])
    if steps and steps[0][0] == "choice":
        return frozenset([_choice_name(*steps[0][1:])])
    return None


def _steps(part: str) -> list[tuple] | None:
    """Translate one path into steps, or None if it is outside the supported corner."""
    as_type = None
    match = _AS.match(part)
    if match:
        part, as_type = match["path"], match["type"]
        rest = match["rest"]
    else:
        rest = ""
    segments = part.split(".")[1:]  # drop the resource type
    steps: list[tuple] = []
    i = 0
    while i < len(segments):
        seg = segments[i]
        if seg.startswith("where("):
            # re-join a where(...) that contained dots
            while seg.count("(") > seg.count(")") and i + 1 < len(segments):
                i += 1
                seg += "." + segments[i]
            eq, res = _WHERE_EQ.match(seg), _WHERE_RESOLVE.match(seg)
            if eq:
                steps.append(("where_eq", eq["field"], eq["value"]))
            elif res:
                steps.append(("where_type", res["type"]))
            else:
                return None
        elif _CALL_AS.match(seg):
            if not steps or steps[-1][0] != "field":
                return None
            steps[-1] = ("choice", steps[-1][1], _CALL_AS.match(seg)["type"])
        elif seg.endswith("[0]") and _FIELD.fullmatch(seg[:-3]):
            steps.append(("field", seg[:-3]))
            steps.append(("first",))
        elif _FIELD.fullmatch(seg):
            steps.append(("field", seg))
        else:
            return None
        i += 1
    if as_type:
        if not steps or steps[-1][0] != "field":
            return None
        steps[-1] = ("choice", steps[-1][1], as_type)
    for seg in rest.split(".")[1:]:
        steps.append(("field", seg))
    return steps


def _choice_name(name: str, type_name: str) -> str:
    """The JSON name of a choice element of a type: `onset` as dateTime is onsetDateTime."""
    return name + type_name[0].upper() + type_name[1:]


def _chain(steps: list[Callable[[list], list]]) -> Extractor:
    """Run the steps from the resource; each maps a list of nodes to the next list."""
    def extract(resource: dict) -> list:
        nodes = [resource]
        for step in steps:
            nodes = step(nodes)
            if not nodes:
                return []
        return nodes

    return extract


def _field(name: str) -> Callable[[list], list]:
    def step(nodes: list) -> list:
        out = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            value = node.get(name)
            if value is None:
                value = _choice_value(node, name)
                if value is None:
                    continue
            if isinstance(value, list):
                out.extend(value)
            else:
                out.append(value)
        return out

    return step


def _where_eq(field: str, value: str) -> Callable[[list], list]:
    return lambda nodes: [n for n in nodes if isinstance(n, dict) and n.get(field) == value]


def _where_type(type_name: str) -> Callable[[list], list]:
    return lambda nodes: [n for n in nodes if _reference_type(n) == type_name]


#: step kind (as `_steps` writes it) -> factory of the function running it
_STEPS: dict[str, Callable[..., Callable[[list], list]]] = {
    "field": _field,
    "choice": lambda name, type_name: _field(_choice_name(name, type_name)),
    "where_eq": _where_eq,
    "where_type": _where_type,
    "first": lambda: lambda nodes: nodes[:1],
}


def _choice_value(node: dict, name: str) -> Any:
    """FHIRPath `effective` on JSON means whichever `effective[x]` is present."""
    n = len(name)
    for key, value in node.items():
        if len(key) > n and key.startswith(name) and key[n].isupper():
            return value
    return None


def _reference_type(node: Any) -> str | None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and "/" in ref:
            parts = ref.split("/_history/")[0].rstrip("/").split("/")
            return parts[-2] if len(parts) >= 2 else None
        return node.get("type")
    return None


def _fallback(part: str, resource_type: str) -> Extractor:
    import fhirpathpy
    from fhirpathpy.models import models

    compiled = fhirpathpy.compile(part, models["r4"])  # the model resolves choice types
    # `T.x.exists() and ...` is false, whatever follows, when the resource has no `x`:
    # answered without fhirpathpy (R4's Patient.deceased: it would run on every Patient)
    guard = re.match(rf"^{resource_type}\.(?P<field>[a-z][A-Za-z0-9]*)\.exists\(\) and ", part)
    absent_field = guard["field"] if guard else None

    def extract(resource: dict) -> list:
        if resource.get("resourceType") != resource_type:
            return []
        if absent_field is not None and absent_field not in element_names(resource):
            return [False]
        return [v for v in compiled(resource) if v is not None]

    return extract
