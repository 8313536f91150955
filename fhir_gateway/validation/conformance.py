"""Profile conformance: does a (structurally valid) R4 resource meet an IG profile?

`structure.py` already answers "is this valid R4 JSON". Here the question is the IG's:
the profile's *snapshot* (every element of the type, with the profile's constraints merged
in) is compiled once into a tree of `Element`s, and the resource JSON is walked against it.
Everything is driven by the snapshot's data -- cardinality, fixed/pattern values, bindings,
slicing, invariants, type profiles and reference targets -- so a new profile needs no code.

Issues carry FHIRPath locations as HAPI writes them: the resource type first, 0-based
indexes where the JSON has an array, choice elements as `Observation.value.ofType(Quantity)`.
Also as HAPI, a missing or over-full element (or slice) is reported at its parent -- the
instance it is missing from, `Patient` for `Patient.birthDate` -- with the profile's element
named in the diagnostics; anything about one value is reported at that value.

One `validate` call runs on one thread: fhirpathpy keeps per-evaluation state in globals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fhir_gateway.formats import fhirjson
from fhir_gateway.outcome import Issue
from fhir_gateway.validation.profiles import Conformance

PRIMITIVES = frozenset({
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
    "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
    "uri", "url", "uuid", "xhtml"})
DATATYPES = frozenset({
    "Address", "Age", "Annotation", "Attachment", "CodeableConcept", "Coding", "ContactDetail",
    "ContactPoint", "Contributor", "Count", "DataRequirement", "Distance", "Dosage", "Duration",
    "Expression", "HumanName", "Identifier", "Meta", "Money", "ParameterDefinition", "Period",
    "Quantity", "Range", "Ratio", "Reference", "RelatedArtifact", "SampledData", "Signature",
    "Timing", "TriggerDefinition", "UsageContext"})

# Base-spec invariants that are on every element, extension or resource of every snapshot
# are not handed to fhirpathpy but checked natively, by key, where the snapshot has them
# (`_NATIVE` below). With fhirpathpy 2.2.4 on the IG's examples:
#   ele-1 `hasValue() or (children().count() > id.count())`: `hasValue()` is not implemented
#         (every evaluation raises), and it would run on every element instance;
#   ext-1 `extension.exists() != value.exists()`: right when given the R4 model and the
#         Extension type, but slow per extension (a member with race/ethnicity-style
#         complex extensions has 10+), a dict look-up natively;
#   dom-3 (contained resources are referenced): raises "Expected singleton on left side of
#         'as'" on `descendants().as(canonical)` whenever there is a contained resource, after
#         a long evaluation, so fhirpathpy never reports it;
#   dom-2, dom-4, dom-5 (no nested contained, no meta.versionId/lastUpdated/security in
#         contained): right, but a full evaluation each on every resource for what is a dict look-up.
# Every other error-severity constraint with an expression -- the IG's hh-* and the
# resources' own (pat-1, con-4, ...) -- is evaluated by fhirpathpy, and so are the IG's own
# warning-severity ones (reported as warnings; the core spec's warnings such as dom-6 are
# best-practice noise and are not run). One fhirpathpy cannot parse or run reports nothing
# (`unevaluable_constraints()` says which and why; e.g. ctm-1 calls resolve(), which
# fhirpathpy does not implement).
NATIVE_CONSTRAINTS = ("ele-1", "ext-1", "dom-2", "dom-3", "dom-4", "dom-5")
CORE = "http://hl7.org/fhir/StructureDefinition/"
MAX_DEPTH = 8  # profiles applied to datatypes/extensions inside one another

_MISSING = object()
_REFERENCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")


# -- the compiled snapshot ----------------------------------------------------------------

@dataclass(eq=False)
class Constraint:
    key: str
    human: str
    expression: str
    severity: str  # "error", or "warning" for the IG's own best-practice rules
    source: str  # the StructureDefinition that defines it
    native: Any = None  # a Python check standing in for fhirpathpy (NATIVE_CONSTRAINTS)


@dataclass(eq=False)
class Element:
    """One snapshot element, with its children and slices, ready to check JSON against."""

    id: str
    path: str
    name: str  # the JSON name; for `value[x]`, the prefix "value"
    choice: bool
    min: int
    max: int | None  # None: unbounded
    types: tuple[str, ...]
    type_profiles: dict[str, tuple[str, ...]]
    target_types: frozenset[str] | None  # allowed Reference targets; None: not restricted
    fixed: Any
    pattern: Any
    binding: tuple[str, str] | None  # (strength, value set url)
    constraints: tuple[Constraint, ...]
    slicing: dict | None
    slice_name: str | None
    source: str  # the profile URL, for messages
    fhirpath_base: str | None
    content_reference: str | None = None
    children: dict[str, Element] = field(default_factory=dict)
    slices: list[Element] = field(default_factory=list)
    discriminators: dict = field(default_factory=dict)  # cache: (type, path) -> expectation


class Item:
    """One value of an element in the JSON: its value, location, type and child object."""

    __slots__ = ("value", "path", "type", "sub")

    def __init__(self, value: Any, path: str, type_: str | None, sub: dict | None):
        self.value, self.path, self.type, self.sub = value, path, type_, sub


def compiled(conformance: Conformance, url: str) -> Element | None:
    """The profile's snapshot as an Element tree, compiled once per package."""
    cache_ = conformance.memo.setdefault("profiles", {})
    if url not in cache_:
        sd = conformance.structure_definition(url)
        cache_[url] = compile_profile(sd, conformance) if sd else None
    return cache_[url]


