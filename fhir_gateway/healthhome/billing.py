"""Monthly Health Home claims over any store: `$generate-claims`, and the checks every HH
Monthly Claim write passes (whatever the channel: REST, a transaction, the loader).

The rules are `monthly_claims.py`'s; this module reads what they need from the store and
writes what they decide. One claim per member and month: generated claims carry the
identifier `hh-monthly-claim|<patient id>|<YYYY-MM>` and are created with `ifNoneExist`, so a
second run, or two runs at once, create nothing more; any other HH Monthly Claim for a month
already billed is refused (409).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from fhir_gateway.healthhome import monthly_claims as rules
from fhir_gateway.healthhome.eligibility import RuleFiles
from fhir_gateway.healthhome.enrollment import find_program
from fhir_gateway.healthhome.status import episode_program
from fhir_gateway.identifiers import HH_PROGRAM
from fhir_gateway.outcome import FhirError
from fhir_gateway.store.base import FhirStore

#: enrollments read per page
PAGE = 500


@dataclass
class NotBilled:
    patient: str
    provider: str | None
    reason: str
    claim: str | None = None  # the claim that already bills the month, if that is the reason


@dataclass
class ClaimRun:
    month: rules.Month
    created: list[dict] = field(default_factory=list)
    not_billed: list[NotBilled] = field(default_factory=list)


def generate_claims(store: FhirStore, files: RuleFiles, within: rules.Month,
                    provider: str | None = None, today: date | None = None) -> ClaimRun:
    """One HH Monthly Claim per member whose Health Home enrollment was in force in the month
    and who received a core service from that Health Home in it; every other enrolled member
    of the month is listed with the reason it was not billed."""
    run = ClaimRun(within)
    for enrollment in _enrollments(store, provider):
        if not rules.in_force(enrollment, within):
            continue
        patient = (enrollment.get("patient") or {}).get("reference", "")
        home = (enrollment.get("managingOrganization") or {}).get("reference")
        reason, claim = _bill(store, files, enrollment, within, today or date.today())
        if claim is not None and reason is None:
            run.created.append(claim)
        else:
            run.not_billed.append(NotBilled(patient, home, reason, claim and
                                            f"Claim/{claim['id']}"))
    return run


def _bill(store: FhirStore, files: RuleFiles, enrollment: dict, within: rules.Month,
          today: date) -> tuple[str | None, dict | None]:
    """(why not, the claim that bills the month): (None, created) when this run billed it."""
    program = find_program(episode_program(enrollment), files)
    policy = program.policy.get("monthly_claim")
    patient = enrollment["patient"]["reference"]
    home = (enrollment.get("managingOrganization") or {}).get("reference")
    if not policy:
        return f"program {program.code} has no monthly claim policy (enrollment.yaml)", None
    if not home:
        return "the enrollment names no Health Home (managingOrganization)", None
    existing = _billing(_about(store, "Claim", patient, []), within)
    if existing:
        return f"{within.text} is already billed", existing[0]
    procedures = store.search("Procedure", [
        ("subject", patient), ("date", f"ge{within.first - timedelta(days=1)}"),
        ("date", f"le{within.last + timedelta(days=1)}"), ("_count", "1000")]).matches
    services = rules.billable_services(procedures, enrollment, within, policy)
    if not services:
        return f"no Health Home core service from {home} in {within.text}", None
    coverage = _coverage(store, patient, within)
    if coverage is None:
        return f"no active Coverage in force in {within.text}", None
    if not any((d.get("condition") or {}).get("reference") for d in enrollment.get("diagnosis", [])):
        return "the enrollment names no qualifying condition (diagnosis)", None
    claim = rules.monthly_claim(enrollment, services, coverage, within, policy, today)
    ident = claim["identifier"][0]
    try:
        written = store.create(claim, if_none_exist=f"identifier={ident['system']}|{ident['value']}")
    except FhirError as err:
        if err.status >= 500:
            raise
        return f"the claim was refused: {err.issues[0].diagnostics}", None
    if not written.created:
        if written.resource.get("status") in rules.WITHDRAWN:  # generated once, then withdrawn
            return (f"the month's generated claim was withdrawn "
                    f"({written.resource['status']}): not generated again"), written.resource
        return f"{within.text} is already billed", written.resource
    return None, written.resource


def _enrollments(store: FhirStore, provider: str | None) -> Iterator[dict]:
    """Every Health Home enrollment (of `provider`), page by page."""
    criteria = [("type", f"{HH_PROGRAM}|")]
    if provider:
        criteria.append(("organization", provider))
    offset = 0
    while True:
        page = store.search("EpisodeOfCare", [*criteria, ("_sort", "_id"), ("_count", str(PAGE)),
                                              ("_offset", str(offset))]).matches
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def _billing(claims: list[dict], within: rules.Month, other_than: str | None = None
             ) -> list[dict]:
    """The HH Monthly Claims among `claims` that bill the month (withdrawn ones aside)."""
    return [c for c in claims if rules.is_monthly_claim(c)
            and c.get("status") not in rules.WITHDRAWN and rules.billed_month(c) == within
            and (c.get("id") is None or c.get("id") != other_than)]


def _coverage(store: FhirStore, patient: str, within: rules.Month) -> dict | None:
    """The member's active Coverage in force in the month (the Medicaid one eligibility
    read), if any."""
    for coverage in store.search("Coverage", [("beneficiary", patient), ("status", "active"),
                                              ("_count", "100")]).matches:
        period = coverage.get("period") or {}
        if (period.get("start") or "")[:10] <= within.last.isoformat() \
                and (period.get("end") or "9999")[:10] >= within.first.isoformat():
            return coverage
    return None


def _stored(store: FhirStore, reference: str) -> dict | None:
    kind, _, ident = reference.partition("/")
    if kind != "Procedure" or not ident or "/" in ident:
        return None
    try:
        return store.read(kind, ident)
    except FhirError as err:
        if err.status in (404, 410):
            return None
        raise


def check_monthly_claim(store: FhirStore, resource: dict, unit: dict[str, dict]) -> None:
    """Refuse an HH Monthly Claim whose core services are not the member's in the billed
    month or whose provider had no enrollment of the member in force then (422), or that
    bills a month another claim bills already (409). Withdrawn claims pass. `unit`: the
    resources written with it (a transaction's, by fullUrl and Type/id), seen as stored."""
    if not rules.is_monthly_claim(resource) or resource.get("status") in rules.WITHDRAWN:
        return
    within = rules.billed_month(resource)
    patient = (resource.get("patient") or {}).get("reference")
    if within is None or not patient:
        return  # the profile reports what is missing
    pending = list({id(r): r for r in unit.values() if r is not resource}.values())
    services = {ref: unit.get(ref) or _stored(store, ref)
                for _, ref in rules.core_service_refs(resource)}
    issues = rules.claim_issues(resource, services, _about(store, "EpisodeOfCare", patient, pending))
    if issues:
        raise rules.refuse(issues)
    others = _billing(_about(store, "Claim", patient, pending), within, resource.get("id"))
    if others:
        raise FhirError(409, f"{within.text} is already billed for this member by "
                             f"Claim/{others[0].get('id', '(same transaction)')}", "duplicate",
                        "Claim.billablePeriod")


def _about(store: FhirStore, resource_type: str, patient: str, pending: list[dict]) -> list[dict]:
    """The member's stored resources of a type (EpisodeOfCare, Claim) and those of the unit."""
    stored = store.search(resource_type, [("patient", patient), ("_count", "1000")]).matches \
        if patient.startswith("Patient/") else []
    return stored + [r for r in pending if r.get("resourceType") == resource_type
                     and (r.get("patient") or {}).get("reference") == patient]
