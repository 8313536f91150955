"""Batch eligibility: every member of an NDJSON or Bundle file (or the store), one report row
per member and program.

Resources are grouped by the member they belong to (the Patient itself, or what refers to
it as subject / patient / beneficiary), then each group is evaluated on its own. An NDJSON
file that keeps each member's lines together (as per-member exports and our own tools write
it) streams: chunks of lines are judged in worker processes, memory stays flat and the
report keeps the file's order. A file in any other order (per-type sections, e.g. bulk
`$export` files concatenated) is noticed (`MembersInterleaved`) and grouped in memory
instead.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from functools import partial
from itertools import islice
from pathlib import Path

import orjson

from fhir_gateway.formats import fhirjson
from fhir_gateway.healthhome.eligibility import EligibilityInputError, RuleFiles, evaluate

OWNER_KEYS = ("subject", "patient", "beneficiary")
COLUMNS = ("patient", "state", "program", "eligible", "rule", "basis", "categories", "error")
CHUNK = 5_000  # NDJSON lines per unit of work: big enough to outweigh the hand-off


class MembersInterleaved(Exception):
    """The NDJSON file does not keep each member's resources together."""

    def __init__(self, line: int, owner: str):
        super().__init__(line, owner)  # both in args: it crosses from a worker process
        self.line, self.owner = line, owner

    def __str__(self) -> str:
        return f"line {self.line}: {self.owner} appears again after other members' resources"


# ------------------------------------------------------------------ grouping


def _owner(resource: dict) -> str:
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource.get('id', '')}"
    for key in OWNER_KEYS:
        value = resource.get(key)
        ref = value.get("reference", "") if isinstance(value, dict) else ""
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return ""


def _parse(line: bytes, number: int) -> dict | str:
    """The resource on a line, or an error text naming the line."""
    try:
        resource = fhirjson.loads(line)
    except orjson.JSONDecodeError as err:
        return f"line {number}: not JSON ({err})"
    return resource if isinstance(resource, dict) else f"line {number}: not a JSON object"


def members_from_ndjson(path: Path) -> Iterator[list[dict]]:
    """Each member's resources from an NDJSON file in any order (held in memory)."""
    with path.open("rb") as fh:
        parsed = (_parse(line, number) for number, line in enumerate(fh, 1) if line.strip())
        groups = _by_owner(r for r in parsed if isinstance(r, dict))
    yield from groups


def members_from_bundle(path: Path) -> Iterator[list[dict]]:
    """Each member's resources from a Bundle file (a collection, searchset or transaction)."""
    try:
        bundle = fhirjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValueError(f"{path}: not a Bundle (an NDJSON file should end in .ndjson)")
    resources = ((entry or {}).get("resource") for entry in bundle.get("entry") or [])
    yield from _by_owner(r for r in resources if isinstance(r, dict))


def _by_owner(resources: Iterable[dict]) -> list[list[dict]]:
    """Resources grouped by member, in order of first appearance; nobody's are dropped."""
    groups: dict[str, list[dict]] = {}
    for resource in resources:
        groups.setdefault(_owner(resource), []).append(resource)
    groups.pop("", None)
    return list(groups.values())


# ------------------------------------------------------------------ judging


def member_rows(resources: list[dict], state: str | None, as_of: date | None,
                files: RuleFiles = RuleFiles()) -> list[dict]:
    """One row per program for one member (or one error row if the member cannot be judged)."""
    patient = next((r.get("id", "") for r in resources if r.get("resourceType") == "Patient"),
                   "")
    try:
        result = evaluate(resources, state, as_of, files=files)
    except EligibilityInputError as err:
        return [{"patient": patient, "error": str(err)}]
    categories = " ".join(result.categories)
    return [{"patient": patient, "state": result.state, "program": v.code,
             "eligible": v.eligible, "rule": v.rule, "basis": " ".join(v.basis),
             "categories": categories} for v in result.programs]


def rows(members: Iterable[list[dict]], state: str | None, as_of: date | None,
         files: RuleFiles = RuleFiles()) -> Iterator[dict]:
    """Report rows for members already grouped (the store, a Bundle, an unordered file)."""
    for resources in members:
        yield from member_rows(resources, state, as_of, files)


