"""To whom 42 CFR Part 2 data is disclosed: the consent rule, as pure functions over what
is stored (the per-Health-Home view calls them; it decides nothing about Part 2 itself).

A resource labelled 42CFRPart2 (`labels.py`) is disclosed to a client's organization when
that organization recorded it, or when the patient it is about has an active Consent that
permits disclosing Part 2 data to that organization. The seeds say only that records are
shared "with the member's consent" (KanCare manual 1.1); the Consent is read the way the
FHIR R4 Consent resource and the HL7 consent-directive patterns say (scope
patient-privacy, provision.type permit, the organization among the provision's actors,
the 42CFRPart2 label among the provision's securityLabels). A Consent whose provision names
no securityLabel is NOT taken as covering Part 2 data: 42 CFR 2.31 asks for a consent that
says which information is disclosed, so a general consent to share does not reach it.

Clients without an organization (the state, an MCO, an HIE) have no recorder nor Consent
to match: whether they see Part 2 data is a setting (`Settings.part2_unaffiliated`,
`withhold` by default: secure by default; the seeds are silent).
"""

from __future__ import annotations

from typing import Literal

from fhir_gateway.export.compartments import patient_id, patients_of
from fhir_gateway.export.writer import scan
from fhir_gateway.privacy.labels import PART2, is_part2, recorded_by, same_code
from fhir_gateway.search.dates import now_instant, parse_range
from fhir_gateway.store.base import FhirStore

__all__ = ["DISCLOSE", "WITHHOLD", "disclosable", "is_part2", "part2_consenting_patients",
           "permits", "recorded_by", "unaffiliated_disclosed"]

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
#: what `Settings.part2_unaffiliated` may say: Part 2 data for clients without organization
Unaffiliated = Literal["withhold", "disclose"]
WITHHOLD: Unaffiliated = "withhold"
DISCLOSE: Unaffiliated = "disclose"
PAGE = 500


def part2_consenting_patients(store: FhirStore, organization: str,
                              now: float | None = None) -> frozenset[str]:
    """Ids of the Patients whose active Consent permits disclosing their Part 2 data to
    `organization` (`Organization/<id>` or `<id>`) at `now` (epoch seconds; default: now)."""
    reference = _organization(organization)
    at = now_instant()[1] if now is None else now
    consents = scan(store, "Consent", [("actor", reference), ("status", "active")], PAGE)
    return frozenset(patient for consent in consents
                     if permits(consent, reference, at)
                     for patient in [patient_id(consent.get("patient"))] if patient)


def permits(consent: dict, organization: str, at: float) -> bool:
    """Whether one Consent permits disclosing Part 2 data to `organization` at `at`: active,
    scope patient-privacy, its provision a permit naming the organization among its actors
    and 42CFRPart2 among its security labels, in its period if it has one, and no nested
    provision denying it to the organization (or to everyone)."""
    provision = consent.get("provision")
    if consent.get("status") != "active" or not isinstance(provision, dict):
        return False
    if not _has(consent.get("scope"), CONSENT_SCOPE, "patient-privacy"):
        return False
    if provision.get("type") != "permit" or not _covers(provision, at):
        return False
    if _organization(organization) not in _actors(provision):
        return False
    if not any(_is_part2_label(label) for label in provision.get("securityLabel") or ()):
        return False
    return not any(_denies(nested, organization, at)
                   for nested in provision.get("provision") or () if isinstance(nested, dict))


def disclosable(resource: dict, organization: str | None, consenting: frozenset[str],
                unaffiliated: Unaffiliated = WITHHOLD) -> bool:
    """Whether a resource may be disclosed to a client of `organization` (None: a client
    without one), `consenting` being `part2_consenting_patients(store, organization)`.

    True when the resource is not Part 2 data, or `organization` recorded it, or every
    patient it is about consented; for a client without organization, `unaffiliated` says.
    A Part 2 resource about no patient is disclosed only to its recorder."""
    if not is_part2(resource):
        return True
    if organization is None:
        return unaffiliated == DISCLOSE
    if recorded_by(resource) == _organization(organization):
        return True
    patients = patients_of(resource)
    return bool(patients) and patients <= consenting


def unaffiliated_disclosed(unaffiliated: Unaffiliated) -> bool:
    """Whether clients without an organization see Part 2 data (`Settings.part2_unaffiliated`)."""
    return unaffiliated == DISCLOSE


def _denies(provision: dict, organization: str, at: float) -> bool:
    """A nested deny provision that takes Part 2 data (or all data) from the organization."""
    if provision.get("type") != "deny" or not _covers(provision, at):
        return False
    actors = _actors(provision)
    labels = provision.get("securityLabel") or ()
    return (not actors or _organization(organization) in actors) and \
        (not labels or any(_is_part2_label(label) for label in labels))


def _covers(provision: dict, at: float) -> bool:
    period = provision.get("period")
    if not isinstance(period, dict):
        return True
    start = parse_range(period["start"]) if isinstance(period.get("start"), str) else None
    end = parse_range(period["end"]) if isinstance(period.get("end"), str) else None
    return (start is None or start[0] <= at) and (end is None or at < end[1])


def _actors(provision: dict) -> set[str]:
    return {_organization(ref) for actor in provision.get("actor") or () if isinstance(actor, dict)
            for ref in [(actor.get("reference") or {}).get("reference")]
            if isinstance(ref, str)}


def _organization(reference: str) -> str:
    """`Organization/<id>` from `<id>`, `Organization/<id>` or an absolute/versioned URL."""
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "Organization":
        return f"Organization/{parts[-1]}"
    return reference if "/" in reference else f"Organization/{reference}"


def _is_part2_label(coding: object) -> bool:
    return isinstance(coding, dict) and same_code(coding, PART2)


def _has(concept: object, system: str, code: str) -> bool:
    return isinstance(concept, dict) and any(
        isinstance(c, dict) and c.get("system") == system and c.get("code") == code
        for c in concept.get("coding") or ())
