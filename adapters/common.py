"""What the CIMOR and CyberAccess adapters share: records, errors, the streaming parser.

Both extracts have the same shape (one root element, one child element per person), so
streaming, per-record XSD validation and the element -> plain-data conversion live here
once (a file is read in byte ranges by `byte_ranges.py`; lookups are `lookup.py`). Each
system's modules only describe their format (`ExtractFormat`: namespace, root and record
tags, id element, repeating elements) and their lookup route. The contract with the
mappings is `adapters/RECORDS.md`.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lxml import etree


@dataclass
class SourceRecord:
    """One record of an extract, as RECORDS.md defines it."""

    system: str        # "cimor" | "cyberaccess"
    record_id: str     # CIMOR ConsumerId / CyberAccess DCN ("" if the record has none)
    line: int          # line of the record's start tag in the file
    raw: bytes         # the record's XML (re-serialised by lxml, namespace declared on it)
    data: dict         # the record as plain data
    errors: list[str]  # XSD problems of this record ("Episodes/Episode/AdmissionDate: ...")


class MalformedExtract(Exception):
    """The extract is not well-formed XML (or not this system's extract).

    Raised *after* every complete record before the break has been yielded, so the caller
    decides whether the records it already has are worth committing.
    """

    def __init__(self, path: str, line: int, column: int, message: str):
        super().__init__(f"{path}:{line}:{column}: {message}")
        self.path, self.line, self.column, self.message = path, line, column, message


class SourceUnavailable(Exception):
    """A source system's lookup service could not answer (refused, timed out, broken reply)."""

    def __init__(self, system: str, reason: str):
        super().__init__(f"{system} unavailable: {reason}")
        self.system, self.reason = system, reason


@dataclass(frozen=True)
class ExtractFormat:
    """Everything the generic parser needs to know about one system's extract."""

    system: str
    namespace: str
    root: str                  # local name of the root element
    record: str                # local name of the record element (a global element in the XSD)
    id_element: str            # child of the record holding `record_id`
    repeating: frozenset[str]  # "Parent/Child" pairs whose Child is always a list in `data`
    xsd: Path

    def tag(self, local: str) -> str:
        return f"{{{self.namespace}}}{local}"

    def schema(self) -> etree.XMLSchema:
        """The compiled XSD, compiled once per thread.

        lxml keeps a validator's error log on the validator object, so one shared schema
        would mix up the messages of records validated at the same time in two threads
        (the simulator serves requests in threads; clients may run in several).
        """
        cache = getattr(_SCHEMAS, "by_path", None)
        if cache is None:
            cache = _SCHEMAS.by_path = {}
        if self.xsd not in cache:
            cache[self.xsd] = etree.XMLSchema(etree.parse(str(self.xsd)))
        return cache[self.xsd]


_SCHEMAS = threading.local()


def parse_bytes(fmt: ExtractFormat, data: bytes, label: str = "<bytes>") -> Iterator[SourceRecord]:
    """Records of an extract held in memory (a lookup answer)."""
    return iter_records(fmt, io.BytesIO(data), label)


def parse_record(fmt: ExtractFormat, raw: bytes) -> SourceRecord:
    """A record again from its `raw` XML (the importer re-maps a record a store refused)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    return _record(fmt, fmt.schema(), etree.fromstring(raw, parser), 0)


def iter_records(fmt: ExtractFormat, source: str | IO[bytes], label: str,
                 line_offset: int = 0) -> Iterator[SourceRecord]:
    """Yield one SourceRecord per record element, keeping memory flat.

    iterparse reports only the record tag; once a record has been yielded its element is
    cleared and its already-processed siblings are deleted, so the tree never holds more
    than the record being read, whatever the size of the file. Entities are not resolved
    and nothing is fetched from the network (an extract is data, not a document to trust).
    `line_offset` is added to every line reported (a byte range of a file: `byte_ranges.py`).
    """
    schema = fmt.schema()
    root_tag, record_tag = fmt.tag(fmt.root), fmt.tag(fmt.record)
    context = etree.iterparse(source, events=("start", "end"), tag=record_tag, huge_tree=True,
                              resolve_entities=False, no_network=True)
    open_line = 0  # start line of a record whose end tag has not been read yet
    checked_root = False
    try:
        for event, element in context:
            if event == "start":
                open_line = element.sourceline + line_offset
                # every record: one inside another means that one was left open
                _check_parent(fmt, element, label, line_offset)
                checked_root = True
                continue
            record = _record(fmt, schema, element, line_offset)
            open_line = 0
            yield record
            element.clear(keep_tail=True)
            parent = element.getparent()
            while element.getprevious() is not None:
                del parent[0]
    except etree.XMLSyntaxError as err:
        line, column = err.position
        message = _POSITION.sub("", err.msg)  # the position is in line/column already
        if open_line:
            message += f" (the {fmt.record} record starting at line {open_line} is incomplete)"
        raise MalformedExtract(label, line + line_offset, column, message) from None
    if not checked_root and (context.root is None or context.root.tag != root_tag):
        found = "nothing" if context.root is None else _local(context.root.tag)
        raise MalformedExtract(label, 1, 1, f"root element is {found}, expected {fmt.root} "
                                            f"in namespace {fmt.namespace}")


_POSITION = re.compile(r", line \d+, column \d+$")


def _check_parent(fmt: ExtractFormat, element: etree._Element, label: str,
                  line_offset: int) -> None:
    """Refuse a file whose records do not sit directly under this system's root element."""
    parent = element.getparent()
    if parent is None or parent.tag != fmt.tag(fmt.root) or parent.getparent() is not None:
        where = "the root" if parent is None else _local(parent.tag)
        raise MalformedExtract(label, element.sourceline + line_offset, 1,
                               f"{fmt.record} found under {where}, expected directly under "
                               f"{fmt.root} in namespace {fmt.namespace}")


def _record(fmt: ExtractFormat, schema: etree.XMLSchema, element: etree._Element,
            line_offset: int) -> SourceRecord:
    raw = etree.tostring(element, with_tail=False)
    errors = validate(schema, element)
    # lxml writes every attribute as name="...": none after the record's start tag (which
    # declares the namespace) means no element inside has any
    plain = not errors and not element.items() and raw.find(b'="', raw.find(b">")) < 0
    data = to_data(element, fmt.repeating, plain) or {}
    record_id = data.get(fmt.id_element)
    return SourceRecord(system=fmt.system,
                        record_id=record_id if isinstance(record_id, str) else "",
                        line=element.sourceline + line_offset,
                        raw=raw,
                        data=data,
                        errors=errors)


# ---------------------------------------------------------------- element -> plain data

_LOCAL: dict[str, str] = {}


def _local(tag: str) -> str:
    """Local name of a Clark-notation tag ({ns}name), cached: it is asked for every element."""
    name = _LOCAL.get(tag)
    if name is None:
        name = _LOCAL[tag] = tag.rpartition("}")[2]
    return name


def to_data(element: etree._Element, repeating: frozenset[str],
            plain: bool = False) -> dict | str | None:
    """The element as plain data, per RECORDS.md.

    - children -> dict keyed by local name; "Parent/Child" pairs in `repeating` -> lists;
    - a leaf -> its text, whitespace-stripped; a leaf with attributes -> {"#text", "@attr"};
    - attributes -> "@name" keys (values are the strings of the file, e.g. "true");
    - empty elements (no text, no attributes, no non-empty children) -> None (absent);
    - a child that repeats where the XSD does not allow it (an invalid record) becomes a
      list rather than losing data; the record's `errors` say why.
    Comments and processing instructions are ignored; so is text mixed with children.
    `plain`: the caller knows the element is valid against its XSD and has no attributes,
    so an element with text is a leaf (simple content) and one without is a container or
    empty: neither children nor attributes are counted (the same data, sooner). This holds
    while the XSDs have no mixed content and no untyped elements (a test checks both).
    """
    names = _NAMES.get(repeating)
    if names is None:
        names = _NAMES[repeating] = {}
    return _convert(element, repeating, names, plain)


# parent tag -> child tag -> (child local name, always a list?), per repeating set: this
# conversion is most of a record's parsing time, so each pair is worked out once.
_NAMES: dict[frozenset[str], dict[str, dict[str, tuple[str, bool]]]] = {}


def _convert(element: etree._Element, repeating: frozenset[str],
             names: dict[str, dict[str, tuple[str, bool]]],
             plain: bool = False) -> dict | str | None:
    out: dict = {}
    if not plain:
        for name, value in element.items():
            out["@" + _local(name)] = value
    parent = element.tag
    known = names.get(parent)
    if known is None:
        known = names[parent] = {}
    leaf = True
    for child in element:
        tag = child.tag
        if tag.__class__ is not str:  # comment or processing instruction
            continue
        leaf = False
        value = child.text
        if value is not None and (value := value.strip()) and (
                plain or not (len(child) or child.items())):
            pass  # the common case, a leaf: its text, no call
        elif plain or len(child) or child.items():
            value = _convert(child, repeating, names, plain)
            if value is None:
                continue
        else:  # an empty leaf
            continue
        info = known.get(tag)
        if info is None:
            local = _local(tag)
            info = known[tag] = (local, f"{_local(parent)}/{local}" in repeating)
        name, repeats = info
        if repeats:
            found = out.get(name)
            if found is None:
                out[name] = [value]
            else:
                found.append(value)
        elif name not in out:
            out[name] = value
        elif isinstance(out[name], list):
            out[name].append(value)
        else:
            out[name] = [out[name], value]
    if leaf:
        text = (element.text or "").strip()
        if not out:
            return text or None
        if text:
            out["#text"] = text
    return out or None


# ---------------------------------------------------------------- per-record validation

_CLARK = re.compile(r"\{[^{}]*:[^{}]*\}")  # {namespace-uri}; not a pattern's {8} or {1,4}
_ELEMENT_PREFIX = re.compile(r"^Element '[^']*': ")
_STEP = re.compile(r"^\*(?:\[(\d+)\])?$")


def validate(schema: etree.XMLSchema, element: etree._Element) -> list[str]:
    """XSD problems of one record, each "path/in/record: message".

    lxml validates an element as if it were the root of its own document, so the record
    is checked against the schema's global record element without copying it. libxml2
    reports paths as positional steps (/*/*[9]/*[2]); they are turned back into names.
    """
    try:
        if schema.validate(element):
            return []
    except etree.XMLSchemaValidateError:  # libxml2 cannot validate an unexpanded entity
        entities = [f"{_path_of(element, e.getparent())}: entity reference {e.text} is not "
                    "allowed in an extract (entities are never expanded)"
                    for e in element.iter(etree.Entity)]
        return entities or ["the record cannot be checked against the XSD"]
    problems = []
    for entry in schema.error_log:
        message = _ELEMENT_PREFIX.sub("", _CLARK.sub("", entry.message))
        problems.append(f"{_named_path(element, entry.path)}: {message}")
    return problems


def _named_path(record: etree._Element, path: str | None) -> str:
    """'/*/*[9]/*[2]/*[2]' -> 'Episodes/Episode[2]/AdmissionDate' (relative to the record).

    An index is kept only where siblings share the name; a problem on the record itself is
    reported under the record's name.
    """
    steps = [s for s in (path or "").split("/") if s][1:]  # the first step is the record
    names, node = [], record
    for step in steps:
        match = _STEP.match(step)
        children = [c for c in node if isinstance(c.tag, str)]
        position = int(match.group(1) or 1) if match else 0
        if not match or not 0 < position <= len(children):
            names.append(step)  # not a shape we know: keep libxml2's own step
            break
        node = children[position - 1]
        same = [c for c in children if c.tag == node.tag]
        name = _local(node.tag)
        names.append(f"{name}[{same.index(node) + 1}]" if len(same) > 1 else name)
    return "/".join(names) or _local(record.tag)


def _path_of(record: etree._Element, node: etree._Element) -> str:
    """The path of `node` inside `record`, named as `_named_path` names libxml2's paths."""
    names = []
    while node is not None and node is not record:
        same = [c for c in node.getparent() if c.tag == node.tag]
        name = _local(node.tag)
        names.append(f"{name}[{same.index(node) + 1}]" if len(same) > 1 else name)
        node = node.getparent()
    return "/".join(reversed(names)) or _local(record.tag)
