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
  transforms applied in order (`date`, `upper`, `lower`, `translate: <ConceptMap id>`, and
  those the caller registers);
* `{ref: <key>}` is a Reference to the resource of that key whose identifier, evaluated
  right here, matches: dropped if this record produced no such resource;
* `{foreach: <path>, item: <template>}` inside a list repeats the item;
* `when: <condition>` on any object drops it unless the condition holds.

An object whose source-derived values are all absent is dropped with its literals (no
`{"system": ...}` identifier without a value), so optional source elements need no `when:`.

`Mapping.load` checks a file and compiles it, once, into nested Python functions: paths
pre-split, transforms pre-bound, conditions compiled, literal parts built once (and copied
per use). Those closures are the only implementation of what a template means: one
compiler, so one meaning (bench/adapter_bench.py measures what they cost). The engine knows
no domain either: transforms beyond the generic ones come from the caller (the Health Home
ones from fhir_gateway.healthhome.transforms).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from fhir_gateway import identifiers
from fhir_gateway.formats import fhirjson
from fhir_gateway.mapping.paths import (
    Condition,
    Context,
    Finder,
    MappingError,
    finder,
    getter,
    located,
    text,
    text_getter,
)
from fhir_gateway.mapping.transforms import ConceptMaps, TransformError, TransformTable, registry

MISSING = object()
EXPRESSIONS = ("path", "const", "concat", "first", "ref")
OPTIONS = ("required", "when", "display")
WRITES = ("update", "create")
MERGES = ("min", "max")
RESOURCE_KEYS = {"key", "type", "profile", "foreach", "when", "identifier", "write", "merge",
                 "resource"}

# A compiled template node: ctx -> (value or MISSING, from_source: whether it depends on the
# source, so that an object whose source-derived members are all absent can be dropped).
Build = Callable[[Context], tuple[Any, bool]]
# A compiled expression: (ctx, required=False) -> value or MISSING (required: MappingError).
Value = Callable[..., Any]
# Kinds of the items of a compiled list.
_LITERAL, _COPY, _SOURCE, _VALUE, _BUILD, _REPEAT = (
    "literal", "copy", "source", "value", "build", "repeat")
_NOT_LITERAL = object()


@dataclass(slots=True)
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
        return conditional_reference(self.type, *self.identifier)


_SEARCH_ESCAPES = re.compile(r"([\\,|$])")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.~/-]*")  # nothing to escape, nothing to encode


@lru_cache(maxsize=1 << 14)
def identifier_search(system: str, value: str) -> str:
    """`identifier=system|value` with the search escapes (`\\,` `\\|` `\\$`) and URL encoding.

    Cached: every resource of a record references the record's Patient (and often more),
    and the transaction asks again for each entry.
    """
    if not _PLAIN_VALUE.fullmatch(value):  # most values (DCNs, NPIs, codes) are plain
        value = quote(_SEARCH_ESCAPES.sub(r"\\\1", value), safe="/")
    return f"identifier={_encoded_system(system)}|{value}"


@lru_cache(maxsize=1 << 14)
def conditional_reference(rtype: str, system: str, value: str) -> str:
    """`Type?identifier=system|value`, cached: what every reference to a resource says."""
    return f"{rtype}?{identifier_search(system, value)}"


@lru_cache(maxsize=256)
def _encoded_system(system: str) -> str:
    return quote(system, safe=":/")


class _Record(Context):
    """The context of a whole record, with what the engine learns while mapping it.

    `produced` holds the (type, system, value) of the record's resources (references
    resolve against it); `memo` what is asked for more than once, by context: a condition
    two resources share, the items a path reaches, the reference to the Patient that every
    resource makes, the identifier each resource has where it was made.
    """

    __slots__ = ("memo", "produced")

    def __init__(self, data: dict):
        super().__init__(data)
        self.produced: frozenset = frozenset()
        self.memo: dict = {}

    def close(self) -> None:
        """Break the record's reference cycles (it is its own root; its memo holds contexts
        that point back at it), so that it is freed as soon as it is mapped rather than left
        to the cyclic garbage collector."""
        self.root = None
        self.memo = {}


