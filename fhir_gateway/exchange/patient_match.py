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

    `tiers`: per tier its identifier systems, None for "any system not in an earlier tier"."""
    pairs = _pairs(patient, never_match)
    found: dict[str, dict] = {}
    earlier: set[str] = set()
    for systems in tiers:
        tier = [(s, v) for s, v in pairs
                if (s in systems if systems is not None else s not in earlier)]
        earlier |= set(systems or ())
        if not tier:
            continue
        hits = _search(store, tier)
        if found and not set(hits) <= set(found):
            return {**found, **hits}  # a later tier names someone else: ambiguous
        found = found or hits
    return found


def identifier_pairs(resource: dict) -> list[tuple[str, str]]:
    """The (system, value) pairs of a resource's identifiers that have both."""
    return [(i["system"], i["value"]) for i in resource.get("identifier") or []
            if isinstance(i, dict) and isinstance(i.get("system"), str)
            and isinstance(i.get("value"), str)]


def _pairs(patient: dict, never_match: frozenset[str]) -> list[tuple[str, str]]:
    return [(s, v) for s, v in identifier_pairs(patient) if s not in never_match]


def _search(store: FhirStore, pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """One search for every pair of a tier (a comma is OR in FHIR search)."""
    tokens = ",".join(f"{_escape(s)}|{_escape(v)}" for s, v in pairs)
    result = store.search("Patient", [("identifier", tokens), ("_count", "50")])
    return {p["id"]: p for p in result.matches}


def _escape(text: str) -> str:
    """FHIR search escaping, so a value holding `,`, `|` or `$` stays one value."""
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")
