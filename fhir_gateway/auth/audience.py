"""Which members' data one client may see and write: per-Health-Home access.

A client registered with an organization (a Health Home) sees the members it has enrolled
(an EpisodeOfCare of a Health Home program managed by it, in any period: a former member's
record stays with the Health Home that cared for them), the data about them, and the shared
directory and conformance data of `members.yaml`. It may write about its members and about
people no Health Home has enrolled yet (a new member before `$enroll`); about another Health
Home's member, never. A client without an organization (state, MCO, HIE) sees all its scopes
allow.

"The data about a member" is decided the same way for a read and for a search: the type's
member parameter (`patient`, `subject`, ... per `members.yaml`) names the member. Searches
push that down to the store as one more criterion (`context.Limit`), so totals and pages
count only what the client may see.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl

import yaml

from fhir_gateway.auth.access import UNRESTRICTED, Access, Forbidden
from fhir_gateway.auth.context import Limit
from fhir_gateway.export.compartments import patient_id, patients_of
from fhir_gateway.identifiers import CANONICAL_BASE, HH_PROGRAM
from fhir_gateway.privacy.consent import (
    DISCLOSE,
    WITHHOLD,
    disclosable,
    is_part2,
    part2_consenting_patients,
)
from fhir_gateway.privacy.labels import PART2
from fhir_gateway.privacy.sud import is_sud
from fhir_gateway.search.registry import params_for
from fhir_gateway.store.watch import watch_of

LAYOUT = Path(__file__).with_name("members.yaml")
#: the tag that names the organization whose client created an `owned` resource
OWNER = f"{CANONICAL_BASE}/CodeSystem/owner"
_PAGE = 1000


@dataclass(frozen=True)
class Layout:
    member_params: tuple[str, ...]
    overrides: dict[str, str]
    shared: frozenset[str]
    owned: frozenset[str]


@cache
def layout() -> Layout:
    data = yaml.safe_load(LAYOUT.read_text())
    return Layout(tuple(data["member_params"]), dict(data.get("member_param_overrides") or {}),
                  frozenset(data["shared"]), frozenset(data["owned"]))


@cache
def member_param(resource_type: str) -> str | None:
    """The search parameter naming the member a resource of this type is about (`_id` for
    a Patient); None for a type that is about no member."""
    if resource_type == "Patient":
        return "_id"
    known = params_for(resource_type)
    code = layout().overrides.get(resource_type)
    if code:
        return code
    return next((c for c in layout().member_params
                 if c in known and "Patient" in (known[c].targets or ())), None)


def members_named(resource: dict) -> set[str]:
    """The ids of the Patients the resource's member parameter references."""
    resource_type = resource.get("resourceType", "")
    code = member_param(resource_type)
    if code is None:
        return set()
    if code == "_id":
        return {resource["id"]} if resource.get("id") else set()
    param = params_for(resource_type)[code]
    return {p for p in map(patient_id, param.extract(resource) if param.extract else ()) if p}


def owner(resource: dict) -> str | None:
    return next((t.get("code") for t in (resource.get("meta") or {}).get("tag", [])
                 if isinstance(t, dict) and t.get("system") == OWNER), None)


def with_owner(resource: dict, organization: str | None) -> dict:
    """The resource tagged as created by `organization` (any owner tag it came with is
    replaced: a client cannot give its Subscription to another Health Home)."""
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if not (isinstance(t, dict) and t.get("system") == OWNER)]
    if organization:
        tags.append({"system": OWNER, "code": organization})
    if tags:
        meta["tag"] = tags
    else:
        meta.pop("tag", None)
    return {**resource, "meta": meta} if meta else {k: v for k, v in resource.items() if k != "meta"}


def part2_for(access: Access, unaffiliated: str | None) -> str | None:
    """`Audience.part2` for a client: the setting, but None (sees all) with auth off."""
    return None if access is UNRESTRICTED else unaffiliated


