"""Health Home follow-ups of a write, whatever channel made it.

A hospital Encounter may come as a `$process-message`, in a transaction or batch from the
HIE, as a plain PUT or POST, or from the loader: all of them reach the store through its
wrapper (`open_store` / `guarded`), so this is the one place where the transitional-care
rules (`healthhome/transitions.py`) cannot be skipped. After a write of an Encounter, a
Procedure (a transitional-care core service) or an EpisodeOfCare (an enrollment written
after the stay), the rules are asked what they want written, and it is written:
- embedded store: inside the same SQLite transaction (`atomic()`): the Encounter and its
  Communication and Tasks commit together or not at all;
- HAPI: as a second transaction right after the write (HAPI has no transaction the gateway
  can hold open). If that one fails, the write stands and the error is answered; writing
  the same resource again re-runs the follow-ups, which are idempotent.

Idempotent: everything made carries an identifier derived from the stay and is written as a
conditional create on it; a corrected discharge date moves the open Tasks (If-Match on the
version read). Resources of other types pass straight through at no cost.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from datetime import date
from urllib.parse import urlencode

from fhir_gateway.healthhome import transitions as rules_of
from fhir_gateway.healthhome.enrollment import enrollment_on
from fhir_gateway.healthhome.status import episode_program
from fhir_gateway.outcome import FhirError
from fhir_gateway.search.dates import now_instant
from fhir_gateway.store.base import FhirStore, Written
from fhir_gateway.store.resolve import named
from fhir_gateway.store.units import BundleOperations, Entries

log = logging.getLogger(__name__)
#: the resource types whose writes may ask for follow-ups
TRIGGERS = frozenset({"Encounter", "Procedure", "EpisodeOfCare"})
_WRITES = ("POST", "PUT")


class FollowUpStore(BundleOperations):
    """A FhirStore that writes the Health Home follow-ups of each write it passes on."""

    def __init__(self, inner: FhirStore, rules: rules_of.Rules | None = None):
        """What the rules write is the gateway's own making and is not validated again on
        the way in (a Task's profile check cost about as much as the rest of the follow-up;
        tests/test_transitions.py holds them to their profiles with `$validate`)."""
        self.inner = inner
        self.rules = rules or rules_of.Rules.load()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # reads, search, history, delete, close, ...

    def _unit(self):
        """The embedded store's write transaction (follow-ups commit with the write); HAPI
        has none to join."""
        atomic = getattr(self.inner, "atomic", None)
        return atomic() if atomic is not None else nullcontext()

    # -- the writes --------------------------------------------------------------------
    def create(self, resource: dict, if_none_exist: str | None = None) -> Written:
        if if_none_exist:
            return self.conditional_create(resource, if_none_exist)
        if resource.get("resourceType") not in TRIGGERS:
            return self.inner.create(resource)
        with self._unit():
            written = self.inner.create(resource)
            self._follow([written.resource])
        return written

    def update(self, resource_type: str, resource_id: str, resource: dict,
               if_match: str | None = None) -> Written:
        if resource_type not in TRIGGERS:
            return self.inner.update(resource_type, resource_id, resource, if_match)
        with self._unit():
            written = self.inner.update(resource_type, resource_id, resource, if_match)
            self._follow([written.resource])
        return written

    def commit(self, entries: Entries, representation: bool = False) -> list[dict]:
        writes = [_writes_trigger(entry) for _, entry in entries]
        if not any(writes):
            return self.inner.commit(entries, representation)
        try:
            with self._unit():
                answers = self.inner.commit(entries, representation=True)
                self._follow([answer["resource"] for answer, write in zip(answers, writes)
                              if write and isinstance(answer.get("resource"), dict)])
        except FhirError as err:  # refused when the unit committed: name the entry
            raise named(err, entries) from None
        if representation:
            return answers
        methods = [(entry.get("request") or {}).get("method") for _, entry in entries]
        return [{k: v for k, v in answer.items() if k != "resource"} if method in _WRITES
                else answer for answer, method in zip(answers, methods)]  # GETs keep theirs

    # -- the follow-ups -----------------------------------------------------------------
    def _follow(self, written: list[dict]) -> None:
        episodes: dict[str, list[dict]] = {}  # per patient, read once per write
        now, _ = now_instant()
        for resource in written:
            kind = resource.get("resourceType")
            if kind == "Encounter":
                self._encounter(resource, episodes, now)
            elif kind == "Procedure":
                self._service(resource, now)
            elif kind == "EpisodeOfCare":
                self._enrollment(resource, episodes, now)

    def _episodes(self, patient: str, cache: dict[str, list[dict]]) -> list[dict]:
        if patient not in cache:
            cache[patient] = self.inner.search(
                "EpisodeOfCare", [("patient", patient), ("_count", "100")]).matches
        return cache[patient]

    def _encounter(self, encounter: dict, cache: dict[str, list[dict]], now: str) -> None:
        """A member's admission: notify the Health Home; their discharge: the follow-up
        Tasks (created, or moved to a corrected discharge date)."""
        rules = self.rules
        patient = _patient(encounter.get("subject"))
        admitted, discharged = (rules_of.admitted_on(encounter, rules),
                                rules_of.discharged_on(encounter, rules))
        if patient is None or (admitted is None and discharged is None):
            return
        episodes = self._episodes(patient, cache)
        entries = []
        enrollment = admitted and enrollment_on(episodes, admitted, rules.enrollment_statuses)
        if enrollment:
            entries.append(self._create(rules_of.notification(encounter, enrollment, rules,
                                                              now)))
        enrollment = discharged and enrollment_on(episodes, discharged,
                                                  rules.enrollment_statuses)
        if enrollment:
            wanted = rules_of.follow_up_tasks(encounter, enrollment, discharged, rules, now)
            stored = self._by_identifier("Task", [t["identifier"][0] for t in wanted])
            for task in wanted:
                found = stored.get(task["identifier"][0]["value"])
                if found is None:
                    entries.append(self._create(task))
                elif (changed := rules_of.moved(found, task)) is not None:
                    entries.append(self._put(changed))
        if entries:
            log.info("transitional care: %d follow-up(s) of Encounter/%s", len(entries),
                     encounter.get("id"))
            self.commit([(None, entry) for entry in entries])

    def _service(self, procedure: dict, now: str) -> None:
        """A transitional-care core service: complete the open Task(s) it fulfils."""
        performed = rules_of.service_date(procedure, self.rules)
        patient = _patient(procedure.get("subject"))
        if performed is None or patient is None:
            return
        tasks = self.inner.search("Task", [("subject", patient),
                                           ("code", self.rules.service_token),
                                           ("_count", "100")]).matches
        done = rules_of.completed(procedure, performed, tasks, self.rules, now)
        if done:
            self.commit([(None, self._put(task)) for task in done])

    def _enrollment(self, episode: dict, cache: dict[str, list[dict]], now: str) -> None:
        """An enrollment written after the stay: the member's recent stays catch up."""
        patient = _patient(episode.get("patient"))
        if patient is None or not episode_program(episode) or \
                episode.get("status") not in self.rules.enrollment_statuses:
            return
        encounters = self.inner.search("Encounter", [
            ("subject", patient), ("_sort", "-date"),
            ("_count", str(self.rules.catch_up_max))]).matches
        for encounter in rules_of.catching_up(encounters, date.today(), self.rules):
            self._encounter(encounter, cache, now)

    # -- entries ------------------------------------------------------------------------
    def _by_identifier(self, rtype: str, identifiers: list[dict]) -> dict[str, dict]:
        tokens = ",".join(rules_of.search_token(i) for i in identifiers)
        found = self.inner.search(rtype, [("identifier", tokens),
                                          ("_count", str(len(identifiers) * 2))]).matches
        return {i["value"]: r for r in found for i in r.get("identifier") or []
                if i.get("system") == rules_of.SYSTEM}

    def _create(self, resource: dict) -> dict:
        """A conditional create on the resource's (derived) identifier."""
        criteria = urlencode([("identifier", rules_of.search_token(resource["identifier"][0]))],
                             safe=":/|")
        return {"resource": resource, "request": {
            "method": "POST", "url": resource["resourceType"], "ifNoneExist": criteria}}

    def _put(self, resource: dict) -> dict:
        """An update of the version read (If-Match): a concurrent change fails the unit."""
        rtype, rid = resource["resourceType"], resource["id"]
        request = {"method": "PUT", "url": f"{rtype}/{rid}"}
        version = (resource.get("meta") or {}).get("versionId")
        if version:
            request["ifMatch"] = f'W/"{version}"'
        return {"resource": resource, "request": request}


def _writes_trigger(entry: dict) -> bool:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    return isinstance(resource, dict) and resource.get("resourceType") in TRIGGERS and \
        (entry.get("request") or {}).get("method") in _WRITES


def _patient(reference: object) -> str | None:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    return ref if isinstance(ref, str) and ref.startswith("Patient/") else None
