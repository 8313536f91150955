"""The store contract: what the gateway needs from any FHIR store.

Two implementations honour it — the embedded SQLite store and (over HTTP) HAPI FHIR — and
one contract test suite runs on both. Errors are `FhirError`s carrying the HTTP status a
FHIR server would answer with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from fhir_gateway.outcome import FhirError, Issue


class StoreURLError(ValueError):
    """The store a URL names cannot be opened as it is (the message says what to do)."""


@dataclass
class Written:
    """Result of a create/update: the stored resource and 201 (created) or 200."""

    resource: dict
    status: int

    @property
    def created(self) -> bool:
        return self.status == 201


@dataclass
class SearchResult:
    matches: list[dict]
    total: int | None
    count: int
    offset: int
    included: list[dict] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] = field(default_factory=list)
    #: with `total` None (what a client may see was sorted out after the store counted):
    #: whether a next page may hold more
    more: bool = False


@dataclass
class StoredResource:
    """A resource exactly as the store sent it, with its version headers (pass-through)."""

    content: bytes
    etag: str | None
    last_modified: str | None


@dataclass
class StoredSearchset:
    """A store's own searchset, for the gateway to pass through unparsed.

    `entries` is the Bundle's tail from `,"entry":[` as the store wrote it ("" for no
    entries); their fullUrls start with `store_base`. The head (links, id) is the gateway's.
    """

    entries: bytes
    store_base: str
    total: int | None
    count: int
    offset: int


@dataclass
class HistoryEntry:
    resource_type: str
    id: str
    version: int
    last_updated: str
    method: str  # POST, PUT or DELETE
    resource: dict | None


@dataclass
class HistoryResult:
    entries: list[HistoryEntry]
    total: int | None
    count: int
    offset: int
    more: bool = False  # as `SearchResult.more`


class FhirStore(Protocol):
    def create(self, resource: dict, if_none_exist: str | None = None) -> Written: ...

    def read(self, resource_type: str, resource_id: str) -> dict: ...

    def vread(self, resource_type: str, resource_id: str, version: str) -> dict: ...

    def update(self, resource_type: str, resource_id: str, resource: dict,
               if_match: str | None = None) -> Written: ...

    def conditional_update(self, resource_type: str, criteria: list[tuple[str, str]],
                           resource: dict) -> Written: ...

    def delete(self, resource_type: str, resource_id: str) -> None: ...

    def conditional_delete(self, resource_type: str, criteria: list[tuple[str, str]]) -> None: ...

    def search(self, resource_type: str, params: list[tuple[str, str]],
               strict: bool = False) -> SearchResult: ...

    def history(self, resource_type: str | None = None, resource_id: str | None = None,
                since: str | None = None, count: int = 20, offset: int = 0) -> HistoryResult: ...

    def commit(self, entries: list[tuple[int | None, dict]], representation: bool = False
               ) -> list[dict]:
        """Bundle entries (index, entry) as one atomic unit, one answer per entry: the one
        write primitive that transactions, batches and conditional operations run on
        (`units.py`)."""
        ...

    def transaction(self, bundle: dict) -> dict: ...

    def batch(self, bundle: dict) -> dict: ...

    def is_empty(self) -> bool: ...

    def close(self) -> None: ...


class PassThroughStore(FhirStore, Protocol):
    """A store that can hand over its answers as bytes (HAPI over HTTP): reading and
    re-serialising them costs time in front of a server that already wrote them."""

    def read_raw(self, resource_type: str, resource_id: str) -> StoredResource: ...

    def vread_raw(self, resource_type: str, resource_id: str, version: str
                  ) -> StoredResource: ...

    def search_raw(self, resource_type: str, params: list[tuple[str, str]],
                   strict: bool = False) -> StoredSearchset | SearchResult: ...


def version_number(resource_type: str, resource_id: str, version: str) -> int:
    """A vread's version as a number; 404 for what no store could have written (HAPI
    answers 500 to a version beyond 64 bits, SQLite cannot bind one)."""
    if not (version.isascii() and version.isdigit() and len(version) <= 18):
        raise FhirError(404, f"Version {version[:40]} of {resource_type}/{resource_id} is not "
                             "known", "not-found")
    return int(version)


def one_match(ids: list[str], resource_type: str, what: str) -> str | None:
    """The one id a conditional operation found, None for none; 412 for several."""
    if len(ids) > 1:
        raise FhirError(412, f"The {what} criteria match more than one {resource_type}",
                        "duplicate", what)
    return ids[0] if ids else None
