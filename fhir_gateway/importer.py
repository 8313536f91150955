"""Import a CIMOR or CyberAccess extract into the store: parse, map, transact, quarantine.

Records stream from the parser in groups; each group becomes one transaction of
identifier-based conditional updates, so re-importing a file changes nothing. If a group
fails, its records are retried one by one so that only the bad record is quarantined (with
file, line, record id, reason and raw XML) and everything else is stored. A file that is not
well-formed stops at the break: the complete records before it are stored, and the error
names the line and column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson

from adapters.common import MalformedExtract, SourceRecord
from fhir_gateway.config import Settings
from fhir_gateway.mapping.engine import load_mapping, to_transaction
from fhir_gateway.mapping.paths import MappingError
from fhir_gateway.outcome import FhirError
from fhir_gateway.store.base import FhirStore

MAPPINGS = Path(Settings().mappings)
GROUP = 25  # records per transaction: fewer round trips, small enough to retry one by one
SYSTEMS = ("cimor", "cyberaccess")
#: HAPI's storage response code for a conditional create that found the resource already there
MATCHED_EXISTING = "SUCCESSFUL_CREATE_WITH_CONDITIONAL_MATCH"


@dataclass
class ImportSummary:
    records: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    quarantine: list[dict] = field(default_factory=list)
    malformed: str | None = None  # "line L, column C: message" when the file broke off


def _parser(system: str) -> Callable[[Path], Iterator[SourceRecord]]:
    if system == "cimor":
        from adapters.cimor.parser import parse
    elif system == "cyberaccess":
        from adapters.cyberaccess.parser import parse
    else:
        raise ValueError(f"Unknown source system '{system}': expected one of {', '.join(SYSTEMS)}")
    return parse


def import_extract(store: FhirStore, system: str, path: Path,
                   progress: Callable[[int], None] = lambda n: None) -> ImportSummary:
    """Import one extract file; `progress` gets the number of records done."""
    parse, mapping = _parser(system), load_mapping(MAPPINGS / f"{system}.yaml")
    summary = ImportSummary()
    group: list[tuple[SourceRecord, list]] = []

    def flush() -> None:
        _store_group(store, group, summary, path)
        progress(len(group))
        group.clear()

    try:
        for record in parse(path):
            summary.records += 1
            if record.errors:
                _quarantine(summary, path, record, "; ".join(record.errors))
                continue
            try:
                group.append((record, mapping.apply(record.data)))
            except MappingError as err:
                _quarantine(summary, path, record, str(err))
                continue
            if len(group) >= GROUP:
                flush()
    except MalformedExtract as err:
        summary.malformed = f"line {err.line}, column {err.column}: {err.message}"
    if group:
        flush()
    return summary


def _store_group(store: FhirStore, group: list, summary: ImportSummary, path: Path) -> None:
    try:
        _transact(store, [m for _, mapped in group for m in mapped], summary)
        return
    except FhirError as err:
        if len(group) == 1:
            _quarantine(summary, path, group[0][0], err.issues[0].diagnostics)
            return
    for record, mapped in group:  # find the bad one(s); the others go in on their own
        try:
            _transact(store, mapped, summary)
        except FhirError as err:
            _quarantine(summary, path, record, err.issues[0].diagnostics)


def _transact(store: FhirStore, mapped: list, summary: ImportSummary) -> None:
    """One transaction; 201 is created, a 200 that changed nothing is unchanged: HAPI says so
    in the entry's outcome (`..._NO_CHANGE`), the embedded store by a lastModified from
    before the transaction was sent."""
    sent = datetime.now(timezone.utc).timestamp()
    for entry in store.transaction(to_transaction(mapped)).get("entry", []):
        response = entry["response"]
        modified = response.get("lastModified")
        codes = [c.get("code", "") for i in response.get("outcome", {}).get("issue", [])
                 for c in (i.get("details") or {}).get("coding", [])]
        if response["status"].startswith("201"):
            summary.created += 1
        elif any(code.endswith("NO_CHANGE") or code == MATCHED_EXISTING for code in codes) or (
                modified and datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp() < sent):
            summary.unchanged += 1
        else:
            summary.updated += 1


def _quarantine(summary: ImportSummary, path: Path, record: SourceRecord, reason: str) -> None:
    summary.quarantined += 1
    summary.quarantine.append({"file": str(path), "line": record.line,
                               "record_id": record.record_id, "reason": reason,
                               "raw": record.raw.decode("utf-8", "replace")})


def write_quarantine(path: Path, rows: list[dict]) -> None:
    with path.open("ab") as fh:
        for row in rows:
            fh.write(orjson.dumps(row) + b"\n")
