"""Health Home domain rules: plain functions over FHIR data, no HTTP, no SQL."""
