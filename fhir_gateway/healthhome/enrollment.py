"""Enrollment lifecycle as pure functions: decide, then describe the FHIR to write.

The services (`services.py`) gather the member's record, ask these functions what the
outcome is (or why not), and write what they return. One Health Home at a time: an active
enrollment blocks another (KanCare: a member eligible for SMI and CC must choose).

What differs by state (consent, opt-out reassessment, the care team's DD/TCM providers,
the Regional Office referral, the assignment letter) is data: `enrollment.yaml`, each entry
citing its seed; the `hh_enrollment` setting points at another file.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import date
from functools import cache
from html import escape
from pathlib import Path

import yaml

from fhir_gateway.healthhome import eligibility
from fhir_gateway.healthhome.eligibility import RuleFiles, RuleSet
from fhir_gateway.healthhome.status import OPEN, episode_program
from fhir_gateway.identifiers import CANONICAL_BASE, HH_PROGRAM
from fhir_gateway.outcome import FhirError

SD = f"{CANONICAL_BASE}/StructureDefinition"
CS = f"{CANONICAL_BASE}/CodeSystem"
SOURCES = ("referral", "mco-assignment", "claims-list", "self")
REASONS = ("opt-out", "moved", "lost-eligibility", "deceased", "other")
_ISSUE_CODES = {409: "conflict", 422: "business-rule", 404: "not-found"}


class EnrollmentRefused(FhirError):
    """Why an enrollment or disenrollment cannot happen, with the HTTP status to answer."""

    def __init__(self, status: int, message: str, where: str | None = None):
        super().__init__(status, message, _ISSUE_CODES.get(status, "invalid"), where)


@dataclass
class Agreement:
    """Who agreed to the enrollment (the member, or a guardian as RelatedPerson), and when."""

    by: str  # "Patient/<id>" or "RelatedPerson/<id>"
    on: date
    guardian: dict | None = None  # the RelatedPerson, when a guardian agreed


@dataclass
class Request:
    program: str
    provider: str  # "Organization/<id>"
    start: date
    source: str
    override_reason: str | None = None
    consent: Agreement | None = None


# -- the policy file ---------------------------------------------------------------------

@dataclass(frozen=True)
class Program:
    """A program as enrollment reads it: the state whose eligibility rule file lists it (one
    source for the pairing), its name, and that state's enrollment policy (empty for a
    program no state defines: nothing state-specific applies)."""

    code: str
    name: str
    state: str | None
    policy: dict
    rules: RuleSet


@cache
def _load_policy(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def find_program(code: str, files: RuleFiles) -> Program:
    """The program `code` with what enrollment reads about it under `files`."""
    rules = files.rules()
    state, name = next(((state, p.get("name") or code) for state, doc in rules.states.items()
                        for p in doc["programs"] if p["code"] == code), (None, code))
    policy = (_load_policy(files.enrollment).get(state) or {}) if state else {}
    return Program(code, name, state, policy, rules)


def _system(name: str) -> str:
    return name if ":" in name else f"{CS}/{name}"


def active_enrollments(episodes: list[dict]) -> list[dict]:
    return [e for e in episodes if e.get("status") in OPEN and episode_program(e)]


def enroll(patient: dict, request: Request, program: Program, verdict, conditions: list[dict],
           episodes: list[dict]) -> dict:
    """The HH Enrollment EpisodeOfCare to create, or EnrollmentRefused (422 / 409 / 400)."""
    if request.source not in SOURCES:
        raise EnrollmentRefused(400, f"source must be one of {', '.join(SOURCES)}", "source")
    if verdict is None:
        raise EnrollmentRefused(400, f"Program '{request.program}' is not a program of the "
                                     "member's state", "program")
    _check_consent(patient, request, program)
    current = active_enrollments(episodes)
    if current:
        raise EnrollmentRefused(409, f"Already actively enrolled in {episode_program(current[0])} "
                                     f"(EpisodeOfCare/{current[0].get('id')}): one Health Home "
                                     "at a time; disenroll first")
    if not verdict.eligible and not request.override_reason:
        raise EnrollmentRefused(422, f"Not eligible for {request.program}: "
                                     f"{verdict.explanation} (rule {verdict.rule}); enroll with "
                                     "an override and a reason to proceed", "program")
    qualifying = [c for c in conditions
                  if _qualifies(c, set(verdict.basis), program, patient)] or \
        [c for c in conditions if _qualifies(c, None, program, patient)]
    if not qualifying:
        raise EnrollmentRefused(422, "No qualifying Condition is on record to link the "
                                     "enrollment to", "program")
    return {
        "resourceType": "EpisodeOfCare",
        "meta": {"profile": [f"{SD}/hh-enrollment"]},
        "extension": [{"url": f"{SD}/hh-enrollment-source", "valueCodeableConcept": {
            "coding": [{"system": f"{CS}/hh-enrollment-source", "code": request.source}]}}],
        "status": "active",
        "type": [{"coding": [{"system": HH_PROGRAM, "code": request.program}]}],
        "diagnosis": [{"condition": {"reference": f"Condition/{c['id']}"}, "rank": i}
                      for i, c in enumerate(qualifying, start=1)],
        "patient": {"reference": f"Patient/{patient['id']}"},
        "managingOrganization": {"reference": request.provider},
        "period": {"start": request.start.isoformat()},
    }


def _check_consent(patient: dict, request: Request, program: Program) -> None:
    """Where the state requires the member's (or guardian's) agreement, no enrollment
    without it; an agreement given must be the member's own or their guardian's."""
    rule = program.policy.get("consent") or {}
    agreement, member = request.consent, f"Patient/{patient['id']}"
    if agreement is None:
        if rule.get("required"):
            raise EnrollmentRefused(
                400, f"Parameter 'consent' is required for {request.program}: the member (or "
                     "guardian) has to agree to the enrollment ("
                     + " ".join(str(rule.get("source", "")).split()) + "). Give consent.agreedBy "
                     "(the Patient or a RelatedPerson) and consent.date", "consent")
        return
    guardian_of = ((agreement.guardian or {}).get("patient") or {}).get("reference")
    if agreement.by != member and guardian_of != member:
        raise EnrollmentRefused(400, f"consent.agreedBy must be the member ({member}) or a "
                                     f"RelatedPerson of the member, not {agreement.by}",
                                "consent.agreedBy")


def consent(patient_ref: str, request: Request, program: Program, episode_ref: str) -> dict:
    """The member's (or guardian's) agreement to the enrollment, as a FHIR Consent: an
    opt-in to the Health Home, permitting the enrollment from its start."""
    agreement = request.consent
    return {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "treatment"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0",
                                  "display": "Patient Consent"}]}],
        "patient": {"reference": patient_ref},
        "dateTime": agreement.on.isoformat(),
        "performer": [{"reference": agreement.by}],
        "organization": [{"reference": request.provider}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTIN"}],
                       "text": f"Agreement to enroll in the {program.name}"},
        "provision": {"type": "permit", "period": {"start": request.start.isoformat()},
                      "data": [{"meaning": "related", "reference": {"reference": episode_ref}}]},
    }


def _categories(condition: dict, program: Program, patient: dict) -> set[str]:
    return eligibility.counted_categories(condition, program.state or "",
                                          patient.get("birthDate"), program.rules)


def _qualifies(condition: dict, basis: set[str] | None, program: Program,
               patient: dict) -> bool:
    found = _categories(condition, program, patient)
    return bool(found) and (basis is None or bool(found & basis))


def override_provenance(episode_ref: str, patient_ref: str, reason: str, when: str) -> dict:
    """The record of an override: who was enrolled against the rules, and why."""
    return {"resourceType": "Provenance", "target": [{"reference": episode_ref}],
            "recorded": when, "reason": [{"text": f"Eligibility override: {reason}"}],
            "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                     "code": "CREATE"}]},
            "agent": [{"who": {"reference": patient_ref}, "role": [{"text": "subject"}]}]}


# -- one enrollment at a time: the member's enrollment list ------------------------------

def enrollments_list_id(patient_id: str) -> str:
    """The id of the member's enrollment List: derived from the Patient id, so that every
    request for the member finds the same one (a FHIR id has at most 64 characters)."""
    readable = f"hh-enrollments-{patient_id}"
    return readable if len(readable) <= 64 else \
        "hh-enrollments-" + hashlib.sha256(patient_id.encode()).hexdigest()[:40]


def enrollments_list(patient_id: str, latest: str | None = None, when: str | None = None
                     ) -> dict:
    """The member's enrollment List: `entry` is the enrollment most recently made through
    $enroll. Every $enroll rewrites it with If-Match on the version read before deciding,
    so of two concurrent enrollments of a member the store lets exactly one commit."""
    resource = {"resourceType": "List", "id": enrollments_list_id(patient_id),
                "status": "current", "mode": "working", "title": "Health Home enrollments",
                "code": {"coding": [{"system": f"{CS}/hh-codes", "code": "hh-enrollments"}]},
                "subject": {"reference": f"Patient/{patient_id}"}}
    if latest:
        resource.update(date=when, entry=[{"item": {"reference": latest}}])
    return resource


# -- disenrollment -----------------------------------------------------------------------

def disenroll(episodes: list[dict], program: Program, reason: str, end: date) -> dict:
    """The enrollment, closed: finished, period.end, reason; an opt-out gets a reassessment
    date where the program's state reassesses opt-outs (KanCare, manual 4.2)."""
    if reason not in REASONS:
        raise EnrollmentRefused(400, f"reason must be one of {', '.join(REASONS)}", "reason")
    current = [e for e in active_enrollments(episodes) if episode_program(e) == program.code]
    if not current:
        raise EnrollmentRefused(404, f"No active {program.code} enrollment to close", "program")
    episode = dict(current[0])
    start = (episode.get("period") or {}).get("start", "")
    if start and end.isoformat() < start[:10]:
        raise EnrollmentRefused(400, f"end {end} is before the enrollment's start {start}", "end")
    extensions = [x for x in episode.get("extension", [])
                  if x.get("url") not in (f"{SD}/hh-disenrollment-reason",
                                          f"{SD}/hh-annual-reassessment-date")]
    extensions.append({"url": f"{SD}/hh-disenrollment-reason", "valueCodeableConcept": {
        "coding": [{"system": f"{CS}/hh-disenrollment-reason", "code": reason}]}})
    reassessment = program.policy.get("opt_out_reassessment")
    if reason == "opt-out" and reassessment:
        extensions.append({"url": f"{SD}/hh-annual-reassessment-date",
                           "valueDate": _add_months(end, reassessment["months"]).isoformat()})
    episode.update(extension=extensions, status="finished",
                   period={**episode.get("period", {}), "end": end.isoformat()})
    return episode


