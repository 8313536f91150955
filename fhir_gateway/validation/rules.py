"""Which of our profiles a resource must meet, and the verdict.

A resource is held to the profiles it claims in `meta.profile` (those the IG package
defines; others are not ours to judge). By configuration, every resource of a profiled type
is held to its type's profiles too: it must meet at least one of them.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

from fhir_gateway.healthhome.categories import category_issues
from fhir_gateway.outcome import FhirError, Issue
from fhir_gateway.validation.conformance import prepare, validate
from fhir_gateway.validation.profiles import Conformance
from fhir_gateway.validation.reads import FULL, Mark, Reads, merge, profile_reads
from fhir_gateway.validation.structure import check_resource

ERRORS = ("error", "fatal")
# `claimed` reads meta.profile; `category_issues` reads a Condition's codes and categories
_CLAIMS = Reads({"meta": Reads({"profile": FULL})})
_CONCEPT_MAP_READS = Reads({"code": FULL, "category": FULL})


class ProfileRules:
    def __init__(self, conformance: Conformance, all_of_profiled_types: bool = False,
                 package_dir: str | None = None):
        self.conformance = conformance
        self.all_of_profiled_types = all_of_profiled_types
        self.package_dir = package_dir
        # fhirpathpy keeps evaluation state in module globals: one validation at a time
        self._lock = threading.Lock()

    def claimed(self, resource: dict) -> list[str]:
        urls = [p.split("|")[0] for p in (resource.get("meta") or {}).get("profile", [])]
        return [u for u in urls if self.conformance.structure_definition(u) is not None]

    def reads(self, resource: dict) -> Reads | Mark:
        """What `issues(resource)` reads of the resource (see `reads.py`); per package, by
        resource type and claimed profiles. Everything, while `meta.profile` is malformed:
        that is for the structure checks to report."""
        meta = resource.get("meta") or {}
        profiles = meta.get("profile", []) if isinstance(meta, dict) else None
        if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
            return FULL
        claimed = tuple(self.claimed(resource))
        key = (resource["resourceType"], claimed)
        memo = self.conformance.memo.setdefault("resource-reads", {})
        if key not in memo:
            memo[key] = self._reads(*key)
        return memo[key]

    def _reads(self, resource_type: str, claimed: tuple[str, ...]) -> Reads | Mark:
        """Mirrors `_issues`: the claimed profiles (and the ConceptMap), or the type's."""
        reads = _CLAIMS
        if claimed and resource_type == "Condition":
            reads = merge(reads, _CONCEPT_MAP_READS)
        urls = claimed or (self.conformance.profiles_for_type(resource_type)
                           if self.all_of_profiled_types else ())
        for url in urls:
            reads = merge(reads, profile_reads(self.conformance, url))
        return reads

    def issues(self, resource: dict, profile: str | None = None) -> list[Issue]:
        """Issues against `profile`, or against the profiles that apply to the resource."""
        with self._lock:
            return self._issues(resource, profile)

    def _issues(self, resource: dict, profile: str | None) -> list[Issue]:
        if profile:
            if self.conformance.structure_definition(profile) is None:
                return [Issue(f"Profile {profile} is not known to this server", "not-found",
                              "error", ["Parameters.profile"])]
            return validate(resource, profile, self.conformance)
        claimed = self.claimed(resource)
        if claimed:
            found = [i for url in claimed for i in validate(resource, url, self.conformance)]
            if resource["resourceType"] == "Condition":  # the IG's ConceptMap, as data
                found += category_issues(resource, self.package_dir)
            return found
        if not self.all_of_profiled_types:
            return []
        candidates = self.conformance.profiles_for_type(resource["resourceType"])
        verdicts = [validate(resource, url, self.conformance) for url in candidates]
        if not verdicts:
            return []
        return min(verdicts, key=lambda issues: sum(i.severity in ERRORS for i in issues))


def assess(resource: dict, rules: ProfileRules | None, profile: str | None = None) -> list[Issue]:
    """Everything wrong with a resource (structure, then profiles), as `$validate` reports it."""
    try:
        check_resource(resource)
    except FhirError as err:
        return err.issues
    if rules is None:
        if profile:
            return [Issue(f"Profile {profile} is not known to this server (no IG package "
                          "loaded)", "not-found", "error", ["Parameters.profile"])]
        return []
    return rules.issues(resource, profile)


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity in ERRORS]


@cache
def load_rules(package_dir: str, all_of_profiled_types: bool) -> ProfileRules | None:
    """The rules for an IG package directory (the folder holding package.json), if present."""
    path = Path(package_dir)
    if not (path / "package.json").is_file():
        return None
    conformance = Conformance.load(path)
    prepare(conformance)  # compile every profile now, not on the first write
    return ProfileRules(conformance, all_of_profiled_types, str(path))
