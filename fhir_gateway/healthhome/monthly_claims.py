"""The Health Home per-member-per-month claim: which month is billable, the Claim that bills
it, and what a stored HH Monthly Claim must be true of.

KanCare manual section 7: Health Homes are "a bundled service" paid "per member per month";
the Health Home Partner "must provide the member with at least one Health Home service during
the month for which the claim is submitted"; "The billing code for Health Home services is
S0281". Missouri's code is in no seed: the code, the insurer and how a service naming no
organization is attributed are each state's `monthly_claim` policy in `enrollment.yaml`.

Plain functions over FHIR data: the store reads are the caller's (`services.py`).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date

from fhir_gateway.healthhome.status import episode_program
from fhir_gateway.identifiers import CANONICAL_BASE
from fhir_gateway.outcome import FhirError, Issue, invalid

PROFILE = f"{CANONICAL_BASE}/StructureDefinition/hh-monthly-claim"
CORE_SERVICE = f"{CANONICAL_BASE}/CodeSystem/hh-core-service"
HH_CODES = f"{CANONICAL_BASE}/CodeSystem/hh-codes"
LEAD_ENTITY = f"{CANONICAL_BASE}/StructureDefinition/hh-lead-entity"
#: one claim per member and month: value "<patient id>|<YYYY-MM>"
CLAIM_ID_SYSTEM = f"{CANONICAL_BASE}/sid/hh-monthly-claim"
#: statuses of an enrollment that was never in force
NEVER_IN_FORCE = ("planned", "waitlist", "cancelled", "entered-in-error")
#: statuses of a claim that no longer bills its month
WITHDRAWN = ("cancelled", "entered-in-error")
_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


@dataclass(frozen=True)
class Month:
    first: date
    last: date

    @property
    def text(self) -> str:
        return self.first.isoformat()[:7]

    def holds(self, day: date | None) -> bool:
        return day is not None and self.first <= day <= self.last


def month(text: str | None, where: str = "month") -> Month:
    """`YYYY-MM` as the month's first and last day; anything else is a 400 naming `where`."""
    found = _MONTH.fullmatch(text or "")
    if not found:
        raise invalid(f"'{where}' must be a month as YYYY-MM, not '{(text or '')[:20]}'", where)
    year, number = int(found[1]), int(found[2])
    return Month(date(year, number, 1), date(year, number, calendar.monthrange(year, number)[1]))


def _day(text: str | None) -> date | None:
    """The calendar day a FHIR date/dateTime names, as written (its own time zone)."""
    try:
        return date.fromisoformat(text[:10]) if isinstance(text, str) and len(text) >= 10 else None
    except ValueError:
        return None


def in_force(enrollment: dict, within: Month) -> bool:
    """Whether an HH enrollment covers at least one day of the month."""
    if enrollment.get("status") in NEVER_IN_FORCE or not episode_program(enrollment):
        return False
    period = enrollment.get("period") or {}
    start, end = _day(period.get("start")), _day(period.get("end"))
    return (start is None or start <= within.last) and (end is None or end >= within.first)


def covers(enrollment: dict, day: date) -> bool:
    period = enrollment.get("period") or {}
    start, end = _day(period.get("start")), _day(period.get("end"))
    return (start is None or start <= day) and (end is None or day <= end)


def service_day(procedure: dict) -> date | None:
    return _day(procedure.get("performedDateTime")
                or (procedure.get("performedPeriod") or {}).get("start"))


def is_core_service(procedure: dict) -> bool:
    return procedure.get("resourceType") == "Procedure" and procedure.get("status") == "completed" \
        and any(c.get("system") == CORE_SERVICE for c in (procedure.get("code") or {}).get("coding", []))


def _organizations(procedure: dict) -> set[str]:
    return {ref for p in procedure.get("performer", []) for key in ("actor", "onBehalfOf")
            if (ref := (p.get(key) or {}).get("reference", "")).startswith("Organization/")}


def delivered_by(procedure: dict, enrollment: dict, policy: dict) -> bool:
    """Whether the core service was the enrollment's Health Home's: it names that
    Organization, or names none and the policy counts such services for the Health Home
    whose enrollment covers its day."""
    named = _organizations(procedure)
    home = (enrollment.get("managingOrganization") or {}).get("reference")
    if named:
        return home in named
    day = service_day(procedure)
    return policy.get("unattributed_services", "count") == "count" and day is not None \
        and covers(enrollment, day)


def billable_services(procedures: list[dict], enrollment: dict, within: Month, policy: dict
                      ) -> list[dict]:
    """The core services that make the month billable for this enrollment, by day."""
    found = [p for p in procedures if is_core_service(p) and within.holds(service_day(p))
             and delivered_by(p, enrollment, policy)]
    return sorted(found, key=lambda p: (service_day(p), p.get("id", "")))


def claim_identifier(patient_id: str, within: Month) -> dict:
    return {"system": CLAIM_ID_SYSTEM, "value": f"{patient_id}|{within.text}"}


