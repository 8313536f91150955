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
from operator import attrgetter

import orjson
from lxml import etree

from fhir_gateway.outcome import FhirError
from fhir_gateway.search.registry import resource_types

NS = "http://hl7.org/fhir"
XHTML = "http://www.w3.org/1999/xhtml"
_F = "{" + NS + "}"
_FLEN = len(_F)
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
    json_kind: str   # of a primitive: string | boolean | integer | decimal


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
                                   bool(many), bool(attr), _KINDS.get(type_name, "string"))
    return out


# ---------------------------------------------------------------- JSON -> XML

def json_to_xml(body: bytes, pretty: bool = False) -> bytes:
    """FHIR JSON bytes as FHIR XML; decimals keep the text they have in `body`."""
    return to_xml(json.loads(body, parse_float=str), pretty)


def to_xml(resource: dict, pretty: bool = False) -> bytes:
    """The resource as FHIR XML, written as text (about twice as fast as building an lxml
    tree); only the narrative's XHTML goes through lxml, to check it is well-formed."""
    out: list[str] = []
    _resource_text(out, resource, ' xmlns="' + NS + '"')
    text = "".join(out).encode()
    return etree.tostring(etree.fromstring(text), pretty_print=True) if pretty else text


def _resource_text(out: list[str], resource: dict, xmlns: str = "") -> None:
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if resource_type not in resource_types():
        raise ValueError(f"not a FHIR resource: resourceType {resource_type!r}")
    _element(out, resource_type, resource, resource_type, resource_type, xmlns)


def _element(out: list[str], tag: str, obj: dict, key: str, path: str, attrs: str = "") -> None:
    """`<tag attrs>children</tag>`, the children in the table's order, never the dict's."""
    known = children(key)
    present = []
    for name in obj:
        if name != "resourceType":
            child = known.get(name[1:] if name[0] == "_" else name)
            if child is None:
                raise ValueError(f"unknown element {path}.{name}")
            if name[0] != "_" or name[1:] not in obj:
                present.append(child)
    present.sort(key=_ORDER)
    start = len(out)
    out.append("")
    for child in present:
        value, extra = obj.get(child.name), obj.get("_" + child.name)
        if child.attr:
            attrs += f' {child.name}="{_attribute(value)}"'
        elif not child.many:
            _emit(out, child, value, extra, f"{path}.{child.name}")
        else:
            values, extras = value or (), extra or ()
            for i in range(max(len(values), len(extras))):
                _emit(out, child, values[i] if i < len(values) else None,
                      extras[i] if i < len(extras) else None, f"{path}.{child.name}")
    if len(out) == start + 1:
        out[start] = f"<{tag}{attrs}/>"
    else:
        out[start] = f"<{tag}{attrs}>"
        out.append(f"</{tag}>")


def _emit(out: list[str], child: Child, value, extra: dict | None, path: str) -> None:
    if child.kind == "primitive":
        if extra:
            _element(out, child.name, extra if value is None else {**extra, "value": value},
                     child.type, path)
        elif value is not None:
            out.append(f'<{child.name} value="{_attribute(value)}"/>')
    elif child.kind == "complex":
        _element(out, child.name, value, child.type, path)
    elif child.kind == "resource":
        out.append(f"<{child.name}>")
        _resource_text(out, value)
        out.append(f"</{child.name}>")
    else:  # xhtml: a well-formed div, written as lxml reads it
        out.append(etree.tostring(etree.fromstring(value, _PARSER), encoding=str))


_ORDER = attrgetter("order")
_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("\t", "&#9;"),
            ("\n", "&#10;"), ("\r", "&#13;"))
