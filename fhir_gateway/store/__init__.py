"""Open the store named by a URL: `sqlite:///path/file.db` or `http(s)://host/fhir`."""

from __future__ import annotations

from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.store.base import FhirStore, StoreURLError


def open_store(url: str, profiles: str = DEFAULT_PROFILES, validate_all: bool = False
               ) -> FhirStore:
    """The store behind `url`, wrapped so that every write is validated first (against the
    IG package `profiles`; with `validate_all`, every resource of a profiled type) and
    followed by its Health Home follow-ups (`guarded`)."""
    from fhir_gateway.healthhome.checks import health_home_validator

    return guarded(_open(url), health_home_validator(profiles, validate_all))


def guarded(inner: FhirStore, validator) -> FhirStore:
    """`inner` as every caller gets it: each write validated (`ValidatingStore`), then its
    Health Home follow-ups written with it (`FollowUpStore`: transitional care), and the
    writes that change enrollments counted (`EnrollmentWatch`: member lists' freshness)."""
    from fhir_gateway.store.followups import FollowUpStore
    from fhir_gateway.store.watch import EnrollmentWatch
    from fhir_gateway.validation.guard import ValidatingStore

    return ValidatingStore(FollowUpStore(EnrollmentWatch(inner)), validator)


def backend(store: FhirStore) -> FhirStore:
    """The store under its wrappers (the SQLite file's or HAPI's)."""
    while "inner" in vars(store):
        store = store.inner
    return store


def _open(url: str) -> FhirStore:
    if url.startswith("sqlite://"):
        from fhir_gateway.store.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url))
    if url.startswith(("http://", "https://")):
        from fhir_gateway.store.hapi import HapiStore

        return HapiStore(url)
    raise StoreURLError(f"Unknown store URL '{url}': expected sqlite:///path/to/file.db or "
                        "http(s)://host/fhir")


def sqlite_path(url: str) -> str:
    """The file of `sqlite:///abs/file.db` (or `sqlite://rel/file.db`)."""
    path = url.removeprefix("sqlite://")
    if not url.startswith("sqlite://") or path in ("", "/"):
        raise StoreURLError(f"Store URL '{url}' names no file: use sqlite:///path/to/file.db")
    return path
