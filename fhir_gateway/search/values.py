"""Turn the elements a search parameter selects into index values.

One function per search-parameter type, each knowing the FHIR datatypes that parameter
type can point at (a token may be a Coding, a CodeableConcept, an Identifier, a
ContactPoint, a code or a boolean, ...).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator

from fhir_gateway.search.dates import MAX, MIN, parse_range

_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def normalize(text: str) -> str:
    """Case- and accent-insensitive form used by string search (the spec's default)."""
    if text.isascii():  # nothing to decompose: the same, 10x sooner
        return text.casefold()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def tokens(nodes: Iterable) -> list[tuple[str | None, str | None, str | None]]:
    """(system, code, display-text) triples; code None rows exist only for `:text`."""
    rows = []
    for node in nodes:
        if isinstance(node, bool):
            rows.append((None, "true" if node else "false", None))
        elif isinstance(node, str):
            rows.append((None, node, None))
        elif isinstance(node, dict):
            if "coding" in node or "text" in node and "value" not in node:
                for coding in node.get("coding", ()):
                    rows.append(_coding(coding))
                if node.get("text"):
                    rows.append((None, None, normalize(node["text"])))
            elif "value" in node:  # Identifier, ContactPoint
                text = (node.get("type") or {}).get("text")
                rows.append((node.get("system"), str(node["value"]), normalize(text) if text else None))
            elif "code" in node or "system" in node:  # Coding
                rows.append(_coding(node))
    return rows


def _coding(coding: dict) -> tuple[str | None, str | None, str | None]:
    display = coding.get("display")
    return coding.get("system"), coding.get("code"), normalize(display) if display else None


def strings(nodes: Iterable) -> list[tuple[str, str]]:
    """(normalized, exact) pairs."""
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            parts = _ADDRESS_PARTS if "city" in node or "line" in node or "postalCode" in node \
                else _NAME_PARTS
            for part in parts:
                value = node.get(part)
                if isinstance(value, list):
                    out.extend(v for v in value if isinstance(v, str))
                elif isinstance(value, str):
                    out.append(value)
    return [(normalize(s), s) for s in out]


def references(nodes: Iterable) -> list[tuple[str, str | None, str | None]]:
    """(reference, target type, target id); type and id only for relative references."""
    rows = []
    for node in nodes:
        ref = node.get("reference") if isinstance(node, dict) else node
        if not isinstance(ref, str) or not ref or ref.startswith("#"):
            continue
        ref = ref.split("/_history/")[0]
        parts = ref.split("/")
        if len(parts) == 2 and ":" not in ref and parts[0][:1].isupper():
            rows.append((ref, parts[0], parts[1]))
        else:
            rows.append((ref, None, None))
    return rows


def each_reference(node) -> Iterator[dict]:
    """Every element under `node` that holds a `reference` text (a Reference), to read or
    rewrite in place. A loop, not recursion: it visits every element of every entry of a
    transaction."""
    stack = [node]
    push = stack.append
    while stack:
        node = stack.pop()
        if node.__class__ is dict:
            if node.get("reference").__class__ is str:
                yield node
            node = node.values()
        for value in node:
            if value.__class__ is dict or value.__class__ is list:
                push(value)


def reference_path(resource: dict, ttype: str, tid: str) -> str:
    """The FHIRPath of the element of `resource` that refers to `ttype/tid`
    (`Encounter.participant[0].individual`): where the client must look, which the search
    parameter that indexed it (`Encounter.practitioner`) does not say."""
    stack: list[tuple[str, object]] = [(resource["resourceType"], resource)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            found = references([node])
            if found and found[0][1:] == (ttype, tid):
                return path
            stack.extend((f"{path}.{k}", v) for k, v in reversed(node.items())
                         if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(node))))
    return resource["resourceType"]


def dates(nodes: Iterable) -> list[tuple[float, float]]:
    rows = []
    for node in nodes:
        if isinstance(node, str):
            rng = parse_range(node)
            if rng:
                rows.append(rng)
        elif isinstance(node, dict):
            if "start" in node or "end" in node:  # Period
                start = parse_range(node["start"]) if "start" in node else None
                end = parse_range(node["end"]) if "end" in node else None
                rows.append((start[0] if start else MIN, end[1] if end else MAX))
            elif "event" in node:  # Timing
                rows.extend(r for r in map(parse_range, node["event"]) if r)
    return rows


def quantities(nodes: Iterable) -> list[tuple[float, str | None, str | None, str | None]]:
    rows = []
    for node in nodes:
        if isinstance(node, dict) and isinstance(node.get("value"), (int, float)):
            if "currency" in node:
                rows.append((float(node["value"]), "urn:iso:std:iso:4217", node["currency"], None))
            else:
                rows.append((float(node["value"]), node.get("system"), node.get("code"),
                             node.get("unit")))
    return rows


def numbers(nodes: Iterable) -> list[float]:
    rows = []
    for node in nodes:
        if isinstance(node, dict):
            node = node.get("value")
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            rows.append(float(node))
    return rows
