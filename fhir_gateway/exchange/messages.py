"""`POST /fhir/$process-message` for Da Vinci Unsolicited Notifications (admit, transfer,
discharge): check the message, then store it as one transaction through the store contract.

Why this shape (R4 messaging, hl7.fhir.us.davinci-alerts STU1.1):
- a message is checked whole before anything is written (400/422 with the entry's path), and
  written as one unit (`commit`): the validation guard sees every resource and both stores
  apply all of it or nothing;
- every id the unit writes is decided here, deterministically (uuid5), so references among
  entries (`urn:uuid:` fullUrls or plain `Type/id`s) are rewritten before the store sees
  them, and a resent or concurrent message lands on the same resources;
- the Patient is matched by identifier (`patient_match.py`): one match is updated (its
  identifiers gain the message's, its demographics stay), none creates one, several hold the
  message for a person (a review Task naming the candidates, nothing else written);
- the Encounter is keyed by its identifier and merged so that the most advanced state wins
  whatever order the messages of a stay come in (`merge_encounter`);
- the MessageHeader is stored under its own id: a message seen before changes nothing and
  gets the same answer, rebuilt from what was stored.
"""

from __future__ import annotations

import base64
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import yaml

from fhir_gateway.bundle import at_entry
from fhir_gateway.exchange.patient_match import candidates, identifier_pairs, token
from fhir_gateway.formats import fhirjson
from fhir_gateway.identifiers import CANONICAL_BASE
from fhir_gateway.outcome import FhirError, Issue, operation_outcome
from fhir_gateway.search.values import each_reference
from fhir_gateway.store.base import FhirStore
from fhir_gateway.validation.service import Validator

RULES = Path(__file__).with_name("messages.yaml")
#: namespace of the ids the gateway derives (uuid5) for what a message writes
NAMESPACE = uuid.UUID("6f1c3c52-8d0e-4f4e-9a41-0b7e2f6c1d35")
#: which message last set an Encounter's state: "<Bundle.timestamp>|<MessageHeader.id>"
MESSAGE_KEY = f"{CANONICAL_BASE}/StructureDefinition/hie-message-key"
REVIEW_SYSTEM = f"{CANONICAL_BASE}/sid/hie-message"
#: how often a message is decided again after what it read changed before its write
ATTEMPTS = 3
#: the messages of one stay take turns (striped: a stay's lock is one of these)
_LOCKS = tuple(threading.Lock() for _ in range(64))


@dataclass(frozen=True)
class Rules:
    """`messages.yaml`, read once at start."""

    events: dict[str, str]
    focus_type: str
    tiers: tuple[tuple[str, ...] | None, ...]
    never_match: frozenset[str]
    status_rank: dict[str, int]
    review_code: dict

    @classmethod
    @cache
    def load(cls, path: Path = RULES) -> Rules:
        data = yaml.safe_load(Path(path).read_text())
        return cls(dict(data["events"]), data["focus_type"],
                   tuple(None if t["systems"] == "any" else tuple(t["systems"])
                         for t in data["match_tiers"]),
                   frozenset(data.get("never_match") or ()),
                   {status: rank for rank, status in enumerate(data["status_rank"])},
                   dict(data["review_task_code"]))


@dataclass
class Message:
    """A checked message: its entries' resources, the header, and where things are."""

    bundle: dict
    resources: list[dict]
    keys: dict[str, int]  # fullUrl / Type/id -> entry index
    focus: int            # the Encounter's entry
    patient: int          # the Encounter's subject's entry

    @property
    def header(self) -> dict:
        return self.resources[0]


# -- checks ----------------------------------------------------------------------------

