"""Health Home status as each source sees it, and where the sources disagree.

Staff look a member up in two places (CyberAccess, CIMOR) and compare with the record;
`$hh-status` does that in one call. Each source is reduced to the same small summary, then
the summaries are compared field by field. Pure functions: the lookups happen elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fhir_gateway.identifiers import HH_PROGRAM
from fhir_gateway.outcome import Issue, operation_outcome

#: source program codes -> Health Home program codes (the IG's hh-program CodeSystem)
PROGRAMS = {"CMHC": "mo-cmhc", "PCHH": "mo-pchh"}
DD_PROVIDER_TYPES = ("15", "85")
COMPARED = ("hhEnrolled", "program", "ddEpisodeOpen")
#: the EpisodeOfCare statuses of an episode still open
OPEN = ("active", "onhold", "waitlist")


@dataclass
class SourceStatus:
    system: str  # cimor | cyberaccess | store
    reachable: bool = True
    hh_enrolled: bool | None = None
    program: str | None = None
    provider: str | None = None
    period: dict = field(default_factory=dict)
    dd_provider_types: list[str] = field(default_factory=list)
    dd_episode_open: bool | None = None
    support_coordinator: str | None = None
    problem: str | None = None

    def compared(self) -> dict:
        return {"hhEnrolled": self.hh_enrolled, "program": self.program,
                "ddEpisodeOpen": self.dd_episode_open}


def _period(start: str | None, end: str | None) -> dict:
    return {k: v for k, v in (("start", start), ("end", end)) if v}


def from_cimor(data: dict | None) -> SourceStatus:
    """A CIMOR consumer record (adapters/RECORDS.md shape); None means not known there."""
    status = SourceStatus("cimor")
    if data is None:
        status.hh_enrolled, status.dd_episode_open = False, False
        return status
    hh = data.get("HealthHome") or {}
    status.hh_enrolled = hh.get("Indicator") == "Y" and not hh.get("EndDate")
    if status.hh_enrolled:
        status.program = PROGRAMS.get(hh.get("Program", ""))
        status.provider = (hh.get("Provider") or {}).get("Name")
        status.period = _period(hh.get("EffectiveDate"), hh.get("EndDate"))
    open_dd = [e for e in (data.get("Episodes") or {}).get("Episode", [])
               if e.get("Division") == "DD" and not e.get("DischargeDate")]
    status.dd_episode_open = bool(open_dd)
    status.dd_provider_types = sorted({e["ProviderType"] for e in open_dd
                                       if e.get("ProviderType") in DD_PROVIDER_TYPES})
    coordinator = ((data.get("ConsumerResources") or {}).get("SupportCoordinator") or {})
    status.support_coordinator = coordinator.get("Name")
    return status


def from_cyberaccess(data: dict | None) -> SourceStatus:
    """A CyberAccess participant record; DD shows there only as claims by provider type."""
    status = SourceStatus("cyberaccess")
    if data is None:
        status.hh_enrolled = False
        return status
    hh = data.get("HealthHome") or {}
    status.hh_enrolled = hh.get("Status") == "Enrolled"
    if status.hh_enrolled:
        status.program = PROGRAMS.get(hh.get("Program", ""))
        status.provider = (hh.get("Provider") or {}).get("Name")
        status.period = _period(hh.get("StartDate"), hh.get("EndDate"))
    lines = [line for claim in (data.get("Claims") or {}).get("Claim", [])
             for line in (claim.get("ServiceLines") or {}).get("Line", [])]
    status.dd_provider_types = sorted({line["ProviderType"] for line in lines
                                       if line.get("ProviderType") in DD_PROVIDER_TYPES})
    return status


def episode_program(episode: dict) -> str | None:
    """The Health Home program of an EpisodeOfCare (None: not an HH enrollment)."""
    return next((c.get("code") for t in episode.get("type", []) for c in t.get("coding", [])
                 if c.get("system") == HH_PROGRAM), None)


def from_store(episodes: list[dict], provider_names: dict[str, str]) -> SourceStatus:
    """What the gateway holds: the member's active EpisodeOfCare resources."""
    status = SourceStatus("store", hh_enrolled=False, dd_episode_open=False)
    for episode in episodes:
        if episode.get("status") not in OPEN:
            continue
        codings = [c for t in episode.get("type", []) for c in t.get("coding", [])]
        program = episode_program(episode)
        dd_type = next((c["code"] for c in codings if c.get("code") in DD_PROVIDER_TYPES
                        and c.get("system", "").endswith("/mo-provider-type")), None)
        if program:
            status.hh_enrolled, status.program = True, program
            ref = (episode.get("managingOrganization") or {}).get("reference", "")
            status.provider = provider_names.get(ref) or ref or None
            status.period = episode.get("period", {})
        if dd_type:
            status.dd_episode_open = True
            status.dd_provider_types = sorted({*status.dd_provider_types, dd_type})
            manager = (episode.get("careManager") or {}).get("display")
            status.support_coordinator = status.support_coordinator or manager
    return status


def discrepancies(statuses: list[SourceStatus]) -> list[str]:
    """One sentence per compared field on which the reachable sources disagree."""
    known = [s for s in statuses if s.reachable]
    out = []
    for name in COMPARED:
        values = {s.system: s.compared()[name] for s in known if s.compared()[name] is not None}
        if len(set(values.values())) > 1:
            out.append(f"{name}: " + ", ".join(f"{k}={_show(v)}" for k, v in values.items()))
    return out


def _show(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def to_parameters(statuses: list[SourceStatus]) -> dict:
    """The `$hh-status` answer: one `source` per system, one `discrepancy` per disagreement."""
    parameters = []
    for s in statuses:
        parts = [{"name": "system", "valueCode": s.system},
                 {"name": "reachable", "valueBoolean": s.reachable}]
        if s.reachable:
            if s.hh_enrolled is not None:
                parts.append({"name": "hhEnrolled", "valueBoolean": s.hh_enrolled})
            if s.program:
                parts.append({"name": "program", "valueCoding": {"system": HH_PROGRAM,
                                                                  "code": s.program}})
            if s.provider:
                key = "valueReference" if "/" in s.provider else "valueString"
                value = {"reference": s.provider} if key == "valueReference" else s.provider
                parts.append({"name": "provider", key: value})
            if s.period:
                parts.append({"name": "period", "valuePeriod": s.period})
            parts += [{"name": "ddProviderType", "valueString": t} for t in s.dd_provider_types]
            if s.dd_episode_open is not None:
                parts.append({"name": "ddEpisodeOpen", "valueBoolean": s.dd_episode_open})
            if s.support_coordinator:
                parts.append({"name": "supportCoordinator", "valueString": s.support_coordinator})
        else:
            problem = Issue(f"{s.system} could not be asked: {s.problem}", "transient", "warning")
            parts.append({"name": "outcome", "resource": operation_outcome([problem])})
        parameters.append({"name": "source", "part": parts})
    parameters += [{"name": "discrepancy", "valueString": d} for d in discrepancies(statuses)]
    return {"resourceType": "Parameters", "parameter": parameters}