def _remembered(fn: Callable[[Context], Any], key: Any) -> Callable[[Context], Any]:
    """fn(ctx), computed once per context of a record (the memo is the record's)."""
    def once(ctx: Context) -> Any:
        memo, at = ctx.root.memo, (key, ctx)
        found = memo.get(at, memo)  # the memo itself: not there yet
        if found is memo:
            found = memo[at] = fn(ctx)
        return found
    return once


@dataclass(slots=True)
class _Spec:
    key: str
    type: str
    where: str
    template: dict
    identifier: dict
    value: Value  # the identifier value, compiled
    contexts: Finder | None  # each item of `foreach` (None: the record itself)
    test: Callable[[Context], Any] | None  # `when`, compiled (and remembered if asked again)
    profile: str | None = None
    foreach: Any = None
    when: Condition | None = None
    write: str = "update"
    merge: dict[str, str] = field(default_factory=dict)
    build: Build | None = None  # the template, compiled once every key is known (refs)
    distinct: bool = False  # its resource is a function of the item: repeated items map once
    more_identifiers: bool = True  # whether the template may make identifiers of its own
    system: str = field(init=False)  # the identifier's system

    def __post_init__(self):
        self.system = self.identifier["system"]


class Mapping:
    """A loaded mapping file: `apply(record_data)` -> the record's resources."""

    @classmethod
    def load(cls, path: str | Path, transforms: TransformTable | None = None) -> Mapping:
        """Load, check and compile a mapping file (unknown keys, transforms, ConceptMaps,
        refs fail here). `transforms`: name -> fn(value, argument) beyond the generic ones,
        which a domain brings (fhir_gateway.healthhome.transforms.TRANSFORMS)."""
        source = Path(path)
        try:
            doc = yaml.safe_load(source.read_text())
        except yaml.YAMLError as err:
            raise MappingError(str(source), f"not YAML: {err}") from None
        if not isinstance(doc, dict):
            raise MappingError(str(source), "a mapping file is a YAML mapping")
        try:
            return cls(doc, source, transforms)
        except MappingError as err:
            raise err.in_record(f"mapping {source}") from None

    def __init__(self, doc: dict, source: Path, transforms: TransformTable | None = None):
        self.source = source
        self.system = doc.get("system", source.stem)
        self.record_id = doc.get("record_id")
        folder = source.parent / doc.get("conceptmaps", "conceptmaps")
        self.concept_maps = ConceptMaps(folder)
        self.transforms = registry(self.concept_maps, transforms or {})
        self._functions = {name: _for_conditions(fn) for name, fn in self.transforms.items()
                           if name != "translate"}  # what `when:` may call
        shared = {}
        for name in _as_list(doc.get("include")):  # e.g. common.yaml: systems both files use
            shared.update(yaml.safe_load((source.parent / name).read_text()).get("constants", {}))
        self.constants = _constants({**shared, **(doc.get("constants") or {})})
        self._conditions: dict[str, Condition] = {}
        self._literals: dict[Callable, Any] = {}  # compiled literal nodes -> their value
        self.specs: list[_Spec] = []
        self.by_key: dict[str, _Spec] = {}
        for i, raw in enumerate(doc.get("resources") or []):
            self.specs.append(self._spec(_interpolate(raw, self.constants, f"resources[{i}]"),
                                         f"resources[{i}]"))
        self.by_key = {s.key: s for s in self.specs}
        if len(self.by_key) != len(self.specs):
            raise MappingError(str(source), "two resources share a key")
        shared = Counter(spec.when for spec in self.specs)
        for spec in self.specs:
            if spec.when and shared[spec.when] > 1:  # a test asked once is not kept
                spec.test = _remembered(spec.when.test, spec.when)  # asked again, same answer
            spec.build = self._template(spec.template, spec.where + ".resource")
            spec.more_identifiers = "identifier" in spec.template or any(
                k in spec.template for k in EXPRESSIONS)  # an expression makes anything
            spec.distinct = spec.foreach is not None and not self._reads_above_item(
                [spec.when.expr if spec.when else None, spec.identifier["value"], spec.template])
        self._record_id = getter(self.record_id) if self.record_id else None

    # -- loading: checks, then compiles ------------------------------------------------
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
        value = self._expression(ident["value"], f"{where}.identifier.value")
        foreach = raw.get("foreach")
        contexts = None if foreach is None else self._contexts(foreach, f"{where}.foreach")
        when = self._condition(raw["when"]) if "when" in raw else None
        return _Spec(raw["key"], raw["type"], where, template, ident, value, contexts,
                     None if when is None else when.test, profile, foreach, when, write, merge)

    def _condition(self, expr: str) -> Condition:
        if expr not in self._conditions:
            self._conditions[expr] = Condition(str(expr), self._functions)
        return self._conditions[expr]

    def _check_value(self, node: dict, where: str) -> None:
        """Reject unknown transforms, ConceptMaps and keys at load, not mid-import."""
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

    def _check_foreach(self, node: dict, where: str) -> None:
        if set(node) - {"foreach", "item", "when"} or "item" not in node:
            raise MappingError(where, "a foreach takes 'foreach', 'item' and 'when'")
        if isinstance(node["foreach"], dict):
            self._check_value(node["foreach"], f"{where}.foreach")

    def _reads_above_item(self, node: Any) -> bool:
        """Whether a node may read above its item (`../`), itself or through the identifier
        of a resource it references: a node that does not is a function of its item."""
        if isinstance(node, str):
            return "../" in node
        if isinstance(node, list):
            return any(self._reads_above_item(v) for v in node)
        if isinstance(node, dict):
            target = self.by_key.get(node.get("ref"))
            return any(self._reads_above_item(v) for v in node.values()) or (
                target is not None and self._reads_above_item(target.identifier["value"]))
        return False

    # -- compiling templates -------------------------------------------------------------
    def _template(self, node: Any, where: str) -> Build:
        """A template node, compiled; a literal subtree is built here, once."""
        if isinstance(node, str):
            if _is_path(node):
                read = _reader(node[1:], _source(node))
                return lambda ctx: (read(ctx), True)
            return self._literal(node.removeprefix("$"))
        if isinstance(node, list):
            return self._list(node, where)
        if not isinstance(node, dict):
            return self._literal(node)
        when = self._condition(node["when"]) if "when" in node else None
        if "foreach" in node:  # outside a list a foreach is a plain object (checked all the same)
            self._check_foreach(node, where)
        elif any(k in node for k in EXPRESSIONS):
            return self._template_expression(node, when, where)
        return self._object(node, when, where)

    def _literal(self, value: Any) -> Build:
        """A node without source paths: its value, a fresh copy per use if it is mutable."""
        if isinstance(value, (dict, list)):
            copy = _copier(value)

            def build(ctx: Context) -> tuple[Any, bool]:
                return copy(), False
        else:
            result = (value, False)

            def build(ctx: Context) -> tuple[Any, bool]:
                return result
        self._literals[build] = value
        return build

    def _template_expression(self, node: dict, when: Condition | None, where: str) -> Build:
        value = self._unguarded(node, where)
        from_source = "const" not in node  # a `when`-ed literal stays literal

        def expression(ctx: Context) -> tuple[Any, bool]:
            if when is not None and not when(ctx):
                return MISSING, False
            return value(ctx), from_source
        return expression

    def _object(self, node: dict, when: Condition | None, where: str) -> Build:
        """An object: dropped when its `when` fails, when it is empty, or when it has
        source-derived values and all of them are absent (its literals go with them)."""
        members = [(key, *self._member(child, f"{where}.{key}"))
                   for key, child in node.items() if key != "when"]
        skeleton = {}  # every member in order, the literal ones with their value
        computed = []  # (key, kind, function, from_source) of the others
        for key, kind, fn, from_source in members:
            if kind is _LITERAL and fn is MISSING:
                continue  # an empty literal: never there
            skeleton[key] = fn if kind is _LITERAL else None
            if kind is not _LITERAL:
                computed.append((key, kind, fn, from_source))

        # whether a `$path` or an expression member reads the source: known here
        reads = any(fs for _, kind, _, fs in computed if kind is _SOURCE or kind is _VALUE)

        def build(ctx: Context) -> tuple[Any, bool]:
            if when is not None and not when(ctx):
                return MISSING, False
            out, reads_source, found_source = skeleton.copy(), reads, False
            for key, kind, fn, from_source in computed:
                if kind is _SOURCE:
                    value = fn(ctx)
                    if value.__class__ is str:  # the usual member: a text of the record
                        out[key] = value
                        found_source = True
                        continue
                    if value is not MISSING:
                        value = _fresh(value)  # not the record's own data
                elif kind is _VALUE:
                    value = fn(ctx)
                elif kind is _COPY:  # a literal object or list: there, and not from the source
                    out[key] = fn()
                    continue
                else:
                    value, from_source = fn(ctx)
                    if from_source:
                        reads_source = True
                if value is MISSING:
                    del out[key]
                else:
                    out[key] = value
                    if from_source:
                        found_source = True
            if not out or (reads_source and not found_source):
                return MISSING, reads_source
            return out, reads_source
        if when is None and all(kind in (_LITERAL, _COPY) for _, kind, _, _ in members):
            return self._literal(build(None)[0])
        return build

    def _member(self, node: Any, where: str) -> tuple[str, Any, bool | None]:
        """(kind, function or value, from_source) of an object's member or a list's item.

        A `$path` (_SOURCE) is read directly (a non-text value it reaches is to be copied);
        an expression without `when` (_VALUE) is called for its value alone, whether it
        depends on the source known here; a scalar literal (_LITERAL) is its value, an
        object or list literal (_COPY) copied; anything else is a template (_BUILD, called
        for value and from_source).
        """
        if _is_path(node):
            return _SOURCE, text_getter(node[1:], MISSING), True
        if isinstance(node, dict) and "when" not in node and "foreach" not in node \
                and any(k in node for k in EXPRESSIONS):
            return _VALUE, self._unguarded(node, where), "const" not in node
        build = self._template(node, where)
        literal = self._literals.get(build, _NOT_LITERAL)
        if literal is MISSING or _is_scalar(literal):
            return _LITERAL, literal, False
        if literal is not _NOT_LITERAL:
            return _COPY, _copier(literal), False
        return _BUILD, build, None

    def _list(self, node: list, where: str) -> Build:
        """A list: its items, with `{foreach, item}` items repeated (without duplicates) and
        the values of a `$path` item reaching several spread into the list."""
        parts = []  # (kind, function or literal value, from_source of a value)
        for i, item in enumerate(node):
            if isinstance(item, dict) and "foreach" in item:
                parts.append((_REPEAT, self._repeat(item, f"{where}[{i}]"), True))
                continue
            kind, fn, from_source = self._member(item, f"{where}[{i}]")
            if fn is not MISSING:  # an empty literal adds nothing
                parts.append((kind, fn, from_source))

        def build(ctx: Context) -> tuple[Any, bool]:
            out, any_from_source = [], False
            for kind, part, from_source in parts:
                if kind is _SOURCE:
                    any_from_source = True
                    value = part(ctx)
                    if value.__class__ is str:  # the usual item: a text of the record
                        out.append(value)
                    elif isinstance(value, list):  # a path reaching several: spread
                        out.extend(_fresh(value))
                    elif value is not MISSING:
                        out.append(_fresh(value))
                    continue
                if kind is _LITERAL:
                    out.append(part)
                    continue
                if kind is _COPY:
                    out.append(part())
                    continue
                if kind is _REPEAT:
                    part(ctx, out)
                    any_from_source = True
                    continue
                if kind is _BUILD:
                    value, from_source = part(ctx)
                else:
                    value = part(ctx)
                if from_source:
                    any_from_source = True
                if value is not MISSING:
                    out.append(value)
            return (out if out else MISSING), any_from_source
        if all(kind in (_LITERAL, _COPY) for kind, _, _ in parts):
            return self._literal(build(None)[0])
        return build

    def _repeat(self, node: dict, where: str) -> Callable[[Context, list], None]:
        """A `{foreach, item}` list item: the item at each context where `when` holds, added
        to the list unless it is there already."""
        contexts, when, item, distinct = self._repetition(node, where)

        def repeat(ctx: Context, out: list) -> bool:
            for c in _distinct(contexts(ctx)) if distinct else contexts(ctx):
                if when is None or when(c):
                    value, _ = item(c)
                    if value is not MISSING and value not in out:
                        out.append(value)
        return repeat

    def _repetition(self, node: dict, where: str) -> tuple[Finder, Callable | None, Build, bool]:
        """A `{foreach, item}` list item, compiled: (its contexts, its `when` test or None,
        its item, whether a repeated string item may be skipped: it would add nothing)."""
        when = self._condition(node["when"]).test if "when" in node else None
        self._check_foreach(node, where)
        contexts = self._contexts(node["foreach"], f"{where}.foreach")
        item = self._template(node["item"], f"{where}.item")
        return contexts, when, item, not self._reads_above_item(node)

    def _contexts(self, foreach: Any, where: str) -> Finder:
        """Where a `foreach` leads: a path's items, or one child per value of an expression."""
        if foreach is None:
            return lambda ctx: [ctx]
        if isinstance(foreach, str):  # several resources and lists go over the same items
            return _remembered(finder(foreach), ("items", foreach))
        values = self._expression(foreach, where)

        def each(ctx: Context) -> list[Context]:
            found = values(ctx)
            found = [] if found is MISSING else found if isinstance(found, list) else [found]
            return [ctx.child(v, (ctx._at, i)) for i, v in enumerate(found)]
        return each

    # -- compiling expressions -----------------------------------------------------------
    def _expression(self, node: Any, where: str) -> Value:
        """A value (`$path`, a literal, `{path|const|concat|first|ref: ...}`), compiled."""
        if not isinstance(node, dict):
            return self._plain_value(node, where)
        value = self._unguarded(node, where)
        if "when" not in node:
            return value
        when = self._condition(node["when"])

        def guarded(ctx: Context, required: bool = False) -> Any:
            return value(ctx, required) if when(ctx) else MISSING
        return guarded

    def _plain_value(self, node: Any, where: str) -> Value:
        """A value that is not an expression object: `$path`, a literal, a template."""
        source = _source(node) or str(node)
        if _is_path(node):
            return _reader(node[1:], source)
        build = self._template(node, where)
        literal = self._literals.get(build, MISSING)
        if literal is not MISSING and not isinstance(literal, (dict, list)):
            def constant(ctx: Context, required: bool = False) -> Any:
                return literal
            self._literals[constant] = literal
            return constant

        def value(ctx: Context, required: bool = False) -> Any:
            got, _ = build(ctx)
            if got is MISSING and required:
                raise MappingError(located(ctx, source), "is required")
            return got
        return value

    def _unguarded(self, node: dict, where: str) -> Value:
        """An expression object without its `when` (checked, then compiled)."""
        self._check_value(node, where)
        if "ref" in node:
            return self._reference(node, where)
        to_value = self._raw_to_value(node)
        source = _source(node)
        if "path" in node:
            read = text_getter(node["path"], None)

            plain = not self._steps(node)

            def path(ctx: Context, required: bool = False) -> Any:
                value = read(ctx)
                if plain and value.__class__ is str:  # present, nothing to transform
                    return value
                return to_value(ctx, value if value.__class__ is str else _fresh(value), source,
                                required)
            return path
        if "const" in node:
            const = node["const"]
            return lambda ctx, required=False: to_value(ctx, _fresh(const), source, required)
        if "concat" in node:
            return self._concat(node["concat"], to_value, source, where)
        return self._first(node["first"], to_value, source, where)

    def _concat(self, nodes: list, to_value: Callable, source: str, where: str) -> Value:
        compiled = [self._expression(p, where) for p in nodes]
        parts = [(None, self._literals[fn]) if fn in self._literals else (fn, None)
                 for fn in compiled]  # (expression, or None and the literal)
        sources = [_source(p) for p in nodes]

        def concat(ctx: Context, required: bool = False) -> Any:
            values = [literal if fn is None else fn(ctx) for fn, literal in parts]
            try:
                joined = "".join(values)  # the usual: every part a text
            except TypeError:  # MISSING, or a value that is not text
                if any(v is MISSING for v in values):
                    absent = [s for s, v in zip(sources, values) if v is MISSING]  # named
                    return to_value(ctx, None, " + ".join(absent) or source, required)
                joined = "".join(map(str, values))
            return to_value(ctx, joined, source, required)
        return concat

    def _first(self, nodes: list, to_value: Callable, source: str, where: str) -> Value:
        parts = [self._expression(p, where) for p in nodes]

        def first(ctx: Context, required: bool = False) -> Any:
            for part in parts:
                value = part(ctx)
                if value is not MISSING:
                    return to_value(ctx, value, source, required)
            return to_value(ctx, None, source, required)
        return first

    def _steps(self, node: dict) -> list[tuple[Callable[[Any, Any], Any], Any]]:
        """The transforms a node names, in its order, with their arguments."""
        return [(self.transforms[key], arg) for key, arg in node.items()
                if key in self.transforms and key not in EXPRESSIONS and arg is not False]

    def _raw_to_value(self, node: dict) -> Callable[[Context, Any, str, bool], Any]:
        """What every expression does with its raw value: absent -> MISSING (or "is required"),
        else the transforms, in the order the node names them."""
        required_here = bool(node.get("required"))
        steps = self._steps(node)

        only = steps[0] if len(steps) == 1 else None

        def to_value(ctx: Context, value: Any, source: str, required: bool) -> Any:
            if only is not None and value.__class__ is str:  # the usual: one text, one step
                try:
                    value = only[0](value, only[1])
                except TransformError as err:
                    raise MappingError(located(ctx, source), str(err)) from None
                return MISSING if value is None or value == [] else value
            if value is None or value == []:
                if required or required_here:
                    raise MappingError(located(ctx, source or "?"), "is required")
                return MISSING
            if not steps:
                return value
            try:
                for fn, arg in steps:
                    if isinstance(value, list):
                        results = [fn(v, arg) for v in value]
                        value = [r for res in results
                                 for r in (res if isinstance(res, list) else [res])]
                    else:
                        value = fn(value, arg)
            except TransformError as err:
                raise MappingError(located(ctx, source), str(err)) from None
            return MISSING if value is None or value == [] else value
        return to_value

    def _reference(self, node: dict, where: str) -> Value:
        """`{ref: key}`: a conditional reference to the target, if this record produced it.

        A record-level target (no foreach) is the same wherever it is referenced from; a
        foreach target is the one whose identifier, evaluated here, matches.
        """
        name = node["ref"]
        target = self.by_key[name]
        local = target.foreach is not None
        rtype, system = target.type, target.identifier["system"]
        required = bool(node.get("required"))
        source = _source(target.identifier["value"])
        display = self._template(node["display"], f"{where}.display") \
            if "display" in node else None

        def find(at: Context) -> str | None:
            value = at.root.memo.get((name, at))  # its identifier here, if it was produced
            if value is None:
                try:
                    value = target.value(at)
                except MappingError:
                    return None  # the target's identifier does not exist here: no such target
                if value is MISSING or (rtype, system, str(value)) not in at.root.produced:
                    return None
                value = str(value)
            return conditional_reference(rtype, system, value)
        if not local:
            find = _remembered(find, ("ref", name))

        def reference(ctx: Context, _required: bool = False) -> Any:  # its own `required`
            at = ctx if local else ctx.root
            found = find(at)
            if found is None:
                if required:
                    raise MappingError(located(at, source), f"is required (the {name} this "
                                                           f"{rtype} reference needs)")
                return MISSING
            ref = {"reference": found}
            if display is not None:
                shown, _ = display(ctx)
                if shown is not MISSING:
                    ref["display"] = shown
            return ref
        return reference

    # -- applying -----------------------------------------------------------------------
    def apply(self, data: dict) -> list[MappedResource]:
        """The record's resources, in mapping order, one per identifier."""
        root = _Record(data)
        rid = self._record_id(root) if self._record_id else None  # a bad id fails as itself
        try:
            planned = self._planned(root)
            root.produced = frozenset((s.type, s.system, v) for s, _, v in planned)
            out: dict[tuple[str, str, str], MappedResource] = {}
            for spec, ctx, value in planned:
                mapped = self._resource(spec, ctx, value)
                ident = (spec.type, spec.system, value)
                out[ident] = _merge_owned(out[ident], mapped) if ident in out else mapped
            return list(out.values())
        except MappingError as err:
            raise err.in_record(f"{self.system} {text(rid) or '?'}") from None
        finally:
            root.close()

    def _planned(self, root: _Record) -> list[tuple[_Spec, Context, str]]:
        """(spec, context, identifier value) of each resource the record maps to, in order."""
        planned = []
        for spec in self.specs:
            contexts = spec.contexts(root) if spec.contexts else (root,)
            # the same resource again: merging it would change nothing
            for ctx in _distinct(contexts) if spec.distinct else contexts:
                if spec.test is None or spec.test(ctx):
                    planned.append((spec, ctx, _identifier(spec, ctx, spec.value(ctx, True))))
        return planned

    def _resource(self, spec: _Spec, ctx: Context, value: str) -> MappedResource:
        """The resource of `spec` at `ctx`, its identifier's value known."""
        body, _ = spec.build(ctx)
        body = {} if body is MISSING else body
        ident = {"system": spec.system, "value": value}
        resource: dict = {"resourceType": spec.type}
        if spec.profile:
            resource["meta"] = {"profile": [spec.profile]}
        resource["identifier"] = [ident]
        if spec.more_identifiers:  # the template's own come after the business identifier
            resource["identifier"] += [i for i in body.pop("identifier", []) if i != ident]
        resource.update(body)
        return MappedResource(spec.key, resource, (ident["system"], value), spec.write,
                              spec.merge)


