"""Quarantine files: the records a load or an import could not store, one JSON object a
line (NDJSON), appended to (a rerun adds its own rows)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from fhir_gateway.formats import fhirjson


def append_row(fh: BinaryIO, row: dict) -> None:
    fh.write(fhirjson.dumps(row) + b"\n")


def write_quarantine(path: Path, rows: Iterable[dict]) -> None:
    with path.open("ab") as fh:
        for row in rows:
            append_row(fh, row)