def compile_profile(sd: dict, conformance: Conformance) -> Element | None:
    """Build the tree from `snapshot.element`: ids say where each element hangs."""
    raw_elements = (sd.get("snapshot") or {}).get("element") or []
    if not raw_elements:
        return None
    nodes: dict[str, Element] = {}
    root = None
    for raw, eid in zip(raw_elements, _element_ids(raw_elements)):
        node = _element(raw, eid, sd, conformance)
        nodes[eid] = node
        if root is None:
            root = node
            continue
        parent_id, _, last = eid.rpartition(".")
        name, _, slice_name = last.partition(":")
        if slice_name:
            owner = nodes.get(f"{parent_id}.{name}")
            for outer in slice_name.split("/")[:-1]:  # a re-slice hangs under its slice
                owner = next((s for s in owner.slices if s.slice_name == outer),
                             None) if owner else None
            if owner is not None:
                owner.slices.append(node)
                node.constraints = tuple(c for c in node.constraints
                                         if (c.key, c.expression) not in
                                         {(o.key, o.expression) for o in owner.constraints})
        elif parent_id in nodes:
            nodes[parent_id].children[node.name] = node
    for node in nodes.values():
        if node.content_reference:
            target = nodes.get(node.content_reference.split("#", 1)[-1])
            if target is not None:
                node.children = target.children
    return root


def _element_ids(raw_elements: list[dict]) -> list[str]:
    """Element ids; derived from path and sliceName for (old) snapshots that lack them."""
    ids, sliced = [], {}  # path -> id of the slice most recently opened at that path
    for raw in raw_elements:
        if raw.get("id"):
            ids.append(raw["id"])
            continue
        path = raw["path"]
        eid = path
        for prefix in sorted(sliced, key=len, reverse=True):
            if path.startswith(prefix + "."):
                eid = sliced[prefix] + path[len(prefix):]
                break
        if raw.get("sliceName"):
            eid = f"{eid}:{raw['sliceName']}"
            sliced[path] = eid
        ids.append(eid)
    return ids


def _element(raw: dict, eid: str, sd: dict, conformance: Conformance) -> Element:
    path = raw.get("path", eid)
    last = path.rsplit(".", 1)[-1]
    choice = last.endswith("[x]")
    types = tuple(t.get("code", "") for t in raw.get("type") or [])
    type_profiles = {t.get("code", ""): tuple(t["profile"]) for t in raw.get("type") or []
                     if t.get("profile")}
    targets = [p for t in raw.get("type") or [] if t.get("code") == "Reference"
               for p in t.get("targetProfile") or []]
    binding = raw.get("binding") or {}
    max_ = raw.get("max", "*")
    is_root = "." not in path
    return Element(
        id=eid, path=path, name=last[:-3] if choice else last, choice=choice,
        min=int(raw.get("min", 0)), max=None if max_ == "*" else int(max_), types=types,
        type_profiles=type_profiles, target_types=_target_types(targets, conformance),
        fixed=_prefixed(raw, "fixed"), pattern=_prefixed(raw, "pattern"),
        binding=(binding["strength"], binding["valueSet"].split("|", 1)[0])
        if binding.get("valueSet") and binding.get("strength") else None,
        constraints=tuple(
            Constraint(c["key"], c.get("human", ""), c["expression"], c["severity"],
                       c.get("source") or sd.get("url", ""), _NATIVE.get(c["key"]))
            for c in raw.get("constraint") or [] if _checked_constraint(c)),
        slicing=raw.get("slicing"), slice_name=raw.get("sliceName"),
        source=sd.get("url", ""),
        fhirpath_base=_fhirpath_base(path, types, sd, is_root),
        content_reference=raw.get("contentReference"))


def _checked_constraint(constraint: dict) -> bool:
    """Errors, and the IG's own warnings (the core spec's are best practice, e.g. dom-6)."""
    if not constraint.get("expression") or not constraint.get("key"):
        return False
    if constraint.get("severity") == "error":
        return True
    return (constraint.get("severity") == "warning"
            and not (constraint.get("source") or "").startswith(CORE))


