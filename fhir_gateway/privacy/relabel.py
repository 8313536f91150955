"""Label the SUD resources a store holds from before labelling on write existed (or from
before `part2.yaml` listed their codes): `fhir-gateway relabel`.

It streams each labelled type page by page (sorted by id) and rewrites only the resources
whose labels would change: the resource as stored, its meta (recorder included) kept, the
two labels added. The rewrite goes to the store under its wrappers: the content is what was
validated when it was written (a profile changed since must not stop the labelling), and
it is no new clinical write for the Health Home follow-ups. Running it again changes
nothing. Works on both stores.
"""

from __future__ import annotations

from collections.abc import Callable

from fhir_gateway.export.writer import scan
from fhir_gateway.outcome import FhirError
from fhir_gateway.privacy.labels import labelled
from fhir_gateway.privacy.sud import is_sud, rules
from fhir_gateway.store import backend
from fhir_gateway.store.base import FhirStore

PAGE = 500


def labelled_types() -> tuple[str, ...]:
    """The resource types `part2.yaml` reads codes of."""
    return tuple(rules().elements)


def count(store: FhirStore) -> int:
    """How many resources relabelling looks at (for a progress bar)."""
    return sum(store.search(t, [("_summary", "count")]).total or 0 for t in labelled_types())


def relabel(store: FhirStore, advance: Callable[[int], None] = lambda n: None) -> int:
    """Label every SUD resource of `store` that lacks its labels; the number rewritten."""
    changed, raw = 0, backend(store)
    for resource_type in labelled_types():
        for resource in scan(store, resource_type, [], PAGE):
            changed += relabel_one(raw, resource)
            advance(1)
    return changed


def relabel_one(raw: FhirStore, resource: dict, attempts: int = 3) -> int:
    """Rewrite one resource with its labels if they change it (1) or not (0). The write is
    conditional on the version read (If-Match): a client's write in between is never undone;
    the version it made is read and labelled in turn."""
    for _ in range(attempts):
        relabelled = labelled(resource, is_sud(resource), None, None, True)
        if relabelled is resource:
            return 0
        version = (resource.get("meta") or {}).get("versionId")
        try:
            raw.update(resource["resourceType"], resource["id"], relabelled,
                       f'W/"{version}"' if version else None)
            return 1
        except FhirError as err:
            if err.status not in (409, 412):
                raise
            resource = raw.read(resource["resourceType"], resource["id"])
    raise FhirError(409, f"{resource['resourceType']}/{resource['id']} kept changing while it "
                         "was relabelled: run relabel again", "conflict")