def _identifier(spec: _Spec, ctx: Context, value: Any) -> str:
    """An identifier value as the resource's: one value, as text (remembered where it was
    made: what a reference to it from here finds)."""
    if isinstance(value, (list, dict)):
        raise MappingError(located(ctx, _source(spec.identifier["value"])),
                           f"the {spec.key} identifier needs one value, not {value!r}")
    if value is not MISSING:
        ctx.root.memo[spec.key, ctx] = str(value)
    return str(value)


def _distinct(contexts: Iterable[Context]) -> list[Context]:
    """The contexts, each string item once (a repeated one would only add itself again)."""
    seen: set = set()
    out = []
    for ctx in contexts:
        item = ctx.item
        if item.__class__ is str:
            if item in seen:
                continue
            seen.add(item)
        out.append(ctx)
    return out


def _is_path(node: Any) -> bool:
    """`$path` (a source path), not a literal (`$$` escapes a literal `$`)."""
    return isinstance(node, str) and node.startswith("$") and not node.startswith("$$")


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list)) and value is not _NOT_LITERAL


def _reader(path: str, source: str) -> Value:
    """A `$path` as a value: the text of the value(s) there, or MISSING."""
    read = text_getter(path, MISSING)

    def value(ctx: Context, required: bool = False) -> Any:
        got = read(ctx)
        if got.__class__ is str:  # the usual leaf
            return got
        if got is MISSING:
            if required:
                raise MappingError(located(ctx, source), "is required")
            return MISSING
        return _fresh(got)
    return value


