"""Load FHIR files (NDJSON, Bundles, single resources) into a store, streaming.

What a user hands us is usually a Bulk Data export: one NDJSON file per type, whose records
point at each other (`Observation.subject` -> `Patient/...`) in an order no file name
promises. So a load runs in two passes over the files:

1. **Scan**: every record's `Type/id` and which types refer to which. Only those ids stay
   in memory, never the records.
2. **Load**: files in dependency order (a type before the types that refer to it), records
   in chunks of `CHUNK`. A record that refers to a record of the load not yet stored
   waits in a spool file on disk and is tried again after the pass; records that wait for
   each other (a cycle) are finally stored together in one transaction. A reference that
   resolves neither in the load nor in the store is the store's to refuse, and the
   record is reported with its own file, line and reason.

A chunk goes as one transaction (one commit); if the store refuses it, the same chunk
goes again as a batch, which answers each record on its own: the bad one is reported (and
quarantined), the others are stored. So `created + updated + failed` is the number of
records read, and the store holds exactly what is reported as stored.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import orjson

from fhir_gateway.formats import fhirjson
from fhir_gateway.outcome import FhirError, missing_target, missing_target_in
from fhir_gateway.quarantine import append_row
from fhir_gateway.search import values
from fhir_gateway.store.base import FhirStore
from fhir_gateway.validation.service import check_shape

CHUNK = 100
#: records that wait for each other are stored together, up to this many at once
CYCLE_GROUP = 1000
#: problems kept in memory for the report; all of them go to the quarantine file
SHOWN = 1000
NDJSON = (".ndjson", ".jsonl")

Progress = Callable[[str, int], None]  # (phase, bytes read)


@dataclass
class Problem:
    file: str
    record: str  # "line 12", "entry 3", "file"
    reason: str
    raw: bytes = b""


@dataclass
class LoadSummary:
    files: int = 0
    records: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    problems: list[Problem] = field(default_factory=list)  # the first SHOWN

    def count(self, status: str) -> None:
        if status.startswith("201"):
            self.created += 1
        else:
            self.updated += 1


@dataclass
class _Record:
    file: str
    where: str
    resource: dict
    raw: bytes

    @cached_property
    def targets(self) -> set[str]:
        """The `Type/id` of every relative reference in the resource (its own excepted):
        walked once, read at every step of the load."""
        return _targets(self.resource)


def scan_size(paths: list[Path]) -> int:
    """Bytes `load_paths` reads, for a progress bar: each file once per pass."""
    return 2 * sum(p.stat().st_size for p in paths)


def load_paths(store: FhirStore, paths: list[Path], progress: Progress = lambda phase, n: None,
               quarantine: Path | None = None) -> LoadSummary:
    """Load every file; failed records are reported (and appended to `quarantine`)."""
    with _Load(store, quarantine) as load:
        order = load.scan(paths, progress)
        for path in order:
            load.summary.files += 1
            load.file(path, progress)
        load.drain()
        return load.summary


class _Load:
    def __init__(self, store: FhirStore, quarantine: Path | None):
        self.store = store
        self.summary = LoadSummary()
        self.known: set[str] = set()  # Type/id of every record of the load
        self.sent: set[str] = set()  # ... and of those already sent to the store
        self.absent: set[str] = set()  # Type/id the store refused or does not hold
        self.refers: dict[str, set[str]] = {}  # type -> the types its records refer to
        self.pending: list[_Record] = []
        self.pending_ids: set[str] = set()
        self.spool = tempfile.TemporaryFile()
        self.waiting = 0
        self.quarantine = quarantine.open("ab") if quarantine else None

    def __enter__(self) -> _Load:
        return self

    def __exit__(self, *exc) -> None:
        self.spool.close()
        if self.quarantine:
            self.quarantine.close()

    # -- pass 1 -------------------------------------------------------------------------
    def scan(self, paths: list[Path], progress: Progress) -> list[Path]:
        """Note every record's id and references; the files in dependency order."""
        first_type: dict[Path, str] = {}
        for path in paths:
            for record in _records(path, lambda n: progress("scan", n), quiet=True):
                if isinstance(record, _Record):
                    rtype = record.resource["resourceType"]
                    first_type.setdefault(path, rtype)
                    if isinstance(rid := record.resource.get("id"), str):
                        self.known.add(f"{rtype}/{rid}")
                    self.refers.setdefault(rtype, set()).update(
                        t.partition("/")[0] for t in record.targets)
        rank = {rtype: i for i, rtype in enumerate(_dependency_order(self.refers))}
        return sorted(paths, key=lambda p: rank.get(first_type.get(p, ""), -1))

    # -- pass 2 -------------------------------------------------------------------------
    def file(self, path: Path, progress: Progress) -> None:
        for record in _records(path, lambda n: progress("load", n)):
            if isinstance(record, _Bundle):
                self.bundle(record)
                continue
            self.summary.records += 1
            if isinstance(record, Problem):
                self.fail(record)
            else:
                self.offer(record)

    def offer(self, record: _Record) -> None:
        """Queue the record, or spool it while a record it refers to is still to come."""
        targets = record.targets
        if any(t in self.known and t not in self.sent and t not in self.pending_ids
               for t in targets):
            self.spool.write(fhirjson.dumps([record.file, record.where,
                                           record.raw.decode("utf-8", "replace")]) + b"\n")
            self.waiting += 1
            return
        if self.pending_ids & targets:  # stored in an earlier chunk, not in the same one
            self.flush()
        self.pending.append(record)
        if ident := _ident(record):
            self.pending_ids.add(ident)
        if len(self.pending) >= CHUNK:
            self.flush()

    def drain(self) -> None:
        """Offer the spooled records again while that stores any; what is left then waits
        for each other (a cycle) and is stored together (`store_together`)."""
        self.flush()
        while self.waiting:
            before = self.waiting
            spool, self.spool, self.waiting = self.spool, tempfile.TemporaryFile(), 0
            with spool:
                for record in self._spooled(spool):  # streamed: the spool stays on disk
                    self.offer(record)
            self.flush()
            if self.waiting == before:  # none could go: they wait for each other
                waited = list(self._spooled(self.spool))  # only a cycle's records are held
                self.spool.close()
                self.spool, self.waiting = tempfile.TemporaryFile(), 0
                for start in range(0, len(waited), CYCLE_GROUP):
                    self.store_together(waited[start:start + CYCLE_GROUP])

    def _spooled(self, spool) -> Iterator[_Record]:
        spool.seek(0)
        for line in spool:
            file, where, raw = fhirjson.loads(line)
            yield _Record(file, where, fhirjson.loads(raw), raw.encode())

    def flush(self) -> None:
        """Store the queued records: one transaction; a batch if the store refuses it."""
        records, self.pending, self.pending_ids = self.pending, [], set()
        if records:
            self.sent.update(filter(None, map(_ident, records)))
            answers = self._store(records)
            for record, answer in zip(records, answers, strict=True):
                self.answer(record, answer)

    def store_together(self, group: list[_Record]) -> None:
        """Records that refer to each other: one transaction, so that the store sees them
        all at its commit. What they refer to outside the group is looked up first (a
        store names one missing reference per record, not always the cause). If the store
        refuses, a batch says which record is bad; those whose only fault was a partner of
        the group not yet stored go again, together."""
        inside = set(filter(None, map(_ident, group)))
        outside = {t for r in group for t in r.targets} - inside - self.sent
        self.absent.update(t for t in sorted(outside) if not self._stored(t))
        self.sent |= inside
        while group := self._without_absent_targets(group):
            answers = self._store(group)
            again = []
            for record, answer in zip(group, answers, strict=True):
                missing = missing_target_in(_reason(answer)) if not _ok(answer) else None
                if missing and missing in self.known and missing not in self.absent \
                        and len(group) > 1:
                    again.append(record)
                else:
                    self.answer(record, answer)
            if len(again) == len(group):  # no partner got stored: nothing will change
                for record, answer in zip(group, answers):
                    self.answer(record, answer)
                return
            group = again

    def _without_absent_targets(self, group: list[_Record]) -> list[_Record]:
        """The group less the records that refer to what the store does not hold (named as
        the store would name it), and so on, for as long as that refuses more."""
        while doomed := [r for r in group if r.targets & self.absent]:
            for record in doomed:
                missing = sorted(record.targets & self.absent)[0]
                path = values.reference_path(record.resource, *missing.split("/"))
                self.refuse(record, missing_target(missing, path).issues[0].diagnostics)
            group = [r for r in group if all(r is not d for d in doomed)]
        return group

    def _stored(self, target: str) -> bool:
        try:
            self.store.read(*target.split("/"))
        except FhirError as err:
            if err.status in (404, 410):
                return False
            raise
        return True

    def _store(self, records: list[_Record]) -> list[dict]:
        entries = [_entry(r.resource) for r in records]
        try:
            return self.store.transaction(_bundle("transaction", entries))["entry"]
        except FhirError:
            return self.store.batch(_bundle("batch", entries))["entry"]

    def answer(self, record: _Record, answer: dict) -> None:
        if _ok(answer):
            self.summary.count(answer["response"]["status"])
        else:
            self.refuse(record, _reason(answer))

    def refuse(self, record: _Record, reason: str) -> None:
        if ident := _ident(record):
            self.absent.add(ident)
        self.fail(Problem(record.file, record.where, reason, record.raw))

    def bundle(self, record: _Bundle) -> None:
        """A transaction or batch Bundle goes as the user wrote it; its entries are its
        records."""
        self.flush()
        self.summary.records += len(record.bundle.get("entry") or [])
        try:
            run = self.store.transaction if record.bundle["type"] == "transaction" \
                else self.store.batch
            answers = run(record.bundle).get("entry", [])
        except FhirError as err:  # a transaction fails whole: each of its entries failed
            for i, _ in enumerate(record.bundle.get("entry") or []):
                self.fail(Problem(record.file, f"entry {i}", err.issues[0].diagnostics))
            return
        for i, answer in enumerate(answers):
            self.answer(_Record(record.file, f"entry {i}", {}, b""), answer)

    def fail(self, problem: Problem) -> None:
        self.summary.failed += 1
        if len(self.summary.problems) < SHOWN:
            self.summary.problems.append(problem)
        if self.quarantine:
            append_row(self.quarantine, {
                "file": problem.file, "record": problem.record, "reason": problem.reason,
                "raw": problem.raw.decode("utf-8", "replace").rstrip("\n")})


