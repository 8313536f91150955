"""Which parts of a resource the profile checks read, so that the rest can be set aside.

Mapped resources differ mostly in values that no profile check looks at: names, dates,
identifier values, reference ids. Knowing, per profile, which values the checks do read lets
the guard remember verdicts for resources that differ only elsewhere (see `canonical.py`).

A `Reads` is that knowledge for one JSON object, by key: `FULL` (the value, and everything
in it, is read), `REFERENCE` (a Reference's `reference` string, read only for the resource
type it names) or a nested `Reads`. A key not listed is read for its shape only -- present
or not, how many values, an object or not -- which every check sees anyway, so the shape is
never set aside. The reads come from the compiled snapshot (`conformance.Element`): what
each check in `conformance.ITEM_CHECKS` and the slicing looks at, and, for FHIRPath
invariants, what the expression navigates to (`expression_reads`). Anything not understood
here counts as read in full, which only costs cache hits, never a wrong verdict; an
invariant that may reach beyond its element (`%resource`) makes the whole resource read.
"""

from __future__ import annotations

import re
from functools import cache

from fhir_gateway.validation.conformance import (
    _MISSING,
    DATATYPES,
    PRIMITIVES,
    Element,
    _parsed,
    compiled,
)
from fhir_gateway.validation.profiles import Conformance


class Mark:
    """FULL or REFERENCE: how a value is read, where a `Reads` would list its keys."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


FULL = Mark("FULL")
REFERENCE = Mark("REFERENCE")
EVERYTHING = Mark("EVERYTHING")  # read from anywhere: `%resource` reaches the whole resource


class Reads:
    """What the checks read of one JSON object's values, by key (see the module doc)."""

    __slots__ = ("keys",)

    def __init__(self, keys: dict | None = None):
        self.keys = keys or {}

    def __repr__(self) -> str:
        return f"Reads({self.keys!r})"


EMPTY = Reads()
# The choice-type suffixes that `conformance._suffix_type` accepts: `value[x]` is read
# from `valueString`, `valueQuantity`, ...
_SUFFIXES = tuple(sorted({p[0].upper() + p[1:] for p in PRIMITIVES} | DATATYPES))
_CODED = ("CodeableConcept", "Coding")  # `_check_code_system` reads these whatever the element
_CONTAINED_NATIVES = ("dom-2", "dom-3", "dom-4", "dom-5")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_DOTTED = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$")


def merge(a: Reads | Mark, b: Reads | Mark) -> Reads | Mark:
    """What either of two readers reads."""
    if a is EVERYTHING or b is EVERYTHING:
        return EVERYTHING
    if a is FULL or b is FULL:
        return FULL
    if a is REFERENCE or b is REFERENCE:
        other = b if a is REFERENCE else a
        return REFERENCE if other is REFERENCE or not other.keys else FULL
    keys = dict(a.keys)
    for key, read in b.keys.items():
        keys[key] = merge(keys[key], read) if key in keys else read
    return Reads(keys)


def at(path: tuple[str, ...], read: Reads | Mark, choice: bool = False) -> Reads | Mark:
    """`read` at a path of element names; `choice`: each name may also carry a type suffix."""
    if read is EVERYTHING:
        return EVERYTHING
    for name in reversed(path):
        keys = {name: read}
        if choice:
            keys.update({name + suffix: read for suffix in _SUFFIXES})
        read = Reads(keys)
    return read


# -- what a profile reads -----------------------------------------------------------------

def profile_reads(conformance: Conformance, url: str) -> Reads | Mark:
    """What validating against the profile reads of a resource (per package, computed once).

    The root's dom-2..5 read `contained` (dom-3 then every local reference anywhere): left
    to `canonical_key`, which sets resources with contained resources aside.
    """
    memo = conformance.memo.setdefault("reads", {})
    if url not in memo:
        root = compiled(conformance, url)
        reads = EMPTY if root is None else _element_reads(root, conformance, root=True)
        memo[url] = FULL if reads is EVERYTHING else reads
    return memo[url]