def _run_rows(run: tuple[str, list, int], judge) -> list[dict]:
    owner, resources, _ = run
    if not owner:  # a line that is not a resource
        return [{"patient": "", "error": resources[0]}]
    return judge(resources)


def _judge_chunk(lines: list[bytes], first_line: int, judge):
    """Worker: (first run, rows of the inner runs as JSON, inner runs' owners and lines,
    last run). Rows travel as JSON: between processes, far cheaper than pickled dicts.
    `judge`: `member_rows` with the state, date and rule files bound.

    A run is one owner's consecutive lines, (owner, resources, line); a line that is not a
    resource is a run of its own, ("", [error], line). The first and last runs come back
    unjudged: they may continue in the neighbouring chunks. Inner runs are judged as soon as
    they end, so a chunk never holds more than one member's resources.
    """
    first = run = None
    rows: list[dict] = []
    inner: list[tuple[str, int]] = []
    seen: set[str] = set()

    def end(run) -> None:
        nonlocal first
        if run[0] in seen:
            raise MembersInterleaved(run[2], run[0])
        if run[0]:
            seen.add(run[0])
        if first is None:
            first = run
        else:
            inner.append((run[0], run[2]))
            rows.extend(_run_rows(run, judge))

    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        resource = _parse(line, number)
        if isinstance(resource, str):
            if run:
                end(run)
            run = ("", [resource], number)
            continue
        owner = _owner(resource)
        if not owner:
            continue  # Organizations, Practitioners...: nobody's facts
        if run and run[0] == owner:
            run[1].append(resource)
            continue
        if run:
            end(run)
        run = (owner, [resource], number)
    if run and run[0] in seen:
        raise MembersInterleaved(run[2], run[0])
    if first is None:
        return run, b"[]", [], None
    return first, fhirjson.dumps(rows), inner, run


def _chunks(path: Path) -> Iterator[tuple[list[bytes], int]]:
    with path.open("rb") as fh:
        first = 1
        while lines := list(islice(fh, CHUNK)):
            yield lines, first
            first += len(lines)


class _Stitcher:
    """Joins runs cut by chunk boundaries and notices a member seen twice."""

    def __init__(self, judge):
        self.judge = judge
        self.seen: set[str] = set()
        self.open: tuple[str, list, int] | None = None  # the last run so far: it may go on

    def mark(self, owner: str, line: int) -> None:
        if owner:
            if owner in self.seen:
                raise MembersInterleaved(line, owner)
            self.seen.add(owner)

    def close(self) -> list[dict]:
        run, self.open = self.open, None
        if run is None:
            return []
        self.mark(run[0], run[2])
        return _run_rows(run, self.judge)

    def add(self, result) -> list[dict]:
        first, inner_rows, inner_owners, last = result
        out = []
        if first:
            if self.open and first[0] and first[0] == self.open[0]:
                self.open[1].extend(first[1])
            else:
                out += self.close()
                self.open = first
        if last:
            out += self.close()
            for owner, line in inner_owners:
                self.mark(owner, line)
            out += fhirjson.loads(inner_rows)
            self.open = last
        return out


def rows_from_ndjson(path: Path, state: str | None, as_of: date | None,
                     workers: int | None = None, files: RuleFiles = RuleFiles()
                     ) -> Iterator[dict]:
    """Report rows for an NDJSON file whose members' lines are together, in file order.

    Raises `MembersInterleaved` (possibly after some rows) when they are not together: the
    caller then starts over with `rows(members_from_ndjson(path), ...)`.
    """
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    judge = partial(member_rows, state=state, as_of=as_of, files=files)
    stitcher = _Stitcher(judge)
    with ProcessPoolExecutor(workers) as pool:
        in_flight: deque = deque()
        for lines, first in _chunks(path):
            in_flight.append(pool.submit(_judge_chunk, lines, first, judge))
            if len(in_flight) >= 2 * workers:  # bounded: memory stays flat
                yield from stitcher.add(in_flight.popleft().result())
        while in_flight:
            yield from stitcher.add(in_flight.popleft().result())
    yield from stitcher.close()
