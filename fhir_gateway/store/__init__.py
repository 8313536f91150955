"""Open the store named by a URL: `sqlite:///path/file.db` or `http(s)://host/fhir`."""

from __future__ import annotations

from fhir_gateway.store.base import FhirStore


class StoreURLError(ValueError):
    pass


def open_store(url: str) -> FhirStore:
    if url.startswith("sqlite://"):
        from fhir_gateway.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://")  # sqlite:///abs/file.db or sqlite://rel/file.db
        if path in ("", "/"):
            raise StoreURLError(f"Store URL '{url}' names no file: use sqlite:///path/to/file.db")
        return SQLiteStore(path)
    if url.startswith(("http://", "https://")):
        raise StoreURLError(
            f"Store '{url}': an HTTP FHIR server (HAPI) as the store is not supported yet; "
            "use sqlite:///path/to/file.db")
    raise StoreURLError(f"Unknown store URL '{url}': expected sqlite:///path/to/file.db or "
                        "http(s)://host/fhir")
