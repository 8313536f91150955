"""CyberAccess (MO HealthNet) participant extract: format, parser, lookup."""

from fhir_gateway.adapters.cyberaccess.parser import FORMAT, parse, parse_bytes

__all__ = ["FORMAT", "parse", "parse_bytes"]
