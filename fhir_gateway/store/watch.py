"""Knowing cheaply that who-is-whose-member may have changed.

A Health Home client's member list (`auth/audience.py`) is one EpisodeOfCare search; made
for every request it would cost a store round trip each time. `EnrollmentWatch` sits under
the other wrappers and counts the writes through this gateway that touch an
EpisodeOfCare, so a member list computed before the count moved is known to be stale.
Writes that reach the store some other way (another process, HAPI directly) are not
counted: a cached list also expires after `members_cache_seconds`.
"""

from __future__ import annotations

from fhir_gateway.store.base import FhirStore, Written
from fhir_gateway.store.units import Entries

WATCHED = "EpisodeOfCare"


class EnrollmentWatch:
    def __init__(self, inner: FhirStore):
        self.inner = inner
        self.changes = 0
        #: what readers computed from the enrollments: key -> (changes then, when, value)
        self.derived: dict[str, tuple[int, float, object]] = {}

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # reads, search, history, close, ...

    def _after(self, touched: bool) -> None:
        if touched:
            self.changes += 1

    def create(self, resource: dict, if_none_exist: str | None = None) -> Written:
        try:
            return self.inner.create(resource, if_none_exist)
        finally:
            self._after(resource.get("resourceType") == WATCHED)

    def update(self, resource_type: str, resource_id: str, resource: dict,
               if_match: str | None = None) -> Written:
        try:
            return self.inner.update(resource_type, resource_id, resource, if_match)
        finally:
            self._after(resource_type == WATCHED)

    def conditional_update(self, resource_type: str, criteria, resource: dict) -> Written:
        try:
            return self.inner.conditional_update(resource_type, criteria, resource)
        finally:
            self._after(resource_type == WATCHED)

    def delete(self, resource_type: str, resource_id: str) -> None:
        try:
            self.inner.delete(resource_type, resource_id)
        finally:
            self._after(resource_type == WATCHED)

    def conditional_delete(self, resource_type: str, criteria) -> None:
        try:
            self.inner.conditional_delete(resource_type, criteria)
        finally:
            self._after(resource_type == WATCHED)

    def commit(self, entries: Entries, representation: bool = False) -> list[dict]:
        try:
            return self.inner.commit(entries, representation)
        finally:
            self._after(any(_touches(entry) for _, entry in entries))

    def transaction(self, bundle: dict) -> dict:
        try:
            return self.inner.transaction(bundle)
        finally:
            self._after(any(_touches(e) for e in bundle.get("entry") or []))

    def batch(self, bundle: dict) -> dict:
        try:
            return self.inner.batch(bundle)
        finally:
            self._after(any(_touches(e) for e in bundle.get("entry") or []))


def _touches(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    resource = entry.get("resource")
    request = entry.get("request")
    return (isinstance(resource, dict) and resource.get("resourceType") == WATCHED) or (
        isinstance(request, dict) and str(request.get("url", "")).startswith(WATCHED))


def watch_of(store) -> EnrollmentWatch | None:
    """The `EnrollmentWatch` under `store`'s wrappers (None: not watched)."""
    while store is not None:
        if isinstance(store, EnrollmentWatch):
            return store
        store = vars(store).get("inner")
    return None
