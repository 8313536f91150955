"""Profile conformance (validation/conformance.py) against small hand-written R4 snapshots.

Each profile below is in snapshot form, as an IG package ships it; each test breaks one
rule of one profile and checks the issue's severity, code, wording and FHIRPath location.
At the end, the Health Home IG itself (profiles/package) is run over its examples
(profiles/examples/manifest.json): each gets the manifest's verdict and expected paths.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from fhir_gateway.validation import conformance as cv
from fhir_gateway.validation.conformance import compiled, validate, validate_declared
from fhir_gateway.validation.profiles import Conformance

HH = "http://example.org/fhir/hh"
SD = f"{HH}/StructureDefinition"
VS = f"{HH}/ValueSet"
CS = f"{HH}/CodeSystem"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MRN = "http://example.org/mrn"
MEDICAID = "http://example.org/medicaid"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
GENDER = "http://hl7.org/fhir/administrative-gender"
ELE_1 = {"key": "ele-1", "severity": "error", "human": "All FHIR elements must have a @value or children",
         "expression": "hasValue() or (children().count() > id.count())"}
DOM_SOURCE = {"source": "http://hl7.org/fhir/StructureDefinition/DomainResource"}
DOM = [{"key": "dom-2", "severity": "error", "human": "If the resource is contained in another resource, it SHALL NOT contain nested Resources",
        "expression": "contained.contained.empty()"},
       {"key": "dom-3", "severity": "error", "human": "If the resource is contained in another resource, it SHALL be referred to from elsewhere in the resource or SHALL refer to the containing resource",
        "expression": "contained.where((('#'+id in (%resource.descendants().reference | %resource.descendants().as(canonical) | %resource.descendants().as(uri) | %resource.descendants().as(url))) or descendants().where(reference = '#').exists() or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#').exists()).not()).trace('unmatched', id).empty()"},
       {"key": "dom-4", "severity": "error", "human": "If a resource is contained in another resource, it SHALL NOT have a meta.versionId or a meta.lastUpdated",
        "expression": "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()"},
       {"key": "dom-5", "severity": "error", "human": "If a resource is contained in another resource, it SHALL NOT have a security label",
        "expression": "contained.meta.security.empty()"}]
DOM = [{**c, **DOM_SOURCE} for c in DOM]
EXT_1 = {"key": "ext-1", "severity": "error", "human": "Must have either extensions or value[x], not both",
         "expression": "extension.exists() != value.exists()"}


# -- builders for snapshot StructureDefinitions ---------------------------------------------

def el(eid: str, min_: int = 0, max_: str = "*", types: str | list | None = None, **extra) -> dict:
    """One snapshot element; path and sliceName come from the id, as in R4 snapshots."""
    element = {"id": eid, "path": re.sub(r":[^.]+", "", eid), "min": min_, "max": max_}
    if "." in eid:
        element["constraint"] = [ELE_1]  # as in R4: on every element but a resource's root
    last = eid.rsplit(".", 1)[-1]
    if ":" in last:
        element["sliceName"] = last.split(":", 1)[1]
    if isinstance(types, str):
        element["type"] = [{"code": t} for t in types.split("|")]
    elif types is not None:
        element["type"] = types
    for key, value in extra.items():
        if key == "constraint":
            element["constraint"] = element.get("constraint", []) + value
        else:
            element[key] = value
    return element


def ext_type(url: str) -> list:
    return [{"code": "Extension", "profile": [url]}]


def ref(*targets: str) -> list:
    return [{"code": "Reference", "targetProfile": list(targets)}]


def required(vs: str) -> dict:
    return {"binding": {"strength": "required", "valueSet": vs}}


def sd(name: str, type_: str, elements: list, kind: str = "resource") -> dict:
    return {"resourceType": "StructureDefinition", "id": name, "url": f"{SD}/{name}",
            "version": "1.0.0", "name": name, "status": "active", "kind": kind,
            "abstract": False, "type": type_, "derivation": "constraint",
            "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{type_}",
            "snapshot": {"element": elements}}


def inv(key: str, expression: str, human: str, severity: str = "error") -> dict:
    return {"key": key, "severity": severity, "human": human, "expression": expression}


def cc(system: str, code: str, **more) -> dict:
    return {"coding": [{"system": system, "code": code}], **more}


SLICE_BY_URL = {"slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}}

RISK_TIER_EXT = sd("hh-risk-tier", "Extension", [
    el("Extension", 0, "*", constraint=[EXT_1]),
    el("Extension.id", 0, "1", "string"),
    el("Extension.extension", 0, "0", "Extension"),
    el("Extension.url", 1, "1", "uri", fixedUri=f"{SD}/hh-risk-tier"),
    el("Extension.value[x]", 1, "1", "CodeableConcept", **required(f"{VS}/hh-risk-tier")),
], kind="complex-type")

ENROLLMENT_EXT = sd("hh-enrollment", "Extension", [
    el("Extension", 0, "*", constraint=[EXT_1]),
    el("Extension.extension", 1, "*", "Extension", constraint=[EXT_1],
       slicing={"discriminator": [{"type": "value", "path": "url"}], "rules": "closed"}),
    el("Extension.extension:program", 1, "1", "Extension", constraint=[EXT_1]),
    el("Extension.extension:program.url", 1, "1", "uri", fixedUri="program"),
    el("Extension.extension:program.value[x]", 1, "1", "Coding", **required(f"{VS}/hh-program")),
    el("Extension.extension:start", 0, "1", "Extension", constraint=[EXT_1]),
    el("Extension.extension:start.url", 1, "1", "uri", fixedUri="start"),
    el("Extension.extension:start.value[x]", 1, "1", "date"),
    el("Extension.url", 1, "1", "uri", fixedUri=f"{SD}/hh-enrollment"),
    el("Extension.value[x]", 0, "0", "string"),
], kind="complex-type")

ORGANIZATION = sd("hh-organization", "Organization", [
    el("Organization"),
    el("Organization.name", 1, "1", "string"),
])

PATIENT = sd("hh-patient", "Patient", [
    el("Patient", 0, "*", constraint=[
        *DOM,
        inv("hh-1", "active = false implies managingOrganization.exists()",
            "An inactive patient must name its managing organization"),
        inv("hh-3", "name.all(hasValue())", "Uses a function fhirpathpy does not implement"),
        inv("hh-4", "name.where(", "Does not parse"),
        inv("hh-7", "name.empty() ))", "Does not parse either (fhirpathpy alone would drop the '))')"),
        {**inv("dom-6", "false", "A core best practice", severity="warning"),
         "source": "http://hl7.org/fhir/StructureDefinition/DomainResource"},
        inv("hh-6", "name.trace('names').exists()", "Traces, quietly")]),
    el("Patient.id", 0, "1", "id"),
    el("Patient.extension", 0, "*", "Extension", constraint=[EXT_1], **SLICE_BY_URL),
    el("Patient.extension:riskTier", 1, "1", ext_type(f"{SD}/hh-risk-tier"), constraint=[EXT_1]),
    el("Patient.extension:enrollment", 0, "1", ext_type(f"{SD}/hh-enrollment"), constraint=[EXT_1]),
    el("Patient.identifier", 1, "*", "Identifier",
       slicing={"discriminator": [{"type": "value", "path": "system"}], "rules": "open"}),
    el("Patient.identifier.system", 0, "1", "uri"),
    el("Patient.identifier.value", 0, "1", "string"),
    el("Patient.identifier:mrn", 1, "1", "Identifier"),
    el("Patient.identifier:mrn.system", 1, "1", "uri", fixedUri=MRN),
    el("Patient.identifier:mrn.value", 1, "1", "string"),
    el("Patient.identifier:medicaid", 0, "1", "Identifier"),
    el("Patient.identifier:medicaid.type", 1, "1", "CodeableConcept",
       patternCodeableConcept={"coding": [{"system": V2_0203, "code": "MA"}]}),
    el("Patient.identifier:medicaid.system", 1, "1", "uri", patternUri=MEDICAID),
    el("Patient.active", 0, "1", "boolean"),
    el("Patient.name", 1, "*", "HumanName"),
    el("Patient.name.family", 1, "1", "string"),
    el("Patient.name.given", 0, "*", "string"),
    el("Patient.telecom", 0, "2", "ContactPoint"),
    el("Patient.gender", 1, "1", "code", **required(f"{VS}/hh-gender")),
    el("Patient.birthDate", 1, "1", "date"),
    el("Patient.deceased[x]", 0, "0", "boolean|dateTime"),
    el("Patient.maritalStatus", 0, "1", "CodeableConcept", **required(f"{VS}/hh-marital")),
    el("Patient.photo", 0, "0", "Attachment"),
    el("Patient.contact", 0, "*", "BackboneElement", constraint=[
        inv("hh-2", "name.exists() or telecom.exists()", "A contact must have a name or a telecom")]),
    el("Patient.contact.relationship", 1, "*", "CodeableConcept"),
    el("Patient.contact.name", 0, "1", "HumanName"),
    el("Patient.contact.telecom", 0, "*", "ContactPoint"),
    el("Patient.communication", 0, "*", "BackboneElement"),
    el("Patient.communication.language", 1, "1", "CodeableConcept",
       binding={"strength": "extensible", "valueSet": f"{VS}/hh-language"}),
    el("Patient.generalPractitioner", 0, "*",
       ref("http://hl7.org/fhir/StructureDefinition/Practitioner")),
    el("Patient.managingOrganization", 0, "1", ref(f"{SD}/hh-organization")),
])

OBSERVATION = sd("hh-risk-observation", "Observation", [
    el("Observation", 0, "*", constraint=[
        inv("hh-obs-1", "value.exists() or dataAbsentReason.exists()",
            "A risk observation has a value or says why not")]),
    el("Observation.status", 1, "1", "code", fixedCode="final"),
    el("Observation.category", 1, "*", "CodeableConcept",
       slicing={"discriminator": [{"type": "pattern", "path": "$this"}], "rules": "closed"}),
    el("Observation.category:hh", 1, "1", "CodeableConcept",
       patternCodeableConcept=cc(f"{CS}/hh-category", "risk")),
    el("Observation.category:survey", 0, "1", "CodeableConcept",
       patternCodeableConcept=cc("http://terminology.hl7.org/CodeSystem/observation-category",
                                 "survey")),
    el("Observation.code", 1, "1", "CodeableConcept", patternCodeableConcept=cc(LOINC, "99999-9")),
    el("Observation.subject", 1, "1", ref("http://hl7.org/fhir/StructureDefinition/Patient")),
    el("Observation.value[x]", 0, "1", "Quantity|CodeableConcept",
       slicing={"discriminator": [{"type": "type", "path": "$this"}], "rules": "open"}),
    el("Observation.value[x]:valueQuantity", 0, "1", "Quantity"),
    el("Observation.value[x]:valueQuantity.system", 1, "1", "uri", fixedUri=UCUM),
    el("Observation.value[x]:valueQuantity.code", 1, "1", "code"),
    el("Observation.value[x]:valueCodeableConcept", 0, "1", "CodeableConcept",
       **required(f"{VS}/hh-risk-tier")),
    el("Observation.dataAbsentReason", 0, "1", "CodeableConcept"),
    el("Observation.component", 0, "*", "BackboneElement", constraint=[
        inv("hh-obs-2", "value.exists() or dataAbsentReason.exists()", "A component has a value")],
       slicing={"discriminator": [{"type": "pattern", "path": "code"}], "ordered": True,
                "rules": "open"}),
    el("Observation.component.code", 1, "1", "CodeableConcept"),
    el("Observation.component.value[x]", 0, "1", "Quantity|CodeableConcept|string"),
    el("Observation.component.dataAbsentReason", 0, "1", "CodeableConcept"),
    el("Observation.component:score", 0, "1", "BackboneElement"),
    el("Observation.component:score.code", 1, "1", "CodeableConcept",
       patternCodeableConcept=cc(LOINC, "score")),
    el("Observation.component:score.value[x]", 1, "1", "Quantity"),
    el("Observation.component:tier", 0, "1", "BackboneElement"),
    el("Observation.component:tier.code", 1, "1", "CodeableConcept",
       patternCodeableConcept=cc(LOINC, "tier")),
    el("Observation.component:tier.value[x]", 1, "1", "CodeableConcept",
       **required(f"{VS}/hh-risk-tier")),
])

CLAIM = sd("hh-claim", "Claim", [
    el("Claim"),
    el("Claim.extension", 0, "*", "Extension", constraint=[EXT_1], **SLICE_BY_URL),
    el("Claim.status", 1, "1", "code"),
    el("Claim.item", 1, "*", "BackboneElement"),
    el("Claim.item.sequence", 1, "1", "positiveInt"),
    el("Claim.item.productOrService", 1, "1", "CodeableConcept", **required(f"{VS}/hh-service")),
])

CODE_SYSTEMS = [
    {"resourceType": "CodeSystem", "id": "hh-risk-tier", "url": f"{CS}/hh-risk-tier",
     "status": "active", "content": "complete",
     "concept": [{"code": "low"}, {"code": "moderate"},
                 {"code": "high", "concept": [{"code": "very-high"}]}]},
    {"resourceType": "CodeSystem", "id": "hh-program", "url": f"{CS}/hh-program",
     "status": "active", "content": "complete",
     "concept": [{"code": "smi"}, {"code": "cci"}, {"code": "retired"}]},
    {"resourceType": "CodeSystem", "id": "hh-service", "url": f"{CS}/hh-service",
     "status": "active", "content": "complete",
     "concept": [{"code": "care-mgmt"}, {"code": "care-coord", "concept": [{"code": "transition"}]}]},
    {"resourceType": "CodeSystem", "id": "hh-fragment", "url": f"{CS}/hh-fragment",
     "status": "active", "content": "fragment", "concept": [{"code": "a"}]},
]


def vs(name: str, *include: dict, exclude: list | None = None) -> dict:
    compose = {"include": list(include)}
    if exclude:
        compose["exclude"] = exclude
    return {"resourceType": "ValueSet", "id": name, "url": f"{VS}/{name}", "status": "active",
            "compose": compose}


VALUE_SETS = [
    vs("hh-risk-tier", {"system": f"{CS}/hh-risk-tier"}),
    vs("hh-program", {"system": f"{CS}/hh-program"},
       exclude=[{"system": f"{CS}/hh-program", "concept": [{"code": "retired"}]}]),
    vs("hh-service", {"system": f"{CS}/hh-service"}),
    vs("hh-gender", {"system": GENDER, "concept": [{"code": "male"}, {"code": "female"}]}),
    vs("hh-language", {"system": "urn:ietf:bcp:47", "concept": [{"code": "en"}, {"code": "es"}]}),
    vs("hh-marital", {"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                      "filter": [{"property": "concept", "op": "is-a", "value": "M"}]}),
    vs("hh-external", {"system": "http://snomed.info/sct"}),
    vs("hh-filtered-local", {"system": f"{CS}/hh-risk-tier",
                             "filter": [{"property": "concept", "op": "is-a", "value": "high"}]}),
    vs("hh-fragment", {"system": f"{CS}/hh-fragment"}),
    vs("hh-union", {"valueSet": [f"{VS}/hh-risk-tier"]}, {"valueSet": [f"{VS}/hh-gender"]}),
    vs("hh-intersection", {"valueSet": [f"{VS}/hh-risk-tier", f"{VS}/hh-gender"]}),
    vs("hh-low", {"system": f"{CS}/hh-risk-tier", "concept": [{"code": "low"}, {"code": "other"}]}),
    vs("hh-low-only", {"valueSet": [f"{VS}/hh-risk-tier"], "system": f"{CS}/hh-risk-tier",
                       "concept": [{"code": "low"}, {"code": "other"}]}),
    vs("hh-bad-exclude", {"system": f"{CS}/hh-risk-tier"},
       exclude=[{"system": "http://snomed.info/sct"}]),
]

ALL = [RISK_TIER_EXT, ENROLLMENT_EXT, ORGANIZATION, PATIENT, OBSERVATION, CLAIM,
       *CODE_SYSTEMS, *VALUE_SETS]


@pytest.fixture(scope="module")
def package() -> Conformance:
    return Conformance(copy.deepcopy(ALL), canonical=HH)


# -- resources that conform --------------------------------------------------------------

def patient(**changes) -> dict:
    resource = {
        "resourceType": "Patient", "id": "p1",
        "extension": [
            {"url": f"{SD}/hh-risk-tier", "valueCodeableConcept": cc(f"{CS}/hh-risk-tier", "high")},
            {"url": f"{SD}/hh-enrollment", "extension": [
                {"url": "program", "valueCoding": {"system": f"{CS}/hh-program", "code": "smi"}},
                {"url": "start", "valueDate": "2024-01-01"}]},
            {"url": "http://other.example/unrelated", "valueString": "ignored"}],
        "identifier": [
            {"system": MRN, "value": "12345"},
            {"system": MEDICAID, "value": "M-1",
             "type": {"coding": [{"system": V2_0203, "code": "MA", "display": "Medicaid"}],
                      "text": "Medicaid number"}},
            {"system": "http://example.org/other", "value": "x"}],
        "active": True,
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "gender": "female",
        "birthDate": "1980-04-01",
        "maritalStatus": cc("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "S"),
        "contact": [{"relationship": [{"text": "sister"}], "name": {"family": "Doe"}}],
        "communication": [{"language": cc("urn:ietf:bcp:47", "en")}],
        "generalPractitioner": [{"reference": "Practitioner/7"}],
        "managingOrganization": {"reference": "Organization/hh-1"},
    }
    resource.update(changes)
    return resource


def observation(**changes) -> dict:
    resource = {
        "resourceType": "Observation", "id": "o1", "status": "final",
        "category": [cc(f"{CS}/hh-category", "risk", text="Risk")],
        "code": {"coding": [{"system": "http://example.org/local", "code": "r"},
                            {"system": LOINC, "code": "99999-9", "display": "Risk score"}]},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": 3, "system": UCUM, "code": "{score}"},
        "component": [
            {"code": cc(LOINC, "score"), "valueQuantity": {"value": 12, "system": UCUM, "code": "1"}},
            {"code": cc(LOINC, "tier"), "valueCodeableConcept": cc(f"{CS}/hh-risk-tier", "low")},
            {"code": cc(LOINC, "other"), "valueString": "free"}],
    }
    resource.update(changes)
    return resource


def claim(**changes) -> dict:
    resource = {"resourceType": "Claim", "id": "c1", "status": "active",
                "item": [{"sequence": 1, "productOrService": cc(f"{CS}/hh-service", "care-mgmt")},
                         {"sequence": 2, "productOrService": cc(f"{CS}/hh-service", "transition")}]}
    resource.update(changes)
    return resource


def issues_at(issues, expression: str) -> list:
    return [i for i in issues if expression in i.expression]


def only(issues, expression: str, code: str | None = None, severity: str = "error",
         text: str = ""):
    """The single issue at `expression` (with that code, severity and diagnostics text)."""
    found = [i for i in issues_at(issues, expression)
             if (code is None or i.code == code) and i.severity == severity
             and text in i.diagnostics]
    assert len(found) == 1, f"expected one {severity} at {expression}, got {issues}"
    return found[0]


def errors(issues) -> list:
    return [i for i in issues if i.severity == "error"]


@pytest.mark.parametrize("make, url", [(patient, "hh-patient"), (observation, "hh-risk-observation"),
                                       (claim, "hh-claim")])
def test_conforming_resources_have_no_issues(package, make, url):
    assert validate(make(), f"{SD}/{url}", package) == []


# -- the package -------------------------------------------------------------------------

def test_load_reads_every_resource_of_a_package_folder(tmp_path):
    (tmp_path / "package.json").write_text(json.dumps(
        {"name": "example.hh", "version": "0.1.0", "canonical": HH}))
    (tmp_path / ".index.json").write_text(json.dumps({"index-version": 1, "files": []}))
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a resource"}))
    for resource in ALL:
        (tmp_path / f"{resource['resourceType']}-{resource['id']}.json").write_text(json.dumps(resource))
    (tmp_path / "example").mkdir()
    (tmp_path / "example" / "Patient-x.json").write_text(json.dumps(patient()))

    package = Conformance.load(tmp_path)

    assert package.canonical == HH and package.name == "example.hh"
    assert package.structure_definition(f"{SD}/hh-patient")["name"] == "hh-patient"
    assert package.structure_definition(f"{SD}/hh-patient|1.0.0")["name"] == "hh-patient"
    assert package.structure_definition(f"{SD}/nothing") is None
    assert package.profiles_for_type("Patient") == [f"{SD}/hh-patient"]
    assert package.profiles_for_type("Extension") == []
    assert sorted(package.extensions()) == [f"{SD}/hh-enrollment", f"{SD}/hh-risk-tier"]
    assert package.value_set(f"{VS}/hh-gender")["id"] == "hh-gender"
    assert package.code_system(f"{CS}/hh-program")["id"] == "hh-program"
    assert validate(patient(), f"{SD}/hh-patient", package) == []


def test_value_set_expansion(package):
    risk = f"{CS}/hh-risk-tier"
    assert package.value_set_codes(f"{VS}/hh-risk-tier") == {
        (risk, "low"), (risk, "moderate"), (risk, "high"), (risk, "very-high")}  # nested concepts
    assert package.value_set_codes(f"{VS}/hh-gender") == {(GENDER, "male"), (GENDER, "female")}
    assert (f"{CS}/hh-program", "retired") not in package.value_set_codes(f"{VS}/hh-program")
    assert len(package.value_set_codes(f"{VS}/hh-program")) == 2  # exclude
    assert package.value_set_codes(f"{VS}/hh-union") == (
        package.value_set_codes(f"{VS}/hh-risk-tier") | package.value_set_codes(f"{VS}/hh-gender"))
    assert package.value_set_codes(f"{VS}/hh-intersection") == set()  # valueSets in one include
    assert package.value_set_codes(f"{VS}/hh-low-only") == {(risk, "low")}  # system part & valueSet
    assert package.value_set_codes(f"{VS}/hh-gender|1.0") is not None  # a versioned canonical
    for unknown in ("hh-marital", "hh-external", "hh-filtered-local", "hh-fragment", "hh-bad-exclude", "nope"):
        assert package.value_set_codes(f"{VS}/{unknown}") is None, unknown
    assert package.value_set_codes(f"{VS}/hh-risk-tier") is package.value_set_codes(f"{VS}/hh-risk-tier")


def test_value_set_imports_that_cycle_cannot_be_expanded():
    loop = Conformance([vs("a", {"valueSet": [f"{VS}/b"]}), vs("b", {"valueSet": [f"{VS}/a"]})])
    assert loop.value_set_codes(f"{VS}/a") is None


def test_profile_is_compiled_once_per_package(package):
    assert compiled(package, f"{SD}/hh-patient") is compiled(package, f"{SD}/hh-patient")
    assert compiled(package, f"{SD}/nothing") is None


def test_prepare_compiles_every_profile_up_front():
    package = Conformance(copy.deepcopy(ALL))
    assert cv.prepare(package) == 6
    assert set(package.memo["profiles"]) == {
        sd["url"] for sd in ALL if sd["resourceType"] == "StructureDefinition"}


def test_unknown_profile_and_wrong_resource_type(package):
    [issue] = validate(patient(), f"{SD}/nothing", package)
    assert "is not known" in issue.diagnostics
    [issue] = validate(claim(), f"{SD}/hh-patient", package)
    assert "is for Patient resources, not Claim" in issue.diagnostics


# -- cardinality -------------------------------------------------------------------------

def test_missing_required_element(package):
    resource = patient()
    del resource["birthDate"]
    issues = validate(resource, f"{SD}/hh-patient", package)
    issue = only(issues, "Patient", "required")  # located at the parent, as HAPI does
    assert issue.diagnostics.startswith("Patient.birthDate: minimum required = 1, but only found 0")
    assert len(issues) == 1


def test_nested_cardinality_is_checked_within_each_present_parent(package):
    resource = patient(name=[{"family": "Doe"}, {"given": ["J"]}])
    issues = validate(resource, f"{SD}/hh-patient", package)
    issue = only(issues, "Patient.name[1]", "required")
    assert issue.diagnostics.startswith("Patient.name.family: minimum required = 1, but only found 0")
    assert issues_at(issues, "Patient.name[0]") == [] and len(issues) == 1


def test_backbone_children_only_count_when_the_backbone_is_present(package):
    assert validate(patient(contact=[]), f"{SD}/hh-patient", package) == []  # no contact: fine
    resource = patient(contact=[{"name": {"family": "Roe"}}])
    issue = only(validate(resource, f"{SD}/hh-patient", package), "Patient.contact[0]", "required")
    assert "Patient.contact.relationship: minimum required = 1" in issue.diagnostics


def test_claim_item_children(package):
    resource = claim(item=[{"sequence": 1, "productOrService": cc(f"{CS}/hh-service", "care-mgmt")},
                           {"sequence": 2}])
    issue = only(validate(resource, f"{SD}/hh-claim", package), "Claim.item[1]", "required")
    assert issue.diagnostics.startswith("Claim.item.productOrService: minimum required = 1")


def test_maximum_cardinality(package):
    phones = [{"system": "phone", "value": str(n)} for n in range(3)]
    issue = only(validate(patient(telecom=phones), f"{SD}/hh-patient", package), "Patient")
    assert issue.diagnostics.startswith("Patient.telecom: max allowed = 2, but found 3")
    assert issue.code == "structure"


def test_prohibited_elements(package):
    issues = validate(patient(photo=[{"url": "http://x/p.png"}], deceasedBoolean=False),
                      f"{SD}/hh-patient", package)
    assert len(issues) == 2
    for element in ("Patient.photo", "Patient.deceased[x]"):
        only(issues, "Patient", "structure", text=f"{element}: max allowed = 0, but found 1 (the "
                                                  f"profile prohibits this element)")


# -- choice types ------------------------------------------------------------------------

def test_choice_type_not_allowed_by_the_profile(package):
    resource = observation(valueString="high")
    del resource["valueQuantity"]
    issue = only(validate(resource, f"{SD}/hh-risk-observation", package),
                 "Observation.value.ofType(string)", "structure")
    assert "the type 'string' is not allowed by the profile (allowed: Quantity, CodeableConcept)" in issue.diagnostics


def test_type_slice_children_apply_to_values_of_that_type(package):
    resource = observation(valueQuantity={"value": 3, "system": "http://other", "code": "x"})
    issue = only(validate(resource, f"{SD}/hh-risk-observation", package),
                 "Observation.value.ofType(Quantity).system", "value")
    assert "Value is 'http://other' but is fixed to 'http://unitsofmeasure.org'" in issue.diagnostics
    resource = observation(valueQuantity={"value": 3, "system": UCUM})
    issue = only(validate(resource, f"{SD}/hh-risk-observation", package),
                 "Observation.value.ofType(Quantity)", "required")
    assert issue.diagnostics.startswith("Observation.value[x]:valueQuantity.code: minimum required = 1")


# -- fixed and pattern -------------------------------------------------------------------

def test_fixed_value(package):
    issue = only(validate(observation(status="preliminary"), f"{SD}/hh-risk-observation", package),
                 "Observation.status", "value")
    assert issue.diagnostics.startswith("Value is 'preliminary' but is fixed to 'final' "
                                        "(fixed value of Observation.status")


def test_pattern_value(package):
    resource = observation(code=cc(LOINC, "11111-1"))
    issue = only(validate(resource, f"{SD}/hh-risk-observation", package), "Observation.code", "value")
    assert issue.diagnostics.startswith(f"The pattern {{\"coding\":[{{\"system\":\"{LOINC}\",\"code\":"
                                        f"\"99999-9\"}}]}} defined in the profile {SD}/hh-risk-observation")


def test_pattern_arrays_match_any_item_and_allow_extra_properties():
    pattern = {"coding": [{"system": "s", "code": "a"}]}
    assert cv._contains({"coding": [{"system": "x", "code": "b"},
                                    {"system": "s", "code": "a", "display": "A"}], "text": "t"}, pattern)
    assert not cv._contains({"coding": [{"system": "s", "code": "b"}]}, pattern)
    assert not cv._contains({"text": "a"}, pattern)
    assert not cv._equal({"system": "s", "code": "a", "display": "A"}, {"system": "s", "code": "a"})
    assert not cv._equal(1, True)


def test_pattern_inside_a_slice(package):
    resource = patient()
    resource["identifier"][1]["type"] = cc(V2_0203, "SS")
    issue = only(validate(resource, f"{SD}/hh-patient", package), "Patient.identifier[1].type", "value")
    assert "for Patient.identifier:medicaid.type" in issue.diagnostics


# -- bindings ----------------------------------------------------------------------------

def test_required_binding_on_a_code(package):
    issue = only(validate(patient(gender="other"), f"{SD}/hh-patient", package), "Patient.gender",
                 "code-invalid")
    assert issue.diagnostics == (f"Patient.gender: The code 'other' is not in the value set {VS}/hh-gender, "
                                 f"and a code from this value set is required (codes = other)")


def test_required_binding_on_a_codeable_concept(package):
    resource = claim()
    resource["item"][0]["productOrService"] = {"coding": [{"system": f"{CS}/hh-service", "code": "nope"},
                                                          {"system": "http://other", "code": "care-mgmt"}]}
    issues = validate(resource, f"{SD}/hh-claim", package)
    only(issues, "Claim.item[0].productOrService", "code-invalid",
         text=f"None of the codings provided are in the value set {VS}/hh-service")
    only(issues, "Claim.item[0].productOrService", "code-invalid",
         text=f"Code 'nope' is not found in CodeSystem {CS}/hh-service")
    assert len(issues) == 2
    resource["item"][0]["productOrService"]["coding"][0]["code"] = "care-coord"
    assert validate(resource, f"{SD}/hh-claim", package) == []  # one coding in the set is enough


def test_codes_of_package_code_systems_must_exist_even_without_a_binding(package):
    resource = patient(contact=[{"relationship": [cc(f"{CS}/hh-risk-tier", "nope"),
                                                  cc("http://elsewhere", "nope")],
                                 "name": {"family": "Roe"}}])
    issue = only(validate(resource, f"{SD}/hh-patient", package), "Patient.contact[0].relationship[0]")
    assert issue.diagnostics == f"Code 'nope' is not found in CodeSystem {CS}/hh-risk-tier"
    resource["contact"][0]["relationship"][0] = cc(f"{CS}/hh-risk-tier", "very-high")
    assert validate(resource, f"{SD}/hh-patient", package) == []


def test_required_binding_without_any_code(package):
    resource = claim()
    resource["item"][0]["productOrService"] = {"text": "care management"}
    issue = only(validate(resource, f"{SD}/hh-claim", package), "Claim.item[0].productOrService")
    assert "no code provided" in issue.diagnostics


def test_excluded_codes_are_outside_the_value_set(package):
    resource = patient()
    resource["extension"][1]["extension"][0]["valueCoding"]["code"] = "retired"
    only(validate(resource, f"{SD}/hh-patient", package),
         "Patient.extension[1].extension[0].value.ofType(Coding)", "code-invalid")


def test_extensible_binding_outside_the_set_is_a_warning(package):
    resource = patient(communication=[{"language": cc("urn:ietf:bcp:47", "fr")}])
    issues = validate(resource, f"{SD}/hh-patient", package)
    issue = only(issues, "Patient.communication[0].language", "code-invalid", severity="warning")
    assert "extensible" in issue.diagnostics
    assert errors(issues) == []


def test_bindings_to_value_sets_that_cannot_be_expanded_are_skipped(package):
    resource = patient(maritalStatus=cc("http://example.org/whatever", "Z"))
    assert validate(resource, f"{SD}/hh-patient", package) == []


# -- slicing -----------------------------------------------------------------------------

def test_required_slice_missing(package):
    resource = patient()
    resource["identifier"] = resource["identifier"][1:]
    issue = only(validate(resource, f"{SD}/hh-patient", package), "Patient", "required")
    assert issue.diagnostics.startswith("Slice 'Patient.identifier:mrn': a matching slice is required, "
                                        "but not found")


def test_slice_maximum(package):
    resource = patient()
    resource["identifier"].append({"system": MRN, "value": "2"})
    issue = only(validate(resource, f"{SD}/hh-patient", package), "Patient", "structure")
    assert issue.diagnostics.startswith("Patient.identifier:mrn: max allowed = 1, but found 2")


def test_slice_children_apply_to_the_matched_values_only(package):
    resource = patient()
    resource["identifier"][0] = {"system": MRN}
    issues = validate(resource, f"{SD}/hh-patient", package)
    issue = only(issues, "Patient.identifier[0]", "required")
    assert issue.diagnostics.startswith("Patient.identifier:mrn.value: minimum required = 1")
    assert len(issues) == 1  # not asked of the other identifiers


def test_closed_slicing_rejects_values_that_match_no_slice(package):
    resource = observation(category=[cc(f"{CS}/hh-category", "risk"), cc("http://x", "y")])
    issue = only(validate(resource, f"{SD}/hh-risk-observation", package), "Observation.category[1]")
    assert "does not match any known slice" in issue.diagnostics and "closed" in issue.diagnostics


def test_open_slicing_accepts_values_that_match_no_slice(package):
    resource = patient()
    resource["identifier"].append({"system": "http://yet-another", "value": "1"})
    assert validate(resource, f"{SD}/hh-patient", package) == []


def test_ordered_slicing(package):
    resource = observation()
    resource["component"][:2] = reversed(resource["component"][:2])
    issue = only(validate(resource, f"{SD}/hh-risk-observation", package), "Observation.component[1]")
    assert "out of order" in issue.diagnostics


def test_open_at_end_slicing():
    profile = sd("open-at-end", "Patient", [
        el("Patient"),
        el("Patient.identifier", 0, "*", "Identifier",
           slicing={"discriminator": [{"type": "value", "path": "system"}], "rules": "openAtEnd"}),
        el("Patient.identifier:mrn", 0, "1", "Identifier"),
        el("Patient.identifier:mrn.system", 1, "1", "uri", fixedUri=MRN),
    ])
    url, package = f"{SD}/open-at-end", Conformance([profile])
    mrn, other = {"system": MRN, "value": "1"}, {"system": "http://other", "value": "2"}
    assert validate({"resourceType": "Patient", "identifier": [mrn, other]}, url, package) == []
    issue = only(validate({"resourceType": "Patient", "identifier": [other, mrn]}, url, package),
                 "Patient.identifier[0]", "structure")
    assert "must come after" in issue.diagnostics


def test_slices_by_pattern_on_a_child(package):
    resource = observation()
    resource["component"][1]["valueCodeableConcept"] = cc(f"{CS}/hh-risk-tier", "extreme")
    only(validate(resource, f"{SD}/hh-risk-observation", package),
         "Observation.component[1].value.ofType(CodeableConcept)", "code-invalid",
         text="Observation.component:tier.value[x]: None of the codings provided are in the value set")
    resource = observation()
    resource["component"][0] = {"code": cc(LOINC, "score"), "valueString": "12"}
    issue = only(validate(resource, f"{SD}/hh-risk-observation", package),
                 "Observation.component[0].value.ofType(string)", "structure")
    assert issue.diagnostics.startswith("Observation.component:score.value[x]: the type 'string'")


def test_slices_by_a_required_binding_at_the_discriminator():
    """No fixed/pattern at the discriminator path, but a required binding: its codes decide."""
    profile = sd("by-conformance", "Patient", [
        el("Patient"),
        el("Patient.identifier", 0, "*", "Identifier",
           slicing={"discriminator": [{"type": "value", "path": "use"}], "rules": "closed"}),
        el("Patient.identifier:official", 0, "1", "Identifier"),
        el("Patient.identifier:official.use", 1, "1", "code", **required(f"{VS}/official")),
        el("Patient.identifier:official.value", 1, "1", "string"),
    ])
    package = Conformance([profile, vs("official", {"system": "http://hl7.org/fhir/identifier-use",
                                                     "concept": [{"code": "official"}]})])
    url = f"{SD}/by-conformance"
    assert validate({"resourceType": "Patient", "identifier": [{"use": "official", "value": "1"}]},
                    url, package) == []
    issue = only(validate({"resourceType": "Patient", "identifier": [{"use": "usual", "value": "1"}]},
                          url, package), "Patient.identifier[0]")
    assert "does not match any known slice" in issue.diagnostics
    # the code says which slice it is: the slice's other rules then apply to it
    issue = only(validate({"resourceType": "Patient", "identifier": [{"use": "official"}]}, url, package),
                 "Patient.identifier[0]", "required")
    assert issue.diagnostics.startswith("Patient.identifier:official.value: minimum required = 1")


def test_slicing_without_discriminators_matches_by_conformance():
    """No discriminator at all: a value belongs to the first slice whose definition it meets."""
    profile = sd("no-discriminator", "Patient", [
        el("Patient"),
        el("Patient.identifier", 0, "*", "Identifier", slicing={"rules": "closed"}),
        el("Patient.identifier:withValue", 0, "1", "Identifier"),
        el("Patient.identifier:withValue.value", 1, "1", "string"),
    ])
    url, package = f"{SD}/no-discriminator", Conformance([profile])
    assert validate({"resourceType": "Patient", "identifier": [{"value": "1"}]}, url, package) == []
    only(validate({"resourceType": "Patient", "identifier": [{"system": "s"}]}, url, package),
         "Patient.identifier[0]", "structure")


def test_unreadable_discriminators_fall_back_to_conformance():
    """`value` on `period`, which the slice constrains by cardinality only (no fixed/pattern)."""
    profile = sd("unreadable", "Patient", [
        el("Patient"),
        el("Patient.identifier", 0, "*", "Identifier",
           slicing={"discriminator": [{"type": "value", "path": "period"}], "rules": "closed"}),
        el("Patient.identifier:dated", 0, "1", "Identifier"),
        el("Patient.identifier:dated.period", 1, "1", "Period"),
    ])
    url, package = f"{SD}/unreadable", Conformance([profile])
    dated = {"value": "1", "period": {"start": "2020-01-01"}}
    assert validate({"resourceType": "Patient", "identifier": [dated]}, url, package) == []
    only(validate({"resourceType": "Patient", "identifier": [{"value": "2"}]}, url, package),
         "Patient.identifier[0]", "structure")


def test_exists_discriminator():
    profile = sd("exists", "Patient", [
        el("Patient"),
        el("Patient.identifier", 0, "*", "Identifier",
           slicing={"discriminator": [{"type": "exists", "path": "period"}], "rules": "open"}),
        el("Patient.identifier:dated", 0, "1", "Identifier"),
        el("Patient.identifier:dated.period", 1, "1", "Period"),
        el("Patient.identifier:dated.value", 1, "1", "string"),
    ])
    url, package = f"{SD}/exists", Conformance([profile])
    undated = {"system": "s"}  # would fail the slice's value 1..1 if it were taken for it
    dated = {"system": "s", "period": {"start": "2020-01-01"}}
    assert validate({"resourceType": "Patient", "identifier": [undated]}, url, package) == []
    only(validate({"resourceType": "Patient", "identifier": [undated, dated]}, url, package),
         "Patient.identifier[1]", "required", text="Patient.identifier:dated.value")


BUNDLE = sd("hh-bundle", "Bundle", [
    el("Bundle"),
    el("Bundle.type", 1, "1", "code", fixedCode="collection"),
    el("Bundle.entry", 1, "*", "BackboneElement",
       slicing={"discriminator": [{"type": "profile", "path": "resource"}], "rules": "open"}),
    el("Bundle.entry.resource", 0, "1", "Resource"),
    el("Bundle.entry:patient", 1, "1", "BackboneElement"),
    el("Bundle.entry:patient.fullUrl", 1, "1", "uri"),
    el("Bundle.entry:patient.resource", 1, "1", [{"code": "Patient", "profile": [f"{SD}/hh-patient"]}]),
    el("Bundle.entry:risk", 0, "*", "BackboneElement"),
    el("Bundle.entry:risk.resource", 1, "1",
       [{"code": "Observation", "profile": [f"{SD}/hh-risk-observation"]}]),
])


def test_profile_discriminator_and_resources_inside_resources(package):
    bundle_package = Conformance(copy.deepcopy([*ALL, BUNDLE]))
    url = f"{SD}/hh-bundle"
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": observation()},
                        {"fullUrl": "urn:uuid:4a1c6e1e-0000-0000-0000-000000000001", "resource": patient()}]}
    assert validate(bundle, url, bundle_package) == []
    del bundle["entry"][1]["fullUrl"]  # still the patient entry, by its profile: so fullUrl is missing
    issue = only(validate(bundle, url, bundle_package), "Bundle.entry[1]", "required")
    assert issue.diagnostics.startswith("Bundle.entry:patient.fullUrl: minimum required = 1")
    bundle["entry"][1] = {"fullUrl": "urn:uuid:4a1c6e1e-0000-0000-0000-000000000001",
                          "resource": patient(gender="other")}  # no longer an hh-patient
    issue = only(validate(bundle, url, bundle_package), "Bundle", "required")
    assert issue.diagnostics.startswith("Slice 'Bundle.entry:patient': a matching slice is required")
    bundle["entry"][1]["resource"] = patient()
    bundle["entry"][0]["resource"] = observation(status="amended")  # matches no slice (open)
    assert validate(bundle, url, bundle_package) == []


def test_resources_inside_resources_are_their_own_percent_resource(package):
    """%resource in an invariant of an entry's profile is the entry's resource."""
    own = sd("own", "Patient", [el("Patient", 0, "*", constraint=[
        inv("hh-own", "%resource.id = 'p1'", "The patient is p1")])])
    bundle_profile = sd("own-bundle", "Bundle", [
        el("Bundle"),
        el("Bundle.entry", 0, "*", "BackboneElement"),
        el("Bundle.entry.resource", 0, "1", [{"code": "Resource", "profile": [f"{SD}/own"]}]),
    ])
    nested = Conformance([own, bundle_profile])
    bundle = {"resourceType": "Bundle", "id": "b", "type": "collection",
              "entry": [{"resource": {"resourceType": "Patient", "id": "p1", "active": True}},
                        {"resource": {"resourceType": "Patient", "id": "p2", "active": True}}]}
    issues = validate(bundle, f"{SD}/own-bundle", nested)
    issue = only(issues, "Bundle.entry[1].resource", "invariant")
    assert "hh-own" in issue.diagnostics and len(issues) == 1


def test_a_value_with_several_profiles_must_meet_one():
    needs_gender = sd("needs-gender", "Patient", [el("Patient"), el("Patient.gender", 1, "1", "code")])
    needs_birth = sd("needs-birth", "Patient", [el("Patient"), el("Patient.birthDate", 1, "1", "date")])
    bundle_profile = sd("either-bundle", "Bundle", [
        el("Bundle"),
        el("Bundle.entry", 0, "*", "BackboneElement"),
        el("Bundle.entry.resource", 0, "1",
           [{"code": "Resource", "profile": [f"{SD}/needs-gender", f"{SD}/needs-birth"]}]),
    ])
    package = Conformance([needs_gender, needs_birth, bundle_profile])
    entries = [{"resource": {"resourceType": "Patient", "gender": "male"}},
               {"resource": {"resourceType": "Patient", "birthDate": "2000-01-01"}},
               {"resource": {"resourceType": "Patient", "active": True}}]
    issues = validate({"resourceType": "Bundle", "type": "collection", "entry": entries},
                      f"{SD}/either-bundle", package)
    issue = only(issues, "Bundle.entry[2].resource", "structure")
    assert issue.diagnostics == (f"Bundle.entry.resource: the value conforms to none of the profiles "
                                 f"{SD}/needs-gender, {SD}/needs-birth")
    assert len(issues) == 1


# -- extensions --------------------------------------------------------------------------

def test_required_extension_missing(package):
    resource = patient()
    del resource["extension"][0]
    issue = only(validate(resource, f"{SD}/hh-patient", package), "Patient", "required")
    assert issue.diagnostics.startswith(f"Slice 'Patient.extension:riskTier' for extension "
                                        f"'{SD}/hh-risk-tier': a matching slice is required")


def test_extension_value_type_comes_from_the_extension_definition(package):
    resource = patient()
    resource["extension"][0] = {"url": f"{SD}/hh-risk-tier", "valueString": "extreme"}
    issues = validate(resource, f"{SD}/hh-patient", package)
    issue = only(issues, "Patient.extension[0].value.ofType(string)", "structure")
    assert issue.diagnostics.startswith("Extension.value[x]: the type 'string' is not allowed")
    assert len(issues) == 1  # and no binding issue about a value of the wrong type


def test_extension_value_binding_comes_from_the_extension_definition(package):
    resource = patient()
    resource["extension"][0]["valueCodeableConcept"] = cc(f"{CS}/hh-risk-tier", "extreme")
    only(validate(resource, f"{SD}/hh-patient", package),
         "Patient.extension[0].value.ofType(CodeableConcept)", "code-invalid",
         text=f"Extension.value[x]: None of the codings provided are in the value set {VS}/hh-risk-tier")


def test_package_extensions_are_checked_where_the_profile_does_not_slice_them(package):
    resource = claim(extension=[{"url": f"{SD}/hh-risk-tier", "valueString": "high"}])
    only(validate(resource, f"{SD}/hh-claim", package), "Claim.extension[0].value.ofType(string)")


def test_complex_extension(package):
    resource = patient()
    enrollment = resource["extension"][1]
    enrollment["extension"] = [{"url": "start", "valueDate": "2024-01-01"},
                               {"url": "unknown", "valueString": "x"}]
    enrollment["valueString"] = "not allowed"
    issues = validate(resource, f"{SD}/hh-patient", package)
    only(issues, "Patient.extension[1]", "required",
         text="Slice 'Extension.extension:program': a matching slice is required")
    assert "closed" in only(issues, "Patient.extension[1].extension[1]").diagnostics
    only(issues, "Patient.extension[1]", "structure", text="Extension.value[x]: max allowed = 0")
    only(issues, "Patient.extension[1]", "invariant", text="Constraint failed: ext-1:")
    assert len(issues) == 4


def test_extension_without_value_or_children_fails_ext_1(package):
    resource = patient()
    resource["extension"][2] = {"url": "http://other.example/unrelated"}
    issue = only(validate(resource, f"{SD}/hh-patient", package), "Patient.extension[2]", "invariant")
    assert issue.diagnostics.startswith(
        "Constraint failed: ext-1: 'Must have either extensions or value[x], not both'")


# -- invariants --------------------------------------------------------------------------

def test_root_invariant(package):
    issue = only(validate(patient(active=False, managingOrganization=None), f"{SD}/hh-patient", package),
                 "Patient", "invariant")
    assert issue.diagnostics == (
        f"Constraint failed: hh-1: 'An inactive patient must name its managing organization' "
        f"(defined in {SD}/hh-patient on Patient: active = false implies managingOrganization.exists())")
    issues = validate(patient(contained=[CONTAINED_ORG]), f"{SD}/hh-patient", package)
    assert "(defined in http://hl7.org/fhir/StructureDefinition/DomainResource" in only(
        issues, "Patient", "invariant").diagnostics  # where the constraint comes from


def test_the_igs_own_warning_invariants_are_warnings(package):
    profile = copy.deepcopy(PATIENT)
    profile["snapshot"]["element"][0]["constraint"].append(
        inv("hh-w", "telecom.exists()", "A member should have a phone", severity="warning"))
    package = Conformance([*(r for r in ALL if r is not PATIENT), profile])
    issues = validate(patient(telecom=None), profile["url"], package)
    issue = only(issues, "Patient", "invariant", severity="warning")
    assert issue.diagnostics.startswith("Constraint failed: hh-w: 'A member should have a phone'")
    assert errors(issues) == []


def test_invariant_on_each_backbone_instance(package):
    resource = patient(contact=[{"relationship": [{"text": "x"}], "name": {"family": "A"}},
                                {"relationship": [{"text": "y"}]}])
    issue = only(validate(resource, f"{SD}/hh-patient", package), "Patient.contact[1]", "invariant")
    assert "hh-2" in issue.diagnostics
    assert issues_at(validate(resource, f"{SD}/hh-patient", package), "Patient.contact[0]") == []


def test_invariants_see_choice_elements(package):
    """`value` must find `valueQuantity`: fhirpathpy needs the R4 model and the type."""
    assert validate(observation(), f"{SD}/hh-risk-observation", package) == []
    resource = observation()
    del resource["valueQuantity"]
    issue = only(validate(resource, f"{SD}/hh-risk-observation", package), "Observation", "invariant")
    assert "hh-obs-1" in issue.diagnostics
    resource = observation()  # the same at a backbone element: its type comes from its path
    resource["component"][2] = {"code": cc(LOINC, "other")}
    issue = only(validate(resource, f"{SD}/hh-risk-observation", package), "Observation.component[2]",
                 "invariant")
    assert "hh-obs-2" in issue.diagnostics


def test_invariants_fhirpathpy_cannot_run_report_nothing(package):
    issues = validate(patient(), f"{SD}/hh-patient", package)
    assert issues == []  # hh-3 raises, hh-4 and hh-7 do not parse, dom-6 is a core warning
    assert {"hh-3", "hh-4", "hh-7"} <= set(cv.unevaluable_constraints())
    assert "dom-6" not in cv.unevaluable_constraints()


@pytest.mark.parametrize("extension", [
    {"url": "u", "valueString": "x"}, {"url": "u"}, {"url": "u", "extension": [{"url": "v", "valueBoolean": True}]},
    {"url": "u", "valueCodeableConcept": {"text": "t"}, "extension": [{"url": "v", "valueInteger": 1}]},
    {"url": "u", "_valueString": {"id": "x"}}])
def test_native_ext_1_agrees_with_fhirpathpy(extension):
    from fhirpathpy import evaluate
    from fhirpathpy.models import models

    expected = evaluate(extension, {"base": "Extension", "expression": EXT_1["expression"]},
                        {}, models["r4"])
    assert cv._native_ext_1(cv.Item(extension, "", "Extension", extension)) is expected[0]


def test_unrunnable_expressions_are_not_retried(package, monkeypatch):
    validate(patient(), f"{SD}/hh-patient", package)
    assert "name.all(hasValue())" in cv._unrunnable and "name.where(" in cv._unrunnable
    calls, parse = [], cv._parsed
    monkeypatch.setattr(cv, "_parsed", lambda expression: calls.append(expression) or parse(expression))
    validate(patient(), f"{SD}/hh-patient", package)
    assert "name.all(hasValue())" not in calls and calls  # hh-1 is still evaluated


CONTAINED_ORG = {"resourceType": "Organization", "id": "o", "name": "HH"}


@pytest.mark.parametrize("contained, managing, failing", [
    ([CONTAINED_ORG], {"reference": "#o"}, None),
    ([CONTAINED_ORG], {"reference": "Organization/1"}, "dom-3"),  # contained, never referenced
    ([{**CONTAINED_ORG, "partOf": {"reference": "#"}}], {"reference": "Organization/1"}, None),
    ([{**CONTAINED_ORG, "contained": [{"resourceType": "Organization", "id": "x", "name": "X"}]}],
     {"reference": "#o"}, "dom-2"),
    ([{**CONTAINED_ORG, "meta": {"versionId": "1"}}], {"reference": "#o"}, "dom-4"),
    ([{**CONTAINED_ORG, "meta": {"security": [{"code": "R"}]}}], {"reference": "#o"}, "dom-5"),
])
def test_contained_resource_invariants(package, contained, managing, failing):
    issues = validate(patient(contained=contained, managingOrganization=managing),
                      f"{SD}/hh-patient", package)
    if failing is None:
        assert issues == []
    else:
        only(issues, "Patient", "invariant", text=f"Constraint failed: {failing}:")
        assert len(issues) == 1, issues


@pytest.mark.parametrize("key", ["dom-2", "dom-4", "dom-5"])
@pytest.mark.parametrize("contained", [
    [], [CONTAINED_ORG], [{**CONTAINED_ORG, "contained": [CONTAINED_ORG]}],
    [{**CONTAINED_ORG, "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}],
    [{**CONTAINED_ORG, "meta": {"security": [{"code": "R"}], "versionId": "2"}}]])
def test_native_dom_invariants_agree_with_fhirpathpy(key, contained):
    from fhirpathpy import evaluate
    from fhirpathpy.models import models

    resource = {"resourceType": "Patient", "contained": contained}
    expression = next(c["expression"] for c in DOM if c["key"] == key)
    expected = evaluate(resource, expression, {"resource": resource}, models["r4"])
    assert cv._NATIVE[key](cv.Item(resource, "Patient", "Patient", resource)) is expected[0]


def test_trace_in_an_invariant_prints_nothing(package, capsys):
    validate(patient(), f"{SD}/hh-patient", package)
    assert capsys.readouterr().out == ""


def test_ele_1_is_checked_natively(package):
    assert "ele-1" in cv.NATIVE_CONSTRAINTS
    issue = only(validate(patient(telecom=[{}]), f"{SD}/hh-patient", package), "Patient.telecom[0]",
                 "invariant")
    assert "ele-1" in issue.diagnostics


# -- references --------------------------------------------------------------------------

def test_reference_target_type(package):
    issues = validate(patient(generalPractitioner=[{"reference": "Practitioner/1"},
                                                   {"reference": "Organization/1"}]),
                      f"{SD}/hh-patient", package)
    issue = only(issues, "Patient.generalPractitioner[1]", "structure")
    assert issue.diagnostics == ("Patient.generalPractitioner: the type 'Organization' implied by the "
                                 "reference is not a valid target for this element (must be one of "
                                 "Practitioner)")
    assert issues_at(issues, "Patient.generalPractitioner[0]") == []


def test_reference_target_profile_from_the_package(package):
    url = f"{SD}/hh-patient"
    assert validate(patient(managingOrganization={"reference": "http://h/fhir/Organization/1/_history/2"}),
                    url, package) == []
    contained = patient(contained=[{"resourceType": "Organization", "id": "o", "name": "HH"}],
                        managingOrganization={"reference": "#o"})
    assert validate(contained, url, package) == []
    only(validate(patient(managingOrganization={"reference": "Patient/2"}), url, package),
         "Patient.managingOrganization")


def test_reference_that_cannot_be_decided_is_a_warning(package):
    issues = validate(patient(managingOrganization={"reference": "urn:uuid:8d6d5a36-0000-0000-0000-000000000000"}),
                      f"{SD}/hh-patient", package)
    issue = only(issues, "Patient.managingOrganization", severity="warning")
    assert "cannot tell the type" in issue.diagnostics
    assert errors(issues) == []


def test_validate_declared_profiles(package):
    resource = patient(gender="other", meta={"profile": [f"{SD}/hh-patient", "http://elsewhere/p"]})
    assert [i.expression for i in validate_declared(resource, package)] == [["Patient.gender"]]


# -- the Health Home IG package and its examples -------------------------------------------

IG = Path(__file__).resolve().parents[1] / "profiles"
MANIFEST = json.loads((IG / "examples" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def ig() -> Conformance:
    return Conformance.load(IG / "package")


@pytest.mark.parametrize("case", MANIFEST, ids=[case["file"] for case in MANIFEST])
def test_ig_examples_get_the_manifest_verdict(ig, case):
    resource = json.loads((IG / "examples" / case["file"]).read_text())
    issues = validate(resource, case["profile"], ig)
    found = errors(issues)
    assert (not found) == case["valid"], [i.to_fhir() for i in issues]
    paths = {expression for issue in found for expression in issue.expression}
    for expected in case["errors"]:
        assert expected["path"] in paths, (expected, [i.to_fhir() for i in issues])


def test_the_igs_own_invariants_are_all_evaluated(ig):
    """No hh-* invariant may be silently skipped: each parses and runs on the valid examples."""
    own = {}
    for sd in ig.structure_definitions():
        for element in sd["snapshot"]["element"]:
            for constraint in element.get("constraint", []):
                if constraint["key"].startswith("hh-"):
                    own[constraint["key"]] = sd["url"]
    assert own
    for case in MANIFEST:
        if case["valid"] and case["profile"] in own.values():
            resource = json.loads((IG / "examples" / case["file"]).read_text())
            validate(resource, case["profile"], ig)
    assert not set(own) & set(cv.unevaluable_constraints()), cv.unevaluable_constraints()
    assert all(cv._parsed(c.expression) is not None
               for url in set(own.values()) for c in _constraints(compiled(ig, url))
               if c.key.startswith("hh-"))


def _constraints(node):
    yield from node.constraints
    for child in [*node.children.values(), *node.slices]:
        yield from _constraints(child)


def test_ig_profiles_are_all_known(ig):
    assert {case["profile"] for case in MANIFEST} <= {
        url for t in {sd.get("type") for sd in ig.structure_definitions()} for url in ig.profiles_for_type(t)}