def _prefixed(raw: dict, prefix: str) -> Any:
    """The value of `fixed[x]` / `pattern[x]`, whatever its type suffix."""
    for key, value in raw.items():
        if key.startswith(prefix) and key[len(prefix):len(prefix) + 1].isupper():
            return value
    return _MISSING


def _target_types(target_profiles: list[str], conformance: Conformance) -> frozenset[str] | None:
    """Resource types a Reference may point to; None when any target is acceptable/unknown."""
    if not target_profiles:
        return None
    types = set()
    for url in target_profiles:
        sd = conformance.structure_definition(url)
        if sd is not None:
            types.add(sd.get("type"))
        elif url.startswith("http://hl7.org/fhir/StructureDefinition/"):
            types.add(url.rsplit("/", 1)[-1])
        else:
            return None  # a profile we cannot see: its type cannot be told
    return None if types & {"Resource", "DomainResource"} else frozenset(types)


def _fhirpath_base(path: str, types: tuple[str, ...], sd: dict, is_root: bool) -> str | None:
    """The type name fhirpathpy needs to resolve choice elements in an element's invariants."""
    if is_root:
        return None if sd.get("kind") == "resource" else sd.get("type")
    if len(types) != 1:
        return None  # a choice: the item's own type is used
    if types[0] in ("BackboneElement", "Element"):
        return path
    return None if types[0].startswith("http://") else types[0]


# -- the walk -----------------------------------------------------------------------------

@dataclass
class Run:
    """One validation: the package, the resource (%resource) and the issues found so far."""

    conformance: Conformance
    resource: dict  # %resource: the resource holding the element (a Bundle entry's, ...)
    root: dict  # %rootResource: the resource validated
    issues: list[Issue] = field(default_factory=list)
    depth: int = 0
    evaluated: set = field(default_factory=set)  # (path, key, expression) already run

    def fork(self) -> Run:
        """A scratch run, to ask "would this conform?" without reporting."""
        return Run(self.conformance, self.resource, self.root, [], self.depth, set())

    def error(self, diagnostics: str, code: str, path: str, severity: str = "error") -> None:
        self.issues.append(Issue(diagnostics, code, severity, [path]))

    def has_errors(self) -> bool:
        return any(i.severity == "error" for i in self.issues)


def validate(resource: dict, profile_url: str, conformance: Conformance) -> list[Issue]:
    """The ways `resource` fails the profile `profile_url` of the package (empty: conforms)."""
    root = compiled(conformance, profile_url)
    resource_type = resource.get("resourceType", "")
    if root is None:
        return [Issue(f"Profile {profile_url} is not known (or has no snapshot)",
                      "not-supported", "error", [resource_type])]
    if root.name != resource_type:
        return [Issue(f"Profile {profile_url} is for {root.name} resources, not {resource_type}",
                      "structure", "error", [resource_type])]
    run = Run(conformance, resource, resource)
    _check_root(root, resource, resource_type, run)
    return _dedupe(run.issues)


def prepare(conformance: Conformance) -> int:
    """Compile every profile of the package and load fhirpathpy's R4 model now (~100 ms),
    so that the first request does not pay for it. Returns how many profiles were compiled."""
    _model()
    return sum(compiled(conformance, sd["url"]) is not None
               for sd in conformance.structure_definitions()
               if sd.get("derivation") == "constraint")


def validate_declared(resource: dict, conformance: Conformance) -> list[Issue]:
    """Validate against each `meta.profile` that the package defines (others are ignored)."""
    issues = []
    for url in (resource.get("meta") or {}).get("profile") or []:
        if compiled(conformance, url) is not None:
            issues.extend(validate(resource, url, conformance))
    return _dedupe(issues)


def _check_root(root: Element, value: dict, path: str, run: Run) -> None:
    _check_invariants(root, Item(value, path, root.name, value), run)
    _check_children(root, value, path, run)


def _check_children(node: Element, obj: dict, path: str, run: Run) -> None:
    for child in node.children.values():
        _check_element(child, obj, path, run)


def _check_element(el: Element, obj: dict, parent_path: str, run: Run) -> None:
    """An element's cardinality, each of its values, and its slices, within one parent."""
    path = f"{parent_path}.{el.name}"
    items = _choice_items(el, obj, parent_path) if el.choice else _named_items(el, obj, path)
    _check_cardinality(el, len(items), parent_path, run)
    if not items:
        return
    for item in items:
        _check_item(el, item, run)
    if el.slices or el.slicing:
        _check_slicing(el, items, parent_path, run)


def _check_item(el: Element, item: Item, run: Run) -> None:
    """The value-level checks of one value, then the value's children."""
    for check in ITEM_CHECKS:
        check(el, item, run)
    if el.children and item.sub is not None:
        _check_children(el, item.sub, item.path, run)


