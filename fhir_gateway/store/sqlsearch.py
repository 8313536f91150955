"""Translate a parsed search into SQL over the embedded store's index tables.

Each criterion becomes a condition on a resource row (`<alias>.rid IN (...)`), so criteria
AND together, comma-separated values OR together inside one condition, and a chained
parameter nests the target's condition in a subquery of target ids. Date semantics follow HAPI's
(ranges compared as [low, high)).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from typing import NamedTuple, Protocol

from fhir_gateway.formats import fhirjson
from fhir_gateway.outcome import invalid
from fhir_gateway.search import values
from fhir_gateway.search.dates import parse_range
from fhir_gateway.search.query import WITHIN, WITHOUT, Criterion, Include, SearchQuery, split_prefix
from fhir_gateway.search.registry import params_for
from fhir_gateway.search.values import normalize
from fhir_gateway.store.base import SearchResult


class Indexed(Protocol):
    """What a search reads from the embedded store: its connection and parameter ids."""

    def connection(self) -> sqlite3.Connection: ...

    def pid(self, resource_type: str, code: str) -> int: ...


class IndexTable(NamedTuple):
    """Where a search-parameter type's values are indexed (the tables are in `SCHEMA`)."""

    table: str
    columns: tuple[str, ...]
    rows: Callable[[list], list[tuple]]  # the extracted values -> rows of `columns`
    sort: tuple[str, str]  # the column a sort reads: ascending, descending


_TOKEN = IndexTable("idx_token", ("system", "code", "text"), values.tokens, ("code", "code"))
#: search-parameter type -> its index table: the one map the writes and the searches share
INDEX = {
    "token": _TOKEN,
    "uri": _TOKEN,
    "string": IndexTable("idx_string", ("norm", "exact"), values.strings, ("norm", "norm")),
    "reference": IndexTable("idx_ref", ("ref", "ttype", "tid"), values.references,
                            ("ref", "ref")),
    "date": IndexTable("idx_date", ("low", "high"), values.dates, ("low", "high")),
    "quantity": IndexTable("idx_quantity", ("value", "system", "code", "unit"),
                           values.quantities, ("value", "value")),
    "number": IndexTable("idx_number", ("value",), lambda nodes: [(v,) for v in values.numbers(nodes)],
                         ("value", "value")),
}
INDEX_TABLES = sorted({index.table for index in INDEX.values()})
MAX_INCLUDES = 1000
ITERATE_ROUNDS = 4


def run_query(store: Indexed, query: SearchQuery) -> SearchResult:
    where, args = _where(store, query, "r")
    conn = store.connection()
    total = conn.execute(f"SELECT COUNT(*) FROM resource r WHERE {where}", args).fetchone()[0]
    result = SearchResult([], total, query.count, query.offset, warnings=query.warnings,
                          summary=query.summary, elements=query.elements)
    if query.summary == "count" or query.count == 0:
        return result
    order, order_args = _order(store, query)
    rows = conn.execute(
        f"SELECT r.rid, r.type, r.id, r.body FROM resource r WHERE {where} ORDER BY {order} "
        "LIMIT ? OFFSET ?", [*args, *order_args, query.count, query.offset]).fetchall()
    result.matches = [fhirjson.loads(body) for _, _, _, body in rows]
    if query.includes or query.revincludes:
        result.included = _includes(store, query, [(rid, t, i) for rid, t, i, _ in rows])
    return result


def matching_ids(store: Indexed, query: SearchQuery, limit: int) -> list[str]:
    where, args = _where(store, query, "r")
    rows = store.connection().execute(f"SELECT r.id FROM resource r WHERE {where} LIMIT ?",
                                 [*args, limit])
    return [row[0] for row in rows]


def matches_row(store: Indexed, query: SearchQuery, rid: int) -> bool:
    """Whether the live resource row `rid` meets the query's criteria, each probed on that
    row's own index rows: what a Subscription asks of each change, at a cost that does not
    grow with how many other resources match."""
    clauses, args = ["r.rid = ?", "r.type = ?", "r.deleted = 0"], [rid, query.resource_type]
    for c in query.criteria:
        part = _criterion(store, query.resource_type, c, "r")
        if part.row_condition:
            clauses.append(part.sql)
        else:
            clauses.append(f"NOT {part.probe('r')}" if part.negate else part.probe("r"))
        args.extend(part.args)
    return store.connection().execute(f"SELECT 1 FROM resource r WHERE {' AND '.join(clauses)}",
                                      args).fetchone() is not None


#: which criterion drives the query: the most selective kinds first
_SELECTIVITY = {"reference": 0, "token": 1, "uri": 1, "string": 2, "quantity": 3, "number": 3,
                "date": 4}


