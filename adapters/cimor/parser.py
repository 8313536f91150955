"""Streaming parser of the CIMOR consumer extract (format: README.md, cimor.xsd)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fhir_gateway.adapters import common
from fhir_gateway.adapters.byte_ranges import parse_file
from fhir_gateway.adapters.common import ExtractFormat, SourceRecord

NAMESPACE = "urn:mo-dmh:cimor:extract:1"

FORMAT = ExtractFormat(
    system="cimor",
    namespace=NAMESPACE,
    root="CimorExtract",
    record="Consumer",
    id_element="ConsumerId",
    # Every maxOccurs > 1 of cimor.xsd (a test keeps this in step with the schema).
    repeating=frozenset({"Episodes/Episode", "Programs/Program", "Diagnoses/Diagnosis"}),
    xsd=Path(__file__).with_name("cimor.xsd"),
)


def parse(path: str | Path) -> Iterator[SourceRecord]:
    """One SourceRecord per <Consumer>; raises MalformedExtract after the last complete one."""
    return parse_file(FORMAT, path)


def parse_bytes(data: bytes) -> Iterator[SourceRecord]:
    """The same, for an extract in memory (a lookup answer)."""
    return common.parse_bytes(FORMAT, data)
