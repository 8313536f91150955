"""Source paths and `when:` conditions over a record's plain `data` (adapters/RECORDS.md).

A path addresses the record dict with dots; `[]` means "each item" of a list (the parsers
always give repeating elements as lists). Paths are relative to where they stand: the record,
or the item a `foreach:` is visiting. `/DCN` starts at the record, `.` is the current item
itself and `../ClaimId` climbs to the enclosing `[]` item (a claim line's claim).

Paths and conditions are compiled once (`getter`, `finder`, `Condition`) into plain Python
functions: a mapping evaluates the same few dozen of them for every record of an extract,
so splitting a path or walking a condition's tree per record would be most of the work.

Errors are `MappingError`s naming the source path, so a bad extract says which element it
lacks rather than failing somewhere inside a FHIR resource.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any


class MappingError(Exception):
    """A record (or a mapping file) that cannot be mapped; `path` is the source path."""

    def __init__(self, path: str, message: str, record: str | None = None):
        self.path, self.message, self.record = path, message, record
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.record}: " if self.record else ""
        return f"{where}{self.path}: {self.message}"

    def in_record(self, record: str) -> MappingError:
        self.record = record
        self.args = (self._text(),)
        return self


class Context:
    """Where an expression is evaluated: the current item, its enclosing item, the record.

    A plain slotted class, not a dataclass: the engine makes one per repeating item of
    every record. `root` is kept on each context so that `/` paths need no climb.
    """

    __slots__ = ("_at", "item", "level", "parent", "root")

    def __init__(self, item: Any, parent: Context | None = None, where: str | tuple = "",
                 level: bool = True):
        self.item = item
        self.parent = parent
        self._at = where  # `where`, or what it is made of: (the enclosing where, key or index)
        self.level = level  # the record or a `[]` item (what `../` climbs to), not a plain step
        self.root = self if parent is None else parent.root

    @property
    def where(self) -> str:
        """The source path of `item`, for error messages ("Episodes.Episode[1]").

        Written out only when asked: a record's items are many, its errors few.
        """
        at = self._at
        if at.__class__ is not str:
            at = self._at = _written(at)
        return at

    def child(self, item: Any, where: str | tuple) -> Context:
        return Context(item, self, where)


def located(ctx: Context, path: str) -> str:
    """A source path as the record names it ("Episodes.Episode[1].AdmissionDate"), for errors."""
    if path.startswith("/") or not ctx.where:
        return path.lstrip("/")
    return f"{ctx.where}.{path}" if path not in ("", ".") else ctx.where


def _written(at: str | tuple) -> str:
    """(..((base, step), step)..) -> "base.key[2].key": a key is a `.` step, an int an index."""
    steps = []
    while at.__class__ is tuple:
        at, step = at
        steps.append(step)
    for step in reversed(steps):
        at = f"{at}[{step}]" if step.__class__ is int else f"{at}.{step}" if at else step
    return at


Getter = Callable[[Context], Any]
Finder = Callable[[Context], list[Context]]


def _start(path: str) -> tuple[Callable[[Context], Context] | None, str]:
    """(how to find the context a path starts at, or None for "right here"; the rest)."""
    if path.startswith("/"):
        return (lambda ctx: ctx.root), path[1:]
    climbs = []  # the path left at each `../`, which is what its error names
    while path.startswith("../"):
        climbs.append(path)
        path = path[3:]
    if not climbs:
        return None, path

    def climb(ctx: Context) -> Context:
        for left in climbs:
            ctx = ctx.parent
            while ctx is not None and not ctx.level:
                ctx = ctx.parent
            if ctx is None:
                raise MappingError(left, "'../' climbs above the record")
        return ctx
    return climb, path


def _walker(path: str, as_text: bool, absent: Any = None) -> Getter:
    """The value of a path without `[]`: dict look-ups from where it starts, no contexts
    (with `as_text`, the `#text` of a leaf that has attributes). `absent` stands for no
    value; with None it is as `resolve` gives it (None, an empty list of texts as is)."""
    start, rest = _start(path)
    steps = () if rest in ("", ".") else tuple(rest.split("."))

    def walk_one(ctx: Context) -> Any:  # the usual path: one key, here
        item = ctx.item
        if item.__class__ is dict:
            value = item.get(only)
            if value.__class__ is str:
                return value or absent
            if value is None:
                return absent
        return walk_any(ctx)

    def walk(ctx: Context) -> Any:
        if start is not None:
            ctx = start(ctx)
        value = ctx.item
        for key in steps:  # the usual: dicts down to a text
            if value.__class__ is not dict:
                return walk_any(ctx)
            value = value.get(key)
        if value.__class__ is str:
            return value or absent
        if value is None:
            return absent
        return walk_any(ctx)

    def walk_any(ctx: Context) -> Any:
        value = ctx.item
        for key in steps:
            if value.__class__ is not dict and not isinstance(value, dict):
                return absent
            value = value.get(key)
            if value is None:
                return absent
            if value.__class__ is not str and isinstance(value, list):
                raise _repeats(ctx, steps)
        if value.__class__ is str:  # the usual leaf
            return value or absent
        if value is None or value == "":
            return absent
        if as_text and isinstance(value, (dict, list)):
            value = [text(v) for v in value] if isinstance(value, list) else text(value)
            if value is None or (value == [] and absent is not None):
                return absent
        return value
    only = steps[0] if len(steps) == 1 and start is None else None
    return walk if only is None else walk_one


def _repeats(ctx: Context, steps: tuple[str, ...]) -> MappingError:
    """The error of a path without `[]` that reaches a list, named up to that step."""
    value = ctx.item
    for i, key in enumerate(steps):  # the walk that failed, again: it stops at the list
        value = value.get(key)
        if isinstance(value, list):
            break
    where = ".".join(filter(None, (ctx.where, *steps[:i + 1])))
    return MappingError(where, "repeats: address it with '[]'")


def _astray(ctx: Context, steps: list[tuple[str, bool]]) -> None:
    """Raise the error of a path whose walk went astray (a list where no `[]` is, or no
    list where one is): the first such step breadth first, the error a record gets."""
    found = [(ctx.item, ctx._at)]
    for key, many in steps:
        nxt = []
        for item, at in found:
            value = item.get(key) if isinstance(item, dict) else None
            if value is None:
                continue
            where = (at, key)  # written out by `_written` only for the error
            if isinstance(value, list) != many:
                raise MappingError(_written(where), "expected a list (a repeating element)"
                                   if many else "repeats: address it with '[]'")
            nxt += [(v, (where, i)) for i, v in enumerate(value) if v is not None] if many \
                else [(value, where)]
        found = nxt


def _steps(rest: str) -> list[tuple[str, bool]]:
    return [(step.removesuffix("[]"), step.endswith("[]")) for step in rest.split(".")]


class _Astray(Exception):
    """A step that went astray: `_astray` names the error."""


# One step of a path walked depth first: (context of the enclosing `[]` item, value, where,
# what is found) -> None, the next step called for each value the step reaches.
Step = Callable[[Context, Any, Any, list], None]


def _walk_steps(steps: list[tuple[str, bool]], last: Step, contexts: bool) -> Getter:
    """What the steps reach from a context, as `last` appends it: one nested call per step
    and item, depth first (the items in the order of the source). Only `[]` items get a
    context (if asked for): plain steps are dict look-ups, and `../` climbs over them
    anyway; an item's context has the item it is in as parent. A step that goes astray
    hands over to `_astray`, which raises the error breadth first, as a record gets it."""
    step = last
    for key, many in reversed(steps):
        step = (_each if many else _plain)(key, step, contexts)

    def walk(ctx: Context) -> list:
        found: list = []
        try:
            step(ctx, ctx.item, ctx._at, found)
        except _Astray:
            _astray(ctx, steps)
        return found
    return walk


def _plain(key: str, step: Step, _contexts: bool) -> Step:
    def plain(level: Context, item: Any, at: Any, found: list) -> None:
        if item.__class__ is dict or isinstance(item, dict):
            value = item.get(key)
            if value is not None:
                if value.__class__ is list or isinstance(value, list):
                    raise _Astray
                step(level, value, (at, key), found)
    return plain


def _each(key: str, step: Step, contexts: bool) -> Step:
    def each(level: Context, item: Any, at: Any, found: list) -> None:
        if item.__class__ is dict or isinstance(item, dict):
            values = item.get(key)
            if values is None:
                return
            if values.__class__ is not list and not isinstance(values, list):
                raise _Astray
            if not contexts:  # values only: no contexts, no source paths
                for v in values:
                    if v is not None:
                        step(level, v, None, found)
                return
            where = (at, key)
            for i, v in enumerate(values):
                if v is not None:
                    at_i = (where, i)
                    step(Context(v, level, at_i), v, at_i, found)
    return each


@cache
def finder(path: str) -> Finder:
    """`items` for one path, worked out once."""
    start, rest = _start(path)
    if rest in ("", "."):
        return (lambda ctx: [start(ctx)]) if start else (lambda ctx: [ctx])
    steps = _steps(rest)
    if steps[-1][1]:  # the items themselves
        walk = _walk_steps(steps, lambda level, v, at, found: found.append(level), True)
    else:
        walk = _walk_steps(steps, lambda level, v, at, found: found.append(
            Context(v, level, at, False)), True)
    return (lambda ctx: walk(start(ctx))) if start else walk


def items(ctx: Context, path: str) -> list[Context]:
    """One child context per value the path reaches (each `[]` step nests one level)."""
    return finder(path)(ctx)


@cache
def getter(path: str) -> Getter:
    """`resolve` for one path, worked out once."""
    if "[]" not in path:
        return _walker(path, False)
    start, rest = _start(path)

    def value(level: Context, v: Any, at: Any, found: list) -> None:
        if v != "":
            found.append(v)
    walk = _walk_steps(_steps(rest), value, False)
    return (lambda ctx: walk(start(ctx))) if start else walk


def resolve(ctx: Context, path: str) -> Any:
    """The value at `path`: one value (or None) without `[]`, a list of values with `[]`.

    Empty elements are absent (RECORDS.md), so "" never reaches a mapping either.
    """
    return getter(path)(ctx)


def text(value: Any) -> Any:
    """A scalar view of a value: the `#text` of a leaf element that has attributes."""
    if isinstance(value, dict) and "#text" in value:
        return value["#text"]
    return value


@cache
def text_getter(path: str, absent: Any = None) -> Getter:
    """`resolve` then `text` (of each value of a list): how mappings read the source.

    `absent` is what no value reads as; with None, as `resolve` gives it (None, or [] for
    a path with `[]`).
    """
    if "[]" not in path:
        return _walker(path, True, absent)
    get = getter(path)

    def texts(ctx: Context) -> Any:
        values = [text(v) for v in get(ctx)]
        return values if values or absent is None else absent
    return texts


# -- when: conditions ---------------------------------------------------------------------
_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'[^']*'|"[^"]*")
  | (?P<op>==|!=|\(|\)|\[|\]|,)
  | (?P<path>(?:\.\./)*/?[A-Za-z_@#][\w@#\-]*(?:\[\])?(?:\.[A-Za-z_@#][\w@#\-]*(?:\[\])?)*|\.)
)""", re.VERBOSE)
_WORDS = {"and", "or", "not", "in"}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise MappingError(expr, f"cannot read the condition at '{expr[pos:]}'")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "path" and value in _WORDS:
            kind = value
        out.append((kind, value))
    return out


