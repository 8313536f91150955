"""Parse a FHIR search query (`name[:modifier]=value,value&...`) into a typed plan.

Parsing is separate from execution so every store sees the same meaning of a query and
bad input is refused before any I/O, with the parameter named in the OperationOutcome.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fhir_gateway.auth import context
from fhir_gateway.outcome import FhirError, Issue, invalid
from fhir_gateway.search.dates import parse_range
from fhir_gateway.search.registry import SearchParam, params_for, resource_types

DEFAULT_COUNT = 20
MAX_COUNT = 1000
#: Limits of one search, each a 400 naming the parameter before the store is asked: the
#: work a search costs grows with each (an AND per parameter, an OR per value, a join per
#: chain level, an ORDER BY term per sort key), and SQLite refuses some of them far beyond
#: (`Expression tree is too large`, `too many terms in ORDER BY`). Real searches stay well
#: within; README "What the FHIR API does" lists them.
MAX_PARAMETERS = 40   # search parameters (criteria, _include, _revinclude) in one search
MAX_VALUES = 100      # comma-separated values of one parameter
MAX_CHAIN = 3         # chained levels: subject:Patient.organization.partof.name is 3
MAX_SORT = 5          # _sort keys
MAX_OFFSET = 2**31 - 1
MAX_NUMBER_DIGITS = 400  # digits of a number or quantity value
MAX_EXPONENT = 1000      # and its exponent, either way (1E-1000 .. 1E+1000)
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
RESULT_PARAMS = {"_count", "_offset", "_sort", "_summary", "_elements", "_total", "_format",
                 "_pretty"}
MODIFIERS = {
    "token": {"not", "text", "missing", "below", "above", "in", "not-in", "of-type"},
    "string": {"exact", "contains", "missing"},
    "reference": {"missing", "identifier"},
    "date": {"missing"},
    "quantity": {"missing"},
    "number": {"missing"},
    "uri": {"missing", "below", "above"},
}
SUPPORTED_MODIFIERS = {
    "token": {"not", "text", "missing"},
    "string": {"exact", "contains", "missing"},
    "reference": {"missing"},
    "date": {"missing"},
    "quantity": {"missing"},
    "number": {"missing"},
    "uri": {"missing", "below"},
}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


#: the modifier of the criterion `auth/context.py Limit` adds: the member param references
#: one of the values' Patient ids (or, `_id`, is one), however many (no `MAX_VALUES`)
WITHIN = "within"
#: and the one that leaves out what a client may not see (`_id` not one of the values)
WITHOUT = "without"


@dataclass
class Criterion:
    """One `name=v1,v2` term: the values are ORed; criteria of a query are ANDed."""

    param: SearchParam
    values: list[str]
    modifier: str | None = None
    #: for a chained reference (`subject:Patient.identifier=x`): the target type and the
    #: criterion evaluated on the target
    target_type: str | None = None
    chained: Criterion | None = None


@dataclass
class Include:
    source_type: str
    param: SearchParam | None  # None means `*`
    target_type: str | None = None
    iterate: bool = False


@dataclass
class SearchQuery:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: list[tuple[SearchParam, bool]] = field(default_factory=list)  # (param, descending)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


def parse_query(resource_type: str, pairs: list[tuple[str, str]], strict: bool = False,
                default_count: int = DEFAULT_COUNT, max_count: int = MAX_COUNT) -> SearchQuery:
    query = SearchQuery(resource_type, count=default_count)
    params = params_for(resource_type)
    if sum(name not in RESULT_PARAMS for name, _ in pairs) > MAX_PARAMETERS:
        raise FhirError(400, f"A search may have at most {MAX_PARAMETERS} parameters",
                        "too-costly")
    for name, value in pairs:
        base = name.split(":")[0]
        if base in ("_include", "_revinclude"):
            target = query.revincludes if base == "_revinclude" else query.includes
            target.append(parse_include(value, name))
            continue
        if name in RESULT_PARAMS:
            _result_param(query, name, value, max_count)
            continue
        try:
            query.criteria.append(_criterion(resource_type, params, name, value))
        except _Unknown as unknown:
            message = str(unknown)
            if strict:
                raise FhirError(400, message, "not-supported", name) from None
            query.warnings.append(Issue(message + "; ignored", "not-supported", "warning", [name]))
    limit = context.within.get()
    if limit is not None and limit.resource_type == resource_type:
        if limit.members is not None:
            query.criteria.append(Criterion(params[limit.param], sorted(limit.members), WITHIN))
        if limit.excluded:
            query.criteria.append(Criterion(params["_id"], sorted(limit.excluded), WITHOUT))
    return query


class _Unknown(Exception):
    pass


def _criterion(resource_type: str, params: dict[str, SearchParam], name: str,
               value: str) -> Criterion:
    head, _, chain = name.partition(".")
    code, _, modifier = head.partition(":")
    if name.count(".") > MAX_CHAIN:
        raise FhirError(400, f"A chain may have at most {MAX_CHAIN} levels", "too-costly", name)
    param = params.get(code)
    if param is None:
        raise _Unknown(f"Unknown search parameter '{code}' for resource type {resource_type}")
    modifier = modifier or None
    if chain:
        if param.type != "reference":
            raise invalid(f"Parameter '{code}' is not a reference and cannot be chained", name)
        target_type = modifier
        if target_type is None:
            candidates = [t for t in param.targets if chain.split(":")[0].split(".")[0]
                          in params_for(t)]
            if len(candidates) != 1:
                raise invalid(f"Chain '{name}' is ambiguous: name the target type, e.g. "
                              f"'{code}:{(param.targets or ('Patient',))[0]}.{chain}'", name)
            target_type = candidates[0]
        if target_type not in resource_types():
            raise invalid(f"Unknown resource type '{target_type}' in chain '{name}'", name)
        chained = _criterion(target_type, params_for(target_type), chain, value)
        return Criterion(param, [], None, target_type, chained)
    if not value.strip(","):  # `name=`: as HAPI, a parameter not given
        raise _Unknown(f"Parameter '{name}' has no value")
    if modifier and param.type == "reference" and modifier[:1].isupper():
        if modifier not in resource_types():
            raise invalid(f"Unknown resource type modifier ':{modifier}' on '{code}'", name)
        values = [v if "/" in v else f"{modifier}/{v}" for v in _split(value)]
        return Criterion(param, values)
    if modifier:
        if modifier not in MODIFIERS.get(param.type, ()):
            raise invalid(f"Modifier ':{modifier}' is not valid on {param.type} parameter "
                          f"'{code}'", name)
        if modifier not in SUPPORTED_MODIFIERS.get(param.type, ()):
            raise FhirError(400, f"Modifier ':{modifier}' on '{code}' is not supported by "
                                 "this server", "not-supported", name)
    values = _split(value)
    if len(values) > MAX_VALUES:
        raise FhirError(400, f"A search parameter may have at most {MAX_VALUES} values",
                        "too-costly", name)
    if modifier == "missing":
        if code in ("_id", "_lastUpdated"):
            raise invalid(f"Every resource has {code}: ':missing' cannot apply to it", name)
        if value not in ("true", "false"):
            raise invalid(f"':missing' takes true or false, not '{value}'", name)
        return Criterion(param, [value], modifier)
    for v in values:
        _check_value(param, name, v)
    return Criterion(param, values, modifier)


def _split(value: str) -> list[str]:
    """Split on commas not escaped with a backslash; unescape `\\,` `\\|` `\\$`."""
    if "," not in value and "\\" not in value:  # one plain value (every conditional write)
        return [value] if value else []
    parts = re.split(r"(?<!\\),", value)
    return [re.sub(r"\\([,$|\\])", r"\1", p) for p in parts if p != ""]


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def _check_value(param: SearchParam, name: str, value: str) -> None:
    if param.type == "date":
        _, raw = split_prefix(value)
        if parse_range(raw) is None:
            raise invalid(f"Invalid date '{raw}' for parameter '{name}' (expected YYYY, "
                          "YYYY-MM, YYYY-MM-DD or a dateTime)", name)
    elif param.type in ("number", "quantity"):
        _, raw = split_prefix(value)
        number = raw.split("|", 1)[0]
        if not _NUMBER.match(number):
            raise invalid(f"Invalid number '{number[:40]}' for parameter '{name}'", name)
        digits, _, exponent = number.lower().lstrip("+-").partition("e")
        if len(digits) > MAX_NUMBER_DIGITS or (exponent and (
                len(exponent) > 6 or abs(int(exponent)) > MAX_EXPONENT)):
            raise invalid(f"The number '{number[:40]}' for parameter '{name}' is beyond what a "
                          f"search compares (at most {MAX_NUMBER_DIGITS} digits, exponents "
                          f"within ±{MAX_EXPONENT})", name)


def _result_param(query: SearchQuery, name: str, value: str, max_count: int) -> None:
    if name == "_count":
        query.count = min(whole_number(value, name), max_count)
    elif name == "_offset":
        query.offset = whole_number(value, name, MAX_OFFSET)
    elif name == "_sort":
        keys = list(filter(None, value.split(",")))
        if len(keys) + len(query.sort) > MAX_SORT:
            raise FhirError(400, f"_sort may have at most {MAX_SORT} keys", "too-costly",
                            "_sort")
        for key in keys:
            desc = key.startswith("-")
            code = key.lstrip("-")
            param = params_for(query.resource_type).get(code)
            if param is None:
                raise invalid(f"Unknown sort parameter '{code}' for {query.resource_type}",
                              "_sort")
            query.sort.append((param, desc))
    elif name == "_summary":
        if value not in ("true", "false", "text", "data", "count"):
            raise invalid(f"_summary must be one of true, false, text, data, count; "
                          f"not '{value}'", "_summary")
        query.summary = None if value == "false" else value
    elif name == "_elements":
        query.elements.extend(e.strip() for e in value.split(",") if e.strip())


def whole_number(value: str, name: str, maximum: int | None = None) -> int:
    """A non-negative integer parameter, 400 naming it otherwise; a value above `maximum`
    too (without one, any count of digits is read: callers cap it)."""
    if not (value.isascii() and value.isdigit()):
        raise invalid(f"{name} must be a non-negative integer, not '{value[:40]}'", name)
    if maximum is not None and (len(value) > 19 or int(value) > maximum):
        raise invalid(f"{name} must be at most {maximum}", name)
    return int(value) if len(value) <= 19 else 10**19


def parse_include(value: str, name: str) -> Include:
    """`Source:param[:Target]`; `*` includes every reference parameter."""
    iterate = name.endswith((":iterate", ":recurse"))
    parts = value.split(":")
    if value == "*":
        return Include("*", None, None, iterate)
    if len(parts) not in (2, 3) or parts[0] not in resource_types():
        raise invalid(f"Invalid {name} value '{value}': expected Type:parameter[:TargetType]",
                      name)
    source, code = parts[0], parts[1]
    if code == "*":
        return Include(source, None, parts[2] if len(parts) == 3 else None, iterate)
    param = params_for(source).get(code)
    if param is None or param.type != "reference":
        raise invalid(f"Invalid {name} value '{value}': {source} has no reference "
                      f"parameter '{code}'", name)
    target = parts[2] if len(parts) == 3 else None
    if target and target not in resource_types():
        raise invalid(f"Invalid {name} value '{value}': unknown type '{target}'", name)
    return Include(source, param, target, iterate)