def check(bundle: object, rules: Rules, validator: Validator) -> Message:
    """The message, or the first reason it cannot be processed (4xx naming where).

    Every resource gets the validator's verdict first (the one the store guard gives again
    to what is written): the rest reads checked structure, and an invalid resource is named
    by its place in the message."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(400, "$process-message takes a Bundle of type 'message'", "structure",
                        "Bundle")
    if bundle.get("type") != "message":
        raise FhirError(400, f"The Bundle must be of type 'message', not '{bundle.get('type')}'",
                        "structure", "Bundle.type")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or len(entries) < 2:
        raise FhirError(400, "A message needs a MessageHeader and its focus (2 entries or more)",
                        "structure", "Bundle.entry")
    resources = [_resource(entry, i, validator) for i, entry in enumerate(entries)]
    header = resources[0]
    if header["resourceType"] != "MessageHeader":
        raise FhirError(400, "The first entry of a message must be its MessageHeader",
                        "structure", "Bundle.entry[0].resource")
    if not isinstance(header.get("id"), str) or not header["id"]:
        raise FhirError(400, "The MessageHeader needs an id (the key a resent message is known "
                             "by)", "required", "Bundle.entry[0].resource.id")
    event_code(header, rules)
    keys = _keys(entries, resources)
    focus = _focus(header, keys, resources, rules)
    encounter = resources[focus]
    where = f"Bundle.entry[{focus}].resource"
    if not identifier_pairs(encounter):
        raise FhirError(400, "The focus Encounter needs an identifier (system and value): a "
                             "stay's messages are joined by it", "required", f"{where}.identifier")
    patient = keys.get((encounter.get("subject") or {}).get("reference"))
    if patient is None or resources[patient]["resourceType"] != "Patient":
        raise FhirError(400, "The focus Encounter's subject must reference a Patient in the "
                             "message", "required", f"{where}.subject")
    return Message(bundle, resources, keys, focus, patient)


def event_code(header: dict, rules: Rules) -> str:
    coding = header.get("eventCoding") or {}
    event = rules.events.get(f"{coding.get('system')}|{coding.get('code')}")
    if event is None:
        raise FhirError(422, f"Unsupported message event '{coding.get('system')}|"
                             f"{coding.get('code')}'; supported: {', '.join(rules.events)}",
                        "not-supported", "Bundle.entry[0].resource.eventCoding")
    return event


def _resource(entry: object, index: int, validator: Validator) -> dict:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict):
        raise FhirError(400, f"Bundle.entry[{index}] has no resource", "required",
                        f"Bundle.entry[{index}].resource")
    try:
        return validator.check(resource)
    except FhirError as err:
        raise at_entry(err, index) from None


def _keys(entries: list[dict], resources: list[dict]) -> dict[str, int]:
    """Every way a reference may name an entry: its fullUrl, and Type/id."""
    keys = {}
    for index, (entry, resource) in enumerate(zip(entries, resources)):
        if isinstance(entry.get("fullUrl"), str):
            keys[entry["fullUrl"]] = index
            tail = "/".join(entry["fullUrl"].rstrip("/").split("/")[-2:])
            keys.setdefault(tail, index)
        if isinstance(resource.get("id"), str):
            keys[f"{resource['resourceType']}/{resource['id']}"] = index
    return keys


def _focus(header: dict, keys: dict[str, int], resources: list[dict], rules: Rules) -> int:
    focus = header.get("focus")
    if not isinstance(focus, list) or not focus:
        raise FhirError(400, "The MessageHeader has no focus", "required",
                        "Bundle.entry[0].resource.focus")
    found = []
    for i, ref in enumerate(focus):
        index = keys.get(ref.get("reference") if isinstance(ref, dict) else None)
        if index is None:
            raise FhirError(400, f"MessageHeader.focus '{(ref or {}).get('reference')}' is not "
                                 "an entry of the message", "not-found",
                            f"Bundle.entry[0].resource.focus[{i}].reference")
        found.append(index)
    of_type = [i for i in found if resources[i]["resourceType"] == rules.focus_type]
    if not of_type:
        raise FhirError(400, f"The MessageHeader's focus must include the {rules.focus_type}",
                        "required", "Bundle.entry[0].resource.focus")
    return of_type[0]


# -- processing ---------------------------------------------------------------------------

def process(store: FhirStore, bundle: object, base: str, rules: Rules,
            validator: Validator) -> dict:
    """Check and apply one message; the response message Bundle.

    Each message reads what it updates (the Patient, the Encounter) and writes it back: the
    messages of one stay take turns in this process (a lock per stay), and every update
    carries If-Match, so a change made between the read and the write by anyone else fails
    the unit, which is then decided again from what is stored (`ATTEMPTS` times)."""
    message = check(bundle, rules, validator)
    with _stay_lock(message):
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return _apply(store, message, base, rules)
            except FhirError as err:
                if err.status not in (409, 412) or attempt == ATTEMPTS:
                    raise


def _stay_lock(message: Message) -> threading.Lock:
    stay = "|".join(identifier_pairs(message.resources[message.focus])[0])
    return _LOCKS[hash(stay) % len(_LOCKS)]


def _apply(store: FhirStore, message: Message, base: str, rules: Rules) -> dict:
    answered = _answered(store, message, base)
    if answered is not None:
        return answered
    found = candidates(store, message.resources[message.patient], rules.tiers, rules.never_match)
    if len(found) > 1:
        return _hold(store, message, sorted(found), base, rules)
    targets = _targets(store, message, found)
    entries = [(index, {"resource": resource, "request": _put(rtype, rid, stored)})
               for index, ((rtype, rid, resource), (_, stored)) in enumerate(
                   zip(_contents(message, targets, rules), targets))]
    stored = store.commit(entries, representation=True)[0]["resource"]
    return response(message.header, stored["meta"]["lastUpdated"], base, stored.get("focus"))


def _put(rtype: str, rid: str, stored: dict | None) -> dict:
    """A PUT, on the version read when it updates a stored resource."""
    request = {"method": "PUT", "url": f"{rtype}/{rid}"}
    version = ((stored or {}).get("meta") or {}).get("versionId")
    if version:
        request["ifMatch"] = f'W/"{version}"'
    return request


def _answered(store: FhirStore, message: Message, base: str) -> dict | None:
    """The answer given before to a message with this MessageHeader.id, if any."""
    stored = _read(store, "MessageHeader", message.header["id"])
    if stored is not None:
        return response(message.header, stored["meta"]["lastUpdated"], base, stored.get("focus"))
    task = _read(store, "Task", _review_id(message.header["id"]))
    return None if task is None else _held_response(message, task, base)


def _read(store: FhirStore, rtype: str, rid: str) -> dict | None:
    try:
        return store.read(rtype, rid)
    except FhirError as err:
        if err.status in (404, 410):
            return None
        raise


def _targets(store: FhirStore, message: Message, patients: dict[str, dict]
             ) -> list[tuple[str, dict | None]]:
    """Per entry: the id it is stored under and the stored resource it updates (or None)."""
    scope = ((message.header.get("source") or {}).get("endpoint") or "")
    targets = []
    for index, resource in enumerate(message.resources):
        if index == 0:
            targets.append((resource["id"], None))
        elif index == message.patient and patients:
            (pid, patient), = patients.items()
            targets.append((pid, patient))
        else:
            local = resource.get("id") or message.bundle["entry"][index].get("fullUrl") or index
            targets.append(_by_identifier(store, resource, f"{scope}|{local}", index,
                                          index == message.patient))
    return targets


def _by_identifier(store: FhirStore, resource: dict, local: str, index: int, is_patient: bool
                   ) -> tuple[str, dict | None]:
    """The stored resource of the type with the resource's first identifier, else a new id
    derived from that identifier (or, with none, from the sender and the entry's own id)."""
    rtype = resource["resourceType"]
    pairs = identifier_pairs(resource)
    if not pairs:
        return _derived(rtype, local), None
    if not is_patient:  # a Patient was already looked for, by every identifier
        hits = store.search(rtype, [("identifier", token(*pairs[0])), ("_count", "2")]).matches
        if len(hits) > 1:
            raise FhirError(422, f"Several stored {rtype} resources have the identifier "
                                 f"{token(*pairs[0])}: which one this is, is for a person to "
                                 "say", "multiple-matches",
                            f"Bundle.entry[{index}].resource.identifier[0]")
        if hits:
            return hits[0]["id"], hits[0]
    return _derived("", rtype, "|".join(pairs[0])), None


def _derived(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "|".join(parts)))