Test = Callable[[Context], Any]


class Condition:
    """A parsed `when:` expression, compiled into one function of the context.

    The grammar is deliberately tiny: `path`, `'literal'`, `['a', 'b']`, `fn(path)` (a
    transform the mapping knows, e.g. `upper(Sex)`), `==`, `!=`, `in`, `not in`, `and`, `or`,
    `not`, parentheses. A path reaching several values (`[]`) compares true if any value does; a
    bare operand is true when present and non-empty.
    """

    def __init__(self, expr: str, functions: dict):
        self.expr, self.functions = expr, functions
        self._toks, self._i = _tokens(expr), 0
        tree = self._or()
        if self._i != len(self._toks):
            raise MappingError(expr, f"unexpected '{self._toks[self._i][1]}' in the condition")
        self.test = _compile(tree, functions, True)  # ctx -> truthy (callers loop)

    def __call__(self, ctx: Context) -> bool:
        return bool(self.test(ctx))

    # parser (recursive descent) -------------------------------------------------------
    def _peek(self, *kinds: str) -> bool:
        return self._i < len(self._toks) and self._toks[self._i][0] in kinds

    def _take(self, kind: str) -> str:
        if not self._peek(kind):
            got = self._toks[self._i][1] if self._i < len(self._toks) else "the end"
            raise MappingError(self.expr, f"expected {kind!r}, found '{got}'")
        self._i += 1
        return self._toks[self._i - 1][1]

    def _or(self):
        node = self._and()
        while self._peek("or"):
            self._i += 1
            node = ("or", node, self._and())
        return node

    def _and(self):
        node = self._not()
        while self._peek("and"):
            self._i += 1
            node = ("and", node, self._not())
        return node

    def _not(self):
        if self._peek("not"):
            self._i += 1
            return ("not", self._not())
        left = self._operand()
        if self._peek("op") and self._toks[self._i][1] in ("==", "!="):
            op = self._take("op")
            return (op, left, self._operand())
        if self._peek("in"):
            self._i += 1
            return ("in", left, self._operand())
        if self._peek("not") and self._toks[self._i + 1:self._i + 2] == [("in", "in")]:
            self._i += 2
            return ("not", ("in", left, self._operand()))
        return ("truthy", left)

    def _operand(self):
        kind, value = self._toks[self._i] if self._i < len(self._toks) else ("end", "")
        if kind == "str":
            self._i += 1
            return ("lit", value[1:-1])
        if kind == "op" and value == "[":
            self._i += 1
            values = []
            while not (self._peek("op") and self._toks[self._i][1] == "]"):
                values.append(self._take("str")[1:-1])
                if self._peek("op") and self._toks[self._i][1] == ",":
                    self._i += 1
            self._i += 1
            return ("lit", values)
        if kind == "op" and value == "(":
            self._i += 1
            node = self._or()
            if self._take("op") != ")":
                raise MappingError(self.expr, "expected ')'")
            return node
        if kind == "path":
            self._i += 1
            if self._peek("op") and self._toks[self._i][1] == "(":
                if value not in self.functions:
                    raise MappingError(self.expr, f"unknown function '{value}'")
                self._i += 1
                arg = self._take("path")
                if self._take("op") != ")":
                    raise MappingError(self.expr, "expected ')'")
                return ("call", value, arg)
            return ("path", value)
        raise MappingError(self.expr, f"unexpected '{value}' in the condition")