@dataclass
class _Rows:
    """A criterion: a condition on index rows of `table` (or, `row_condition`, on the
    resource row itself), read two ways: as the set of matching rids when it drives the
    search, and as a probe of one candidate row when another criterion drives."""

    sql: str
    args: list
    table: str = ""
    alias: str = ""  # the index table's alias in `sql` (" x" in a chain)
    negate: bool = False
    row_condition: bool = False
    rank: int = 0
    within: bool = False  # a client's member limit: probed last, drives only alone

    def rids(self) -> str:
        rid = f"{self.alias.strip()}.rid" if self.alias else "rid"
        return f"SELECT {rid} FROM {self.table}{self.alias} WHERE {self.sql}"

    def probe(self, row: str) -> str:
        """Index rows of the candidate `row` only (its (rid, pid) index): left to itself,
        SQLite reads the value index for each candidate, every row of a prefix or a
        chain again and again (`name=x` repeated 40 times: minutes on 15k Patients)."""
        rid = f"{self.alias.strip()}.rid" if self.alias else "rid"
        return (f"EXISTS (SELECT 1 FROM {self.table}{self.alias} INDEXED BY {self.table}_rid "
                f"WHERE {rid} = {row}.rid AND {self.sql})")


def _where(store: Indexed, query: SearchQuery, alias: str) -> tuple[str, list]:
    """AND the criteria: the most selective drives (`rid IN`), the rest are `EXISTS` probes.

    The type test is written `+type` when criteria exist so SQLite does not scan every row
    of the type and probe the criteria; it looks up the driving rids instead. Criteria
    repeated word for word are one condition.
    """
    unique = {(c.param.code, c.modifier, tuple(c.values), repr(c.chained), c.target_type): c
              for c in query.criteria}
    parts = sorted((_criterion(store, query.resource_type, c, alias) for c in unique.values()),
                   key=lambda p: (p.within, p.negate, p.row_condition is False and p.rank,
                                  p.rank))
    plus = "+" if any(not p.within for p in parts) else ""
    clauses = [f"{plus}{alias}.type = ?", f"{plus}{alias}.deleted = 0"]
    args: list = [query.resource_type]
    for i, part in enumerate(parts):
        if part.row_condition:
            clauses.append(part.sql)
        elif i == 0 and not part.negate:
            clauses.append(f"{alias}.rid IN ({part.rids()})")
        else:
            clauses.append(f"NOT {part.probe(alias)}" if part.negate else part.probe(alias))
        args.extend(part.args)
    return " AND ".join(clauses), args


def _criterion(store: Indexed, resource_type: str, c: Criterion, alias: str) -> _Rows:
    param = c.param
    if c.modifier == WITHOUT:  # what 42 CFR Part 2 withholds from the client
        return _Rows(f"{alias}.id NOT IN (SELECT value FROM json_each(?))",
                     [fhirjson.dumps(c.values).decode()], row_condition=True, within=True)
    if c.modifier == WITHIN:  # the member a per-Health-Home client may see: ids as one JSON
        ids = fhirjson.dumps(c.values).decode()
        if param.code == "_id":
            return _Rows(f"{alias}.id IN (SELECT value FROM json_each(?))", [ids],
                         row_condition=True, within=True)
        return _Rows("pid = ? AND ttype = 'Patient' AND tid IN (SELECT value FROM json_each(?))",
                     [store.pid(resource_type, param.code), ids], "idx_ref", within=True)
    if param.code == "_id":
        marks = ", ".join("?" * len(c.values))
        op = "NOT IN" if c.modifier == "not" else "IN"
        return _Rows(f"{alias}.id {op} ({marks})", list(c.values), row_condition=True, rank=-1)
    if param.code == "_lastUpdated":
        ors, args = [], []
        for value in c.values:
            sql, a = _date_condition(value, f"{alias}.updated", f"({alias}.updated + 0.001)")
            ors.append(sql)
            args.extend(a)
        return _Rows("(" + " OR ".join(ors) + ")", args, row_condition=True, rank=9)
    pid = store.pid(resource_type, param.code)
    table = INDEX[param.type].table
    rank = _SELECTIVITY[param.type]
    if c.chained is not None:
        inner = f"t{id(c) % 100000}"
        where, inner_args = _where(store, SearchQuery(c.target_type, [c.chained]), inner)
        # the targets' ids as a set first, then the references to them: joining each index
        # row to its target and testing that against the targets' rids read every target
        # again per row (`subject:Patient.name:contains=` took a minute on 15k Patients)
        return _Rows(f"x.pid = ? AND x.ttype = ? AND x.tid IN (SELECT {inner}.id FROM "
                     f"resource {inner} WHERE {where})", [pid, c.target_type, *inner_args],
                     "idx_ref", " x", rank=rank)
    if c.modifier == "missing":
        return _Rows("pid = ?", [pid], table, negate=c.values[0] == "true", rank=rank)
    ors, args = [], []
    for value in c.values:
        sql, a = _value_condition(param.type, param.targets, value, c.modifier)
        ors.append(sql)
        args.extend(a)
    return _Rows(f"pid = ? AND ({' OR '.join(ors)})", [pid, *args], table,
                 negate=c.modifier == "not", rank=rank)