def _for_conditions(fn: Callable[[Any, Any], Any]) -> Callable[[Any, str], Any]:
    """A transform as conditions call it: fn(value, path), its errors naming the path.

    Results for a string are remembered: conditions only compare them, and ask again and
    again (the same transform of every code, in several conditions).
    """
    def call(value: Any, path: str) -> Any:
        try:
            return fn(value, None)
        except TransformError as err:
            raise MappingError(path, str(err)) from None
    remembered = lru_cache(maxsize=1 << 12)(call)

    def function(value: Any, path: str) -> Any:
        return remembered(value, path) if value.__class__ is str else call(value, path)
    return function


def _copier(value: Any) -> Callable[[], Any]:
    """A function that copies the literal `value`, its shape worked out once."""
    if isinstance(value, dict):
        nested = [(k, _copier(v)) for k, v in value.items() if isinstance(v, (dict, list))]
        if not nested:
            return value.copy

        def copy_dict() -> dict:
            out = value.copy()
            for key, copy in nested:
                out[key] = copy()
            return out
        return copy_dict
    if isinstance(value, list):
        if not any(isinstance(v, (dict, list)) for v in value):
            return value.copy
        copies = [_copier(v) for v in value]
        if len(copies) == 1:  # the usual `coding: [{...}]`
            only = copies[0]
            return lambda: [only()]
        return lambda: [copy() for copy in copies]
    return lambda: value


