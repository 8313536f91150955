"""CIMOR (Missouri Department of Mental Health) consumer extract: format, parser, lookup."""

from fhir_gateway.adapters.cimor.parser import FORMAT, parse, parse_bytes

__all__ = ["FORMAT", "parse", "parse_bytes"]