# compilation: a parsed condition -> nested closures ------------------------------------
def _compile(node: tuple, functions: dict, truth_only: bool = False) -> Test:
    """A boolean node as a function of the context (operands evaluated left to right).

    With `truth_only` (the whole condition, what `not` negates) only the truth of the
    result matters, so a bare operand is its own test, without a bool() around it.
    """
    kind = node[0]
    if kind in ("or", "and"):
        left = _compile(node[1], functions, truth_only)
        right = _compile(node[2], functions, truth_only)
        if kind == "or":
            return lambda ctx: left(ctx) or right(ctx)
        return lambda ctx: left(ctx) and right(ctx)
    if kind == "not":
        inner = _compile(node[1], functions, True)
        return lambda ctx: not inner(ctx)
    if kind == "truthy":
        operand = _operand(node[1], functions)
        return operand if truth_only else lambda ctx: bool(operand(ctx))
    return _comparison(kind, node[1], node[2], functions)


def _comparison(kind: str, left_node: tuple, right_node: tuple, functions: dict) -> Test:
    """`==`, `!=`, `in`: a left operand reaching several values compares each of them."""
    left = _operand(left_node, functions)
    right = _operand(right_node, functions)
    spread = left_node[0] != "lit"  # a literal list is one value, a `[]` path several

    if kind == "==":
        def equal(ctx: Context) -> bool:
            value, other = left(ctx), right(ctx)
            if spread and isinstance(value, list):
                return any(v == other for v in value)
            return value == other
        return equal
    if kind == "!=":
        def unequal(ctx: Context) -> bool:
            value, other = left(ctx), right(ctx)
            if spread and isinstance(value, list):
                return all(v != other for v in value)
            return value != other
        return unequal

    def within(ctx: Context) -> bool:
        value, pool = left(ctx), right(ctx)
        pool = pool if isinstance(pool, list) else [pool]
        if spread and isinstance(value, list):
            return any(v in pool for v in value)
        return value in pool
    return within


def _operand(node: tuple, functions: dict) -> Callable[[Context], Any]:
    kind = node[0]
    if kind == "lit":
        literal = node[1]
        return lambda ctx: literal
    if kind == "path":
        return text_getter(node[1], None)
    if kind == "call":
        return _call(functions[node[1]], node[2])
    return _compile(node, functions, False)


def _call(fn: Callable[[Any, str], Any], path: str) -> Callable[[Context], Any]:
    """`fn(path)`: the function of each value (results flattened), None if there is none.
    An error of `fn` names where the path stands in the record."""
    get = getter(path)

    def of(ctx: Context, value: Any) -> Any:
        try:
            return fn(text(value), path)
        except MappingError as err:
            raise MappingError(located(ctx, path), err.message) from None

    def call(ctx: Context) -> Any:
        value = get(ctx)
        if isinstance(value, list):
            found = []
            for v in value:
                result = of(ctx, v)
                if isinstance(result, list):
                    found += result
                elif result is not None:
                    found.append(result)
            return found
        return None if value is None else of(ctx, value)
    return call
