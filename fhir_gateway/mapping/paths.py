"""Source paths and `when:` conditions over a record's plain `data` (adapters/RECORDS.md).

A path addresses the record dict with dots; `[]` means "each item" of a list (the parsers
always give repeating elements as lists). Paths are relative to where they stand: the record,
or the item a `foreach:` is visiting. `/DCN` starts at the record, `.` is the current item
itself and `../ClaimId` climbs to the enclosing `[]` item (a claim line's claim).

Errors are `MappingError`s naming the source path, so a bad extract says which element it
lacks rather than failing somewhere inside a FHIR resource.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Context:
    """Where an expression is evaluated: the current item, its enclosing item, the record."""

    item: Any
    parent: Context | None = None
    where: str = ""  # the source path of `item`, for error messages ("Episodes.Episode[1]")
    produced: frozenset = frozenset()  # on the record's context: (type, system, value) made
    level: bool = True  # the record or a `[]` item (what `../` climbs to), not a plain step

    def with_produced(self, produced: frozenset) -> Context:
        """The same place in a record whose resources are known (for references)."""
        if self.parent is None:
            return Context(self.item, None, self.where, produced)
        return Context(self.item, self.parent.with_produced(produced), self.where,
                       level=self.level)

    @property
    def root(self) -> Context:
        ctx = self
        while ctx.parent is not None:
            ctx = ctx.parent
        return ctx

    def child(self, item: Any, where: str) -> Context:
        return Context(item, self, where)


def _start(ctx: Context, path: str) -> tuple[Context, str]:
    if path.startswith("/"):
        return ctx.root, path[1:]
    while path.startswith("../"):
        ctx = ctx.parent
        while ctx is not None and not ctx.level:
            ctx = ctx.parent
        if ctx is None:
            raise MappingError(path, "'../' climbs above the record")
        path = path[3:]
    return ctx, path


def is_many(path: str) -> bool:
    return "[]" in path


def items(ctx: Context, path: str) -> list[Context]:
    """One child context per value the path reaches (each `[]` step nests one level)."""
    start, rest = _start(ctx, path)
    if rest in ("", "."):
        return [start]
    found = [start]
    for step in rest.split("."):
        many, key = step.endswith("[]"), step.removesuffix("[]")
        nxt = []
        for c in found:
            value = c.item.get(key) if isinstance(c.item, dict) else None
            where = f"{c.where}.{key}" if c.where else key
            if value is None:
                continue
            if many:
                if not isinstance(value, list):
                    raise MappingError(f"{where}", "expected a list (a repeating element)")
                nxt.extend(c.child(v, f"{where}[{i}]") for i, v in enumerate(value)
                           if v is not None)
            else:
                if isinstance(value, list):
                    raise MappingError(where, "repeats: address it with '[]'")
                nxt.append(Context(value, c, where, level=False))
        found = nxt
    return found


@cache
def _plain_steps(path: str) -> tuple[str, ...] | None:
    """The keys of a path with no `[]`, `/` or `../` (most paths), else None."""
    if "[]" in path or path.startswith(("/", "../")) or path in ("", "."):
        return None
    return tuple(path.split("."))


def resolve(ctx: Context, path: str) -> Any:
    """The value at `path`: one value (or None) without `[]`, a list of values with `[]`.

    Empty elements are absent (RECORDS.md), so "" never reaches a mapping either.
    """
    steps = _plain_steps(path)
    if steps is not None:  # the hot path: plain dict look-ups, no contexts built
        value = ctx.item
        for i, key in enumerate(steps):
            value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                return None
            if isinstance(value, list):
                where = ".".join(filter(None, (ctx.where, *steps[:i + 1])))
                raise MappingError(where, "repeats: address it with '[]'")
        return None if value == "" else value
    values = [c.item for c in items(ctx, path)]
    if is_many(path):
        return [v for v in values if v not in (None, "")]
    value = values[0] if values else None
    return None if value == "" else value


def text(value: Any) -> Any:
    """A scalar view of a value: the `#text` of a leaf element that has attributes."""
    if isinstance(value, dict) and "#text" in value:
        return value["#text"]
    return value


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


class Condition:
    """A parsed `when:` expression.

    The grammar is deliberately tiny: `path`, `'literal'`, `['a', 'b']`, `fn(path)` (a
    transform, e.g. `categories(@code)`), `==`, `!=`, `in`, `not in`, `and`, `or`, `not`,
    parentheses. A path reaching several values (`[]`) compares true if any value does; a
    bare operand is true when present and non-empty.
    """

    def __init__(self, expr: str, functions: dict):
        self.expr, self.functions = expr, functions
        self._toks, self._i = _tokens(expr), 0
        self.tree = self._or()
        if self._i != len(self._toks):
            raise MappingError(expr, f"unexpected '{self._toks[self._i][1]}' in the condition")

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

    # evaluation ---------------------------------------------------------------------
    def __call__(self, ctx: Context) -> bool:
        return bool(self._eval(self.tree, ctx))

    def _value(self, node, ctx: Context):
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "path":
            value = resolve(ctx, node[1])
            return [text(v) for v in value] if isinstance(value, list) else text(value)
        if kind == "call":
            value = resolve(ctx, node[2])
            fn = self.functions[node[1]]
            if isinstance(value, list):
                return [r for v in value for r in _as_list(fn(text(v), node[2]))]
            return None if value is None else fn(text(value), node[2])
        return self._eval(node, ctx)

    def _eval(self, node, ctx: Context):
        kind = node[0]
        if kind == "or":
            return self._eval(node[1], ctx) or self._eval(node[2], ctx)
        if kind == "and":
            return self._eval(node[1], ctx) and self._eval(node[2], ctx)
        if kind == "not":
            return not self._eval(node[1], ctx)
        if kind == "truthy":
            return bool(self._value(node[1], ctx))
        left, right = self._value(node[1], ctx), self._value(node[2], ctx)
        lefts = left if isinstance(left, list) and node[1][0] != "lit" else [left]
        if kind == "==":
            return any(v == right for v in lefts)
        if kind == "!=":
            return all(v != right for v in lefts)
        if kind == "in":
            pool = right if isinstance(right, list) else [right]
            return any(v in pool for v in lefts)
        raise MappingError(self.expr, f"unknown operator {kind}")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