def _contents(message: Message, targets: list[tuple[str, dict | None]], rules: Rules
              ) -> list[tuple[str, str, dict]]:
    """What each entry is stored as: references rewritten to the targets, merged with what
    is stored."""
    refs = {key: f"{message.resources[i]['resourceType']}/{targets[i][0]}"
            for key, i in message.keys.items()}
    out = []
    for index, (resource, (rid, stored)) in enumerate(zip(message.resources, targets)):
        incoming = _rewrite(fhirjson.loads(fhirjson.dumps(resource)), refs)  # a copy, fast
        incoming["id"] = rid
        if index == message.focus:
            merged = merge_encounter(stored, incoming, _key(message), rules.status_rank)
        elif index == message.patient:
            merged = _merge(stored, incoming, stored_wins=True)  # demographics stay ours
        else:
            merged = _merge(stored, incoming)
        out.append((resource["resourceType"], rid, _plain_meta(merged)))
    return out


def _rewrite(node: dict, refs: dict[str, str]) -> dict:
    for reference in each_reference(node):
        reference["reference"] = refs.get(reference["reference"], reference["reference"])
    return node


def _merge(stored: dict | None, incoming: dict, stored_wins: bool = False) -> dict:
    """The message's elements over the stored ones (or, `stored_wins`, the other way round);
    identifiers the stored ones and then those of the message's that are new (by
    system|value)."""
    if stored is None:
        return incoming
    merged = {**incoming, **stored} if stored_wins else {**stored, **incoming}
    identifiers = list(stored.get("identifier") or [])
    known = {(i.get("system"), i.get("value")) for i in identifiers}
    identifiers += [i for i in incoming.get("identifier") or []
                    if (i.get("system"), i.get("value")) not in known]
    if identifiers:
        merged["identifier"] = identifiers
    return merged