@dataclass
class _Bundle:
    file: str
    bundle: dict


def _records(path: Path, progress: Callable[[int], None], quiet: bool = False
             ) -> Iterator[_Record | _Bundle | Problem]:
    """The file's records, each with its position; what cannot be read is a Problem."""
    name = str(path)
    if path.suffix in NDJSON:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                progress(len(line))
                if line.strip():
                    yield _parse(name, f"line {number}", line.rstrip(b"\r\n"), quiet)
        return
    raw = path.read_bytes()
    progress(len(raw))
    parsed = _parse(name, "file", raw, quiet)
    if not isinstance(parsed, _Record) or parsed.resource["resourceType"] != "Bundle":
        yield parsed
    elif parsed.resource.get("type") in ("transaction", "batch"):
        yield _Bundle(name, parsed.resource)
    else:  # a collection, searchset, ...: its resources are the records
        for i, entry in enumerate(parsed.resource.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is not None:
                yield _checked(name, f"entry {i}", resource,
                               b"" if quiet else fhirjson.dumps(resource), quiet)


def _parse(file: str, where: str, raw: bytes, quiet: bool) -> _Record | Problem | None:
    try:
        resource = fhirjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Problem(file, where, f"malformed JSON: {exc}", raw)
    return _checked(file, where, resource, raw, quiet)


def _checked(file: str, where: str, resource: object, raw: bytes, quiet: bool
             ) -> _Record | Problem | None:
    if quiet:  # the scan only needs ids and references; the load pass reports problems
        return _Record(file, where, resource, raw) if isinstance(resource, dict) and \
            isinstance(resource.get("resourceType"), str) else None
    try:
        return _Record(file, where, check_shape(resource), raw)
    except FhirError as err:
        return Problem(file, where, err.issues[0].diagnostics, raw)


def _targets(resource: dict) -> set[str]:
    found = set()
    stack: list = [resource]
    while stack:
        node = stack.pop()
        if node.__class__ is dict:
            if node.get("reference").__class__ is str:
                found.update(f"{t}/{i}" for _, t, i in values.references([node]) if t)
            stack.extend(v for v in node.values() if v.__class__ in (dict, list))
        elif node.__class__ is list:
            stack.extend(v for v in node if v.__class__ in (dict, list))
    found.discard(f"{resource.get('resourceType')}/{resource.get('id')}")
    return found


def _dependency_order(refers: dict[str, set[str]]) -> list[str]:
    """Types, each after the types it refers to (a cycle is cut where it is met)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(rtype: str) -> None:
        seen.add(rtype)
        for target in sorted(refers.get(rtype, ())):
            if target not in seen:
                visit(target)
        order.append(rtype)

    for rtype in refers:
        if rtype not in seen:
            visit(rtype)
    return order


def _ident(record: _Record) -> str | None:
    rid = record.resource.get("id")
    return f"{record.resource['resourceType']}/{rid}" if isinstance(rid, str) else None


def _ok(answer: dict) -> bool:
    return answer["response"]["status"].startswith("2")


def _entry(resource: dict) -> dict:
    """PUT where the record has an id (a reload changes nothing), POST otherwise."""
    rtype, rid = resource["resourceType"], resource.get("id")
    request = {"method": "PUT", "url": f"{rtype}/{rid}"} if rid else \
        {"method": "POST", "url": rtype}
    return {"resource": resource, "request": request}


def _bundle(kind: str, entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _reason(entry: dict) -> str:
    """The first issue's diagnostics, without the position in our own batch Bundle."""
    issues = entry["response"].get("outcome", {}).get("issue", [])
    if not issues:
        return entry["response"]["status"]
    return re.sub(r"^Bundle\.entry\[\d+\]: ", "", issues[0].get("diagnostics", ""))
