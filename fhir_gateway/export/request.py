"""A Bulk Data kick-off request, checked before a job exists (FHIR Bulk Data Access 2.0,
https://hl7.org/fhir/uv/bulkdata/export.html).

Every parameter is refused here with a 400 naming it, so a job that starts has nothing
left to fail on but the store: `_type` must name resource types (of the Patient
compartment for Patient- and Group-level exports), `_since` must be an instant,
`_typeFilter` must be `Type?search` with the gateway's own search syntax, and
`_outputFormat` must be NDJSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from urllib.parse import parse_qsl

from fhir_gateway.export.compartments import patient_compartment_types
from fhir_gateway.outcome import FhirError, invalid
from fhir_gateway.search.dates import parse_range
from fhir_gateway.search.query import parse_query
from fhir_gateway.search.registry import resource_types

NDJSON_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
#: kick-off parameters the gateway acts on; the spec's others are refused, not ignored
PARAMETERS = {"_outputFormat", "_since", "_type", "_typeFilter"}
LEVELS = ("system", "patient", "group")


@dataclass
class ExportRequest:
    level: str  # system, patient or group
    group_id: str | None = None
    types: list[str] = field(default_factory=list)  # in the order exported
    since: str | None = None
    #: per type, the searches whose matches are exported (ORed); a type without: all
    type_filters: dict[str, list[list[tuple[str, str]]]] = field(default_factory=dict)
    #: who asked: only that client polls, downloads or cancels it, and the export holds
    #: only what the client's organization may see (`scope.py`)
    client_id: str | None = None
    organization: str | None = None
    #: 42 CFR Part 2 data for a client without organization (`Audience.part2`)
    part2: str | None = "withhold"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ExportRequest:
        filters = {t: [[tuple(p) for p in q] for q in qs]
                   for t, qs in data.get("type_filters", {}).items()}
        return cls(data["level"], data.get("group_id"), list(data.get("types", [])),
                   data.get("since"), filters, data.get("client_id"), data.get("organization"),
                   data.get("part2", "withhold"))


def parse_kickoff(level: str, params: list[tuple[str, str]], all_types: list[str],
                  group_id: str | None = None) -> ExportRequest:
    """The request of `GET [base]/$export?...` (or Patient/, Group/{id}/); `all_types`: what
    a system-level export without `_type` covers."""
    for name, _ in params:
        if name not in PARAMETERS:
            raise FhirError(400, f"The export parameter '{name}' is not supported "
                                 f"(supported: {', '.join(sorted(PARAMETERS))})",
                            "not-supported", name)
    values = {name: [v for k, v in params if k == name] for name in PARAMETERS}
    for fmt in values["_outputFormat"]:
        if fmt.replace(" ", "+") not in NDJSON_FORMATS:
            raise invalid(f"_outputFormat '{fmt}' is not supported: use "
                          "application/fhir+ndjson", "_outputFormat")
    allowed = patient_compartment_types() if level != "system" else tuple(sorted(resource_types()))
    types = _types(values["_type"], allowed, level)
    since = _since(values["_since"])
    filters = _type_filters(values["_typeFilter"], allowed)
    if not types:
        types = [t for t in all_types if t in allowed] if level == "system" else list(allowed)
    return ExportRequest(level, group_id, types, since,
                         {t: q for t, q in filters.items() if t in types})


def _types(values: list[str], allowed: tuple[str, ...], level: str) -> list[str]:
    asked = [t.strip() for v in values for t in v.split(",") if t.strip()]
    for name in asked:
        if name not in resource_types():
            raise invalid(f"_type names an unknown resource type '{name}'", "_type")
        if name not in allowed:
            raise invalid(f"_type '{name}' is not in the Patient compartment: a {level}-level "
                          "export has none of its resources", "_type")
    return list(dict.fromkeys(asked))


def _since(values: list[str]) -> str | None:
    if len(values) > 1:
        raise invalid("_since may be given once", "_since")
    if not values:
        return None
    since = values[0].replace(" ", "+")  # a '+' offset arrives as a space when unescaped
    if "T" not in since or parse_range(since) is None:
        raise invalid(f"_since '{values[0]}' is not an instant (e.g. 2026-06-01T00:00:00Z)",
                      "_since")
    return since


def _type_filters(values: list[str], allowed: tuple[str, ...]
                  ) -> dict[str, list[list[tuple[str, str]]]]:
    """`Observation?code=x&status=final` (several comma-separated or repeated) -> per type,
    the parsed searches; each is checked with the search parser, strictly."""
    found: dict[str, list[list[tuple[str, str]]]] = {}
    for value in values:
        for item in value.split(","):
            resource_type, sep, query = item.strip().partition("?")
            if not sep or not query:
                raise invalid(f"_typeFilter '{item}' is not Type?search", "_typeFilter")
            if resource_type not in allowed:
                raise invalid(f"_typeFilter names '{resource_type}', not a type this export "
                              "can have", "_typeFilter")
            pairs = parse_qsl(query, keep_blank_values=True)
            try:
                parsed = parse_query(resource_type, pairs, strict=True)
            except FhirError as err:
                raise invalid(f"_typeFilter '{item}': {err.outcome['issue'][0]['diagnostics']}",
                              "_typeFilter") from None
            if parsed.includes or parsed.revincludes or any(
                    k in ("_count", "_offset", "_sort", "_summary", "_elements") for k, _ in pairs):
                raise invalid(f"_typeFilter '{item}' may hold search criteria only",
                              "_typeFilter")
            found.setdefault(resource_type, []).append(pairs)
    return found
