"""Write one export's NDJSON files, a page at a time: memory stays flat whatever the size.

Each type is read through the store contract's search (so both stores export the same
way), sorted by id and paged by offset. What was written after the transaction time is
left out here, by its `meta.lastUpdated`, not by a `_lastUpdated=le` criterion (which
cost the embedded store six times the scan: bench/export_bench.py); a resource created
meanwhile that shifts the pages is not written twice (each page skips the previous page's
ids), one deleted meanwhile may cost another its place. `_since` adds `_lastUpdated=ge`, each `_typeFilter` search is run in turn (a resource
matched by two is written once: only the ids of such a type are remembered). A search the
store refuses is an OperationOutcome in the error file, not the end of the export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from fhir_gateway.export.request import ExportRequest
from fhir_gateway.formats import fhirjson
from fhir_gateway.outcome import FhirError
from fhir_gateway.search.dates import parse_range

#: the test an exported resource passes (`scope.py` makes it)
Keep = Callable[[dict], bool]

ERROR_FILE = "OperationOutcome.error.ndjson"


class Cancelled(Exception):
    """The job was cancelled (DELETE) or the gateway is stopping: stop between pages."""


@dataclass
class Written:
    outputs: list[dict] = field(default_factory=list)  # {type, file, count}
    errors: list[dict] = field(default_factory=list)   # {type: OperationOutcome, file, count}


def export(store, request: ExportRequest, transaction_time: str, folder: Path, *,
           keep: Keep | None, page_size: int, progress: Callable[[str], None],
           stop: Callable[[], bool]) -> Written:
    """Write `folder/<Type>.ndjson` for each type with resources; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    written, problems, total = Written(), [], 0
    for number, resource_type in enumerate(request.types, 1):
        path = folder / f"{resource_type}.ndjson"
        count = 0
        with path.open("wb") as out:
            for resource in _resources(store, request, resource_type, transaction_time,
                                       page_size, problems, stop):
                if keep is None or keep(resource):
                    out.write(fhirjson.dumps(resource) + b"\n")
                    count += 1
                    if count % page_size == 0:
                        progress(f"{resource_type} (type {number} of {len(request.types)}): "
                                 f"{count} resources; {total + count} in all")
        total += count
        if count:
            written.outputs.append({"type": resource_type, "file": path.name, "count": count})
        else:
            path.unlink()
        progress(f"{resource_type} done (type {number} of {len(request.types)}); "
                 f"{total} resources in all")
    if problems:
        (folder / ERROR_FILE).write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in problems))
        written.errors.append({"type": "OperationOutcome", "file": ERROR_FILE,
                               "count": len(problems)})
    return written


def _resources(store, request: ExportRequest, resource_type: str, transaction_time: str,
               page_size: int, problems: list[dict], stop: Callable[[], bool]):
    bounds = [("_lastUpdated", f"ge{request.since}")] if request.since else []
    until = parse_range(transaction_time)[1]
    searches = request.type_filters.get(resource_type) or [[]]
    seen: set[str] | None = set() if len(searches) > 1 else None
    for criteria in searches:
        try:
            for resource in scan(store, resource_type, [*criteria, *bounds], page_size, stop):
                if _updated(resource) >= until:
                    continue
                if seen is not None:
                    if resource["id"] in seen:
                        continue
                    seen.add(resource["id"])
                yield resource
        except FhirError as err:
            if err.status >= 500:
                raise
            problems.append(_problem(err, resource_type, criteria))


def scan(store, resource_type: str, criteria: list[tuple[str, str]], page_size: int,
         stop: Callable[[], bool] = lambda: False):
    """Every match of a search, page by page (sorted by id, offset paging). Stops at the
    first empty page: a store may answer fewer than `_count` per page."""
    offset, previous = 0, set()
    while True:
        if stop():
            raise Cancelled()
        page = store.search(resource_type, [*criteria, ("_sort", "_id"),
                                            ("_count", str(page_size)),
                                            ("_offset", str(offset))], strict=True)
        if not page.matches:
            return
        yield from (r for r in page.matches if r.get("id") not in previous)
        previous = {r.get("id") for r in page.matches}
        offset += len(page.matches)
        if page.total is not None and offset >= page.total:
            return


def _updated(resource: dict) -> float:
    """When the resource was last written (epoch seconds; 0 when the store said nothing)."""
    found = parse_range((resource.get("meta") or {}).get("lastUpdated") or "")
    return found[0] if found else 0.0


def _problem(err: FhirError, resource_type: str, criteria: list[tuple[str, str]]) -> dict:
    outcome = dict(err.outcome)
    search = "&".join(f"{k}={v}" for k, v in criteria if k != "_lastUpdated") or "(all)"
    issue = dict(outcome["issue"][0])
    issue["diagnostics"] = f"{resource_type}?{search}: {issue.get('diagnostics', '')}"
    outcome["issue"] = [issue]
    return outcome