def _named_items(el: Element, obj: dict, path: str) -> list[Item]:
    """The values of `name` in `obj` (with primitive `_name` extensions), as Items."""
    name = el.name
    value, ext = obj.get(name), obj.get("_" + name)
    if value is None and ext is None:
        return []
    type_ = el.types[0] if len(el.types) == 1 else None
    if not isinstance(value, list) and not isinstance(ext, list):
        return [_item(value, ext, path, type_)]
    values = value if isinstance(value, list) else []
    exts = ext if isinstance(ext, list) else []
    items = []
    for i in range(max(len(values), len(exts))):
        v = values[i] if i < len(values) else None
        e = exts[i] if i < len(exts) else None
        if v is not None or e is not None:
            items.append(_item(v, e, f"{path}[{i}]", type_))
    return items


def _item(value: Any, ext: Any, path: str, type_: str | None) -> Item:
    if isinstance(value, dict):
        if type_ in ("Resource", "DomainResource") or (type_ is None and "resourceType" in value):
            type_ = value.get("resourceType")
        return Item(value, path, type_, value)
    return Item(value, path, type_, ext if isinstance(ext, dict) else None)


def _choice_items(el: Element, obj: dict, parent_path: str) -> list[Item]:
    """The values of `name[x]`: keys `nameType` (and `_nameType`) with a FHIR type suffix."""
    items, seen = [], set()
    for key in obj:
        bare = key[1:] if key.startswith("_") else key
        if not bare.startswith(el.name) or bare in seen:
            continue
        type_ = _suffix_type(bare[len(el.name):])
        if type_ is None:
            continue
        seen.add(bare)
        items.append(_item(obj.get(bare), obj.get("_" + bare),
                           f"{parent_path}.{el.name}.ofType({type_})", type_))
    return items


@cache
def _suffix_type(suffix: str) -> str | None:
    if not suffix or not suffix[0].isupper():
        return None
    primitive = suffix[0].lower() + suffix[1:]
    if primitive in PRIMITIVES:
        return primitive
    return suffix if suffix in DATATYPES else None


# -- the checks ---------------------------------------------------------------------------

def _check_cardinality(el: Element, count: int, parent_path: str, run: Run) -> None:
    """min/max of an element (or slice) within its parent; `max: 0` prohibits it.

    As HAPI, the issue is located at the parent (where the element is missing or too many)
    and the diagnostics name the profile's element.
    """
    if count < el.min:
        if el.slice_name is not None and count == 0:
            run.error(f"{_slice_label(el)}: a matching slice is required, but not found "
                      f"(minimum required = {el.min}; from {el.source})", "required", parent_path)
        else:
            run.error(f"{el.id}: minimum required = {el.min}, but only found {count} "
                      f"(from {el.source})", "required", parent_path)
    if el.max is not None and count > el.max:
        prohibited = " (the profile prohibits this element)" if el.max == 0 else ""
        run.error(f"{el.id}: max allowed = {el.max}, but found {count}{prohibited} "
                  f"(from {el.source})", "structure", parent_path)


def _slice_label(sl: Element) -> str:
    url = sl.type_profiles.get("Extension", ("",))[0] if "Extension" in sl.types else ""
    return f"Slice '{sl.id}'" + (f" for extension '{url}'" if url else "")


def _check_type(el: Element, item: Item, run: Run) -> None:
    """A choice element's value must be one of the types the profile leaves."""
    if el.choice and el.types and item.type not in el.types:
        run.error(f"{el.id}: the type '{item.type}' is not allowed by the profile "
                  f"(allowed: {', '.join(el.types)})", "structure", item.path)


def _check_fixed(el: Element, item: Item, run: Run) -> None:
    """fixed[x]: the value must be exactly the fixed one."""
    if el.fixed is not _MISSING and not _equal(item.value, el.fixed):
        run.error(f"Value is {_show(item.value)} but is fixed to {_show(el.fixed)} "
                  f"(fixed value of {el.id} in {el.source})", "value", item.path)


def _check_pattern(el: Element, item: Item, run: Run) -> None:
    """pattern[x]: the value must contain the pattern (objects and arrays recursively)."""
    if el.pattern is not _MISSING and not _contains(item.value, el.pattern):
        run.error(f"The pattern {_show(el.pattern)} defined in the profile {el.source} for "
                  f"{el.id} is not matched by the value {_show(item.value)}", "value", item.path)


