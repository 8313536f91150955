"""Evaluate search-parameter expressions on resource JSON, fast.

Every write indexes a resource by all of its type's search parameters, so the expressions
run thousands of times a second. The R4 definitions use a tiny corner of FHIRPath (paths,
`as`/`ofType` on choice elements, `where(field='x')`, `where(resolve() is Type)`, `[0]`),
which we compile once into plain Python steps over dicts. Anything outside that corner is
handed to fhirpathpy, which is complete but ~50x slower.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
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


def compile_expression(expression: str, resource_type: str) -> Extractor | None:
    """Compile the parts of `expression` that apply to `resource_type` into one extractor.

    Returns None when no part of the expression applies to the type.
    """
    extractors = []
    for part in split_union(expression):
        head = part.lstrip("(").split(".", 1)[0]
        if head not in (resource_type, "Resource", "DomainResource"):
            continue
        extractors.append(_compile_part(part, resource_type))
    if not extractors:
        return None
    if len(extractors) == 1:
        return extractors[0]
    return lambda resource: [v for extract in extractors for v in extract(resource)]


def _compile_part(part: str, resource_type: str) -> Extractor:
    steps = _steps(part)
    if steps is None:
        return _fallback(part, resource_type)
    return lambda resource: _run(steps, [resource])


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


def _run(steps: list[tuple], nodes: list) -> list:
    for step in steps:
        kind = step[0]
        if kind == "field":
            nodes = list(_children(nodes, step[1]))
        elif kind == "choice":
            name = step[1] + step[2][0].upper() + step[2][1:]
            nodes = list(_children(nodes, name))
        elif kind == "where_eq":
            nodes = [n for n in nodes if isinstance(n, dict) and n.get(step[1]) == step[2]]
        elif kind == "where_type":
            nodes = [n for n in nodes if _reference_type(n) == step[1]]
        elif kind == "first":
            nodes = nodes[:1]
        if not nodes:
            return []
    return nodes


def _children(nodes: Iterable, name: str) -> Iterable:
    for node in nodes:
        if not isinstance(node, dict):
            continue
        value = node.get(name)
        if value is None:
            value = _choice_value(node, name)
            if value is None:
                continue
        if isinstance(value, list):
            yield from value
        else:
            yield value


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

    compiled = fhirpathpy.compile(part)

    def extract(resource: dict) -> list:
        if resource.get("resourceType") != resource_type:
            return []
        return [v for v in compiled(resource) if v is not None]

    return extract