def _element_reads(el: Element, conformance: Conformance, root: bool = False) -> Reads | Mark:
    """What the checks of one element (its values, children, slices, invariants) read.

    The whole tree is visited even below a value read in full: an invariant down there may
    read the whole resource. A content reference's children are those of the element it
    names, visited there.
    """
    if _applies_profiles(el, conformance) and _profiles_read_everything(conformance):
        return EVERYTHING  # a nested check keeps the outer resource as %resource
    reads = FULL if _reads_whole_value(el, conformance) else EMPTY
    for constraint in el.constraints:
        if constraint.native is None:
            reads = merge(reads, expression_reads(constraint.expression))
        elif constraint.key in _CONTAINED_NATIVES and not root:
            reads = merge(reads, FULL)
    for child in () if el.content_reference else el.children.values():
        reads = merge(reads, _child_reads(child, conformance))
    for sl in el.slices:
        reads = merge(reads, _element_reads(sl, conformance))
    for discriminator in (el.slicing or {}).get("discriminator") or []:
        if discriminator.get("type") not in ("exists", "type"):  # those read the shape only
            reads = merge(reads, _path_reads(discriminator.get("path", "$this")))
    if el.target_types is not None:  # `_check_reference`
        reads = merge(reads, Reads({"reference": REFERENCE, "type": FULL}))
    return reads


def _reads_whole_value(el: Element, conformance: Conformance) -> bool:
    """fixed, pattern, bindings that are checked, codes, nested profiles, and content
    references (not followed here)."""
    return bool(
        el.fixed is not _MISSING or el.pattern is not _MISSING or el.content_reference
        or (el.binding is not None and el.binding[0] in ("required", "extensible"))
        or set(el.types) & set(_CODED) or _applies_profiles(el, conformance))


def _applies_profiles(el: Element, conformance: Conformance) -> bool:
    """Extensions (by their url), datatype profiles and `profile` discriminators."""
    return bool(
        "Extension" in el.types
        or any(conformance.structure_definition(u) for urls in el.type_profiles.values()
               for u in urls)
        or any(d.get("type") == "profile"
               for d in (el.slicing or {}).get("discriminator") or []))


def _profiles_read_everything(conformance: Conformance) -> bool:
    """Whether an invariant of some profile of the package reads beyond its element."""
    memo = conformance.memo.setdefault("reads", {})
    if EVERYTHING not in memo:
        memo[EVERYTHING] = any(
            expression_reads(c.expression) is EVERYTHING
            for sd in conformance.structure_definitions()
            for c in _constraints(compiled(conformance, sd["url"])) if c.native is None)
    return memo[EVERYTHING]


def _constraints(el: Element | None):
    if el is None:
        return
    yield from el.constraints
    for child in () if el.content_reference else el.children.values():
        yield from _constraints(child)
    for sl in el.slices:
        yield from _constraints(sl)


def _child_reads(child: Element, conformance: Conformance) -> Reads | Mark:
    """A child element under its JSON names; a choice's coded types are read whole."""
    reads = at((child.name,), _element_reads(child, conformance), choice=child.choice)
    if child.choice:
        reads = merge(reads, Reads({child.name + t: FULL for t in _CODED}))
    return reads


def _path_reads(path: str) -> Reads | Mark:
    """A discriminator's path, as `conformance._values_at` reads it."""
    if path == "$this" or not _DOTTED.match(path):
        return FULL
    return at(tuple(path.split(".")), FULL)


# -- what a FHIRPath invariant reads ---------------------------------------------------------

class _NotAnalysed(Exception):
    """An expression this analysis does not follow: it reads its value in full."""


class _AlwaysFails(Exception):
    """fhirpathpy raises on every evaluation, so `_holds` never looks at the data."""


_OPERATORS = frozenset({
    "EqualityExpression", "InequalityExpression", "MembershipExpression", "AndExpression",
    "OrExpression", "XorExpression", "ImpliesExpression", "AdditiveExpression",
    "MultiplicativeExpression", "UnionExpression"})