def _check_binding(el: Element, item: Item, run: Run) -> None:
    """required (error) and extensible (warning) bindings to value sets we can expand."""
    if el.binding is None or el.binding[0] not in ("required", "extensible"):
        return
    if el.choice and el.types and item.type not in el.types:
        return  # a value of a type the profile does not allow: `_check_type` said so
    strength, url = el.binding
    codes = run.conformance.value_set_codes(url)
    if codes is None:
        return  # needs a terminology server: not decided here
    codings = _codings(item.value)
    if codings is None:
        return  # not a coded value (e.g. a string bound by a profile): nothing to test
    if not codings:
        if strength == "required":
            run.error(f"{el.id}: no code provided, and a code from the value set {url} is "
                      f"required", "code-invalid", item.path)
        return
    if any(_in_value_set(system, code, codes, url, run) for system, code in codings):
        return
    shown = ", ".join(f"{s}#{c}" if s else c for s, c in codings)
    rule = ("a code from this value set is required" if strength == "required" else
            "a code should come from this value set unless it has no suitable code "
            "(extensible binding)")
    if isinstance(item.value, dict) and "coding" in item.value:
        text = f"None of the codings provided are in the value set {url}"
    else:
        text = f"The code '{shown}' is not in the value set {url}"
    run.error(f"{el.id}: {text}, and {rule} (codes = {shown})", "code-invalid", item.path,
              "error" if strength == "required" else "warning")


def _check_code_system(el: Element, item: Item, run: Run) -> None:
    """A Coding of one of the package's complete CodeSystems must use one of its codes."""
    if item.type not in ("CodeableConcept", "Coding") or not isinstance(item.value, dict):
        return
    for system, code in _codings(item.value) or ():
        known = run.conformance.code_system_codes(system) if system else None
        if known is not None and (system, code) not in known:
            run.error(f"Code '{code}' is not found in CodeSystem {system}", "code-invalid",
                      item.path)  # about the code, not the element: one issue per value


def _check_reference(el: Element, item: Item, run: Run) -> None:
    """A Reference's target type, from its URL (`Patient/1`), `#contained` or `type`."""
    if el.target_types is None or item.type != "Reference" or not isinstance(item.value, dict):
        return
    target = _reference_type(item.value, run.resource)
    allowed = " | ".join(sorted(el.target_types))
    if target is None:
        run.error(f"{el.id}: cannot tell the type of the referenced resource, so cannot "
                  f"check that it is one of {allowed}", "structure", item.path, "warning")
    elif target not in el.target_types:
        run.error(f"{el.id}: the type '{target}' implied by the reference is not a valid "
                  f"target for this element (must be one of {allowed})", "structure", item.path)


def _check_type_profiles(el: Element, item: Item, run: Run) -> None:
    """Datatype/extension profiles of the package, applied to the value (recursively).

    Extensions are checked against their definition by `url` wherever they appear (sliced
    or not); at a slice that is the slice's profile again, so slices skip it.
    """
    if run.depth >= MAX_DEPTH or not isinstance(item.value, dict):
        return
    if "Extension" in el.types:
        if el.slice_name is not None:
            return
        url = item.value.get("url")
        urls = (url,) if run.conformance.structure_definition(url) else ()
    else:
        urls = tuple(u for u in el.type_profiles.get(item.type or "", ())
                     or el.type_profiles.get(el.types[0] if len(el.types) == 1 else "", ())
                     if run.conformance.structure_definition(u))
    roots = [r for r in (compiled(run.conformance, u) for u in urls)
             if r is not None and (item.type is None or r.name == item.type)]
    if len(roots) == 1:
        _check_nested(roots[0], item, run)
        return
    if roots and not any(_conforms_to(root, item, run) for root in roots):
        run.error(f"{el.id}: the value conforms to none of the profiles "
                  f"{', '.join(r.source for r in roots)}", "structure", item.path)


def _check_nested(root: Element, item: Item, into: Run) -> None:
    """A profile applied inside another: a resource in it becomes %resource meanwhile."""
    outer = into.resource
    into.depth += 1
    if "resourceType" in item.sub:
        into.resource = item.sub
    try:
        _check_root(root, item.sub, item.path, into)
    finally:
        into.depth -= 1
        into.resource = outer


def _conforms_to(root: Element, item: Item, run: Run) -> bool:
    scratch = run.fork()
    _check_nested(root, item, scratch)
    return not scratch.has_errors()


def _check_invariants(el: Element, item: Item, run: Run) -> None:
    """Each `constraint` kept at compile time, evaluated by fhirpathpy (or natively).

    Failing an error-severity constraint is an error, a warning-severity one a warning. An
    expression fhirpathpy cannot parse or evaluate reports nothing (see
    `unevaluable_constraints`); a constraint already run on the same value is not rerun.
    """
    for constraint in el.constraints:
        marker = (item.path, constraint.key, constraint.expression)
        if marker in run.evaluated:
            continue
        run.evaluated.add(marker)
        if constraint.native is not None:
            ok = constraint.native(item)
        else:
            ok = _holds(constraint, item, el.fhirpath_base or item.type, run)
        if ok is False:
            run.error(f"Constraint failed: {constraint.key}: '{constraint.human}' (defined in "
                      f"{constraint.source} on {el.id}: {constraint.expression})", "invariant",
                      item.path, constraint.severity)


def _native_ele_1(item: Item) -> bool:
    """ele-1: an element has a value, or children other than `id`."""
    if isinstance(item.value, dict):
        return any(k not in ("id", "resourceType") for k in item.value)
    return item.value is not None or bool(item.sub and any(k != "id" for k in item.sub))


