"""FHIR R4 XML <-> FHIR JSON, driven by the R4 element table (https://hl7.org/fhir/R4/xml.html).

XML is ordered and tells attributes from elements; JSON is neither, so the conversion needs
each type's children in definition order and their types. `r4-elements.json` holds them,
generated from the R4 StructureDefinitions by `scripts/vendor_r4_definitions.py`:
`{type or backbone path: [[name, [types], many, attr], ...]}`.

Decimals keep the exact text they were written with both ways (`31.50` stays `31.50`): JSON
is read with `parse_float=str`, and XML decimals become `orjson.Fragment`s, written as-is.
`fhir.resources` has an XML codec too; it goes through `float` (31.50 -> 31.5) and costs
about 1000x JSON, so it is not used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import orjson
from lxml import etree

from fhir_gateway.outcome import FhirError
from fhir_gateway.search.registry import resource_types

NS = "http://hl7.org/fhir"
XHTML = "http://www.w3.org/1999/xhtml"
_F = "{" + NS + "}"
_DIV = "{" + XHTML + "}div"
#: JSON kinds of the primitives that are not strings in FHIR JSON (everything else is a string)
_KINDS = {"boolean": "boolean", "integer": "integer", "positiveInt": "integer",
          "unsignedInt": "integer", "decimal": "decimal"}
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
#: no DTD, no entities, no network, no billion laughs: a DOCTYPE is refused outright
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=True, remove_pis=True)


@dataclass(frozen=True, slots=True)
class Child:
    """One child of a type as JSON names it (`valueQuantity`, not `value[x]`)."""
    name: str
    order: int
    type: str        # a type name, or a backbone path whose children the table lists
    kind: str        # primitive | complex | resource | xhtml
    many: bool
    attr: bool       # an XML attribute (Element.id, Extension.url, a primitive's value)


@cache
def _table() -> dict[str, list]:
    return json.loads(files("fhir_gateway.formats").joinpath("r4-elements.json").read_text())


def _kind(type_name: str) -> str:
    if type_name == "Resource":
        return "resource"
    if type_name == "xhtml":
        return "xhtml"
    return "primitive" if type_name[0].islower() and "." not in type_name else "complex"


@cache
def children(key: str) -> dict[str, Child]:
    """The children of a type or backbone path, by JSON name; a choice gives one per type."""
    table = _table()
    out = {}
    for order, (name, types, many, attr) in enumerate(table[key]):
        for type_name in types:
            json_name = (name[:-3] + type_name[0].upper() + type_name[1:]
                         if name.endswith("[x]") else name)
            out[json_name] = Child(json_name, order, type_name, _kind(type_name),
                                   bool(many), bool(attr))
    return out


def primitive_kind(type_name: str) -> str:
    return _KINDS.get(type_name, "string")


# ---------------------------------------------------------------- JSON -> XML

def json_to_xml(body: bytes, pretty: bool = False) -> bytes:
    """FHIR JSON bytes as FHIR XML; decimals keep the text they have in `body`."""
    return to_xml(json.loads(body, parse_float=str), pretty)


def to_xml(resource: dict, pretty: bool = False) -> bytes:
    return etree.tostring(_resource_element(resource), encoding="UTF-8", xml_declaration=False,
                          pretty_print=pretty)


def _resource_element(resource: dict) -> etree._Element:
    resource_type = resource.get("resourceType")
    if resource_type not in resource_types():
        raise ValueError(f"not a FHIR resource: resourceType {resource_type!r}")
    root = etree.Element(_F + resource_type, nsmap={None: NS})
    _fill(root, resource, resource_type, resource_type)
    return root


def _fill(element: etree._Element, obj: dict, key: str, path: str) -> None:
    known = children(key)
    present = {}
    for name in obj:
        if name == "resourceType":
            continue
        child = known.get(name[1:] if name[0] == "_" else name)
        if child is None:
            raise ValueError(f"unknown element {path}.{name}")
        present[child.name] = child
    for child in sorted(present.values(), key=lambda c: c.order):
        value, extra = obj.get(child.name), obj.get("_" + child.name)
        if child.attr:
            element.set(child.name, _text(value))
        elif not child.many:
            _emit(element, child, value, extra, f"{path}.{child.name}")
        else:
            values, extras = value or [], extra or []
            for i in range(max(len(values), len(extras))):
                _emit(element, child, values[i] if i < len(values) else None,
                      extras[i] if i < len(extras) else None, f"{path}.{child.name}")


def _emit(parent: etree._Element, child: Child, value, extra: dict | None, path: str) -> None:
    if child.kind == "xhtml":
        parent.append(etree.fromstring(value, _PARSER))
        return
    element = etree.SubElement(parent, _F + child.name)
    if child.kind == "primitive":
        if extra:
            _fill(element, extra, child.type, path)
        if value is not None:
            element.set("value", _text(value))
    elif child.kind == "resource":
        element.append(_resource_element(value))
    else:
        _fill(element, value, child.type, path)


def _text(value) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) \
        else str(value)


# ---------------------------------------------------------------- XML -> JSON

def xml_to_json(body: bytes) -> bytes:
    """FHIR XML bytes as FHIR JSON bytes; bad XML is a 400 saying where."""
    return orjson.dumps(from_xml(body))


def from_xml(body: bytes) -> dict:
    """The resource as a JSON dict (decimals as `orjson.Fragment`s holding their text)."""
    try:
        root = etree.fromstring(body, _PARSER).getroottree()
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        raise FhirError(400, f"Malformed XML at line {line}, column {column}: {exc.msg}",
                        "structure") from None
    if root.docinfo.doctype:
        raise FhirError(400, "XML with a DOCTYPE is not accepted (no DTDs or entities)",
                        "security")
    return _resource(root.getroot(), "")


def _resource(element: etree._Element, where: str) -> dict:
    tag = element.tag if isinstance(element.tag, str) else ""
    name = tag[len(_F):] if tag.startswith(_F) else None
    if name not in resource_types():
        raise _bad(f"Expected a FHIR resource in the namespace {NS}, found <{tag}>", where)
    out = {"resourceType": name}
    out.update(_read(element, name, where or name))
    return out


def _read(element: etree._Element, key: str, path: str) -> dict:
    known = children(key)
    out: dict = {}
    for name, value in element.attrib.items():
        child = known.get(name)
        if child is None or not child.attr:
            raise _bad(f"Unknown attribute '{name}'", path)
        out[name] = value
    if element.text and element.text.strip():
        raise _bad("Text content is not allowed here; FHIR values go in value attributes", path)
    counts: dict[str, int] = {}
    for sub in element:
        tag = sub.tag if isinstance(sub.tag, str) else "?"
        name = "div" if tag == _DIV else tag[len(_F):] if tag.startswith(_F) else None
        child = known.get(name) if name else None
        where = f"{path}.{name or tag}"
        if child is None or child.attr:
            raise _bad(f"Unknown element '{name or tag}'", where)
        if sub.tail and sub.tail.strip():
            raise _bad("Text content is not allowed here", path)
        if child.many:
            where = f"{where}[{counts.setdefault(name, 0)}]"
            counts[name] += 1
        elif name in out or "_" + name in out:
            raise _bad(f"'{name}' may occur only once", where)
        value, extra = _value(sub, child, where)
        if child.many:
            out.setdefault(name, []).append(value)
            if child.kind == "primitive":
                out.setdefault("_" + name, []).append(extra)
        else:
            if value is not None:
                out[name] = value
            if extra:
                out["_" + name] = extra
    for name in [n for n in out if n[0] == "_" and isinstance(out[n], list)]:
        _tidy_primitive_list(out, name)
    return out


def _tidy_primitive_list(out: dict, extra_name: str) -> None:
    """A primitive list pairs `x[i]` with `_x[i]`, null where absent; all-null lists go."""
    name = extra_name[1:]
    if all(e is None for e in out[extra_name]):
        del out[extra_name]
    if all(v is None for v in out[name]):
        del out[name]


def _value(element: etree._Element, child: Child, where: str):
    """(JSON value, the `_x` object of a primitive or None)."""
    if child.kind == "xhtml":
        div = etree.fromstring(etree.tostring(element, with_tail=False))
        etree.cleanup_namespaces(div)
        return etree.tostring(div, encoding=str), None
    if child.kind == "resource":
        inner = [e for e in element]
        if len(inner) != 1 or element.attrib:
            raise _bad("Expected exactly one resource inside", where)
        return _resource(inner[0], where), None
    if child.kind == "complex":
        return _read(element, child.type, where), None
    attrs = dict(element.attrib)
    text = attrs.pop("value", None)
    if attrs.keys() - {"id"}:
        raise _bad(f"Unknown attribute(s) {sorted(attrs.keys() - {'id'})}", where)
    extra = _primitive_extra(element, attrs, where)
    if text is None:
        if not extra:
            raise _bad("A primitive element needs a value attribute or an extension", where)
        return None, extra
    return _primitive(text, primitive_kind(child.type), where), extra


def _primitive_extra(element: etree._Element, attrs: dict, where: str) -> dict | None:
    """A primitive's `id` attribute and `extension` children: its JSON `_x` object."""
    extra = dict(attrs)
    for i, sub in enumerate(element):
        if sub.tag != _F + "extension":
            raise _bad(f"A primitive element holds only extensions, not <{sub.tag}>", where)
        extra.setdefault("extension", []).append(
            _read(sub, "Extension", f"{where}.extension[{i}]"))
    return extra or None


def _primitive(text: str, kind: str, where: str):
    if kind == "string":
        if not text:
            raise _bad("An empty value attribute is not allowed", where)
        return text
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    if kind == "integer" and _INTEGER.fullmatch(text):
        return int(text)
    if kind == "decimal" and _DECIMAL.fullmatch(text):
        return orjson.Fragment(text.encode())
    raise _bad(f"'{text}' is not a valid {kind}", where)


def _bad(message: str, where: str) -> FhirError:
    return FhirError(400, f"{where}: {message}" if where else message, "structure",
                     where or None)
