"""Validation, one service: every path that judges a resource asks a `Validator`.

The store guard (`guard.py`) before each write, `$validate` and `fhir-gateway validate` for
a report, the importer's workers before they build a transaction: so a resource gets the
same verdict wherever it comes in. A validator runs, in order:

- the structure checks (`structure.py`): valid R4 JSON, else 400;
- the profiles of its IG package (`profiles.py`, `conformance.py`) that the resource claims
  in `meta.profile` (others are not ours to judge); by configuration, every resource of a
  profiled type is held to its type's profiles too (it must meet one of them); errors 422;
- the checks registered with it (`ResourceCheck`): rules the profiles cannot say, owned by
  the code that knows them (the Health Home ones: `healthhome/checks.py`).

`check` remembers verdicts per canonical form (`canonical.py`, `reads.py`): an import writes
thousands of resources that differ only in values no check reads. A form that fails is not
reused: the resource then gets the full checks, and so exactly their errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from fhir_gateway.formats import fhirjson
from fhir_gateway.outcome import FhirError, Issue
from fhir_gateway.validation.canonical import canonical_key
from fhir_gateway.validation.conformance import prepare, validate
from fhir_gateway.validation.profiles import Conformance
from fhir_gateway.validation.reads import EMPTY, FULL, Mark, Reads, merge, profile_reads
from fhir_gateway.validation.structure import check_resource, check_shape, check_update_id

__all__ = ["ResourceCheck", "StoreCheck", "Validator", "check_shape", "check_update_id", "errors",
           "load_validator"]

ERRORS = ("error", "fatal")
_CLAIMS = Reads({"meta": Reads({"profile": FULL})})  # what `claimed` reads


@dataclass(frozen=True)
class ResourceCheck:
    """A rule beyond the profiles, run on resources of one type that claim a profile of the
    package. `issues(resource, package_dir)` gives its issues; `reads` says what it reads of
    the resource, so that the verdict cache keeps those values (see `reads.py`).

    Two checks with the same type and function are the same check (`reads` follows from
    them): so a copy sent to another process finds the validator already built there."""

    resource_type: str
    reads: Reads | Mark = field(compare=False)
    issues: Callable[[dict, str | None], list[Issue]]


@dataclass(frozen=True)
class StoreCheck:
    """A rule about how a resource of one type fits what the store holds (a claim's
    services, a month already billed): `check(store, resource, unit)` raises the FhirError
    that refuses the write; `unit` holds the resources written with it (a transaction's,
    keyed by fullUrl and Type/id). Run by the validating store after the checks above, on
    every write of that type; never cached."""

    resource_type: str
    check: Callable[[object, dict, dict[str, dict]], None]


class Validator:
    """Structure, the IG package's profiles and the registered checks, with a verdict cache.

    Built by `load_validator` (once per configuration and process); it travels to another
    process by value and is rebuilt there the same way.
    """

    def __init__(self, package_dir: str | None = None, all_of_profiled_types: bool = False,
                 checks: tuple[ResourceCheck, ...] = (), store_checks: tuple[StoreCheck, ...] = ()):
        self.package_dir = package_dir
        self.all_of_profiled_types = all_of_profiled_types
        self.checks = checks
        self.store_checks = store_checks
        self.conformance: Conformance | None = None
        if package_dir and (Path(package_dir) / "package.json").is_file():
            self.conformance = Conformance.load(package_dir)
            prepare(self.conformance)  # compile every profile now, not on the first write
        self._reads: dict[tuple, Reads | Mark] = {}
        self._passes = lru_cache(maxsize=2048)(self._form_passes)  # bounded: imports stay flat
        #: the exact JSON of resources that passed: a canonical key costs 20-40x writing the
        #: JSON, and the resources a message repeats (its Organization, Location,
        #: Practitioner) and those checked twice (by a caller, then by the store's guard)
        #: come back byte for byte
        self._exact_passes: dict[bytes, bool] = {}
        # fhirpathpy keeps evaluation state in module globals: one profile run at a time
        self._lock = threading.Lock()

    def __reduce__(self):
        return load_validator, (self.package_dir, self.all_of_profiled_types, self.checks,
                                self.store_checks)

    # -- the interface ---------------------------------------------------------------------
    def check_with(self, store: object, resource: dict, unit: dict[str, dict] | None = None
                   ) -> None:
        """The store checks of the resource's type (after `check` passed it)."""
        for rule in self.store_checks:
            if rule.resource_type == resource.get("resourceType"):
                rule.check(store, resource, unit or {})

    def check(self, resource: object, expected_type: str | None = None) -> dict:
        """The resource, if it passes; else the FhirError of the full checks of it (400 for
        structure, 422 for profiles and checks). A resource whose canonical form passed
        before passes without them."""
        resource = check_shape(resource, expected_type)
        exact = _exact_form(resource)
        if exact is not None and exact in self._exact_passes:
            return resource  # this very JSON passed: what a message's repeated parts hit
        key = canonical_key(resource, self.reads(resource))
        if key is None or not self._passes(key):
            self._full_check(resource)
        if exact is not None:
            if len(self._exact_passes) >= EXACT_PASSES:
                self._exact_passes.clear()  # bounded, and cheaper than an LRU's bookkeeping
            self._exact_passes[exact] = True
        return resource

    def validate(self, resource: dict, profile: str | None = None) -> list[Issue]:
        """Every issue, warnings too: the structure's, else those of `profile` or of the
        profiles and checks that apply. What `$validate` reports; never cached."""
        try:
            check_resource(resource)
        except FhirError as err:
            return err.issues
        with self._lock:
            return self._issues(resource, profile)

    def profiles_for_type(self, resource_type: str) -> list[str]:
        return self.conformance.profiles_for_type(resource_type) if self.conformance else []

    def _claimed(self, resource: dict) -> list[str]:
        """The package's profiles among those the resource claims."""
        urls = [p.split("|")[0] for p in (resource.get("meta") or {}).get("profile", [])]
        return [u for u in urls if self.conformance.structure_definition(u) is not None]

    def reads(self, resource: dict) -> Reads | Mark:
        """What the profile checks and registered checks read of the resource (`reads.py`),
        by resource type and claimed profiles. Everything, while `meta.profile` is
        malformed: that is for the structure checks to report."""
        if self.conformance is None:
            return EMPTY
        meta = resource.get("meta") or {}
        profiles = meta.get("profile", []) if isinstance(meta, dict) else None
        if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
            return FULL
        key = (resource["resourceType"], tuple(self._claimed(resource)))
        if key not in self._reads:
            self._reads[key] = self._reads_of(*key)
        return self._reads[key]

    # -- the parts -------------------------------------------------------------------------
    def _full_check(self, resource: dict) -> None:
        check_resource(resource)
        with self._lock:
            problems = errors(self._issues(resource, None))
        if problems:
            raise FhirError(422, problems[0].diagnostics, issues=problems)

    def _form_passes(self, key: bytes) -> bool:
        """Whether a canonical form passes the full checks."""
        try:
            self._full_check(fhirjson.loads(key))
        except Exception:  # noqa: BLE001 - the resource's own full checks then say what is wrong
            return False
        return True

    def _reads_of(self, resource_type: str, claimed: tuple[str, ...]) -> Reads | Mark:
        """Mirrors `_issues`: the claimed profiles and the checks, or the type's profiles."""
        reads = _CLAIMS
        for check in self._checks_for(resource_type) if claimed else ():
            reads = merge(reads, check.reads)
        urls = claimed or (self.conformance.profiles_for_type(resource_type)
                           if self.all_of_profiled_types else ())
        for url in urls:
            reads = merge(reads, profile_reads(self.conformance, url))
        return reads

    def _issues(self, resource: dict, profile: str | None) -> list[Issue]:
        if profile:
            return self._against(resource, profile)
        if self.conformance is None:
            return []
        claimed = self._claimed(resource)
        if claimed:
            found = [i for url in claimed for i in validate(resource, url, self.conformance)]
            return found + [i for check in self._checks_for(resource["resourceType"])
                            for i in check.issues(resource, self.package_dir)]
        if not self.all_of_profiled_types:
            return []
        candidates = self.conformance.profiles_for_type(resource["resourceType"])
        verdicts = [validate(resource, url, self.conformance) for url in candidates]
        return min(verdicts, key=lambda issues: len(errors(issues))) if verdicts else []

    def _against(self, resource: dict, profile: str) -> list[Issue]:
        """Issues against the one profile `$validate` names."""
        if self.conformance is None or not self.conformance.structure_definition(profile):
            why = "" if self.conformance else " (no IG package loaded)"
            return [Issue(f"Profile {profile} is not known to this server{why}", "not-found",
                          "error", ["Parameters.profile"])]
        return validate(resource, profile, self.conformance)

    def _checks_for(self, resource_type: str) -> list[ResourceCheck]:
        return [c for c in self.checks if c.resource_type == resource_type]


#: resources whose exact JSON is remembered as passed (small ones: see `_exact_form`)
EXACT_PASSES = 4096
_EXACT_MAX = 16384  # bytes: larger resources are rare enough to go the canonical way


def _exact_form(resource: dict) -> bytes | None:
    try:
        form = fhirjson.dumps(resource)
    except TypeError:  # deeper than orjson writes: the canonical way says why
        return None
    return form if len(form) <= _EXACT_MAX else None


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity in ERRORS]


@cache
def load_validator(package_dir: str | None = None, all_of_profiled_types: bool = False,
                   checks: tuple[ResourceCheck, ...] = (), store_checks: tuple[StoreCheck, ...] = ()
                   ) -> Validator:
    """The validator for an IG package directory (the folder holding package.json; without
    one, structure only), built once per configuration and process."""
    return Validator(package_dir, all_of_profiled_types, checks, store_checks)
