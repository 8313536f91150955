"""Health Home rosters as Groups, in the style of Da Vinci Member Attribution (ATR): one
Group per Health Home and program, `managingEntity` the Health Home, one `member` per
enrollment (`entity` the Patient, `period` the enrollment's, `inactive` once it is closed).

Pure functions: `services.py` writes the roster in the same transaction as the enrollment
(`$enroll`) or the disenrollment (`$disenroll`), If-Match the version read, so a roster
never disagrees with the enrollments those operations made; `rebuild` recomputes one from
the stored EpisodesOfCare (after an import, or writes that went around the operations).
`Group/{id}/$export` exports the data of a roster's active members.
"""

from __future__ import annotations

import hashlib

from fhir_gateway.healthhome.status import OPEN
from fhir_gateway.identifiers import CANONICAL_BASE, HH_PROGRAM

ROSTER_SYSTEM = f"{CANONICAL_BASE}/sid/hh-roster"


def roster_key(provider: str, program: str) -> str:
    """The roster's identifier value (system `ROSTER_SYSTEM`), derived from the Health Home
    and the program, so every enrollment finds the same Group: it is created by a
    conditional create on it, which both stores make once however many ask at the same
    time (a PUT under a derived id would let a second first writer overwrite the first)."""
    org = provider.rsplit("/", 1)[-1]
    readable = f"hh-roster-{program}-{org}"
    return readable if len(readable) <= 64 else \
        "hh-roster-" + hashlib.sha256(f"{provider}|{program}".encode()).hexdigest()[:40]


def empty_roster(provider: str, program: str, provider_name: str | None = None) -> dict:
    return {
        "resourceType": "Group",
        "identifier": [{"system": ROSTER_SYSTEM, "value": roster_key(provider, program)}],
        "active": True, "type": "person", "actual": True,
        "code": {"coding": [{"system": HH_PROGRAM, "code": program}]},
        "name": f"Health Home roster: {provider_name or provider} ({program})",
        "managingEntity": {"reference": provider},
    }


def member(episode: dict) -> dict:
    """An enrollment as a roster member: its Patient, its period, inactive once closed."""
    entry = {"entity": dict(episode["patient"]), "period": dict(episode.get("period", {}))}
    if episode.get("status") not in OPEN:
        entry["inactive"] = True
    return entry


def with_enrollment(roster: dict, episode: dict) -> dict:
    """The roster with this enrollment's member added, or replaced (same Patient and start:
    the same enrollment, closed since)."""
    return _with(roster, roster.get("member", []), [episode])


def rebuild(roster: dict, episodes: list[dict]) -> dict:
    """The roster recomputed from every enrollment of its Health Home and program."""
    return _with(roster, [], episodes)


def _with(roster: dict, kept: list[dict], episodes: list[dict]) -> dict:
    by_key = {_key(m): m for m in kept}
    for episode in episodes:
        new = member(episode)
        by_key[_key(new)] = new
    return {**{k: v for k, v in roster.items() if k not in ("meta", "member")},
            "member": [by_key[k] for k in sorted(by_key)]}


def _key(entry: dict) -> tuple[str, str]:
    return (entry["entity"].get("reference", ""), (entry.get("period") or {}).get("start", ""))