def _native_ext_1(item: Item) -> bool:
    """ext-1: an extension has nested extensions or a value[x], not both."""
    value = item.value
    if not isinstance(value, dict):
        return True
    has_value = any(k.lstrip("_").startswith("value") and _suffix_type(k.lstrip("_")[5:])
                    for k in value)
    return bool(value.get("extension")) != has_value


def _contained(item: Item) -> list[dict]:
    contained = item.value.get("contained") if isinstance(item.value, dict) else None
    return [c for c in contained if isinstance(c, dict)] if isinstance(contained, list) else []


def _native_dom_2(item: Item) -> bool:
    """dom-2: a contained resource does not contain resources."""
    return not any(c.get("contained") for c in _contained(item))


def _native_dom_3(item: Item) -> bool:
    """dom-3: each contained resource is referenced from the resource, or refers to it."""
    contained = _contained(item)
    if not contained:
        return True
    local = set(_local_references(item.value))
    return all(f"#{c.get('id')}" in local or "#" in set(_local_references(c)) for c in contained)


def _local_references(value: Any):
    """Every string starting with '#' in the JSON: local references, canonicals, uris."""
    if isinstance(value, str):
        if value.startswith("#"):
            yield value
    elif isinstance(value, dict):
        for child in value.values():
            yield from _local_references(child)
    elif isinstance(value, list):
        for child in value:
            yield from _local_references(child)


def _native_dom_4(item: Item) -> bool:
    """dom-4: a contained resource has no meta.versionId nor meta.lastUpdated."""
    return not any(isinstance(c.get("meta"), dict) and
                   ("versionId" in c["meta"] or "lastUpdated" in c["meta"])
                   for c in _contained(item))


def _native_dom_5(item: Item) -> bool:
    """dom-5: a contained resource has no security labels."""
    return not any(isinstance(c.get("meta"), dict) and c["meta"].get("security")
                   for c in _contained(item))


_NATIVE = {"ele-1": _native_ele_1, "ext-1": _native_ext_1, "dom-2": _native_dom_2,
           "dom-3": _native_dom_3, "dom-4": _native_dom_4, "dom-5": _native_dom_5}
assert set(_NATIVE) == set(NATIVE_CONSTRAINTS)

ITEM_CHECKS = (_check_type, _check_fixed, _check_pattern, _check_binding, _check_code_system,
               _check_reference, _check_type_profiles, _check_invariants)


# -- slicing ------------------------------------------------------------------------------

def _check_slicing(el: Element, items: list[Item], parent_path: str, run: Run) -> None:
    """Assign each value to a slice; check slice cardinality, slice rules and closed/ordered."""
    slicing = el.slicing or {}
    matched = [_matching_slice(el, item, run) for item in items]
    for sl in el.slices:
        mine = [item for item, s in zip(items, matched) if s is sl]
        _check_cardinality(sl, len(mine), parent_path, run)
        for item in mine:
            _check_item(sl, item, run)
        if mine and (sl.slices or sl.slicing):
            _check_slicing(sl, mine, parent_path, run)
    rules = slicing.get("rules", "open")
    for item, sl in zip(items, matched):
        if sl is None and rules == "closed":
            run.error(f"{el.id}: this element does not match any known slice defined in the "
                      f"profile {el.source}, and the slicing is closed", "structure", item.path)
    _check_slice_order(el, items, matched, slicing, run)


def _check_slice_order(el: Element, items: list[Item], matched: list, slicing: dict,
                       run: Run) -> None:
    """`ordered`: values follow the slices' order; `openAtEnd`: unmatched values come last."""
    position = [el.slices.index(s) if s is not None else None for s in matched]
    if slicing.get("ordered"):
        known = [(p, item) for p, item in zip(position, items) if p is not None]
        for (before, _), (after, item) in zip(known, known[1:]):
            if after < before:
                run.error(f"{el.id}: the value is out of order: slice "
                          f"'{el.slices[after].slice_name}' must come before slice "
                          f"'{el.slices[before].slice_name}'", "structure", item.path)
    if slicing.get("rules") == "openAtEnd":
        last_matched = max((i for i, p in enumerate(position) if p is not None), default=-1)
        for i, p in enumerate(position[:last_matched]):
            if p is None:
                run.error(f"{el.id}: values that match no slice must come after the "
                          f"sliced ones (openAtEnd)", "structure", items[i].path)


def _matching_slice(el: Element, item: Item, run: Run) -> Element | None:
    discriminators = (el.slicing or {}).get("discriminator") or []
    for sl in el.slices:
        if discriminators:
            if all(_discriminator_matches(sl, d, item, run) for d in discriminators):
                return sl
        elif _slice_conforms(sl, item, run):
            return sl
    return None