@cache
def expression_reads(expression: str) -> Reads | Mark:
    """What evaluating the expression on a value reads of it.

    Followed: navigation by name, `$this`, literals, the operators (fhirpathpy evaluates
    both operands), and where/exists/empty/count/not/extension. Names navigated through are
    read for their shape only; values an operator, a test or the result uses are read in
    full. An expression fhirpathpy cannot parse, or that calls a function it lacks where
    every evaluation reaches the call, reads nothing (`_holds` reports nothing for it).
    """
    ast = _parsed(expression)
    if ast is None:
        return EMPTY
    used: list[tuple[str, ...]] = []
    try:
        result = _evaluate(ast["children"][0], [()], used, eager=True)
    except _AlwaysFails:
        return EMPTY
    except _NotAnalysed:  # an analysed expression has no %constant (see `_evaluate`)
        return EVERYTHING if _mentions_constant(ast) else FULL
    used.extend(result or ())
    reads = EMPTY
    for path in used:
        reads = merge(reads, at(path, FULL, choice=True) if path else FULL)
    return reads


def _evaluate(node: dict, focus: list, used: list, eager: bool) -> list | None:
    """The paths of the nodes an expression yields, or None for computed values.

    `used` collects the paths whose values are read; `eager`: fhirpathpy evaluates this
    node whenever it evaluates the expression (not only for some inputs, as a `where`).
    """
    kind = node.get("type")
    if kind in ("TermExpression", "InvocationTerm", "ParenthesizedTerm"):
        return _evaluate(node["children"][0], focus, used, eager)
    if kind == "LiteralTerm":
        return None
    if kind == "ThisInvocation":
        return focus
    if kind == "MemberInvocation":
        return _member(focus, node)
    if kind == "FunctionInvocation":
        return _function(node, focus, used, eager)
    if kind == "InvocationExpression":
        paths = _evaluate(node["children"][0], focus, used, eager)
        for step in node["children"][1:]:
            if step.get("type") == "MemberInvocation" and paths is not None:
                paths = _member(paths, step)
            elif step.get("type") == "FunctionInvocation":
                paths = _function(step, paths, used, eager)
            else:
                raise _NotAnalysed
        return paths
    if kind in _OPERATORS:
        for operand in node["children"]:
            used.extend(_evaluate(operand, focus, used, eager) or ())
        return None
    raise _NotAnalysed


def _member(paths: list, node: dict) -> list:
    name = node["children"][0].get("text", "")
    # capitalised names filter by resource type; `length` is a string's length
    if not _IDENTIFIER.match(name) or name[0].isupper() or name == "length":
        raise _NotAnalysed
    return [path + (name,) for path in paths]


def _function(node: dict, paths: list | None, used: list, eager: bool) -> list | None:
    """One function call on the nodes at `paths` (None: on computed values)."""
    from fhirpathpy.engine.invocations import invocation_registry

    parts = node["children"][0]["children"]
    name = parts[0].get("text", "")
    params = parts[1]["children"] if len(parts) > 1 else []
    if name not in invocation_registry:
        raise _AlwaysFails if eager else _NotAnalysed  # raised on lookup, before the input
    if name in ("where", "exists") and len(params) == 1 and paths is not None:
        used.extend(_evaluate(params[0], paths, used, eager=False) or ())
        return paths if name == "where" else None
    if name in ("exists", "empty", "count") and not params:
        return None
    if name == "not" and not params:
        used.extend(paths or ())
        return None
    if name == "extension" and len(params) == 1 and paths is not None \
            and _is_literal(params[0]):
        extensions = [path + ("extension",) for path in paths]
        used.extend(extensions)
        return extensions
    raise _NotAnalysed


def _is_literal(node: dict) -> bool:
    return node.get("type") == "TermExpression" and \
        node["children"][0].get("type") == "LiteralTerm"


def _mentions_constant(node: dict) -> bool:
    """Whether the expression uses a %constant (%resource, %rootResource, ...)."""
    return node.get("type") == "ExternalConstantTerm" or \
        any(_mentions_constant(child) for child in node.get("children") or ())
