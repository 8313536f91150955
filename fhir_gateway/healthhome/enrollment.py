"""Enrollment lifecycle as pure functions: decide, then describe the FHIR to write.

`$enroll` and `$disenroll` gather the member's record, ask these functions what the
outcome is (or why not), and write what they return. One Health Home at a time: an active
enrollment blocks another (KanCare: a member eligible for SMI and CC must choose).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import date
from html import escape

from fhir_gateway.healthhome.categories import categories
from fhir_gateway.identifiers import CANONICAL_BASE, HH_PROGRAM, ICD10CM

SD = f"{CANONICAL_BASE}/StructureDefinition"
CS = f"{CANONICAL_BASE}/CodeSystem"
SOURCES = ("referral", "mco-assignment", "claims-list", "self")
REASONS = ("opt-out", "moved", "lost-eligibility", "deceased", "other")


class EnrollmentRefused(Exception):
    """Why an enrollment or disenrollment cannot happen, with the HTTP status to answer."""

    def __init__(self, status: int, message: str, where: str | None = None):
        super().__init__(message)
        self.status, self.where = status, where


@dataclass
class Request:
    program: str
    provider: str  # "Organization/<id>"
    start: date
    source: str
    override_reason: str | None = None


def active_enrollments(episodes: list[dict]) -> list[dict]:
    return [e for e in episodes if e.get("status") in ("active", "onhold", "waitlist")
            and _program(e)]


def _program(episode: dict) -> str | None:
    return next((c.get("code") for t in episode.get("type", []) for c in t.get("coding", [])
                 if c.get("system") == HH_PROGRAM), None)


def enroll(patient: dict, request: Request, verdict, conditions: list[dict],
           episodes: list[dict]) -> dict:
    """The HH Enrollment EpisodeOfCare to create, or EnrollmentRefused (422 / 409 / 400)."""
    if request.source not in SOURCES:
        raise EnrollmentRefused(400, f"source must be one of {', '.join(SOURCES)}", "source")
    if verdict is None:
        raise EnrollmentRefused(400, f"Program '{request.program}' is not a program of the "
                                     "member's state", "program")
    current = active_enrollments(episodes)
    if current:
        raise EnrollmentRefused(409, f"Already actively enrolled in {_program(current[0])} "
                                     f"(EpisodeOfCare/{current[0].get('id')}): one Health Home "
                                     "at a time; disenroll first")
    if not verdict.eligible and not request.override_reason:
        raise EnrollmentRefused(422, f"Not eligible for {request.program}: "
                                     f"{verdict.explanation} (rule {verdict.rule}); enroll with "
                                     "an override and a reason to proceed", "program")
    qualifying = [c for c in conditions if _qualifies(c, set(verdict.basis))] or \
        [c for c in conditions if _qualifies(c, None)]
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


def _qualifies(condition: dict, basis: set[str] | None) -> bool:
    found = {c["code"] for coding in (condition.get("code") or {}).get("coding", [])
             if coding.get("system") == ICD10CM and coding.get("code")
             for c in categories(coding["code"])}
    return bool(found) and (basis is None or bool(found & basis))


def override_provenance(episode_ref: str, patient_ref: str, reason: str, when: str) -> dict:
    """The record of an override: who was enrolled against the rules, and why."""
    return {"resourceType": "Provenance", "target": [{"reference": episode_ref}],
            "recorded": when, "reason": [{"text": f"Eligibility override: {reason}"}],
            "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                     "code": "CREATE"}]},
            "agent": [{"who": {"reference": patient_ref}, "role": [{"text": "subject"}]}]}


def disenroll(episodes: list[dict], program: str, reason: str, end: date) -> dict:
    """The enrollment, closed: finished, period.end, reason; opt-outs get a reassessment date."""
    if reason not in REASONS:
        raise EnrollmentRefused(400, f"reason must be one of {', '.join(REASONS)}", "reason")
    current = [e for e in active_enrollments(episodes) if _program(e) == program]
    if not current:
        raise EnrollmentRefused(404, f"No active {program} enrollment to close", "program")
    episode = dict(current[0])
    start = (episode.get("period") or {}).get("start", "")
    if start and end.isoformat() < start[:10]:
        raise EnrollmentRefused(400, f"end {end} is before the enrollment's start {start}", "end")
    extensions = [x for x in episode.get("extension", [])
                  if x.get("url") not in (f"{SD}/hh-disenrollment-reason",
                                          f"{SD}/hh-annual-reassessment-date")]
    extensions.append({"url": f"{SD}/hh-disenrollment-reason", "valueCodeableConcept": {
        "coding": [{"system": f"{CS}/hh-disenrollment-reason", "code": reason}]}})
    if reason == "opt-out":  # KanCare manual 4.2: opt-outs are reassessed annually
        reassess = end.replace(year=end.year + 1) if not (end.month == 2 and end.day == 29) \
            else end.replace(year=end.year + 1, day=28)
        extensions.append({"url": f"{SD}/hh-annual-reassessment-date",
                           "valueDate": reassess.isoformat()})
    episode.update(extension=extensions, status="finished",
                   period={**episode.get("period", {}), "end": end.isoformat()})
    return episode


def assignment_letter(patient: dict, episode_ref: str, program: str, verdict, provider: dict,
                      when: str) -> dict:
    """The KanCare assignment letter (manual 4.2) as a Communication with readable HTML:
    why the member is eligible, the assigned Health Home Partner, how to choose another,
    and how to opt out."""
    name = " ".join([*((patient.get("name") or [{}])[0].get("given", [])),
                     (patient.get("name") or [{}])[0].get("family", "")]).strip() or "Member"
    partner = provider.get("name") or provider.get("id", "your Health Home Partner")
    html = (
        "<html><body>"
        f"<p>Dear {escape(name)},</p>"
        f"<p>Your KanCare plan has assigned you to a Health Home ({escape(program)}). "
        f"<strong>Why you are eligible:</strong> {escape(verdict.explanation)}</p>"
        f"<p><strong>Your Health Home Partner:</strong> {escape(partner)}.</p>"
        "<p><strong>Choosing another Health Home Partner:</strong> call your KanCare plan's "
        "member services and name the partner you prefer; the change takes effect the "
        "following month.</p>"
        "<p><strong>Opting out:</strong> Health Homes are voluntary. Call your KanCare plan to "
        "opt out at any time; you will keep all your other KanCare benefits, and your plan "
        "will ask you again in a year.</p>"
        "</body></html>")
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


# -- DD coordination (mo-healthnet-health-homes-and-dd-coordination) --------------------------

DD_PROVIDER_TYPES = ("15", "85")


def open_dd_episodes(episodes: list[dict]) -> list[dict]:
    """Active Division of DD episodes: provider type 15 (TCM) or 85 (waiver)."""
    return [e for e in episodes if e.get("status") in ("active", "onhold", "waitlist")
            and any(c.get("code") in DD_PROVIDER_TYPES
                    and c.get("system", "").endswith("/mo-provider-type")
                    for t in e.get("type", []) for c in t.get("coding", []))]


def dd_care_team(patient_ref: str, enrollment_ref: str, dd_episodes: list[dict]) -> dict | None:
    """The enrollment's CareTeam with the DD support coordinator(s) and TCM agency/agencies:
    the Health Home coordinates with them, it does not replace them."""
    members = []
    for episode in dd_episodes:
        if episode.get("careManager"):
            members.append({"role": [{"text": "DD support coordinator"}],
                            "member": episode["careManager"]})
        if episode.get("managingOrganization"):
            members.append({"role": [{"text": "TCM agency / Regional Office"}],
                            "member": episode["managingOrganization"]})
    if not members:
        return None
    return {"resourceType": "CareTeam", "meta": {"profile": [f"{SD}/hh-care-team"]},
            "status": "active", "name": "Health Home and DD coordination",
            "subject": {"reference": patient_ref}, "participant": members,
            "note": [{"text": f"Care team of {enrollment_ref}"}]}


def dd_referral_needed(conditions: list[dict], dd_episodes: list[dict]) -> bool:
    """A developmental-disability condition but no open DD episode: refer to the Regional Office."""
    return not dd_episodes and any(
        c["code"] == "developmental-disability"
        for condition in conditions
        for coding in (condition.get("code") or {}).get("coding", [])
        if coding.get("system") == ICD10CM and coding.get("code")
        for c in categories(coding["code"]))


def dd_referral(patient: dict, when: str) -> dict:
    """The work item: a draft ServiceRequest to the DD Regional Office for the member's county."""
    address = (patient.get("address") or [{}])[0]
    county = address.get("district") or address.get("city") or "the member's county"
    return {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
            "code": {"coding": [{"system": f"{CS}/hh-codes", "code": "dd-regional-office-referral",
                                 "display": "Referral to the DD Regional Office"}]},
            "subject": {"reference": f"Patient/{patient['id']}"}, "authoredOn": when,
            "performerType": {"text": f"DD Regional Office serving {county}"},
            "reasonCode": [{"text": "Developmental disability on record without an open "
                                    "Division of DD episode"}]}