def _discriminator_matches(sl: Element, discriminator: dict, item: Item, run: Run) -> bool:
    key = (discriminator.get("type"), discriminator.get("path", "$this"))
    if key not in sl.discriminators:
        sl.discriminators[key] = _expectation(sl, *key, run.conformance)
    kind, expected = sl.discriminators[key]
    path = key[1]
    if kind == "conforms":
        return _slice_conforms(sl, item, run)
    if kind == "type":
        return item.type in expected
    values = _values_at(item.value, path)
    if kind == "fixed":
        return any(_equal(v, expected) for v in values)
    if kind == "pattern":
        return any(_contains(v, expected) for v in values)
    if kind == "valueset":
        url, codes = expected
        return any(_in_value_set(s, c, codes, url, run)
                   for v in values for s, c in (_codings(v) or ()))
    if kind == "exists":
        return bool(values) == expected
    if kind == "profile":
        roots = [compiled(run.conformance, u) for u in expected]
        return any(_conforms_to(r, Item(v, "", r.name, v), run)
                   for v in values if isinstance(v, dict) for r in roots
                   if r is not None and v.get("resourceType", r.name) == r.name)
    return False


def _expectation(sl: Element, kind: str, path: str, conformance: Conformance) -> tuple:
    """What a slice's discriminator requires, read from the slice's own snapshot subtree.

    Falls back to "conforms" (the value matches when it meets the slice's definition)
    for discriminators we cannot read, as the R4 spec describes for slicing without one.
    """
    target = _element_at(sl, path)
    if kind in ("value", "pattern"):
        if target is not None and target.fixed is not _MISSING:
            return "fixed", target.fixed
        if target is not None and target.pattern is not _MISSING:
            return "pattern", target.pattern
        if path == "url" and "Extension" in sl.types and sl.type_profiles.get("Extension"):
            return "fixed", sl.type_profiles["Extension"][0]  # extension slices, by canonical
        if target is not None and target.binding and target.binding[0] == "required":
            codes = conformance.value_set_codes(target.binding[1])
            if codes is not None:
                return "valueset", (target.binding[1], codes)
    elif kind == "type" and path == "$this":
        return "type", frozenset(sl.types)
    elif kind == "exists" and target is not None and (target.min >= 1 or target.max == 0):
        return "exists", target.min >= 1
    elif kind == "profile" and target is not None:
        urls = tuple(u for ps in target.type_profiles.values() for u in ps
                     if conformance.structure_definition(u))
        if urls:
            return "profile", urls
    return "conforms", None


def _element_at(sl: Element, path: str) -> Element | None:
    node = sl
    if path == "$this":
        return node
    for step in path.split("."):
        node = node.children.get(step) if node is not None else None
    return node


def _values_at(value: Any, path: str) -> list:
    """JSON values at a simple dotted path (arrays flattened), `$this` being the value."""
    values = [value]
    if path == "$this":
        return values
    for step in path.split("."):
        out = []
        for v in values:
            child = v.get(step) if isinstance(v, dict) else None
            if isinstance(child, list):
                out.extend(child)
            elif child is not None:
                out.append(child)
        values = out
    return values


def _slice_conforms(sl: Element, item: Item, run: Run) -> bool:
    scratch = run.fork()
    _check_item(sl, item, scratch)
    return not scratch.has_errors()


# -- values, codes, references, FHIRPath ----------------------------------------------------

def _equal(value: Any, fixed: Any) -> bool:
    if isinstance(fixed, bool) or isinstance(value, bool):
        return type(value) is type(fixed) and value == fixed
    return value == fixed


def _contains(value: Any, pattern: Any) -> bool:
    """Pattern semantics: every property of the pattern is in the value, arrays by any-item."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and _contains(value[k], p) for k, p in pattern.items())
    if isinstance(pattern, list):
        values = value if isinstance(value, list) else [value]
        return all(any(_contains(v, p) for v in values) for p in pattern)
    return _equal(value, pattern)


def _codings(value: Any) -> list[tuple[str | None, str]] | None:
    """(system, code) pairs of a code, Coding or CodeableConcept; None if not coded."""
    if isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return None
    if "coding" in value or "text" in value:
        return [(c.get("system"), c["code"]) for c in value.get("coding") or []
                if isinstance(c, dict) and "code" in c]
    if "code" in value:
        return [(value.get("system"), value["code"])]
    return None


def _in_value_set(system: str | None, code: str, codes: frozenset, url: str, run: Run) -> bool:
    if system is not None:
        return (system, code) in codes
    bare = run.conformance.memo.setdefault("bare-codes", {})
    if url not in bare:
        bare[url] = frozenset(c for _, c in codes)
    return code in bare[url]  # a `code` element: its system is implied by the binding


def _reference_type(reference: dict, resource: dict) -> str | None:
    """The target's type: from `#id` (contained), `[base/]Type/id[/_history/v]` or `type`."""
    ref = reference.get("reference")
    if isinstance(ref, str):
        if ref.startswith("#"):
            return next((c.get("resourceType") for c in resource.get("contained") or []
                         if isinstance(c, dict) and c.get("id") == ref[1:]), None)
        named = _url_type(ref)
        if named:
            return named
    type_ = reference.get("type")
    if isinstance(type_, str):
        return type_.rsplit("/", 1)[-1]
    return None


