"""Source-system adapters: CIMOR (Missouri DMH) and CyberAccess (MO HealthNet).

Neither system has a public API, so each adapter defines a documented XML extract format
(`<system>/README.md`, `<system>/<system>.xsd`), a streaming parser producing the
`SourceRecord`s of `RECORDS.md`, a lookup simulator and its HTTP client.
`synth.py` writes matching synthetic extracts for both systems.
"""

from fhir_gateway.adapters.common import MalformedExtract, SourceRecord, SourceUnavailable

__all__ = ["MalformedExtract", "SourceRecord", "SourceUnavailable"]
