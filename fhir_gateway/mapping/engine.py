"""Declarative source-record -> FHIR mappings (`mappings/*.yaml`) and the one engine that runs them.

Why declarative: the CIMOR and CyberAccess extracts change (a new element, a new code) far
more often than the rules of mapping do, so which source element lands in which FHIR element
is data, reviewable by someone who reads FHIR rather than Python. The engine knows no
source system and no resource type.

A mapping file lists resources. Each names a local `key`, its `type`, the `profile` it claims,
optionally `foreach:` (one resource per item of a repeating source path) and `when:` (a
condition), its business `identifier` (the conditional-update match, so re-imports update in
place), `write: update|create` (which system owns a resource that two systems produce), and a
`resource:` template shaped like the FHIR JSON. In the template

* a plain scalar is a literal; `{NAME}` inside it is a constant (fhir_gateway.identifiers or
  the file's `constants:`);
* `$Name.Last` is a source path (`$/DCN` from the record, `$.` the current item);
* `{path|const|concat|first: ..., <transform>: ..., required: true}` is a value with
  transforms applied in order (`date`, `upper`, `lower`, `translate: <ConceptMap id>`,
  `icd10cm`, `categories`);
* `{ref: <key>}` is a Reference to the resource of that key whose identifier, evaluated
  right here, matches: dropped if this record produced no such resource;
* `{foreach: <path>, item: <template>}` inside a list repeats the item;
* `when: <condition>` on any object drops it unless the condition holds.

An object whose source-derived values are all absent is dropped with its literals (no
`{"system": ...}` identifier without a value), so optional source elements need no `when:`.
"""

from __future__ import annotations

import re
import uuid
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from fhir_gateway import identifiers
from fhir_gateway.mapping.paths import (
    Condition,
    Context,
    MappingError,
    items,
    resolve,
    text,
)
from fhir_gateway.mapping.transforms import ConceptMaps, registry

MISSING = object()
EXPRESSIONS = ("path", "const", "concat", "first", "ref")
OPTIONS = ("required", "when", "display")
WRITES = ("update", "create")
MERGES = ("min", "max")
RESOURCE_KEYS = {"key", "type", "profile", "foreach", "when", "identifier", "write", "merge",
                 "resource"}


@dataclass
class MappedResource:
    """One FHIR resource a record maps to (no `id`: the store finds it by `identifier`).

    References to other resources of the record are conditional references
    (`Patient?identifier=<system>|<value>`), meaningful on their own; `to_transaction`
    turns those whose target is in the Bundle into the target entry's fullUrl.
    """

    key: str
    resource: dict
    identifier: tuple[str, str]
    write: str = "update"
    merge: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.resource["resourceType"]

    @property
    def search(self) -> str:
        """The conditional-update criteria: `identifier=<system>|<value>`, escaped."""
        return identifier_search(*self.identifier)

    @property
    def reference(self) -> str:
        return f"{self.type}?{self.search}"


def identifier_search(system: str, value: str) -> str:
    """`identifier=system|value` with the search escapes (`\\,` `\\|` `\\$`) and URL encoding."""
    escaped = re.sub(r"([\\,|$])", r"\\\1", value)
    return f"identifier={quote(system, safe=':/')}|{quote(escaped, safe='/')}"


@dataclass
class _Spec:
    key: str
    type: str
    where: str
    template: dict
    identifier: dict
    profile: str | None = None
    foreach: Any = None
    when: Condition | None = None
    write: str = "update"
    merge: dict[str, str] = field(default_factory=dict)


