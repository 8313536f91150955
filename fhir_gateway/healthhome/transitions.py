"""Transitional care for Health Home members, as pure functions over FHIR resources.

What a written hospital Encounter, transitional-care core service or enrollment asks for
(KanCare manual 2.3 and "Comprehensive Transitional Planning"; the rules and their sources
are data, `transitions.yaml`):
- an admission (inpatient or emergency) of a member: a Communication notifying the member's
  Health Home (the enrollment's managing Organization);
- an inpatient discharge of a member: a Task per window (7 and 30 days), owned by the Health
  Home, due `days` after the discharge date;
- a transitional-care core service (Procedure) within a window: completes the open Task(s).

Every resource made here carries an identifier derived from the stay's (`hh-transition`
system): the store layer (`store/followups.py`) writes them as conditional creates on it, so
a replayed message or a repeated PUT finds them instead of making new ones. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path

import yaml

from fhir_gateway.identifiers import CANONICAL_BASE

RULES = Path(__file__).with_name("transitions.yaml")
#: the identifier system of what the transitional-care rules write
SYSTEM = f"{CANONICAL_BASE}/sid/hh-transition"
#: the IG profile of the follow-up Tasks (profiles/src)
TASK_PROFILE = f"{CANONICAL_BASE}/StructureDefinition/hh-transitional-care-task"
ADMISSION = "admission"


@dataclass(frozen=True)
class Rules:
    """`transitions.yaml`, read once."""

    admission_classes: frozenset[str]
    admission_statuses: frozenset[str]
    discharge_classes: frozenset[str]
    discharge_types: frozenset[str]
    windows: tuple[tuple[str, int], ...]
    service: dict
    completes: str
    service_statuses: frozenset[str]
    enrollment_statuses: frozenset[str]
    catch_up_days: int
    catch_up_max: int
    category: dict

    @classmethod
    @cache
    def load(cls, path: Path = RULES) -> Rules:
        data = yaml.safe_load(Path(path).read_text())
        if data["completes"] not in ("earliest", "all"):
            raise ValueError(f"{path}: completes must be 'earliest' or 'all'")
        return cls(frozenset(data["admission"]["classes"]),
                   frozenset(data["admission"]["statuses"]),
                   frozenset(data["discharge"]["classes"]),
                   frozenset(data["discharge"].get("types") or ()),
                   tuple((w["key"], int(w["days"])) for w in data["windows"]),
                   dict(data["core_service"]), data["completes"],
                   frozenset(data["service_statuses"]), frozenset(data["enrollment_statuses"]),
                   int(data["catch_up"]["days"]), int(data["catch_up"]["max_encounters"]),
                   dict(data["notification_category"]))

    @property
    def service_token(self) -> str:
        return f"{self.service['system']}|{self.service['code']}"


# -- reading an Encounter --------------------------------------------------------------------

def _day(value: object) -> date | None:
    """The date of a FHIR date or dateTime as written (the hospital's local date)."""
    try:
        return date.fromisoformat(value[:10]) if isinstance(value, str) else None
    except ValueError:
        return None


def _codings(concept: object) -> set[str]:
    if not isinstance(concept, dict):
        return set()
    return {f"{c.get('system')}|{c.get('code')}" for c in concept.get("coding") or []
            if isinstance(c, dict)}


def _class(encounter: dict) -> str:
    klass = encounter.get("class") or {}
    return f"{klass.get('system')}|{klass.get('code')}"


def admitted_on(encounter: dict, rules: Rules) -> date | None:
    """The date of a hospitalization or ER visit that happened (period.start, else end);
    None for any other Encounter."""
    if _class(encounter) not in rules.admission_classes or \
            encounter.get("status") not in rules.admission_statuses:
        return None
    period = encounter.get("period") or {}
    return _day(period.get("start")) or _day(period.get("end"))


def discharged_on(encounter: dict, rules: Rules) -> date | None:
    """The discharge date of a finished acute or psychiatric inpatient stay, else None."""
    if encounter.get("status") != "finished":
        return None
    types = set().union(*map(_codings, [*(encounter.get("type") or []),
                                        encounter.get("serviceType")]))
    if _class(encounter) not in rules.discharge_classes and not types & rules.discharge_types:
        return None
    return _day((encounter.get("period") or {}).get("end"))


def stay_key(encounter: dict) -> str:
    """The stay as the sender knows it (its first identifier), else the stored Encounter."""
    for ident in encounter.get("identifier") or []:
        if ident.get("system") and ident.get("value"):
            return f"{ident['system']}|{ident['value']}"
    return f"Encounter/{encounter['id']}"


def identifier(encounter: dict, what: str) -> dict:
    return {"system": SYSTEM, "value": f"{stay_key(encounter)}#{what}"}


def search_token(ident: dict) -> str:
    """`system|value` for a token search, the value's reserved characters escaped."""
    value = ident["value"]
    for ch in "\\,$|":
        value = value.replace(ch, "\\" + ch)
    return f"{ident['system']}|{value}"


# -- what to write -------------------------------------------------------------------------

def notification(encounter: dict, enrollment: dict, rules: Rules, now: str) -> dict:
    """The Communication telling the member's Health Home of the admission. No names or
    diagnoses in its text: the references say who and which stay."""
    klass = (encounter.get("class") or {}).get("code")
    return {
        "resourceType": "Communication", "identifier": [identifier(encounter, ADMISSION)],
        "status": "completed", "category": [{"coding": [rules.category]}],
        "subject": encounter["subject"], "about": [{"reference": f"Encounter/{encounter['id']}"}],
        "recipient": [enrollment["managingOrganization"]], "sent": now,
        "payload": [{"contentString": f"Hospital notification: a Health Home member's "
                                      f"{klass} encounter "
                                      f"({admitted_on(encounter, rules)})."}]}


def follow_up_tasks(encounter: dict, enrollment: dict, discharged: date, rules: Rules,
                    now: str) -> list[dict]:
    """One requested Task per window: see the member within `days` of the discharge."""
    return [{
        "resourceType": "Task", "meta": {"profile": [TASK_PROFILE]},
        "identifier": [identifier(encounter, key)],
        "status": "requested", "intent": "order",
        "code": {"coding": [rules.service]},
        "description": f"Transitional care: see the member within {days} days of the "
                       f"discharge of {discharged.isoformat()}",
        "focus": {"reference": f"Encounter/{encounter['id']}"}, "for": encounter["subject"],
        "owner": enrollment["managingOrganization"], "authoredOn": now,
        "restriction": {"period": window(discharged, days)}} for key, days in rules.windows]


def window(discharged: date, days: int) -> dict:
    return {"start": discharged.isoformat(), "end": (discharged + timedelta(days=days)).isoformat()}


def moved(stored: dict, wanted: dict) -> dict | None:
    """The stored Task with the wanted window when a corrected discharge date moved it and
    it is still open; None when nothing is to change."""
    if stored.get("status") not in ("requested", "received", "accepted", "ready") or \
            (stored.get("restriction") or {}).get("period") == wanted["restriction"]["period"]:
        return None
    return {**stored, "restriction": {**(stored.get("restriction") or {}),
                                      "period": wanted["restriction"]["period"]},
            "description": wanted["description"]}


# -- the follow-up done --------------------------------------------------------------------

def service_date(procedure: dict, rules: Rules) -> date | None:
    """The date of a transitional-care core service that happened, else None."""
    if rules.service_token not in _codings(procedure.get("code")) or \
            procedure.get("status") not in rules.service_statuses:
        return None
    return _day(procedure.get("performedDateTime")) or \
        _day((procedure.get("performedPeriod") or {}).get("start"))


def completed(procedure: dict, performed: date, tasks: list[dict], rules: Rules, now: str
              ) -> list[dict]:
    """The Tasks this service completes (`output` references it): open Tasks whose window
    holds its date, the earliest due or all of them (`completes`); none when a Task already
    names it (the same Procedure written again)."""
    ref = f"Procedure/{procedure['id']}"
    if any(out.get("valueReference", {}).get("reference") == ref
           for task in tasks for out in task.get("output") or []):
        return []
    open_ = sorted((t for t in tasks if t.get("status") == "requested" and
                    _holds((t.get("restriction") or {}).get("period") or {}, performed)),
                   key=lambda t: t["restriction"]["period"]["end"])
    chosen = open_[:1] if rules.completes == "earliest" else open_
    return [{**task, "status": "completed", "lastModified": now,
             "output": [*(task.get("output") or []), {
                 "type": {"coding": [rules.service]}, "valueReference": {"reference": ref}}]}
            for task in chosen]


def _holds(period: dict, day: date) -> bool:
    start, end = _day(period.get("start")), _day(period.get("end"))
    return start is not None and end is not None and start <= day <= end


# -- an enrollment written after the stay ----------------------------------------------------

def catching_up(encounters: list[dict], today: date, rules: Rules) -> list[dict]:
    """The member's hospital Encounters an enrollment written now may still have work for:
    in progress, or ended within `catch_up.days` of `today` (older ones: too late to
    notify or to follow up)."""
    found = []
    for encounter in encounters:
        if admitted_on(encounter, rules) is None:
            continue
        end = _day((encounter.get("period") or {}).get("end"))
        if end is None or (today - end).days <= rules.catch_up_days:
            found.append(encounter)
    return found
