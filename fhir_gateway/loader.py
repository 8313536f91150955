"""Load FHIR files (Bundles, single resources, NDJSON) into a store, streaming.

NDJSON is read line by line and sent as batch Bundles of 100, so memory stays flat and a
bad line fails alone: the store's validation answers each batch entry on its own, and a
failure is reported with its file and line (and optionally written to a quarantine file)
while every other line is stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from fhir_gateway.outcome import FhirError
from fhir_gateway.store.base import FhirStore
from fhir_gateway.validation.structure import check_shape

BATCH = 100


@dataclass
class Problem:
    file: str
    record: str  # "line 12" or "entry 3"
    reason: str
    raw: bytes = b""


@dataclass
class LoadSummary:
    files: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    problems: list[Problem] = field(default_factory=list)

    def count(self, status: str) -> None:
        if status.startswith("201"):
            self.created += 1
        elif status.startswith("2"):
            self.updated += 1


def load_paths(store: FhirStore, paths: list[Path], progress: Callable[[int], None] = lambda n: None
               ) -> LoadSummary:
    """Load every file; `progress` is called with the number of bytes consumed."""
    summary = LoadSummary()
    for path in paths:
        summary.files += 1
        if path.suffix in (".ndjson", ".jsonl"):
            _load_ndjson(store, path, summary, progress)
        else:
            _load_json(store, path, summary)
            progress(path.stat().st_size)
    return summary


def _load_json(store: FhirStore, path: Path, summary: LoadSummary) -> None:
    raw = path.read_bytes()
    try:
        resource = check_shape(orjson.loads(raw))
        if resource["resourceType"] == "Bundle" and resource.get("type") in ("transaction", "batch"):
            run = store.transaction if resource["type"] == "transaction" else store.batch
            result = run(resource)
            for i, entry in enumerate(result.get("entry", [])):
                status = entry["response"]["status"]
                if status.startswith("2"):
                    summary.count(status)
                else:
                    _fail(summary, Problem(str(path), f"entry {i}", _reason(entry)))
            return
        if resource["resourceType"] == "Bundle":
            entries = [e["resource"] for e in resource.get("entry", []) if "resource" in e]
            _send(store, path, [(f"entry {i}", r, b"") for i, r in enumerate(entries)], summary)
            return
        _send(store, path, [("resource", resource, b"")], summary)
    except orjson.JSONDecodeError as exc:
        _fail(summary, Problem(str(path), "file", f"malformed JSON: {exc}", raw[:2000]))
    except FhirError as err:
        _fail(summary, Problem(str(path), "file", err.issues[0].diagnostics))


def _load_ndjson(store: FhirStore, path: Path, summary: LoadSummary,
                 progress: Callable[[int], None]) -> None:
    pending: list[tuple[str, dict, bytes]] = []
    for number, line in _lines(path, progress):
        if not line.strip():
            continue
        try:
            pending.append((f"line {number}", check_shape(orjson.loads(line)), line))
        except orjson.JSONDecodeError as exc:
            _fail(summary, Problem(str(path), f"line {number}", f"malformed JSON: {exc}", line))
        except FhirError as err:
            _fail(summary, Problem(str(path), f"line {number}", err.issues[0].diagnostics, line))
        if len(pending) >= BATCH:
            _send(store, path, pending, summary)
            pending = []
    if pending:
        _send(store, path, pending, summary)


def _lines(path: Path, progress: Callable[[int], None]) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            progress(len(line))
            yield number, line


def _send(store: FhirStore, path: Path, records: list[tuple[str, dict, bytes]],
          summary: LoadSummary) -> None:
    """Store records as one batch: PUT where the record has an id, POST otherwise."""
    entries = []
    for _, resource, _ in records:
        rtype, rid = resource["resourceType"], resource.get("id")
        request = {"method": "PUT", "url": f"{rtype}/{rid}"} if rid else \
            {"method": "POST", "url": rtype}
        entries.append({"resource": resource, "request": request})
    result = store.batch({"resourceType": "Bundle", "type": "batch", "entry": entries})
    for (where, _, raw), entry in zip(records, result["entry"]):
        status = entry["response"]["status"]
        if status.startswith("2"):
            summary.count(status)
        else:
            _fail(summary, Problem(str(path), where, _reason(entry), raw))


def _reason(entry: dict) -> str:
    """The first issue's diagnostics, without the position in our own batch Bundle."""
    issues = entry["response"].get("outcome", {}).get("issue", [])
    if not issues:
        return entry["response"]["status"]
    return re.sub(r"^Bundle\.entry\[\d+\]: ", "", issues[0].get("diagnostics", ""))


def _fail(summary: LoadSummary, problem: Problem) -> None:
    summary.failed += 1
    summary.problems.append(problem)


def write_quarantine(path: Path, problems: list[Problem]) -> None:
    with path.open("ab") as fh:
        for p in problems:
            fh.write(orjson.dumps({"file": p.file, "record": p.record, "reason": p.reason,
                                   "raw": p.raw.decode("utf-8", "replace").rstrip("\n")}) + b"\n")
