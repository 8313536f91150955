"""Label each resource on its way into the store (called by the write guard, the one
place every write passes: REST, transactions, batches, conditional operations, the loader,
the importer, the demo, `$process-message`).

What a written version needs from the version stored before it (its Part 2 labels, its
recorder: `labels.labelled`) is read from the store under the guard, once per unit: a
transaction's updates of one type in one `_id` search, its `identifier`-conditional updates
(the importer's) in one `identifier` search. A store whose updates keep the
earlier versions' tags and security labels themselves (HAPI: `meta_is_additive`) is not
read when no client organization is involved: the loader and importer then cost no more.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from fhir_gateway.auth import context
from fhir_gateway.outcome import FhirError
from fhir_gateway.privacy.labels import labelled
from fhir_gateway.privacy.sud import is_sud
from fhir_gateway.store.base import FhirStore
from fhir_gateway.store.units import Entries

#: ids per `_id` search of stored versions
_CHUNK = 100


def writer() -> tuple[str | None, bool]:
    """(organization of the client writing now, whether the writer is trusted: no client,
    i.e. the operator's own commands, whose files' recorded-by tags are kept)."""
    access = context.access.get()
    return (access.organization if access is not None else None), access is None


def label_one(store: FhirStore, resource: dict, resource_type: str | None = None,
              resource_id: str | None = None) -> dict:
    """The resource of a create (`resource_id` None) or an update, labelled."""
    organization, trusted = writer()
    prior = None
    if resource_id is not None and _needs_prior(store, organization):
        prior = _read(store, resource_type or resource["resourceType"], resource_id)
    return labelled(resource, is_sud(resource), prior, organization, trusted)


def label_entries(store: FhirStore, entries: Entries) -> None:
    """Replace each POST/PUT entry's resource by its labelled version (in place)."""
    organization, trusted = writer()
    writes = [entry for _, entry in entries if isinstance(entry, dict)
              and isinstance(entry.get("resource"), dict)
              and (entry.get("request") or {}).get("method") in ("POST", "PUT")]
    priors = _priors(store, writes) if _needs_prior(store, organization) else {}
    for entry in writes:
        resource = entry["resource"]
        entry["resource"] = labelled(resource, is_sud(resource), priors.get(id(entry)),
                                     organization, trusted)


def label_bundle(store: FhirStore, bundle: dict) -> dict:
    """A transaction Bundle whose entries' resources are labelled (the Bundle is copied)."""
    entries = [(i, dict(e) if isinstance(e, dict) else e)
               for i, e in enumerate(bundle.get("entry") or [])]
    label_entries(store, entries)
    return {**bundle, "entry": [entry for _, entry in entries]}


def _needs_prior(store: FhirStore, organization: str | None) -> bool:
    return organization is not None or not getattr(store, "meta_is_additive", False)


def _priors(store: FhirStore, writes: list[dict]) -> dict[int, dict]:
    """The stored version each PUT entry replaces, by id() of the entry."""
    by_id: dict[str, dict[str, list[dict]]] = {}
    by_identifier: dict[str, dict[str, list[dict]]] = {}
    found: dict[int, dict] = {}
    for entry in writes:
        request = entry["request"]
        if request.get("method") != "PUT" or not isinstance(request.get("url"), str):
            continue
        url = urlsplit(request["url"])
        parts = url.path.strip("/").split("/")
        criteria = parse_qsl(url.query, keep_blank_values=True)
        if _one_identifier(criteria):
            by_identifier.setdefault(parts[0], {}).setdefault(criteria[0][1], []).append(entry)
        elif url.query:
            prior = _match(store, parts[0], criteria)
            if prior is not None:
                found[id(entry)] = prior
        elif len(parts) == 2:
            by_id.setdefault(parts[0], {}).setdefault(parts[1], []).append(entry)
    for resource_type, wanted in by_id.items():
        ids = sorted(wanted)
        for start in range(0, len(ids), _CHUNK):
            for stored in _stored(store, resource_type, ids[start:start + _CHUNK]):
                for entry in wanted.get(stored.get("id"), ()):
                    found[id(entry)] = stored
    for resource_type, wanted in by_identifier.items():
        found.update(_identified(store, resource_type, wanted))
    return found


def _one_identifier(criteria: list[tuple[str, str]]) -> bool:
    """Criteria that are one `identifier=system|value`, system given, no escapes (what the
    importer sends)."""
    if len(criteria) != 1 or criteria[0][0] != "identifier":
        return False
    system, bar, value = criteria[0][1].partition("|")
    return bool(system and bar and value) and not any(c in criteria[0][1] for c in ",\\$")


def _identified(store: FhirStore, resource_type: str, wanted: dict[str, list[dict]]
                ) -> dict[int, dict]:
    """The stored resource each `identifier=system|value` entry replaces, by id() of the
    entry: one search per chunk of identifiers; a token matching several stored resources
    gives none (the store's commit refuses that update itself)."""
    tokens, found = sorted(wanted), {}
    for start in range(0, len(tokens), _CHUNK):
        chunk = tokens[start:start + _CHUNK]
        try:
            matches = store.search(resource_type, [("identifier", ",".join(chunk)),
                                                   ("_count", str(2 * len(chunk)))]).matches
        except FhirError:
            matches = []
        owners: dict[str, list[dict]] = {}
        for stored in matches:
            for ident in stored.get("identifier") or ():
                if isinstance(ident, dict):
                    owners.setdefault(f"{ident.get('system')}|{ident.get('value')}".lower(),
                                      []).append(stored)
        for token in chunk:
            owner = owners.get(token.lower(), [])
            if len(owner) > 1:  # told apart by case only: ask the store itself
                prior = _match(store, resource_type, [("identifier", token)])
                owner = [prior] if prior is not None else []
            for entry in wanted[token] if owner else ():
                found[id(entry)] = owner[0]
    return found


def _stored(store: FhirStore, resource_type: str, ids: list[str]) -> list[dict]:
    if len(ids) == 1:
        prior = _read(store, resource_type, ids[0])
        return [prior] if prior is not None else []
    try:
        return store.search(resource_type, [("_id", ",".join(ids)),
                                            ("_count", str(len(ids)))]).matches
    except FhirError:
        return [p for p in (_read(store, resource_type, i) for i in ids) if p is not None]


def _read(store: FhirStore, resource_type: str, resource_id: str) -> dict | None:
    try:
        return store.read(resource_type, resource_id)
    except FhirError as err:
        if err.status in (400, 404, 410):
            return None  # nothing stored (or not readable as such): a create
        raise


def _match(store: FhirStore, resource_type: str, criteria: list[tuple[str, str]]
           ) -> dict | None:
    """The one resource a conditional update's criteria find (None: none, several, or
    criteria the store refuses: its own commit answers those)."""
    try:
        found = store.search(resource_type, [*criteria, ("_count", "2")]).matches
    except FhirError:
        return None
    return found[0] if len(found) == 1 else None
