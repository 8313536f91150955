"""Synthetic Da Vinci Unsolicited Notifications (admit, transfer, discharge) for tests and the
bench: the shape of HL7/davinci-alerts' ATD example bundles (MessageHeader, Encounter,
Patient, Location, Practitioner, hospital Organization, Condition, Coverage, payer
Organization), with a Medicaid id next to a hospital MRN. No real person's data."""

from __future__ import annotations

import copy
import uuid

from fhir_gateway.identifiers import ICD10CM, KANCARE_ID, MO_HEALTHNET_DCN, NPI

EVENTS = "http://hl7.org/fhir/us/davinci-alerts/CodeSystem/notification-event"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
HOSPITAL = "urn:oid:2.16.840.1.113883.3.9999.1"  # a made-up test hospital
MRN = f"{HOSPITAL}.2"
VISITS = f"{HOSPITAL}.3"
SENDER = "https://hie.example.org/fhir/Endpoint/test-hospital"
NS = uuid.UUID("0d8f5a57-2b3c-4f0e-8d6e-5b1a2c3d4e5f")

#: event -> (Encounter.class, Encounter.status, Bundle.timestamp), as the Da Vinci examples
STEPS = {"admit": ("EMER", "in-progress", "2026-03-01T10:05:00-06:00"),
         "transfer": ("IMP", "in-progress", "2026-03-01T16:05:00-06:00"),
         "discharge": ("IMP", "finished", "2026-03-04T11:05:00-06:00")}


def dcn(value: str = "900000001") -> dict:
    return {"system": MO_HEALTHNET_DCN, "value": value}


def kancare(value: str = "K100000001") -> dict:
    return {"system": KANCARE_ID, "value": value}


def mrn(value: str = "MRN-0001") -> dict:
    return {"system": MRN, "value": value,
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "MR"}]}}


def _id(*parts: str) -> str:
    return str(uuid.uuid5(NS, "|".join(parts)))


def message(kind: str, identifiers: list[dict], stay: str = "V1001",
            header_id: str | None = None, plain_ids: bool = False) -> dict:
    """One notification of a stay. Entry ids are stable per stay (as in the IG's examples),
    the MessageHeader id is new per (stay, event) unless given. `plain_ids`: fullUrls are
    http URLs and references plain `Type/id`s instead of `urn:uuid:`s."""
    klass, status, stamp = STEPS[kind]
    ids = {t: _id(stay, t) for t in ("Encounter", "Patient", "Location", "Practitioner",
                                     "Organization", "Condition", "Coverage", "Payer")}

    def ref(rtype: str, key: str | None = None) -> dict:
        rid = ids[key or rtype]
        return {"reference": f"{rtype}/{rid}" if plain_ids else f"urn:uuid:{rid}"}

    period = {"start": "2026-03-01T09:40:00-06:00"}
    if status == "finished":
        period["end"] = "2026-03-04T10:30:00-06:00"
    encounter = {
        "resourceType": "Encounter", "id": ids["Encounter"], "status": status,
        "class": {"system": ACT_CODE, "code": klass},
        "identifier": [{"system": VISITS, "value": stay}],
        "subject": ref("Patient"), "period": period,
        "participant": [{"individual": ref("Practitioner")}],
        "location": [{"location": ref("Location")}], "serviceProvider": ref("Organization")}
    if kind != "admit":
        encounter["hospitalization"] = {"admitSource": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/admit-source", "code": "emd"}]}}
    if kind == "discharge":
        encounter["hospitalization"]["dischargeDisposition"] = {"coding": [{
            "system": "http://www.nubc.org/patient-discharge", "code": "01"}]}
    header = {
        "resourceType": "MessageHeader", "id": header_id or _id(stay, kind, "header"),
        "eventCoding": {"system": EVENTS, "code": f"notification-{kind}"},
        "source": {"name": "Test Hospital ADT", "endpoint": SENDER},
        "sender": ref("Organization"), "author": ref("Practitioner"), "focus": [ref("Encounter")]}
    resources = [
        header, encounter,
        {"resourceType": "Patient", "id": ids["Patient"], "identifier": identifiers,
         "name": [{"family": "Testpatient", "given": ["Hospital"]}], "gender": "female",
         "birthDate": "1980-02-02"},
        {"resourceType": "Location", "id": ids["Location"], "name": "Test Hospital ED",
         "status": "active"},
        {"resourceType": "Practitioner", "id": ids["Practitioner"],
         "identifier": [{"system": NPI, "value": "9999999991"}],
         "name": [{"family": "Attending", "given": ["Test"]}]},
        {"resourceType": "Organization", "id": ids["Organization"], "name": "Test Hospital",
         "identifier": [{"system": NPI, "value": "9999999992"}]},
        {"resourceType": "Condition", "id": ids["Condition"], "subject": ref("Patient"),
         "encounter": ref("Encounter"),
         "category": [{"coding": [{
             "system": "http://terminology.hl7.org/CodeSystem/condition-category",
             "code": "encounter-diagnosis"}]}],
         "code": {"coding": [{"system": ICD10CM, "code": "F32.9"}]}},
        {"resourceType": "Coverage", "id": ids["Coverage"], "status": "active",
         "beneficiary": ref("Patient"), "payor": [ref("Organization", "Payer")]},
        {"resourceType": "Organization", "id": ids["Payer"], "name": "Test Medicaid Plan"},
    ]
    base = "https://hospital.example.org/fhir"
    return {"resourceType": "Bundle", "id": _id(stay, kind, "bundle"), "type": "message",
            "timestamp": stamp,
            "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}" if plain_ids
                       else f"urn:uuid:{r['id']}", "resource": copy.deepcopy(r)}
                      for r in resources]}