@dataclass
class Audience:
    """One client's view of one store, made per request. The unrestricted `store` is read
    to learn who the client's members are (`members`: reused between requests until this
    gateway writes an enrollment) and which patients consented to Part 2 disclosure to it
    (`discloses`: read per request, so a new Consent counts at once)."""

    store: object
    organization: str | None
    #: how long a member list computed for an earlier request may serve (0: never); it is
    #: computed again at once after this gateway wrote an EpisodeOfCare (`store/watch.py`)
    cache_seconds: float = 0.0
    #: 42 CFR Part 2 data for a client without organization (`Settings.part2_unaffiliated`);
    #: None: the client sees everything (FHIR_GATEWAY_AUTH=off)
    part2: str | None = WITHHOLD
    admitted: set[str] = field(default_factory=set)  # `$enroll`: the member-to-be
    _members: frozenset[str] | None = None
    _consenting: frozenset[str] | None = None

    @classmethod
    def of(cls, store, access: Access, cache_seconds: float = 0.0,
           part2: str | None = WITHHOLD) -> Audience:
        return cls(store, access.organization, cache_seconds, part2_for(access, part2))

    @property
    def restricted(self) -> bool:
        """Whether the client sees only its members (it has an organization)."""
        return self.organization is not None

    @property
    def part2_restricted(self) -> bool:
        """Whether 42 CFR Part 2 data may be withheld from the client."""
        return self.part2 is not None and (self.restricted or self.part2 != DISCLOSE)

    def discloses(self, resource: dict) -> bool:
        """42 CFR Part 2 (`privacy/consent.py`): data about substance use disorder only to
        the organization that recorded it or one the patient consented to. Data the codes
        say is SUD but that carries no label yet (stored before labelling, not relabelled)
        is held to the same rule, as recorded by no one."""
        if not self.part2_restricted:
            return True
        if not is_part2(resource):
            if not is_sud(resource):
                return True
            meta = resource.get("meta") or {}
            resource = {**resource, "meta": {**meta, "security": [
                *meta.get("security", []), PART2]}}
        if self.organization is not None and self._consenting is None:
            self._consenting = part2_consenting_patients(self.store, self.organization)
        return disclosable(resource, self.organization, self._consenting or frozenset(),
                           self.part2)

    def members(self) -> frozenset[str]:
        if self._members is None:
            self._members = self._remembered() | self.admitted
        return self._members

    def _remembered(self) -> frozenset[str]:
        watch = watch_of(self.store) if self.cache_seconds > 0 else None
        if watch is None:
            return frozenset(self._enrolled())
        key, now, changes = f"members {self.organization}", time.monotonic(), watch.changes
        hit = watch.derived.get(key)
        if hit is not None and hit[0] == changes and now - hit[1] < self.cache_seconds:
            return hit[2]
        members = frozenset(self._enrolled())
        watch.derived[key] = (changes, now, members)  # the count before: a write meanwhile
        return members                                # makes it stale at once

    def _enrolled(self) -> set[str]:
        found: set[str] = set()
        offset = 0
        while True:
            page = self.store.search("EpisodeOfCare", [
                ("organization", self.organization), ("type", f"{HH_PROGRAM}|"),
                ("_count", str(_PAGE)), ("_offset", str(offset))])
            for episode in page.matches:
                found |= members_named(episode)
            if len(page.matches) < _PAGE:
                return found
            offset += _PAGE

    # -- reading --------------------------------------------------------------------------
    def limit(self, resource_type: str) -> Limit | None | bool:
        """What a search of this type is limited to for the client's members: None (all of
        it), False (none of it), or the `context.Limit` naming the members."""
        if not self.restricted or resource_type in layout().shared:
            return None
        if resource_type in layout().owned:
            return None  # few: the view asks for the client's own by their tag
        code = member_param(resource_type)
        if code is None or not self.members():
            return False
        return Limit(resource_type, code, self.members())

    def sees(self, resource: dict) -> bool:
        """Both rules: the client's members' data, and 42 CFR Part 2."""
        return self.sees_member(resource) and self.discloses(resource)

    def sees_member(self, resource: dict) -> bool:
        if not self.restricted:
            return True
        resource_type = resource.get("resourceType", "")
        if resource_type in layout().shared:
            return True
        if resource_type in layout().owned:
            return owner(resource) == self.organization
        return not members_named(resource).isdisjoint(self.members())

    # -- writing --------------------------------------------------------------------------
    def check_write(self, resource: dict, where: str | None = None) -> None:
        """403 unless the client may write this resource (its new content, or what an
        update or delete replaces): about its members or nobody's, its own enrollments."""
        if not self.restricted:
            return
        resource_type = resource.get("resourceType", "")
        if resource_type in layout().shared or resource_type in layout().owned:
            return
        if member_param(resource_type) is None:
            raise Forbidden(f"A Health Home client ({self.organization}) writes data about "
                            f"members, directory data and its Subscriptions, not "
                            f"{resource_type}", where)
        for patient in sorted(patients_of(resource) | self._conditional_patients(resource)):
            if patient not in self.members() and self._enrolled_anywhere(patient):
                raise Forbidden(f"Patient/{patient} is a member of another Health Home: "
                                f"{self.organization} cannot write about them", where)
        if resource_type == "EpisodeOfCare" and _program(resource):
            managing = (resource.get("managingOrganization") or {}).get("reference")
            if managing != self.organization:
                raise Forbidden(f"A Health Home client records its own enrollments only "
                                f"(managingOrganization {self.organization})", where)

    def check_criteria(self, resource_type: str, criteria: list[tuple[str, str]],
                       where: str | None = None) -> None:
        """A conditional write's criteria may match only what the client may write: else
        it would update, delete or (If-None-Exist) answer another Health Home's data."""
        if not self.restricted:
            return
        found = self.store.search(resource_type, [*criteria, ("_count", "50")]).matches
        for resource in found:
            if not self.sees_member(resource):
                self.check_write(resource, where)

    def check_enroll(self, patient_id: str, provider: str) -> None:
        """`$enroll` by a Health Home client: into itself, someone not another's member."""
        if not self.restricted:
            return
        if provider != self.organization:
            raise Forbidden(f"A Health Home client enrolls members into its own Health Home "
                            f"({self.organization}), not {provider}", "provider")
        if patient_id not in self.members() and self._enrolled_anywhere(patient_id):
            raise Forbidden(f"Patient/{patient_id} is a member of another Health Home",
                            "Patient")
        self.admitted.add(patient_id)
        self._members = None

    def _enrolled_anywhere(self, patient: str) -> bool:
        page = self.store.search("EpisodeOfCare", [
            ("patient", f"Patient/{patient}"), ("type", f"{HH_PROGRAM}|"), ("_count", "1")])
        return bool(page.matches)

    def _conditional_patients(self, resource: dict) -> set[str]:
        """Patients named by conditional references (`Patient?identifier=...`), resolved
        as the store will resolve them."""
        found: set[str] = set()
        for query in _patient_queries(resource):
            criteria = parse_qsl(query, keep_blank_values=True)
            for patient in self.store.search("Patient", [*criteria, ("_count", "2")]).matches:
                found.add(patient["id"])
        return found


def _program(episode: dict) -> bool:
    return any(c.get("system") == HH_PROGRAM for t in episode.get("type", [])
               for c in t.get("coding", []) if isinstance(c, dict))


_QUERY = re.compile(r"^Patient\?(.+)$")


def _patient_queries(value, found: list[str] | None = None) -> list[str]:
    found = [] if found is None else found
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str) and (match := _QUERY.match(reference)):
            found.append(match.group(1))
        for item in value.values():
            if isinstance(item, (dict, list)):
                _patient_queries(item, found)
    elif isinstance(value, list):
        for item in value:
            _patient_queries(item, found)
    return found
