"""Which stored Patient a notification's Patient is: by identifier, exact system|value.

Tiers come from the rule file (`messages.yaml`): Medicaid ids first (DCN, KanCare ID), then
any other identifier such as a hospital MRN. The first tier with a hit names the candidates;
a later tier that points at another Patient adds it (a DCN naming one member and an MRN
another is for a person to sort out, not for the gateway to guess). Nothing is merged here.
"""

from __future__ import annotations

from fhir_gateway.store.base import FhirStore


def candidates(store: FhirStore, patient: dict, tiers: tuple[tuple[str, ...] | None, ...],
               never_match: frozenset[str]) -> dict[str, dict]:
    """The stored Patients (id -> resource) the message's Patient may be: none, one or more.

    `tiers`: per tier its identifier systems, None for "any system not in an earlier tier".
    One search for every identifier of every tier; a tier's candidates are then the hits
    that share one of its identifiers."""
    pairs = _pairs(patient, never_match)
    if not pairs:
        return {}
    hits = _search(store, pairs)
    found: dict[str, dict] = {}
    earlier: set[str] = set()
    for systems in tiers:
        tier = {(s, v) for s, v in pairs
                if (s in systems if systems is not None else s not in earlier)}
        earlier |= set(systems or ())
        in_tier = {pid: p for pid, p in hits.items() if tier & set(identifier_pairs(p))}
        if found and not set(in_tier) <= set(found):
            return {**found, **in_tier}  # a later tier names someone else: ambiguous
        found = found or in_tier
    return found


def identifier_pairs(resource: dict) -> list[tuple[str, str]]:
    """The (system, value) pairs of a resource's identifiers that have both."""
    return [(i["system"], i["value"]) for i in resource.get("identifier") or []
            if isinstance(i, dict) and isinstance(i.get("system"), str)
            and isinstance(i.get("value"), str)]


def _pairs(patient: dict, never_match: frozenset[str]) -> list[tuple[str, str]]:
    return [(s, v) for s, v in identifier_pairs(patient) if s not in never_match]


def _search(store: FhirStore, pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """One search for every pair (a comma is OR in FHIR search)."""
    tokens = ",".join(token(s, v) for s, v in pairs)
    result = store.search("Patient", [("identifier", tokens), ("_count", "50")])
    return {p["id"]: p for p in result.matches}


def token(system: str, value: str) -> str:
    """`system|value` for a token search, escaped so that a `,`, `|` or `$` in either stays
    part of it."""
    return f"{_escape(system)}|{_escape(value)}"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")