def _url_type(ref: str) -> str | None:
    """The type a literal reference `[base/]Type/id[/_history/v]` names (none for urn:)."""
    if ref.startswith("urn:"):
        return None
    parts = ref.split("/_history/", 1)[0].rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 and _REFERENCE_TYPE.match(parts[-2]) else None


def reference_stand_in(ref: str) -> str:
    """A reference string that `_reference_type` reads exactly as it reads `ref`."""
    if ref.startswith("#"):
        return ref  # looked up among the contained resources
    named = _url_type(ref)
    return f"{named}/x" if named else "x"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    text = fhirjson.dumps(value).decode() if value is not None else "(none)"
    return text if len(text) <= 200 else text[:197] + "..."


def _dedupe(issues: list[Issue]) -> list[Issue]:
    seen, out = set(), []
    for issue in issues:
        key = (issue.severity, issue.code, issue.diagnostics, tuple(issue.expression))
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


_unevaluable: dict[str, str] = {}  # constraint key -> why fhirpathpy could not run it
_unrunnable: set[str] = set()  # expressions never to try again
_OPTIONS = {"traceFn": lambda label, value: None}  # trace() (as in dom-3) not to stdout
# fhirpathpy errors that depend on the expression, not the data: no use trying again.
_STATIC_FAILURE = re.compile(r"^Not implemented|^No \w+ evaluator|wrong arity|expects no params")


def unevaluable_constraints() -> dict[str, str]:
    """Constraints that were skipped because fhirpathpy failed on them (for diagnosis)."""
    return dict(_unevaluable)


@cache
def _parsed(expression: str):
    """fhirpathpy's AST for an expression, or None when it is not valid FHIRPath.

    fhirpathpy's own `parse` ignores syntax errors (ANTLR recovers and drops tokens), which
    would evaluate a different expression than the profile's; this parses the same way but
    refuses syntax errors and trailing input.
    """
    try:
        from antlr4 import CommonTokenStream, InputStream, Token
        from antlr4.error.ErrorListener import ErrorListener
        from antlr4.tree.Tree import ParseTreeWalker
        from fhirpathpy.parser.ASTPathListener import ASTPathListener
        from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
        from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser
    except ImportError:  # a fhirpathpy of another layout: its lenient parser, then
        from fhirpathpy.parser import parse

        try:
            return parse(expression)
        except Exception:  # noqa: BLE001
            return None

    class Refuse(ErrorListener):
        def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):  # noqa: N802
            raise SyntaxError(msg)

    try:
        lexer = FHIRPathLexer(InputStream(expression))
        lexer.removeErrorListeners()
        lexer.addErrorListener(Refuse())
        tokens = CommonTokenStream(lexer)
        parser = FHIRPathParser(tokens)
        parser.removeErrorListeners()
        parser.addErrorListener(Refuse())
        tree = parser.expression()
        if tokens.LA(1) != Token.EOF:
            return None
        listener = ASTPathListener()
        ParseTreeWalker().walk(listener, tree)
        return listener.parentStack[0]
    except Exception:  # noqa: BLE001 - not FHIRPath that fhirpathpy understands
        return None


@cache
def _model() -> dict:
    from fhirpathpy.models import models

    return models["r4"]


def _holds(constraint: Constraint, item: Item, base: str | None, run: Run) -> bool | None:
    """True/False as FHIRPath says (empty counts as false, as HAPI); None: could not tell.

    An expression that fhirpathpy cannot parse, or that calls a function it does not
    implement, is never tried again (raising costs as much as evaluating).
    """
    from fhirpathpy import apply_parsed_path
    from fhirpathpy.engine.nodes import ResourceNode

    if constraint.expression in _unrunnable:
        return None
    parsed = _parsed(constraint.expression)
    if parsed is None:
        _unevaluable[constraint.key] = "fhirpathpy cannot parse the expression"
        _unrunnable.add(constraint.expression)
        return None
    value = item.value
    node = value if base is None else ResourceNode.create_node(value, base)
    try:
        result = apply_parsed_path(node, parsed, {"resource": run.resource,
                                                  "rootResource": run.root}, _model(), _OPTIONS)
    except Exception as exc:  # noqa: BLE001 - fhirpathpy gaps must not fail validation
        _unevaluable[constraint.key] = f"{type(exc).__name__}: {exc}"[:200]
        if _STATIC_FAILURE.search(str(exc)):
            _unrunnable.add(constraint.expression)
        return None
    if not result:
        return False
    if all(isinstance(r, bool) for r in result):
        return all(result)
    return True