#: what XML 1.0 cannot carry at all, even escaped
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
#: what needs escaping, or cannot be written (most values have none: one search)
_SPECIAL = re.compile("[&<>\"\t\n\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _attribute(value) -> str:
    text = "true" if value is True else "false" if value is False else \
        value if isinstance(value, str) else repr(value) if isinstance(value, float) \
        else str(value)
    if _SPECIAL.search(text) is None:
        return text
    if _ILLEGAL.search(text):
        raise ValueError("a character XML 1.0 cannot carry")
    for char, entity in _ESCAPES:
        text = text.replace(char, entity)
    return text


# ---------------------------------------------------------------- XML -> JSON

def xml_to_json(body: bytes) -> bytes:
    """FHIR XML bytes as FHIR JSON bytes; bad XML is a 400 saying where."""
    resource = from_xml(body)
    try:
        return orjson.dumps(resource)
    except TypeError:  # orjson writes at most 255 levels; the XML parser allows 256 elements
        raise FhirError(400, "The resource is nested too deeply to be FHIR JSON (orjson's "
                             "limit: 255 levels of objects and arrays)", "structure") from None


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
    """An element's attributes and children as JSON. Paths are only built for errors and
    nested elements: a plain primitive (`<x value=".."/>`) is the common case, kept short."""
    known = children(key)
    out: dict = {}
    for name, value in element.attrib.items():
        child = known.get(name)
        if child is None or not child.attr:
            raise _bad(f"Unknown attribute '{name}'", path)
        out[name] = value
    if element.text and not element.text.isspace():
        raise _bad("Text content is not allowed here; FHIR values go in value attributes", path)
    lists = False
    for sub in element:
        tag = sub.tag if isinstance(sub.tag, str) else "?"
        name = tag[_FLEN:] if tag.startswith(_F) else "div" if tag == _DIV else tag
        child = known.get(name)
        if child is None or child.attr:
            raise _bad(f"Unknown element '{name}'", f"{path}.{name}")
        if sub.tail and not sub.tail.isspace():
            raise _bad("Text content is not allowed here", path)
        attrib = sub.attrib
        if child.kind == "primitive" and len(attrib) == 1 and not len(sub) and "value" in attrib:
            value, extra = _primitive(attrib["value"], child.json_kind, path,
                                      (name, out, child.many)), None
        else:
            value, extra = _value(sub, child, _where(path, name, out, child.many))
        if child.many:
            out.setdefault(name, []).append(value)
            if child.kind == "primitive":
                out.setdefault("_" + name, []).append(extra)
                lists = True
        else:
            if name in out or "_" + name in out:
                raise _bad(f"'{name}' may occur only once", f"{path}.{name}")
            if value is not None:
                out[name] = value
            if extra:
                out["_" + name] = extra
    if lists:
        for name in [n for n in out if n[0] == "_" and isinstance(out[n], list)]:
            _tidy_primitive_list(out, name)
    return out


def _where(path: str, name: str, out: dict, many: bool) -> str:
    """The FHIRPath of the child being read (its index: how many came before it)."""
    return f"{path}.{name}[{len(out.get(name, ()))}]" if many else f"{path}.{name}"


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
        if element.tag != _DIV:
            raise _bad(f"The narrative is a <div> in the XHTML namespace {XHTML}", where)
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
    return _primitive(text, child.json_kind, where), extra


def _primitive_extra(element: etree._Element, attrs: dict, where: str) -> dict | None:
    """A primitive's `id` attribute and `extension` children: its JSON `_x` object."""
    extra = dict(attrs)
    for i, sub in enumerate(element):
        if sub.tag != _F + "extension":
            raise _bad(f"A primitive element holds only extensions, not <{sub.tag}>", where)
        extra.setdefault("extension", []).append(
            _read(sub, "Extension", f"{where}.extension[{i}]"))
    return extra or None


def _primitive(text: str, kind: str, path: str, child: tuple | None = None):
    """The JSON value of a value attribute at `path` (or at the child of `path` that `child`,
    (name, out, many), names: the caller builds no path unless there is an error)."""
    if kind == "string" and text:
        return text
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    if kind == "integer" and _INTEGER.fullmatch(text):
        return int(text)
    if kind == "decimal" and _DECIMAL.fullmatch(text):
        return orjson.Fragment(text.encode())
    where = _where(path, *child) if child else path
    if kind == "string":
        raise _bad("An empty value attribute is not allowed", where)
    raise _bad(f"'{text}' is not a valid {kind}", where)


def _bad(message: str, where: str) -> FhirError:
    return FhirError(400, f"{where}: {message}" if where else message, "structure",
                     where or None)
