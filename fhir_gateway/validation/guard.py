"""Validation on write, in front of any store.

Every path that writes — REST, bundles, the loader, the demo, later the adapters — goes
through a store, so wrapping the store is the one place where validation cannot be
skipped. It also gives both stores the same verdicts: HAPI's parser silently drops unknown
elements, the gateway refuses them with the path of the problem. Structure errors are 400;
a resource that breaks one of our profiles is 422. In a batch, an invalid entry gets its
own error and the valid ones are still stored.

An import writes thousands of resources that differ only in values no check reads, so a
verdict is remembered for the resource's canonical form (`canonical.py`) and shared. An
error is always that of the full checks of the resource itself.
"""

from __future__ import annotations

from functools import lru_cache

import orjson

from fhir_gateway import bundle as bundles
from fhir_gateway.outcome import FhirError
from fhir_gateway.store.base import FhirStore, Written
from fhir_gateway.validation.canonical import canonical_key
from fhir_gateway.validation.reads import EMPTY
from fhir_gateway.validation.rules import ProfileRules, errors
from fhir_gateway.validation.structure import check_resource, check_shape


class ValidatingStore:
    """A FhirStore that checks each incoming resource, then delegates."""

    def __init__(self, inner: FhirStore, rules: ProfileRules | None = None):
        self.inner = inner
        self.rules = rules

    def check(self, resource: object, expected_type: str | None = None) -> dict:
        """The resource, if it passes; else the FhirError of the full checks of it.

        A resource whose canonical form (`canonical.py`) passed before passes without
        them: an import repeats the same few forms thousands of times.
        """
        resource = check_shape(resource, expected_type)
        key = canonical_key(resource, self.rules.reads(resource) if self.rules else EMPTY)
        if key is None or not _passes(self.rules, key):
            _check(resource, self.rules)
        return resource

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # reads, search, history, delete, close, ...

    def create(self, resource: dict, if_none_exist: str | None = None) -> Written:
        return self.inner.create(self.check(resource), if_none_exist)

    def update(self, resource_type: str, resource_id: str, resource: dict,
               if_match: str | None = None) -> Written:
        return self.inner.update(resource_type, resource_id, self.check(resource, resource_type),
                                 if_match)

    def conditional_update(self, resource_type: str, criteria: list[tuple[str, str]],
                           resource: dict) -> Written:
        return self.inner.conditional_update(resource_type, criteria,
                                             self.check(resource, resource_type))

    def transaction(self, bundle: dict) -> dict:
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
                self.check(entry["resource"])
            except FhirError as err:
                raise bundles.at_entry(err, index) from None


def _check(resource: dict, rules: ProfileRules | None) -> None:
    """The full checks: structure (400), then the profiles (422)."""
    check_resource(resource)
    if rules is not None:
        problems = errors(rules.issues(resource))
        if problems:
            raise FhirError(422, problems[0].diagnostics, issues=problems)


@lru_cache(maxsize=2048)
def _passes(rules: ProfileRules | None, key: bytes) -> bool:
    """Whether a canonical form passes the full checks; bounded, so a long import stays flat."""
    try:
        _check(orjson.loads(key), rules)
    except Exception:  # noqa: BLE001 - the resource's own full checks then say what is wrong
        return False
    return True


def _entries(bundle: dict) -> list:
    entries = bundle.get("entry") or []
    return entries if isinstance(entries, list) else []
