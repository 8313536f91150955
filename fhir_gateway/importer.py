"""Import a CIMOR or CyberAccess extract into the store: parse, map, validate, transact,
quarantine.

Records stream from the parser and are prepared in groups: mapped, each resource validated
by the store's own validator (its guard then does not check them again), and the good ones
turned into one transaction of identifier-based conditional updates, so re-importing a file
changes nothing. A record that fails the XSD, the mapping or validation is quarantined
(file, line, record id, reason, raw XML) and the rest of its group goes on. If a
transaction still fails in the store (a reference it cannot resolve, say), its records are
retried one by one so that only the bad one is quarantined. A file that is not well-formed
stops at the break: the complete records before it are stored, and the error names the
line and column.

Preparing is the CPU-heavy half and storing the other, so a big file is cut into byte ranges
(`adapters/byte_ranges.py`) that worker processes prepare at the same time, while the main
process stores what they prepared, in the file's order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from fhir_gateway.adapters import byte_ranges
from fhir_gateway.adapters.common import ExtractFormat, MalformedExtract, SourceRecord, parse_record
from fhir_gateway.formats import fhirjson
from fhir_gateway.gc_tuning import bulk_gc
from fhir_gateway.config import DEFAULT_MAPPINGS
from fhir_gateway.healthhome.services import rebuild_rosters
from fhir_gateway.healthhome.transforms import TRANSFORMS
from fhir_gateway.mapping import (MappedResource, load_mapping, to_transaction,
                                  transaction_json)
from fhir_gateway.mapping.paths import MappingError
from fhir_gateway.outcome import FhirError
from fhir_gateway.store.base import FhirStore
from fhir_gateway.validation.guard import ValidatingStore
from fhir_gateway.validation.service import Validator

#: records per transaction: each commit writes every index page it touched, so bigger groups
#: share pages (100: commits took about half the time of 25); small enough to retry one by one
GROUP = 100
SYSTEMS = ("cimor", "cyberaccess")
#: files from this size on are prepared in worker processes (below, their start-up costs
#: more than they save)
WORKER_FROM_BYTES = 2_000_000
MAX_WORKERS = 4
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


@dataclass
class Prepared:
    """One record of a group: where it is and, if it cannot be stored, why.

    Its resources travel only inside the group's transaction (JSON: between processes far
    cheaper than pickle); the rare record a store refuses is mapped again from `raw`.
    """

    line: int
    record_id: str
    raw: bytes
    reason: str | None = None


@dataclass
class Group:
    records: list[Prepared]
    transaction_json: bytes | None  # the good records' transaction; None if there are none
    malformed: str | None = None  # set on the last group when the file broke off


def _format(system: str) -> ExtractFormat:
    if system == "cimor":
        from fhir_gateway.adapters.cimor.parser import FORMAT
    elif system == "cyberaccess":
        from fhir_gateway.adapters.cyberaccess.parser import FORMAT
    else:
        raise ValueError(f"Unknown source system '{system}': expected one of {', '.join(SYSTEMS)}")
    return FORMAT


@lru_cache(maxsize=2 * len(SYSTEMS))
def _mapping(system: str, mappings: str):
    """`<mappings>/<system>.yaml`, loaded once per process, with the Health Home transforms."""
    return load_mapping(Path(mappings) / f"{system}.yaml", TRANSFORMS)


# ------------------------------------------------------------------ preparing


def prepare(system: str, path: Path, validator: Validator | None, workers: int = 0,
            mappings: str = DEFAULT_MAPPINGS) -> Iterator[Group]:
    """The extract's records in groups, each ready to store, in the file's order.

    `workers` > 0: byte ranges of the file are prepared in that many worker processes at once.
    `mappings`: the folder of the mapping files (the `mappings` setting).
    """
    if workers:
        yield from _prepare_in_workers(system, path, validator, workers, mappings)
    else:
        records = byte_ranges.parse_file(_format(system), path)
        yield from _prepare_records(system, records, validator, mappings)


def _prepare_records(system: str, records: Iterable[SourceRecord], validator: Validator | None,
                     mappings: str) -> Iterator[Group]:
    mapping = _mapping(system, mappings)  # loaded (as the validator) before `bulk_gc`
    prepared: list[tuple[Prepared, list[MappedResource]]] = []
    with bulk_gc():
        try:
            for record in records:
                prepared.append(_prepare_record(record, mapping, validator))
                if len(prepared) >= GROUP:
                    yield _group(prepared)
                    prepared = []
        except MalformedExtract as err:
            yield _group(prepared, f"line {err.line}, column {err.column}: {err.message}")
            return
        if prepared:
            yield _group(prepared)


def _prepare_range(system: str, part: byte_ranges.ByteRange, validator: Validator | None,
                   mappings: str) -> list[Group]:
    """One range's groups (in a worker process)."""
    return list(_prepare_records(system, byte_ranges.parse_range(_format(system), part), validator,
                                 mappings))