def _fresh(value: Any) -> Any:
    """A copy of JSON-shaped data (dicts, lists, immutable scalars): `deepcopy` without its
    memo and type dispatch, and without a call per string (most of a resource)."""
    if isinstance(value, dict):
        return {k: v if v.__class__ is str else _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if v.__class__ is str else _fresh(v) for v in value]
    return value


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
    unioned, and the `merge:` policies (`period.start: min`) decide. Neither argument changes.
    """
    if first.write == second.write and first.resource == second.resource:
        return first  # merging an equal resource changes nothing (the payer of many records)
    return _merge_owned(_copy(first), _copy(second))


def _copy(m: MappedResource) -> MappedResource:
    return MappedResource(m.key, _fresh(m.resource), m.identifier, m.write, m.merge)


def _merge_owned(first: MappedResource, second: MappedResource) -> MappedResource:
    """`merge_mapped` of results nobody else holds (a record's, just built): in place."""
    if first.write != second.write:
        return first if first.write == "update" else second
    first.resource = _merge(first.resource, second.resource, first.merge, "")
    return first


def _merge(a: Any, b: Any, policies: dict[str, str], path: str) -> Any:
    """b merged into a (which changes; parts of b move into it)."""
    policy = policies.get(path)
    if policy and isinstance(a, str) and isinstance(b, str):
        return min(a, b) if policy == "min" else max(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        for key, value in b.items():
            sub = f"{path}.{key}" if path else key
            if key not in a:
                a[key] = value
            else:
                a[key] = _merge(a[key], value, policies, sub)
        return a
    if isinstance(a, list) and isinstance(b, list):
        return a + [v for v in b if v not in a]
    return a


def to_transaction(mapped: list[MappedResource]) -> dict:
    """A transaction Bundle: `PUT Type?identifier=...` per owned resource, a conditional
    create (`POST` + `ifNoneExist`) per create-only one.

    Re-importing the same record therefore changes nothing (the stores skip no-op updates).
    Each entry's fullUrl is a `urn:uuid` derived from its identifier, and references to
    entries of the Bundle point at it: the gateway resolves conditional *references* only
    against resources already stored, so on a first import `Patient?identifier=...` would
    not find the Patient the same Bundle creates. References to resources outside the
    Bundle stay conditional. The Bundle shares no data with `mapped`.
    """
    return fhirjson.loads(transaction_json(mapped))


def transaction_json(mapped: list[MappedResource]) -> bytes:
    """`to_transaction` as JSON (what the importer sends between processes).

    References to entries are localized in the JSON, by one regular-expression pass: walking
    every node of every resource cost more than building the Bundle. A `"reference":"..."`
    with unescaped quotes is a key and its string value, nothing else.
    """
    bundle, full_urls = _transaction(mapped)
    local = {fhirjson.dumps(ref)[1:-1]: b'"reference":"%s"' % url.encode()
             for ref, url in full_urls.items()}

    def localized(match: re.Match) -> bytes:
        return local.get(match.group(1), match.group(0))
    data = _REFERENCE.sub(localized, fhirjson.dumps(bundle))
    if any(b"\\" in ref for ref in local):  # a reference with escapes: the exact, slower pattern
        data = _ESCAPED_REFERENCE.sub(localized, data)
    return data


_REFERENCE = re.compile(rb'"reference":"([^"\\]*)"')  # the usual reference: no escapes
_ESCAPED_REFERENCE = re.compile(rb'"reference":"((?:[^"\\]|\\.)*)"')


def _transaction(mapped: list[MappedResource]) -> tuple[dict, dict[str, str]]:
    """The Bundle with the resources of `mapped` as they are, and fullUrl per reference."""
    merged: dict[str, MappedResource] = {}
    for m in mapped:
        ref = m.reference
        merged[ref] = merge_mapped(merged[ref], m) if ref in merged else m
    full_urls = {ref: _full_url(ref) for ref in merged}
    entries = []
    for ref, m in merged.items():
        if m.write == "update":
            request = {"method": "PUT", "url": ref}
        else:
            request = {"method": "POST", "url": m.type, "ifNoneExist": m.search}
        entries.append({"fullUrl": full_urls[ref], "resource": m.resource, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, full_urls


def _full_url(reference: str) -> str:
    """`urn:uuid:` + uuid5(NAMESPACE_URL, reference), formatted directly (uuid.UUID's
    checks and conversions cost more than the SHA-1 itself)."""
    digest = bytearray(hashlib.sha1(_URL_NAMESPACE + reference.encode()).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"urn:uuid:{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes
