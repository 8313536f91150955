"""Validation on write, in front of any store.

Every path that writes — REST, bundles, the loader, the demo, the importer — goes through a
store, so wrapping the store is the one place where validation cannot be skipped. It also
gives both stores the same verdicts: HAPI's parser silently drops unknown elements, the
gateway refuses them with the path of the problem. The verdicts are the validation
service's (`service.py`). In a batch, an invalid entry gets its own error and the valid
ones are still stored.
"""

from __future__ import annotations

from fhir_gateway import bundle as bundles
from fhir_gateway.outcome import FhirError
from fhir_gateway.store.base import FhirStore, Written
from fhir_gateway.validation.service import Validator


class ValidatingStore:
    """A FhirStore that has its validator check each incoming resource, then delegates."""

    def __init__(self, inner: FhirStore, validator: Validator):
        self.inner = inner
        self.validator = validator

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # reads, search, history, delete, close, ...

    def create(self, resource: dict, if_none_exist: str | None = None) -> Written:
        return self.inner.create(self.validator.check(resource), if_none_exist)

    def update(self, resource_type: str, resource_id: str, resource: dict,
               if_match: str | None = None) -> Written:
        return self.inner.update(resource_type, resource_id,
                                 self.validator.check(resource, resource_type), if_match)

    def conditional_update(self, resource_type: str, criteria: list[tuple[str, str]],
                           resource: dict) -> Written:
        return self.inner.conditional_update(resource_type, criteria,
                                             self.validator.check(resource, resource_type))

    def transaction(self, bundle: dict, checked_by: Validator | None = None) -> dict:
        """`checked_by`: the validator that has already passed every entry's resource. When
        it is this store's own (the importer's workers run it, rebuilt in their processes,
        before they build the Bundle), the entries are not checked twice."""
        if checked_by is not self.validator:
            for index, entry in enumerate(_entries(bundle)):
                self._check_entry(index, entry)
        return self.inner.transaction(bundle)

    def batch(self, bundle: dict) -> dict:
        entries = _entries(bundle)
        failed: dict[int, dict] = {}
        for index, entry in enumerate(entries):
            try:
                self._check_entry(index, entry)
            except FhirError as err:
                failed[index] = {"response": {"status": bundles.status_line(err.status),
                                              "outcome": err.outcome}}
        if not failed:
            return self.inner.batch(bundle)
        valid = [e for i, e in enumerate(entries) if i not in failed]
        answered = iter(self.inner.batch({**bundle, "entry": valid}).get("entry", [])
                        if valid else [])
        merged = [failed[i] if i in failed else next(answered) for i in range(len(entries))]
        return bundles.response_bundle("batch-response", merged)

    def _check_entry(self, index: int, entry: object) -> None:
        if isinstance(entry, dict) and "resource" in entry:
            try:
                self.validator.check(entry["resource"])
            except FhirError as err:
                raise bundles.at_entry(err, index) from None


def _entries(bundle: dict) -> list:
    entries = bundle.get("entry") or []
    return entries if isinstance(entries, list) else []