def _prepare_in_workers(system: str, path: Path, validator: Validator | None,
                        workers: int, mappings: str) -> Iterator[Group]:
    """`prepare` of the file's byte ranges in worker processes, a few ranges ahead of the caller
    (bounded: memory stays flat), handed on in the file's order.

    A range that does not parse alone (see `byte_ranges.py`) and is not the file's last is
    prepared again from its start to the end of the file in this process, as a whole-file
    parse would see it: its records, then the error if the file is broken there.
    """
    fmt = _format(system)
    context = multiprocessing.get_context("spawn")  # no fork of a threaded server
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        ahead: deque = deque()
        parts = byte_ranges.split(fmt, path)
        while True:
            for part in parts:
                ahead.append((part, pool.submit(_prepare_range, system, part, validator,
                                                mappings)))
                if len(ahead) > 2 * workers:
                    break
            if not ahead:
                return
            part, future = ahead.popleft()
            groups = future.result()
            if groups and groups[-1].malformed and not part.last:
                pool.shutdown(cancel_futures=True)  # what comes after the break is not used
                yield from _prepare_records(system, byte_ranges.parse_range(fmt, part.rest()),
                                            validator, mappings)
                return
            yield from groups
    finally:  # also when the caller stops early (a store error): no work left running
        pool.shutdown(cancel_futures=True)


def _prepare_record(record: SourceRecord, mapping, validator: Validator | None
                    ) -> tuple[Prepared, list[MappedResource]]:
    prepared = Prepared(record.line, record.record_id, record.raw)
    if record.errors:
        prepared.reason = "; ".join(record.errors)
        return prepared, []
    try:
        mapped = mapping.apply(record.data)
        if validator:
            for resource in mapped:
                validator.check(resource.resource)
    except MappingError as err:
        prepared.reason = str(err)
    except FhirError as err:
        prepared.reason = err.issues[0].diagnostics
    return (prepared, []) if prepared.reason else (prepared, mapped)


def _group(records: list[tuple[Prepared, list[MappedResource]]],
           malformed: str | None = None) -> Group:
    good = [m for _, mapped in records for m in mapped]
    return Group([p for p, _ in records],
                 transaction_json(good) if good else None, malformed)


# ------------------------------------------------------------------ storing


def import_extract(store: FhirStore, system: str, path: Path,
                   progress: Callable[[int], None] = lambda n: None,
                   workers: int | None = None, mappings: str = DEFAULT_MAPPINGS) -> ImportSummary:
    """Import one extract file; `progress` gets the number of records done. `workers`:
    processes preparing byte ranges of the file (0: in this process; default: one per core, up
    to MAX_WORKERS, for files from WORKER_FROM_BYTES on). `mappings`: the folder of the
    mapping files (the `mappings` setting; by default the ones the gateway ships)."""
    _format(system)  # an unknown system fails here, before any work
    # the store's own validator checks each resource as it is prepared (in the workers too)
    validator = store.validator if isinstance(store, ValidatingStore) else None
    if workers is None:
        workers = default_workers(path)
    if not workers:  # preparing here: its data is loaded before `bulk_gc` below
        _mapping(system, mappings)
    groups = prepare(system, path, validator, workers, mappings)
    summary = ImportSummary()
    with bulk_gc():
        for group in groups:
            summary.records += len(group.records)
            for record in group.records:
                if record.reason:
                    _quarantine(summary, path, record, record.reason)
            if group.transaction_json:
                _store_group(store, validator, system, group, summary, path, mappings)
            summary.malformed = group.malformed
            progress(len(group.records))
    rebuild_rosters(store)  # the Health Homes' rosters follow the enrollments imported
    return summary


def default_workers(path: Path) -> int:
    if path.stat().st_size < WORKER_FROM_BYTES:
        return 0
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def _store_group(store: FhirStore, validator: Validator | None, system: str, group: Group,
                 summary: ImportSummary, path: Path, mappings: str) -> None:
    good = [p for p in group.records if not p.reason]
    try:
        _transact(store, validator, fhirjson.loads(group.transaction_json), summary)
        return
    except FhirError as err:
        if len(good) == 1:
            _quarantine(summary, path, good[0], err.issues[0].diagnostics)
            return
    for record in good:  # find the bad one(s); the others go in on their own
        try:
            mapped = _mapping(system, mappings).apply(
                parse_record(_format(system), record.raw).data)
            _transact(store, validator, to_transaction(mapped), summary)
        except FhirError as err:
            _quarantine(summary, path, record, err.issues[0].diagnostics)


def _transact(store: FhirStore, validator: Validator | None, bundle: dict,
              summary: ImportSummary) -> None:
    """One transaction of resources `validator` has passed (so the store's guard, whose
    validator it is, does not check them again); 201 is created, a 200 that changed nothing
    is unchanged: HAPI says so in the entry's outcome (`..._NO_CHANGE`), the embedded store
    by a lastModified from before the transaction was sent."""
    sent = datetime.now(timezone.utc).timestamp()
    answer = store.transaction(bundle, checked_by=validator) if validator else \
        store.transaction(bundle)
    for entry in answer.get("entry", []):
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


def _quarantine(summary: ImportSummary, path: Path, record: Prepared, reason: str) -> None:
    summary.quarantined += 1
    summary.quarantine.append({"file": str(path), "line": record.line,
                               "record_id": record.record_id, "reason": reason,
                               "raw": record.raw.decode("utf-8", "replace")})
