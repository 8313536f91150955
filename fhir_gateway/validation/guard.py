"""Validation on write, in front of any store.

Every path that writes — REST, bundles, the loader, the demo, the importer — goes through a
store, so wrapping the store is the one place where validation cannot be skipped. It also
gives both stores the same verdicts: HAPI's parser silently drops unknown elements, the
gateway refuses them with the path of the problem. The verdicts are the validation
service's (`service.py`). In a batch, an invalid entry gets its own error and the valid
ones are still stored. Being the one place, it also labels what it lets through for 42 CFR
Part 2 (`privacy/write.py`): what is stored is the labelled resource.
"""

from __future__ import annotations

from fhir_gateway import bundle as bundles
from fhir_gateway.outcome import FhirError
from fhir_gateway.privacy.write import label_bundle, label_entries, label_one
from fhir_gateway.store.base import FhirStore, Written
from fhir_gateway.store.units import BundleOperations, Entries
from fhir_gateway.validation.service import Validator


class ValidatingStore(BundleOperations):
    """A FhirStore that has its validator check each incoming resource, then delegates.

    Bundles and conditional operations (`BundleOperations`) reach the inner store through
    `commit` only, which checks every entry's resource: so a batch's invalid entry gets its
    own error while the others are stored, and nothing can write past the checks."""

    def __init__(self, inner: FhirStore, validator: Validator):
        self.inner = inner
        self.validator = validator

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # reads, search, history, delete, close, ...

    def create(self, resource: dict, if_none_exist: str | None = None) -> Written:
        if if_none_exist:
            return self.conditional_create(resource, if_none_exist)
        return self.inner.create(label_one(self.inner, self._checked(resource)))

    def update(self, resource_type: str, resource_id: str, resource: dict,
               if_match: str | None = None) -> Written:
        checked = self._checked(resource, resource_type)
        return self.inner.update(resource_type, resource_id,
                                 label_one(self.inner, checked, resource_type, resource_id),
                                 if_match)

    def _checked(self, resource: dict, resource_type: str | None = None,
                 unit: dict[str, dict] | None = None) -> dict:
        resource = self.validator.check(resource, resource_type)
        self.validator.check_with(self.inner, resource, unit)
        return resource

    def commit(self, entries: Entries, representation: bool = False) -> list[dict]:
        unit = _unit(entries) if len(entries) > 1 else None
        for index, entry in entries:
            if "resource" in entry:
                try:
                    self._checked(entry["resource"], unit=unit)
                except FhirError as err:
                    raise bundles.at_entry(err, index) from None
        label_entries(self.inner, entries)
        return self.inner.commit(entries, representation)

    def transaction(self, bundle: dict, checked_by: Validator | None = None) -> dict:
        """`checked_by`: the validator that has already passed every entry's resource. When
        it is this store's own (the importer's workers run it, rebuilt in their processes,
        before they build the Bundle), the entries are not checked twice (but labelled)."""
        if checked_by is self.validator:
            return self.inner.transaction(label_bundle(self.inner, bundle))
        return super().transaction(bundle)


def _unit(entries: Entries) -> dict[str, dict]:
    """The resources of a unit by what references among them use, fullUrl and Type/id, and
    each by its entry (`Bundle.entry[n]`), so that none is left out."""
    unit = {}
    for n, (_, entry) in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        unit[f"Bundle.entry[{n}]"] = resource
        if isinstance(entry.get("fullUrl"), str):
            unit[entry["fullUrl"]] = resource
        if isinstance(resource.get("id"), str):
            unit[f"{resource.get('resourceType')}/{resource['id']}"] = resource
    return unit
