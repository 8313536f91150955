"""A mapping as generated Python functions, for the records that go the usual way.

Why: the engine's closures (engine.py) are what a template means, and they cost a call per
member, per path step and per value: about 800 calls for one CyberAccess record, more than
half of its mapping time. This module writes the same decisions out as straight-line code:
each resource template (objects and lists unrolled, plain source paths read by inline dict
look-ups, a value with one transform transformed in place), each identifier value, each
`when:` condition, each path with `[]` (nested loops), the loop over a mapping's resources
and the wrapping of each resource. Measured on CyberAccess records, mapping takes a third
less CPU than with the closures alone.

It never decides anything the closures do not: each inline read only takes the usual case
(every step a dict, the leaf a non-empty string, or an absent element); anything else (a
repeating element, attributes, `../`, several transforms, a `foreach`) is handed to the
engine's own closure for that node, which then gives the answer or the error. So the meaning
of a template stays defined once, in engine.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_gateway.mapping import engine, paths
from fhir_gateway.mapping.engine import Build, Mapping, Value
from fhir_gateway.mapping.paths import Condition, Context, _start
from fhir_gateway.mapping.transforms import TransformError

_ODD = object()  # a step that is not a dict: the engine's closure says what it means


def template_function(mapping: Any, node: dict, where: str) -> Callable[[Context], tuple]:
    """`mapping._template(node, where)` as generated code: ctx -> (value or MISSING, dyn)."""
    writer = _Writer(mapping)
    value, dyn = writer.template(node, where, 1)
    body = "\n".join(writer.lines)
    source = f"def build(ctx):\n    it = ctx.item\n{body}\n    return {value}, {dyn}\n"
    return _function(source, "build", writer.namespace, where)


def value_function(mapping: Any, node: Any, where: str, value: Callable) -> Callable:
    """`value`, the engine's closure for an expression (a resource's identifier), with its
    usual case inline: every part a plain path (at most one transform) or a literal, every
    part a non-empty string. Anything else, the closure answers. `value` itself if the
    expression is of another kind."""
    writer = _Writer(mapping)
    parts = writer.parts(node)
    if not parts:  # another kind of expression, or an empty concat
        return value
    ind, joined = 1, []
    for part in parts:
        if part[0] == "literal":
            joined.append(repr(part[1]))
            continue
        _, path, step = part
        got = writer.name("x")
        writer._walk(path, got, ind)
        writer.emit(ind, f"if {got}.__class__ is str and {got}:")
        ind += 1
        if step is not None:
            writer._transform(step, got, ind)
            writer.emit(ind, f"if {got}.__class__ is str and {got}:")
            ind += 1
        joined.append(got)
    writer.emit(ind, f"return {' + '.join(joined)}")
    fallback = writer.bind(value, "value")
    source = ("def value(ctx, required=False):\n    it = ctx.item\n" + "\n".join(writer.lines)
              + f"\n    return {fallback}(ctx, required)\n")
    return _function(source, "value", writer.namespace, where)


def _function(source: str, name: str, namespace: dict, where: str) -> Callable:
    exec(compile(source, f"<mapping {where}>", "exec"), namespace)  # noqa: S102
    function = namespace[name]
    function.source = source  # what was generated, for whoever debugs a mapping
    return function


class _Writer:
    """Lines of one generated function, and the objects its code names."""

    def __init__(self, mapping: Any):
        self.engine, self.mapping = engine, mapping
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {"MISSING": engine.MISSING, "_ODD": _ODD,
                                          "TransformError": TransformError}
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def bind(self, obj: Any, hint: str) -> str:
        """A name in the generated code for `obj` (a function, a literal, a source path)."""
        if _json_literal(obj) and not isinstance(obj, (dict, list)):  # its repr is its value
            return repr(obj)
        name = self.name(hint)
        self.namespace[name] = obj
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    # -- nodes ----------------------------------------------------------------------------
    def template(self, node: Any, where: str, ind: int) -> tuple[str, str]:
        """Emit a template node; (the name of its value, the name or literal of its dyn)."""
        engine = self.engine
        if isinstance(node, list):
            return self._list(node, where, ind)
        if isinstance(node, dict) and "foreach" not in node and \
                not any(k in node for k in engine.EXPRESSIONS):
            return self._object(node, where, ind)
        build = self.bind(self.mapping._template(node, where), "build")
        value, dyn = self.name("v"), self.name("d")
        self.emit(ind, f"{value}, {dyn} = {build}(ctx)")
        return value, dyn

    def _object(self, node: dict, where: str, ind: int) -> tuple[str, str]:
        """engine.Mapping._object: members in order; dropped when `when` fails, when empty,
        or when it has source-derived members and none of them is there."""
        out, dyn, sourced, value = (self.name(h) for h in ("o", "d", "s", "v"))
        inner = ind
        if "when" in node:
            when = self.bind(self.mapping._condition(node["when"]).test, "when")
            self.emit(ind, f"if not {when}(ctx):")
            self.emit(ind + 1, f"{value}, {dyn} = MISSING, False")
            self.emit(ind, "else:")
            inner = ind + 1
        self.emit(inner, f"{out} = {{}}")
        self.emit(inner, f"{dyn} = {sourced} = False")
        for key, child in node.items():
            if key == "when":
                continue
            kind, got, got_dyn = self._member(child, f"{where}.{key}", inner)
            slot = f"{out}[{self.bind(key, 'key')}]"
            if kind == "fixed":
                self.emit(inner, f"{slot} = {got}")
                continue
            if kind == "absent":
                continue
            self._either(dyn, got_dyn, inner)
            self.emit(inner, f"if {got} is not MISSING:")
            self.emit(inner + 1, f"{slot} = {got}")
            self._either(sourced, got_dyn, inner + 1)
        self.emit(inner, f"{value} = {out} if {out} and not ({dyn} and not {sourced}) "
                         f"else MISSING")
        return value, dyn

    def _list(self, node: list, where: str, ind: int) -> tuple[str, str]:
        """engine.Mapping._list: items in order, `foreach` items as loops, a path reaching
        several values spread into the list."""
        out, dyn, value = self.name("l"), self.name("d"), self.name("v")
        self.emit(ind, f"{out} = []")
        self.emit(ind, f"{dyn} = False")
        for i, item in enumerate(node):
            at = f"{where}[{i}]"
            if isinstance(item, dict) and "foreach" in item:
                self._repeat(item, at, out, ind)
                self.emit(ind, f"{dyn} = True")
                continue
            kind, got, got_dyn = self._member(item, at, ind)
            if kind == "fixed":
                self.emit(ind, f"{out}.append({got})")
                continue
            if kind == "absent":
                continue
            if kind == "source":  # a path reaching several values spreads into the list
                self.emit(ind, f"{dyn} = True")
                self.emit(ind, f"if {got}.__class__ is list:")
                self.emit(ind + 1, f"{out}.extend({got})")
                self.emit(ind, f"elif {got} is not MISSING:")
                self.emit(ind + 1, f"{out}.append({got})")
                continue
            self._either(dyn, got_dyn, ind)
            self.emit(ind, f"if {got} is not MISSING:")
            self.emit(ind + 1, f"{out}.append({got})")
        self.emit(ind, f"{value} = {out} if {out} else MISSING")
        return value, dyn

    def _member(self, node: Any, where: str, ind: int) -> tuple[str, str | None, str]:
        """Emit one member of an object or item of a list (engine.Mapping._member's kinds):
        ("fixed", an expression that is its value, "False") for a literal; ("absent", None,
        "False") for an empty one; else ("source" for a `$path`, or "computed"; the name of
        its value, which may be MISSING; its dyn)."""
        engine = self.engine
        kind, fn, static = self.mapping._member(node, where)
        if kind is engine._LITERAL:
            if fn is engine.MISSING:
                return "absent", None, "False"
            return "fixed", self.bind(fn, "literal"), "False"
        if kind is engine._COPY:
            return "fixed", self._copy(node, where, fn), "False"
        if kind is engine._SOURCE:
            return "source", self._source(node[1:], fn, ind), "True"
        if kind is engine._VALUE:
            return "computed", self._value(node, fn, ind), repr(static)
        return ("computed", *self.template(node, where, ind))

    def _repeat(self, node: dict, where: str, out: str, ind: int) -> None:
        """engine.Mapping._repeat, as a loop: each item added unless it is there already."""
        contexts, when, item, distinct = self.mapping._repetition(node, where)
        each, value = self.name("c"), self.name("v")
        self.loop(each, f"{self.bind(contexts, 'contexts')}(ctx)", distinct, ind)
        if when is not None:
            self.emit(ind + 1, f"if not {self.bind(when, 'when')}({each}):")
            self.emit(ind + 2, "continue")
        self.emit(ind + 1, f"{value} = {self.bind(item, 'item')}({each})[0]")
        self.emit(ind + 1, f"if {value} is not MISSING and {value} not in {out}:")
        self.emit(ind + 2, f"{out}.append({value})")

    def loop(self, each: str, contexts: str, distinct: bool, ind: int) -> None:
        """`for each in contexts:`, skipping a string item seen already if `distinct`
        (engine._distinct)."""
        seen = self.name("seen")
        if distinct:
            self.emit(ind, f"{seen} = set()")
        self.emit(ind, f"for {each} in {contexts}:")
        if distinct:
            self.emit(ind + 1, f"if {each}.item.__class__ is str:")
            self.emit(ind + 2, f"if {each}.item in {seen}:")
            self.emit(ind + 3, "continue")
            self.emit(ind + 2, f"{seen}.add({each}.item)")

    def _either(self, flag: str, dyn: str, ind: int) -> None:
        """`flag |= dyn`, where dyn is a name or a literal True/False."""
        if dyn == "True":
            self.emit(ind, f"{flag} = True")
        elif dyn != "False":
            self.emit(ind, f"{flag} = {flag} or {dyn}")

    def _copy(self, node: Any, where: str, copy: Callable) -> str:
        """A literal object or list as a Python display (a fresh copy each time it runs),
        or a call of the engine's `copy` if it holds anything but JSON values."""
        literal = self.mapping._literals.get(self.mapping._template(node, where))
        return repr(literal) if _json_literal(literal) else f"{self.bind(copy, 'copy')}()"

    # -- values ---------------------------------------------------------------------------
    def _source(self, path: str, read: Callable, ind: int) -> str:
        """A `$path` member: its text, MISSING, or (the engine's closure) a fresh copy of
        what else it reaches."""
        fresh = self.engine._fresh
        missing = self.engine.MISSING

        def slow(ctx: Context) -> Any:
            got = read(ctx)
            return got if got.__class__ is str or got is missing else fresh(got)
        got = self.name("x")
        if not self._walk(path, got, ind):
            self.emit(ind, f"{got} = {self.bind(slow, 'read')}(ctx)")
            return got
        self.emit(ind, f"if {got}.__class__ is not str or not {got}:")
        self.emit(ind + 1, f"{got} = MISSING if {got} is None else {self.bind(slow, 'read')}(ctx)")
        return got

    def _value(self, node: dict, value: Callable, ind: int) -> str:
        """An expression member; inline when it reads a plain path with at most one
        transform, else the engine's closure (`value`)."""
        got = self.name("x")
        call = f"{self.bind(value, 'value')}(ctx)"
        steps = self.mapping._steps(node)
        if "path" not in node or len(steps) > 1 or not self._walk(node["path"], got, ind):
            self.emit(ind, f"{got} = {call}")
            return got
        if steps:
            self.emit(ind, f"if {got}.__class__ is str and {got}:")
            self._transform(steps[0], got, ind + 1)
            self.emit(ind + 1, f"if {got} is None or ({got}.__class__ is list and not {got}):")
            self.emit(ind + 2, f"{got} = MISSING")
            self.emit(ind, "else:")
        else:
            self.emit(ind, f"if {got}.__class__ is not str or not {got}:")
        self.emit(ind + 1, f"{got} = _ODD")
        self.emit(ind, f"if {got} is _ODD:")
        self.emit(ind + 1, f"{got} = {call}")
        return got

    def _transform(self, step: tuple[Callable, Any], got: str, ind: int) -> None:
        """`got = fn(got, arg)`; `_ODD` if the transform refuses the value (the engine's
        closure then raises the error that names the source path)."""
        fn, arg = step
        self.emit(ind, "try:")
        self.emit(ind + 1, f"{got} = {self.bind(fn, 'transform')}({got}, {self.bind(arg, 'arg')})")
        self.emit(ind, "except TransformError:")
        self.emit(ind + 1, f"{got} = _ODD")

    def parts(self, node: Any) -> list[tuple] | None:
        """An expression as ("literal", text) and ("path", path, transform or None) parts
        that are joined, if it is of that kind (see `value_function`), else None."""
        engine = self.engine
        if engine._is_path(node):
            return [("path", node[1:], None)] if self._walkable(node[1:]) else None
        if not isinstance(node, dict) or "when" in node:
            return None
        steps = self.mapping._steps(node)
        if "path" in node:
            ok = len(steps) <= 1 and self._walkable(node["path"])
            return [("path", node["path"], steps[0] if steps else None)] if ok else None
        if "concat" not in node or steps:
            return None
        parts = []
        for item in node["concat"]:
            if isinstance(item, str) and not engine._is_path(item):
                parts.append(("literal", item.removeprefix("$")))
                continue
            found = self.parts(item)
            if found is None:
                return None
            parts += found
        return parts

    def _walk(self, path: str, target: str, ind: int) -> bool:
        """Emit the dict look-ups of a path without `[]` or `../` into `target`: a dict,
        None where a step is absent, `_ODD` where a step is not a dict. False if the path
        is not of that kind (its reading is left to the engine)."""
        if not self._walkable(path):
            return False
        start, rest = _start(path)
        steps = () if rest in ("", ".") else tuple(rest.split("."))
        self.emit(ind, f"{target} = {'it' if start is None else 'ctx.root.item'}")
        for step in steps:
            self.emit(ind, f"{target} = {target}.get({step!r}) if {target}.__class__ is dict "
                           f"else (None if {target} is None else _ODD)")
        return True

    @staticmethod
    def _walkable(path: str) -> bool:
        return "[]" not in path and not path.startswith("../")


def _json_literal(value: Any) -> bool:
    """Whether `repr(value)` is a Python display of it: JSON types, finite numbers."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_literal(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_literal(v) for v in value)
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    return value is None or isinstance(value, (str, bool, int))


def reach_function(path: str, steps: list[tuple[str, bool]], contexts: bool,
                   reach: Callable[[Context], list]) -> Callable[[Context], list] | None:
    """`reach` (paths.finder's or paths.getter's function for a path with `[]`) as nested
    loops: the contexts of the items the path reaches (`contexts`), else the values but "".

    Depth first where `_reach` goes breadth first: the same items in the same order. A step
    that would be an error (a list where no `[]` is, no list where one is) hands the whole
    path to `reach`, which raises the error `_reach` names. None for a path that climbs
    (`../`) or ends in a plain step: those stay with `reach`.
    """
    if path.startswith("../") or not steps[-1][1]:
        return None
    namespace = {"Context": Context, "reach": reach}
    lines = ["def find(ctx):", "    found = []",
             f"    c0 = {'ctx.root' if path.startswith('/') else 'ctx'}",
             "    x0 = c0.item"]
    if contexts:
        lines.append("    a0 = c0._at")
    level, ind = "c0", 1
    for k, (key, many) in enumerate(steps):
        x, y = f"x{k}", f"x{k + 1}"
        pad = "    " * ind
        value = f"v{k}" if many else y  # a list, or the value of a plain step
        lines.append(f"{pad}if isinstance({x}, dict):")
        lines.append(f"{pad}    {value} = {x}.get({key!r})")
        lines += [f"{pad}    if {value} is not None:",
                  f"{pad}        if {'not ' if many else ''}isinstance({value}, list):",
                  f"{pad}            return reach(ctx)"]
        ind += 2
        pad = "    " * ind
        if many:
            lines.append(f"{pad}for i{k}, {y} in enumerate({value}):" if contexts
                         else f"{pad}for {y} in {value}:")
            lines.append(f"{pad}    if {y} is not None:")
            ind += 2
            pad = "    " * ind
            if contexts:
                lines.append(f"{pad}a{k + 1} = (({'a' + str(k)}, {key!r}), i{k})")
                lines.append(f"{pad}c{k + 1} = Context({y}, {level}, a{k + 1})")
                level = f"c{k + 1}"
        elif contexts:
            lines.append(f"{pad}a{k + 1} = (a{k}, {key!r})")
    last = f"x{len(steps)}"
    pad = "    " * ind
    if contexts:
        lines.append(f"{pad}found.append({level})")
    else:
        lines += [f"{pad}if {last} != '':", f"{pad}    found.append({last})"]
    lines.append("    return found")
    return _function("\n".join(lines) + "\n", "find", namespace, f"path {path}")


def condition_function(tree: tuple, functions: dict, test: Callable[[Context], Any]
                       ) -> Callable[[Context], Any]:
    """`test` (paths.Condition's compiled `when:`) as one expression, for its truth.

    Plain paths (no `[]`, no `../`) are read inline, all of them first: each is either
    absent or a non-empty string in the usual case, and then `==`, `!=`, `in` and a bare
    path are Python's own operators. Any other value of such a path (attributes, a list)
    hands the whole condition to `test`. Other operands (`fn(path)`, paths with `[]`) are
    the closures of paths.py, called where they stand, so `and`/`or` still short-circuit.
    """
    writer = _Writer(None)
    writer.namespace["fallback"] = test
    reads: dict[str, str] = {}

    def read(path: str) -> str | None:
        if not writer._walkable(path):
            return None
        if path not in reads:
            got = reads[path] = writer.name("x")
            writer._walk(path, got, 1)
            writer.emit(1, f"if not ({got} is None or ({got}.__class__ is str and {got})):")
            writer.emit(2, "return fallback(ctx)")
        return reads[path]

    def closure(fn: Callable) -> str:
        return f"{writer.bind(fn, 'operand')}(ctx)"

    def expression(node: tuple) -> str:
        kind = node[0]
        if kind in ("or", "and"):
            return f"({expression(node[1])} {kind} {expression(node[2])})"
        if kind == "not":
            return f"(not {expression(node[1])})"
        if kind == "truthy":
            operand = node[1]
            got = read(operand[1]) if operand[0] == "path" else None
            return got or closure(paths._operand(operand, functions, reach_function))
        left, right = node[1], node[2]
        if left[0] == "path" and right[0] == "lit" and read(left[1]):
            pool = right[1] if kind != "in" or isinstance(right[1], list) else [right[1]]
            operator = {"==": "==", "!=": "!=", "in": "in"}[kind]
            return f"({reads[left[1]]} {operator} {writer.bind(pool, 'literal')})"
        return closure(paths._compile(node, functions, False, reach_function))

    body = expression(tree)
    if not reads:  # nothing read inline: the closures are the condition
        return test
    source = ("def test(ctx):\n    it = ctx.item\n" + "\n".join(writer.lines)
              + f"\n    return {body}\n")
    return _function(source, "test", writer.namespace, "condition")


def plan_function(mapping: Any) -> Callable:
    """engine.Mapping._planned, the loop over the resources of a mapping, written out: one
    block per resource, its contexts, `when` and identifier named directly."""
    writer = _Writer(mapping)
    writer.namespace["identifier"] = engine._identifier
    for spec in mapping.specs:
        name = writer.bind(spec, "spec")
        ind = 1
        if spec.contexts is None:
            writer.emit(ind, "ctx = root")
            if spec.test is not None:
                writer.emit(ind, f"if {writer.bind(spec.test, 'when')}(ctx):")
                ind += 1
        else:
            writer.loop("ctx", f"{writer.bind(spec.contexts, 'contexts')}(root)", spec.distinct,
                        ind)
            ind += 1
            if spec.test is not None:
                writer.emit(ind, f"if not {writer.bind(spec.test, 'when')}(ctx):")
                writer.emit(ind + 1, "continue")
        writer.emit(ind, f"value = {writer.bind(spec.value, 'value')}(ctx, True)")
        writer.emit(ind, "if value.__class__ is str:")
        writer.emit(ind + 1, f"memo[{writer.bind(spec.key, 'key')}, ctx] = value")
        writer.emit(ind, "else:")
        writer.emit(ind + 1, f"value = identifier({name}, ctx, value)")
        writer.emit(ind, f"planned.append(({name}, ctx, value))")
    source = ("def plan(root):\n    memo = root.memo\n    planned = []\n"
              + "\n".join(writer.lines) + "\n    return planned\n")
    return _function(source, "plan", writer.namespace, f"{mapping.source.name} plan")


def resource_function(mapping: Any, spec: Any) -> Callable:
    """engine.Mapping._resource for one resource, its constants written in."""
    writer = _Writer(mapping)
    writer.namespace["MappedResource"] = engine.MappedResource
    key, rtype, system, profile, write = (writer.bind(v, "const") for v in (
        spec.key, spec.type, spec.system, spec.profile, spec.write))
    meta = f"'meta': {{'profile': [{profile}]}}, " if spec.profile else ""
    lines = [f"body = {writer.bind(spec.build, 'build')}(ctx)[0]",
             "if body is MISSING:",
             "    body = {}",
             f"ident = {{'system': {system}, 'value': value}}",
             f"resource = {{'resourceType': {rtype}, {meta}'identifier': [ident]}}"]
    if spec.more_identifiers:
        lines.append("resource['identifier'] += [i for i in body.pop('identifier', []) "
                     "if i != ident]")
    lines += ["resource.update(body)",
              f"return MappedResource({key}, resource, ({system}, value), {write}, "
              f"{writer.bind(spec.merge, 'merge')})"]
    source = "def make(ctx, value):\n" + "".join(f"    {line}\n" for line in lines)
    return _function(source, "make", writer.namespace, f"{spec.where} resource")


class GeneratedMapping(Mapping):
    """engine.Mapping with its templates, identifiers, conditions, paths with `[]`, the loop
    over its resources and the wrapping of each resource run as the code written here (the
    closures answering whatever that code hands them)."""

    reach = staticmethod(reach_function)

    def _running(self, node: Any, where: str) -> Build:
        build = self._template(node, where)
        if build in self._literals:
            return build
        return self._once("code", node, where, lambda: template_function(self, node, where))

    def _running_value(self, node: Any, where: str, value: Value) -> Value:
        return value_function(self, node, where, value)

    def _running_resource(self, spec: Any) -> Callable:
        return resource_function(self, spec)

    def _running_plan(self) -> Callable:
        return plan_function(self)

    def _condition(self, expr: str) -> Condition:
        if expr not in self._conditions:
            condition = super()._condition(expr)
            condition.test = condition_function(condition.tree, self._functions, condition.test)
        return self._conditions[expr]


#: load, check and compile a mapping file to generated code (see engine.Mapping.load)
load_mapping = GeneratedMapping.load