def insurer(enrollment: dict, coverage: dict | None, policy: dict) -> dict | None:
    """KanCare: the Lead Entity (MCO) the enrollment names; otherwise, or when it names
    none, the Medicaid Coverage's payor."""
    if policy.get("insurer") == "lead-entity":
        lead = next((e.get("valueReference") for e in enrollment.get("extension", [])
                     if e.get("url") == LEAD_ENTITY and e.get("valueReference")), None)
        if lead:
            return lead
    payors = (coverage or {}).get("payor") or []
    return payors[0] if payors else None


def monthly_claim(enrollment: dict, services: list[dict], coverage: dict | None,
                  within: Month, policy: dict, created: date) -> dict:
    """The HH Monthly Claim of one member's month (profile hh-monthly-claim)."""
    patient = enrollment["patient"]["reference"]
    info = [{"sequence": n, "category": {"coding": [{"system": HH_CODES, "code": "core-service"}]},
             "timingDate": service_day(s).isoformat(),
             "valueReference": {"reference": f"Procedure/{s['id']}"}}
            for n, s in enumerate(services, start=1)]
    diagnoses = [{"sequence": n, "diagnosisReference": d["condition"]}
                 for n, d in enumerate((d for d in enrollment.get("diagnosis", [])
                                        if (d.get("condition") or {}).get("reference")), start=1)]
    claim = {
        "resourceType": "Claim", "meta": {"profile": [PROFILE]},
        "identifier": [claim_identifier(patient.split("/", 1)[1], within)],
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                             "code": "professional"}]},
        "use": "claim", "patient": {"reference": patient},
        "billablePeriod": {"start": within.first.isoformat(), "end": within.last.isoformat()},
        "created": created.isoformat(),
        "provider": {"reference": enrollment["managingOrganization"]["reference"]},
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority",
                                 "code": "normal"}]},
        "supportingInfo": info, "diagnosis": diagnoses,
        "insurance": [{"sequence": 1, "focal": True,
                       "coverage": {"reference": f"Coverage/{coverage['id']}"}}] if coverage else [],
        "item": [{"sequence": 1, "informationSequence": [i["sequence"] for i in info],
                  "diagnosisSequence": [d["sequence"] for d in diagnoses],
                  "productOrService": {"coding": [dict(policy["code"])]},
                  "servicedPeriod": {"start": within.first.isoformat(),
                                     "end": within.last.isoformat()},
                  "quantity": {"value": 1}}],
    }
    paid_by = insurer(enrollment, coverage, policy)
    if paid_by:
        claim["insurer"] = paid_by
    return claim


def is_monthly_claim(resource: dict) -> bool:
    return resource.get("resourceType") == "Claim" \
        and PROFILE in (resource.get("meta") or {}).get("profile", [])


def billed_month(claim: dict) -> Month | None:
    period = claim.get("billablePeriod") or {}
    start = _day(period.get("start"))
    return month(start.isoformat()[:7]) if start else None


def core_service_refs(claim: dict) -> list[tuple[str, str]]:
    """(path, reference) of each core-service supportingInfo."""
    return [(f"Claim.supportingInfo[{i}].valueReference", (info.get("valueReference") or {})
             .get("reference", ""))
            for i, info in enumerate(claim.get("supportingInfo", []))
            if any(c.get("system") == HH_CODES and c.get("code") == "core-service"
                   for c in (info.get("category") or {}).get("coding", []))]


def claim_issues(claim: dict, services: dict[str, dict | None], enrollments: list[dict]
                 ) -> list[Issue]:
    """What the profile's words ask of a stored HH Monthly Claim that FHIRPath cannot check:
    each referenced core service exists, is the member's, and falls in the billed month; the
    member had an HH enrollment with the billing provider in force that month."""
    within = billed_month(claim)
    if within is None:
        return []  # the profile's own rules report the missing period
    patient = (claim.get("patient") or {}).get("reference")
    issues = []
    for where, ref in core_service_refs(claim):
        service = services.get(ref)
        if service is None:
            issues.append(Issue(f"{where}: the core service {ref or '(none)'} is not stored",
                                "business-rule", "error", [where]))
        elif (service.get("subject") or {}).get("reference") != patient \
                or not is_core_service(service):
            issues.append(Issue(f"{where}: {ref} is not a completed Health Home core service "
                                f"of {patient}", "business-rule", "error", [where]))
        elif not within.holds(service_day(service)):
            issues.append(Issue(f"{where}: {ref} was delivered on {service_day(service)}, "
                                f"outside the billed month {within.text}", "business-rule",
                                "error", [where]))
    provider = (claim.get("provider") or {}).get("reference")
    if not any(in_force(e, within) and (not provider or (e.get("managingOrganization") or {})
                                        .get("reference") == provider) for e in enrollments):
        issues.append(Issue(f"{patient} has no Health Home enrollment with {provider} in force "
                            f"in {within.text}", "business-rule", "error", ["Claim.provider"]))
    return issues


def refuse(issues: list[Issue]) -> FhirError:
    return FhirError(422, issues[0].diagnostics, "business-rule", issues=issues)