class Mapping:
    """A loaded mapping file: `apply(record_data)` -> the record's resources."""

    def __init__(self, doc: dict, source: Path):
        self.source = source
        self.system = doc.get("system", source.stem)
        self.record_id = doc.get("record_id")
        folder = source.parent / doc.get("conceptmaps", "conceptmaps")
        self.concept_maps = ConceptMaps(folder)
        self.transforms = registry(self.concept_maps)
        shared = {}
        for name in _as_list(doc.get("include")):  # e.g. common.yaml: systems both files use
            shared.update(yaml.safe_load((source.parent / name).read_text()).get("constants", {}))
        self.constants = _constants({**shared, **(doc.get("constants") or {})})
        self._conditions: dict[str, Condition] = {}
        self.specs: list[_Spec] = []
        self.by_key: dict[str, _Spec] = {}
        for i, raw in enumerate(doc.get("resources") or []):
            self.specs.append(self._spec(_interpolate(raw, self.constants, f"resources[{i}]"),
                                         f"resources[{i}]"))
        self.by_key = {s.key: s for s in self.specs}
        if len(self.by_key) != len(self.specs):
            raise MappingError(str(source), "two resources share a key")
        for spec in self.specs:
            self._check(spec.template, spec.where + ".resource")

    # -- loading ----------------------------------------------------------------------
    def _spec(self, raw: dict, where: str) -> _Spec:
        unknown = set(raw) - RESOURCE_KEYS
        if unknown:
            raise MappingError(where, f"unknown keys {sorted(unknown)}")
        for required in ("key", "type", "identifier", "resource"):
            if required not in raw:
                raise MappingError(where, f"'{required}' is required")
        ident = raw["identifier"]
        if not isinstance(ident, dict) or set(ident) != {"system", "value"}:
            raise MappingError(f"{where}.identifier", "needs exactly 'system' and 'value'")
        write = raw.get("write", "update")
        if write not in WRITES:
            raise MappingError(f"{where}.write", f"must be one of {WRITES}")
        merge = raw.get("merge") or {}
        if any(v not in MERGES for v in merge.values()):
            raise MappingError(f"{where}.merge", f"policies are {MERGES}")
        profile = raw.get("profile")
        if profile and "/" not in profile:
            profile = f"{identifiers.CANONICAL_BASE}/StructureDefinition/{profile}"
        template = raw["resource"]
        if not isinstance(template, dict) or {"resourceType", "id", "meta"} & set(template):
            raise MappingError(f"{where}.resource", "a template without resourceType/id/meta "
                                                    "(the engine sets them)")
        self._check_value(ident["value"], f"{where}.identifier.value")
        foreach = raw.get("foreach")
        if isinstance(foreach, dict):
            self._check_value(foreach, f"{where}.foreach")
        return _Spec(raw["key"], raw["type"], where, template, ident, profile, foreach,
                     self._condition(raw["when"]) if "when" in raw else None, write, merge)

    def _condition(self, expr: str) -> Condition:
        if expr not in self._conditions:
            self._conditions[expr] = Condition(str(expr), self._functions())
        return self._conditions[expr]

    def _functions(self) -> dict:
        return {name: (lambda v, p, fn=fn: fn(v, None, p)) for name, fn in self.transforms.items()
                if name != "translate"}

    def _check(self, node: Any, where: str) -> None:
        """Reject unknown directives, transforms, ConceptMaps and keys at load, not mid-import."""
        if isinstance(node, list):
            for i, item in enumerate(node):
                self._check(item, f"{where}[{i}]")
        elif isinstance(node, dict):
            if "when" in node:
                self._condition(node["when"])
            if "foreach" in node:
                if set(node) - {"foreach", "item", "when"} or "item" not in node:
                    raise MappingError(where, "a foreach takes 'foreach', 'item' and 'when'")
                if isinstance(node["foreach"], dict):
                    self._check_value(node["foreach"], f"{where}.foreach")
                self._check(node["item"], f"{where}.item")
            elif any(k in node for k in EXPRESSIONS):
                self._check_value(node, where)
            else:
                for key, value in node.items():
                    if key != "when":
                        self._check(value, f"{where}.{key}")

    def _check_value(self, node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        found = [k for k in EXPRESSIONS if k in node]
        if len(found) != 1:
            raise MappingError(where, f"a value needs exactly one of {EXPRESSIONS}")
        for key in node:
            if key not in EXPRESSIONS + OPTIONS and key not in self.transforms:
                raise MappingError(f"{where}.{key}", "unknown transform or option")
        if "when" in node:
            self._condition(node["when"])
        if "translate" in node:
            self.concept_maps.get(node["translate"])
        if "ref" in node and node["ref"] not in self.by_key:
            raise MappingError(f"{where}.ref", f"no resource with key '{node['ref']}'")
        for part in node.get("concat") or node.get("first") or []:
            self._check_value(part, where)

    # -- applying -----------------------------------------------------------------------
    def apply(self, data: dict) -> list[MappedResource]:
        """The record's resources, in mapping order, one per identifier."""
        root = Context(data)
        record = self._record_name(data)
        try:
            planned = []  # (spec, context, identifier value)
            for spec in self.specs:
                for ctx in self._contexts(spec.foreach, root):
                    if spec.when is None or spec.when(ctx):
                        value = self._value(spec.identifier["value"], ctx, required=True)
                        if isinstance(value, (list, dict)):
                            raise MappingError(_where(ctx, _source(spec.identifier["value"])),
                                               f"the {spec.key} identifier needs one value, "
                                               f"not {value!r}")
                        planned.append((spec, ctx, str(value)))
            produced = frozenset((s.type, s.identifier["system"], v) for s, _, v in planned)
            out: dict[tuple[str, str, str], MappedResource] = {}
            for spec, ctx, value in planned:
                mapped = self._resource(spec, ctx.with_produced(produced), value)
                ident = (spec.type, *mapped.identifier)
                if ident in out:
                    out[ident] = merge_mapped(out[ident], mapped)
                else:
                    out[ident] = mapped
            return list(out.values())
        except MappingError as err:
            raise err.in_record(record) from None

    def _record_name(self, data: dict) -> str:
        rid = resolve(Context(data), self.record_id) if self.record_id else None
        return f"{self.system} {text(rid) or '?'}"

    def _contexts(self, foreach: Any, ctx: Context) -> list[Context]:
        if foreach is None:
            return [ctx]
        if isinstance(foreach, str):
            return items(ctx, foreach)
        values = self._value(foreach, ctx)
        values = [] if values is MISSING else values if isinstance(values, list) else [values]
        return [ctx.child(v, f"{ctx.where}[{i}]") for i, v in enumerate(values)]

    def _resource(self, spec: _Spec, ctx: Context, value: str) -> MappedResource:
        body, _ = self._build(spec.template, ctx)
        body = {} if body is MISSING else body
        ident = {"system": spec.identifier["system"], "value": value}
        resource: dict = {"resourceType": spec.type}
        if spec.profile:
            resource["meta"] = {"profile": [spec.profile]}
        resource["identifier"] = [ident] + [i for i in body.pop("identifier", []) if i != ident]
        resource.update(body)
        return MappedResource(spec.key, resource, (ident["system"], value), spec.write,
                              spec.merge)

    # -- templates ------------------------------------------------------------------------
    def _build(self, node: Any, ctx: Context) -> tuple[Any, bool]:
        """(value or MISSING, whether it depends on the source)."""
        if isinstance(node, str):
            if node.startswith("$") and not node.startswith("$$"):
                value = self._path(node[1:], ctx)
                return (MISSING if value is None or value == [] else value), True
            return node.removeprefix("$"), False
        if isinstance(node, list):
            return self._build_list(node, ctx)
        if not isinstance(node, dict):
            return node, False
        if "when" in node and not self._condition(node["when"])(ctx):
            return MISSING, False
        if any(k in node for k in EXPRESSIONS):
            return self._value(node, ctx), "const" not in node  # a `when`-ed literal stays literal
        out, dynamic, sourced = {}, False, False
        for key, child in node.items():
            if key == "when":
                continue
            value, dyn = self._build(child, ctx)
            dynamic |= dyn
            if value is not MISSING:
                out[key] = value
                sourced |= dyn
        if not out or (dynamic and not sourced):
            return MISSING, dynamic
        return out, dynamic

    def _build_list(self, node: list, ctx: Context) -> tuple[Any, bool]:
        out, dynamic = [], False
        for item in node:
            if isinstance(item, dict) and "foreach" in item:
                dynamic = True
                cond = self._condition(item["when"]) if "when" in item else None
                for c in self._contexts(item["foreach"], ctx):
                    if cond is None or cond(c):
                        value, _ = self._build(item["item"], c)
                        if value is not MISSING and value not in out:
                            out.append(value)
                continue
            value, dyn = self._build(item, ctx)
            dynamic |= dyn
            if value is not MISSING:
                out.extend(value if isinstance(value, list) and isinstance(item, str) else [value])
        return (out if out else MISSING), dynamic

    def _path(self, path: str, ctx: Context) -> Any:
        value = resolve(ctx, path)
        return [text(v) for v in value] if isinstance(value, list) else text(value)

    def _value(self, node: Any, ctx: Context, required: bool = False) -> Any:
        """An expression's value (MISSING if absent); `required` absent -> MappingError."""
        if isinstance(node, str) or not isinstance(node, dict):
            value, _ = self._build(node, ctx)
            if value is MISSING and required:
                raise MappingError(_where(ctx, _source(node) or str(node)), "is required")
            return value
        if "when" in node and not self._condition(node["when"])(ctx):
            return MISSING
        source = _source(node)
        if "ref" in node:
            return self._reference(node, ctx)
        if "path" in node:
            value = self._path(node["path"], ctx)
        elif "const" in node:
            value = node["const"]
        elif "concat" in node:
            parts = [self._value(p, ctx) for p in node["concat"]]
            absent = [_source(p) for p, v in zip(node["concat"], parts) if v is MISSING]
            source = " + ".join(absent) or source  # name the part that is missing
            value = None if absent else "".join(map(str, parts))
        else:  # first
            value = next((v for v in (self._value(p, ctx) for p in node["first"])
                          if v is not MISSING), None)
        if value is None or value == []:
            if required or node.get("required"):
                raise MappingError(_where(ctx, source or "?"), "is required")
            return MISSING
        where = _where(ctx, source)
        for key, arg in node.items():
            fn = self.transforms.get(key)
            if fn is None or key in EXPRESSIONS or arg is False:
                continue
            if isinstance(value, list):
                results = [fn(v, arg, where) for v in value]
                value = [r for res in results for r in (res if isinstance(res, list) else [res])]
            else:
                value = fn(value, arg, where)
        return value if value not in (None, []) else MISSING

    def _reference(self, node: dict, ctx: Context) -> Any:
        target = self.by_key[node["ref"]]
        # a record-level target (no foreach) is the same wherever it is referenced from; a
        # foreach target is the one whose identifier, evaluated here, matches
        where = ctx if target.foreach is not None else ctx.root
        try:
            value = self._value(target.identifier["value"], where)
        except MappingError:
            value = MISSING  # the target's identifier does not exist here: no such target
        if value is MISSING or (target.type, target.identifier["system"], str(value)) \
                not in ctx.root.produced:
            if node.get("required"):
                raise MappingError(_where(where, _source(target.identifier["value"])),
                                   f"is required (the {node['ref']} this {target.type} "
                                   "reference needs)")
            return MISSING
        search = identifier_search(target.identifier["system"], str(value))
        ref = {"reference": f"{target.type}?{search}"}
        if "display" in node:
            display, _ = self._build(node["display"], ctx)
            if display is not MISSING:
                ref["display"] = display
        return ref


def _source(node: Any) -> str:
    """The source paths an expression reads, for error messages."""
    if isinstance(node, str):
        return node.removeprefix("$") if node.startswith("$") else ""
    if isinstance(node, dict):
        if "path" in node:
            return node["path"]
        parts = node.get("concat") or node.get("first") or []
        return " + ".join(p for p in map(_source, parts) if p)
    return ""


def _where(ctx: Context, path: str) -> str:
    if path.startswith("/") or not ctx.where:
        return path.lstrip("/")
    return f"{ctx.where}.{path}" if path not in ("", ".") else ctx.where


def _as_list(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _constants(own: dict) -> dict[str, str]:
    names = {k: v for k, v in vars(identifiers).items() if k.isupper() and isinstance(v, str)}
    for key, value in own.items():  # may use the identifiers' names and earlier constants
        names[key] = _interpolate(value, names, f"constants.{key}")
    return names


def _interpolate(node: Any, names: dict[str, str], where: str) -> Any:
    if isinstance(node, str):
        def sub(m: re.Match) -> str:
            if m.group(1) not in names:
                raise MappingError(where, f"unknown constant {{{m.group(1)}}}")
            return names[m.group(1)]
        return re.sub(r"\{([A-Z][A-Z0-9_]*)\}", sub, node)
    if isinstance(node, list):
        return [_interpolate(v, names, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: _interpolate(v, names, f"{where}.{k}") for k, v in node.items()}
    return node


# -- merging and the transaction -----------------------------------------------------------
def merge_mapped(first: MappedResource, second: MappedResource) -> MappedResource:
    """Two results with one identifier (the same TCM provider on several claim lines, the
    same Patient from both systems in one Bundle) become one resource.

    The owner (`write: update`) wins outright over a create-only copy, exactly as importing
    the two one after the other would end. Otherwise the first keeps its values, lists are
    unioned, and the `merge:` policies (`period.start: min`) decide.
    """
    if first.write != second.write:
        return first if first.write == "update" else second
    resource = _merge(deepcopy(first.resource), second.resource, first.merge, "")
    return MappedResource(first.key, resource, first.identifier, first.write, first.merge)


def _merge(a: Any, b: Any, policies: dict[str, str], path: str) -> Any:
    policy = policies.get(path)
    if policy and isinstance(a, str) and isinstance(b, str):
        return min(a, b) if policy == "min" else max(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        for key, value in b.items():
            sub = f"{path}.{key}" if path else key
            if key not in a:
                a[key] = deepcopy(value)
            else:
                a[key] = _merge(a[key], value, policies, sub)
        return a
    if isinstance(a, list) and isinstance(b, list):
        return a + [deepcopy(v) for v in b if v not in a]
    return a


def to_transaction(mapped: list[MappedResource]) -> dict:
    """A transaction Bundle: `PUT Type?identifier=...` per owned resource, a conditional
    create (`POST` + `ifNoneExist`) per create-only one.

    Re-importing the same record therefore changes nothing (the stores skip no-op updates).
    Each entry's fullUrl is a `urn:uuid` derived from its identifier, and references to
    entries of the Bundle point at it: the gateway resolves conditional *references* only
    against resources already stored, so on a first import `Patient?identifier=...` would
    not find the Patient the same Bundle creates. References to resources outside the
    Bundle stay conditional.
    """
    merged: dict[str, MappedResource] = {}
    for m in mapped:
        merged[m.reference] = merge_mapped(merged[m.reference], m) \
            if m.reference in merged else m
    full_urls = {ref: f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, ref)}" for ref in merged}
    entries = []
    for ref, m in merged.items():
        resource = _local_references(deepcopy(m.resource), full_urls)
        if m.write == "update":
            request = {"method": "PUT", "url": ref}
        else:
            request = {"method": "POST", "url": m.type, "ifNoneExist": m.search}
        entries.append({"fullUrl": full_urls[ref], "resource": resource, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _local_references(node: Any, full_urls: dict[str, str]) -> Any:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str) and node["reference"] in full_urls:
            node["reference"] = full_urls[node["reference"]]
        for value in node.values():
            _local_references(value, full_urls)
    elif isinstance(node, list):
        for value in node:
            _local_references(value, full_urls)
    return node


def load_mapping(path: str | Path) -> Mapping:
    """Load and check a mapping file (unknown keys, transforms, ConceptMaps, refs fail here)."""
    source = Path(path)
    try:
        doc = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise MappingError(str(source), f"not YAML: {err}") from None
    if not isinstance(doc, dict):
        raise MappingError(str(source), "a mapping file is a YAML mapping")
    try:
        return Mapping(doc, source)
    except MappingError as err:
        raise err.in_record(f"mapping {source}") from None
