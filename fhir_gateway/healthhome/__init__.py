"""Health Home domain rules, plain functions over FHIR data, and the workflows that apply
them over the store contract (`services.py`): no HTTP routes, no SQL."""
