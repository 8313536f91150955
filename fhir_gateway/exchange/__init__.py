"""Exchange with the health information exchanges (KHIN, LACIE): FHIR messages in."""