def _value_condition(sp_type: str, targets: tuple[str, ...], value: str, modifier: str | None
                     ) -> tuple[str, list]:
    if sp_type == "token":
        if modifier == "text":
            return _prefix("text", normalize(value))
        if "|" in value:
            system, code = value.split("|", 1)
            if system and code:
                return "code = ? AND system = ?", [code, system]
            if system:
                return "system = ?", [system]
            return "code = ? AND system IS NULL", [code]
        return "code = ?", [value]
    if sp_type == "uri":
        if modifier == "below":
            return _prefix("code", value)
        return "code = ?", [value]
    if sp_type == "string":
        if modifier == "exact":
            return "exact = ?", [value]
        if modifier == "contains":
            escaped = normalize(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return "norm LIKE ? ESCAPE '\\'", [f"%{escaped}%"]
        return _prefix("norm", normalize(value))
    if sp_type == "reference":
        return _reference_condition(targets, value)
    if sp_type == "date":
        return _date_condition(value, "low", "high")
    if sp_type in ("quantity", "number"):
        return _number_condition(sp_type, value)
    raise invalid(f"Search on {sp_type} parameters is not supported")


def _prefix(column: str, prefix: str) -> tuple[str, list]:
    """A starts-with test that can use the (pid, column) index."""
    return f"{column} >= ? AND {column} < ?", [prefix, prefix + "\U0010ffff"]


def _reference_condition(targets: tuple[str, ...], value: str) -> tuple[str, list]:
    value = value.split("/_history/")[0]
    parts = value.split("/")
    if "://" in value or value.startswith("urn:"):
        return "ref = ?", [value]
    if len(parts) == 2:
        return "tid = ? AND ttype = ?", [parts[1], parts[0]]
    if len(parts) == 1:
        if len(targets) == 1:
            return "tid = ? AND ttype = ?", [value, targets[0]]
        return "tid = ? AND ttype IS NOT NULL", [value]
    raise invalid(f"Invalid reference search value '{value}'")


def _date_condition(value: str, low: str, high: str) -> tuple[str, list]:
    prefix, raw = split_prefix(value)
    lo, hi = parse_range(raw)
    if prefix == "eq":
        return f"({low} >= ? AND {high} <= ?)", [lo, hi]
    if prefix == "ne":
        return f"NOT ({low} >= ? AND {high} <= ?)", [lo, hi]
    if prefix == "gt":
        return f"{high} > ?", [hi]
    if prefix == "lt":
        return f"{low} < ?", [lo]
    if prefix == "ge":
        return f"{high} > ?", [lo]
    if prefix == "le":
        return f"{low} < ?", [hi]
    if prefix == "sa":
        return f"{low} >= ?", [hi]
    if prefix == "eb":
        return f"{high} <= ?", [lo]
    # ap: overlaps the value widened by 10% of its distance from now (at least a day)
    margin = max(abs(time.time() - lo) * 0.1, 86400.0)
    return f"({low} < ? AND {high} > ?)", [hi + margin, lo - margin]


#: digits enough to add half a unit of the last place to any number a search may carry
_EXACT_DIGITS = 2000


def _number_condition(sp_type: str, value: str) -> tuple[str, list]:
    prefix, raw = split_prefix(value)
    number, _, unit = raw.partition("|")
    try:
        dec = Decimal(number)
    except InvalidOperation:
        raise invalid(f"Invalid number '{number[:40]}'") from None
    exponent = dec.as_tuple().exponent
    half = Decimal(5).scaleb(exponent - 1) if isinstance(exponent, int) else Decimal(0)
    with localcontext(prec=_EXACT_DIGITS):  # the bounds exactly, whatever the digits
        low, high = dec - half, dec + half
    # The index holds doubles (what the store's decimals round to): a value in [low, high)
    # rounds into [float(low), float(high)], the upper end included unless it is exact.
    v, lo, hi = float(dec), float(low), float(high)
    below = "<" if Decimal(hi) == high else "<="
    conditions = {
        "eq": (f"(value >= ? AND value {below} ?)", [lo, hi]),
        "ne": (f"NOT (value >= ? AND value {below} ?)", [lo, hi]),
        "gt": ("value > ?", [v]), "lt": ("value < ?", [v]),
        "ge": ("value >= ?", [v]), "le": ("value <= ?", [v]),
        "sa": ("value > ?", [v]), "eb": ("value < ?", [v]),
        "ap": ("(value >= ? AND value <= ?)", [v - abs(v) * 0.1, v + abs(v) * 0.1]),
    }
    sql, args = conditions[prefix]
    if sp_type == "quantity" and unit:
        system, _, code = unit.partition("|")
        if not _:
            code, system = system, ""
        if system:
            sql += " AND system = ?"
            args = [*args, system]
        if code:
            sql += " AND (code = ? OR unit = ?)"
            args = [*args, code, code]
    return f"({sql})", args


def _order(store: Indexed, query: SearchQuery) -> tuple[str, list]:
    terms, args = [], []
    for param, desc in query.sort:
        direction = "DESC" if desc else "ASC"
        if param.code == "_id":
            terms.append(f"r.id {direction}")
            continue
        if param.code == "_lastUpdated":
            terms.append(f"r.updated {direction}")
            continue
        table, _, _, sort = INDEX[param.type]
        column = sort[desc]
        agg = "MAX" if desc else "MIN"
        terms.append(f"(SELECT {agg}({column}) FROM {table} s WHERE s.rid = r.rid AND s.pid = ?) "
                     f"{direction} NULLS LAST")
        args.append(store.pid(query.resource_type, param.code))
    terms.append("r.rid ASC")
    return ", ".join(terms), args


def _includes(store: Indexed, query: SearchQuery, page: list[tuple[int, str, str]]
              ) -> list[dict]:
    """Resources named by `_include` / `_revinclude`, following `:iterate` a few rounds."""
    conn = store.connection()
    seen = {rid for rid, _, _ in page}
    found: list[dict] = []
    frontier = page
    for round_no in range(ITERATE_ROUNDS):
        new: list[tuple[int, str, str, bytes]] = []
        for inc in query.includes:
            if round_no == 0 or inc.iterate:
                new.extend(_forward(store, conn, inc, frontier))
        for inc in query.revincludes:
            if round_no == 0 or inc.iterate:
                new.extend(_reverse(store, conn, inc, frontier))
        frontier = []
        for rid, rtype, rid_str, body in new:
            if rid not in seen and len(found) < MAX_INCLUDES:
                seen.add(rid)
                found.append(fhirjson.loads(body))
                frontier.append((rid, rtype, rid_str))
        if not frontier:
            break
    return found


def _include_pids(store: Indexed, inc: Include, source_type: str) -> list[int]:
    if inc.param is not None:
        return [store.pid(source_type, inc.param.code)]
    return [store.pid(source_type, p.code) for p in params_for(source_type).values()
            if p.type == "reference"]


def _forward(store: Indexed, conn: sqlite3.Connection, inc: Include, frontier) -> list:
    out = []
    by_type: dict[str, list[int]] = {}
    for rid, rtype, _ in frontier:
        if inc.source_type in ("*", rtype):
            by_type.setdefault(rtype, []).append(rid)
    for rtype, rids in by_type.items():
        pids = _include_pids(store, inc, rtype)
        sql = (f"SELECT DISTINCT t.rid, t.type, t.id, t.body FROM idx_ref x JOIN resource t "
               f"ON t.type = x.ttype AND t.id = x.tid WHERE t.deleted = 0 "
               f"AND x.pid IN ({','.join('?' * len(pids))}) "
               f"AND x.rid IN ({','.join('?' * len(rids))})")
        args = [*pids, *rids]
        if inc.target_type:
            sql += " AND x.ttype = ?"
            args.append(inc.target_type)
        out.extend(conn.execute(sql, args).fetchall())
    return out


def _reverse(store: Indexed, conn: sqlite3.Connection, inc: Include, frontier) -> list:
    if inc.source_type == "*":
        return []
    pids = _include_pids(store, inc, inc.source_type)
    out = []
    by_type: dict[str, list[str]] = {}
    for _, rtype, rid_str in frontier:
        if inc.target_type in (None, rtype):
            by_type.setdefault(rtype, []).append(rid_str)
    for rtype, ids in by_type.items():
        sql = (f"SELECT DISTINCT s.rid, s.type, s.id, s.body FROM idx_ref x JOIN resource s "
               f"ON s.rid = x.rid WHERE s.deleted = 0 AND s.type = ? "
               f"AND x.pid IN ({','.join('?' * len(pids))}) AND x.ttype = ? "
               f"AND x.tid IN ({','.join('?' * len(ids))})")
        out.extend(conn.execute(sql, [inc.source_type, *pids, rtype, *ids]).fetchall())
    return out