def _plain_meta(resource: dict) -> dict:
    """The sender's (or the store's) version and time are not ours to write."""
    meta = {k: v for k, v in (resource.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")}
    resource.pop("meta", None)
    if meta:
        resource["meta"] = meta
    return resource


# -- the Encounter: the most advanced state wins -------------------------------------------

def _key(message: Message) -> str:
    return f"{message.bundle.get('timestamp', '')}|{message.header['id']}"


def merge_encounter(stored: dict | None, incoming: dict, key: str, rank: dict[str, int]) -> dict:
    """The stay's Encounter after one more message, the same whatever order they come in.

    The message whose Encounter is most advanced (status rank, then Bundle.timestamp, then
    MessageHeader.id) wins: its elements are the Encounter's, the others' fill what it lacks;
    `period.start` is the earliest seen. The winner's key is kept in an extension."""
    if stored is not None:
        stored_key = next((e.get("valueString", "") for e in stored.get("extension") or []
                           if e.get("url") == MESSAGE_KEY), "")
        if _order(incoming, key, rank) > _order(stored, stored_key, rank):
            merged = {**stored, **incoming}
        else:
            merged, key = {**incoming, **stored}, stored_key
        starts = [p["start"] for p in (stored.get("period"), incoming.get("period"))
                  if isinstance(p, dict) and p.get("start")]
        if starts:
            merged["period"] = {**(merged.get("period") or {}), "start": min(starts, key=_instant)}
    else:
        merged = incoming
    merged["extension"] = [e for e in merged.get("extension") or [] if e.get("url") != MESSAGE_KEY]
    merged["extension"].append({"url": MESSAGE_KEY, "valueString": key})
    return merged


def _order(encounter: dict, key: str, rank: dict[str, int]) -> tuple:
    stamp, _, header_id = key.partition("|")
    return rank.get(encounter.get("status"), -1), _instant(stamp), header_id


def _instant(text: str) -> datetime:
    """A FHIR date or dateTime as a comparable UTC instant (no zone: UTC; unreadable: oldest)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


# -- held for review ----------------------------------------------------------------------

def _review_id(header_id: str) -> str:
    return _derived("review", header_id)


def _hold(store: FhirStore, message: Message, patient_ids: list[str], base: str,
          rules: Rules) -> dict:
    """Store a review Task naming the candidates (and carrying the message), nothing else."""
    header_id = message.header["id"]
    task = {
        "resourceType": "Task", "id": _review_id(header_id), "status": "requested",
        "intent": "order", "code": {"coding": [rules.review_code]},
        "identifier": [{"system": REVIEW_SYSTEM, "value": header_id}],
        "description": f"The Patient of message {header_id} matches {len(patient_ids)} "
                       "Patients by identifier; say which one it is (nothing was stored).",
        "input": [*({"type": {"text": "candidate"}, "valueReference": {"reference": f"Patient/{p}"}}
                    for p in patient_ids),
                  {"type": {"text": "message"}, "valueAttachment": {
                      "contentType": "application/fhir+json",
                      "data": base64.b64encode(fhirjson.dumps(message.bundle)).decode()}}]}
    stored = store.commit([(None, {"resource": task, "request": {
        "method": "PUT", "url": f"Task/{task['id']}"}})], representation=True)[0]["resource"]
    return _held_response(message, stored, base)


def _held_response(message: Message, task: dict, base: str) -> dict:
    names = ", ".join(i["valueReference"]["reference"] for i in task.get("input", [])
                      if "valueReference" in i)
    outcome = operation_outcome([Issue(
        f"Held for review as Task/{task['id']}: the message's Patient matches {names}; "
        "nothing was stored", "multiple-matches", "warning",
        [f"Bundle.entry[{message.patient}].resource.identifier"])])
    return response(message.header, task["meta"]["lastUpdated"], base, None, outcome)


# -- the answer ---------------------------------------------------------------------------

def response(header: dict, stamp: str, base: str, focus: list | None,
             outcome: dict | None = None) -> dict:
    """The response message: the same for the same request header and stored time."""
    header_id = header["id"]
    answer = {"resourceType": "MessageHeader", "id": _derived("response-header", header_id),
              "eventCoding": header.get("eventCoding"),
              "source": {"name": "fhir-gateway", "endpoint": base},
              "response": {"identifier": header_id, "code": "ok"}}
    source = (header.get("source") or {}).get("endpoint")
    if source:
        answer["destination"] = [{"endpoint": source}]
    if focus:
        answer["focus"] = focus
    entries = [{"fullUrl": f"urn:uuid:{answer['id']}", "resource": answer}]
    if outcome is not None:
        outcome_id = _derived("response-outcome", header_id)
        answer["response"]["details"] = {"reference": f"urn:uuid:{outcome_id}"}
        entries.append({"fullUrl": f"urn:uuid:{outcome_id}",
                        "resource": {**outcome, "id": outcome_id}})
    return {"resourceType": "Bundle", "id": _derived("response", header_id), "type": "message",
            "timestamp": stamp, "entry": entries}