def consent_ended(agreement: dict, reason: str, end: date) -> dict:
    """The enrollment's Consent once the enrollment is closed: what it permits ends with the
    enrollment (`provision.period.end`), and an opt-out withdraws it (`status` inactive,
    FHIR R4 Consent: "terminated"). The seeds say members may opt out (KanCare manual 4.2)
    and are silent on the Consent record itself."""
    provision = dict(agreement.get("provision") or {})
    provision["period"] = {**provision.get("period", {}), "end": end.isoformat()}
    closed = {**agreement, "provision": provision}
    if reason == "opt-out":
        closed["status"] = "inactive"
    return closed


def _add_months(day: date, months: int) -> date:
    """The same day `months` later, or the month's last day (29 Feb + 12 -> 28 Feb)."""
    year, month = divmod(day.month - 1 + months, 12)
    year, month = day.year + year, month + 1
    following = date(year + month // 12, month % 12 + 1, 1)
    return date(year, month, min(day.day, (following - date.resolution).day))


# -- the KanCare assignment letter (manual 4.2) -------------------------------------------

def sends_letter(program: Program, source: str) -> bool:
    letter = program.policy.get("assignment_letter")
    return bool(letter) and source in letter.get("sources", ())


def assignment_letter(patient: dict, episode_ref: str, program: Program, verdict,
                      provider: dict, when: str) -> dict:
    """The assignment letter as a Communication with readable HTML: what Health Homes are
    and offer, why the member is eligible, the Health Home Partner, how to choose another
    and how to opt out. The words come from the policy file, in plain language: the member
    sees no rule ids or document citations."""
    letter = program.policy["assignment_letter"]
    first = (patient.get("name") or [{}])[0]
    values = {"name": " ".join([*first.get("given", []), first.get("family", "")]).strip()
                      or "Member",
              "program": program.name,
              "partner": provider.get("name") or "your Health Home Partner"}
    values["why"] = _why(letter["why"], verdict, values["program"])

    def fill(text: str) -> str:
        return escape(" ".join(str(text).split()).format(**values))

    parts = [f"<h1>{fill(letter['title'])}</h1>", f"<p>{fill(letter['greeting'])}</p>",
             f"<p>{fill(letter['intro'])}</p>"]
    for section in letter["sections"]:
        parts.append(f"<h2>{fill(section['heading'])}</h2>")
        parts += [f"<p>{fill(text)}</p>" for text in section["paragraphs"]]
    html = f"<html><body>{''.join(parts)}</body></html>"
    return {
        "resourceType": "Communication", "status": "completed",
        "category": [{"text": "Health Home assignment letter"}],
        "subject": {"reference": f"Patient/{patient['id']}"},
        "about": [{"reference": episode_ref}], "sent": when,
        "recipient": [{"reference": f"Patient/{patient['id']}"}],
        "payload": [{"contentAttachment": {
            "contentType": "text/html; charset=utf-8", "title": "Health Home assignment letter",
            "data": base64.b64encode(html.encode()).decode()}}],
    }


def _why(words: dict, verdict, program: str) -> str:
    """Why the member is eligible, in the letter's words: the conditions the rule found, or,
    for an enrollment made with an override, that the plan reviewed the member's needs."""
    if not verdict.eligible:
        return " ".join(words["override"].split()).format(program=program)
    said = list(dict.fromkeys(words["conditions"].get(c, words["other"]) for c in verdict.basis))
    listed = ", ".join(said[:-1]) + f" and {said[-1]}" if len(said) > 1 else \
        (said[0] if said else words["other"])
    return " ".join(words["eligible"].split()).format(conditions=listed, program=program)


# -- DD / TCM coordination: the care team and the Regional Office referral ---------------

def coordination_episodes(program: Program, episodes: list[dict]) -> list[dict]:
    """The member's open episodes whose type marks a provider the Health Home must work
    with (Missouri: DD provider types 15 and 85; KanCare: the I/DD TCM provider)."""
    wanted = {(_system(t["system"]), str(t["code"]))
              for t in (program.policy.get("care_team") or {}).get("episode_types", [])}
    return [e for e in episodes if e.get("status") in OPEN
            and any((c.get("system"), c.get("code")) in wanted
                    for t in e.get("type", []) for c in t.get("coding", []))]


def care_team(program: Program, patient_ref: str, enrollment_ref: str,
              coordination: list[dict]) -> dict | None:
    """The enrollment's CareTeam with the coordinators and agencies of those episodes: the
    Health Home coordinates with them, it does not replace them."""
    team = program.policy.get("care_team") or {}
    members = [{"role": [{"text": team["roles"][element]}], "member": episode[element]}
               for episode in coordination
               for element in ("careManager", "managingOrganization") if episode.get(element)]
    if not members:
        return None
    return {"resourceType": "CareTeam", "meta": {"profile": [f"{SD}/hh-care-team"]},
            "status": "active", "name": team["name"],
            "subject": {"reference": patient_ref}, "participant": members,
            "note": [{"text": f"Care team of {enrollment_ref}"}]}


def dd_referral_needed(program: Program, patient: dict, conditions: list[dict],
                       coordination: list[dict]) -> bool:
    """A developmental-disability condition but no open DD episode, in a state that refers
    such members to a DD Regional Office (Missouri)."""
    return bool(program.policy.get("dd_referral")) and not coordination and any(
        "developmental-disability" in _categories(condition, program, patient)
        for condition in conditions)


def dd_referral(program: Program, patient: dict, when: str) -> dict:
    """The work item: a draft ServiceRequest to the DD Regional Office serving the member's
    county (Patient.address.district); an unknown county is said to be unknown."""
    offices = program.policy["dd_referral"].get("regional_offices") or {}
    county = next((a["district"] for a in patient.get("address") or [] if a.get("district")),
                  None)
    if county is None:
        performer = "DD Regional Office serving the member's county (county unknown: " \
                    "no Patient.address.district)"
    else:
        performer = offices.get(county) or f"DD Regional Office serving {county}"
    return {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
            "code": {"coding": [{"system": f"{CS}/hh-codes", "code": "dd-regional-office-referral",
                                 "display": "Referral to the DD Regional Office"}]},
            "subject": {"reference": f"Patient/{patient['id']}"}, "authoredOn": when,
            "performerType": {"text": performer},
            "reasonCode": [{"text": "Developmental disability on record without an open "
                                    "Division of DD episode"}]}


# -- who is a member on a given day ------------------------------------------------------

def enrollment_on(episodes: list[dict], day: date, statuses: frozenset[str] | set[str]
                  ) -> dict | None:
    """The member's Health Home enrollment on `day`: an HH Enrollment (an hh-program type)
    in one of `statuses`, with a managing Organization, whose period holds the day; of
    several, the one that started last. None: not a member that day."""
    found = [e for e in episodes
             if e.get("status") in statuses and episode_program(e)
             and (e.get("managingOrganization") or {}).get("reference")
             and _covers(e.get("period") or {}, day)]
    return max(found, key=lambda e: e["period"]["start"][:10], default=None)


def _covers(period: dict, day: date) -> bool:
    start, end = period.get("start"), period.get("end")
    return isinstance(start, str) and start[:10] <= day.isoformat() and \
        (not isinstance(end, str) or day.isoformat() <= end[:10])
