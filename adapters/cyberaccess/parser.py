"""Streaming parser of the CyberAccess participant extract (format: README.md, cyberaccess.xsd)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fhir_gateway.adapters import common
from fhir_gateway.adapters.byte_ranges import parse_file
from fhir_gateway.adapters.common import ExtractFormat, SourceRecord

NAMESPACE = "urn:mo-healthnet:cyberaccess:extract:1"

FORMAT = ExtractFormat(
    system="cyberaccess",
    namespace=NAMESPACE,
    root="CyberAccessExtract",
    record="Participant",
    id_element="DCN",
    # Every maxOccurs > 1 of cyberaccess.xsd (a test keeps this in step with the schema).
    repeating=frozenset({"Eligibility/Segment", "Claims/Claim", "ServiceLines/Line",
                         "Diagnoses/Code"}),
    xsd=Path(__file__).with_name("cyberaccess.xsd"),
)


def parse(path: str | Path) -> Iterator[SourceRecord]:
    """One SourceRecord per <Participant>; raises MalformedExtract after the last complete one."""
    return parse_file(FORMAT, path)


def parse_bytes(data: bytes) -> Iterator[SourceRecord]:
    """The same, for an extract in memory (a lookup answer)."""
    return common.parse_bytes(FORMAT, data)
