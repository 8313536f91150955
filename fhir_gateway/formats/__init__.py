"""Wire formats other than FHIR JSON (FHIR XML)."""
