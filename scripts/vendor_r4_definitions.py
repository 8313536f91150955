"""Vendor the FHIR R4 definitions the gateway needs from HAPI's Maven artifact.

The spec content is CC0. Two outputs, both kept small:

- `fhir_gateway/search/r4-definitions.json`: the search parameters and resource type list
  (code, base, type, expression, target, url) the search index needs;
- `fhir_gateway/formats/r4-elements.json`: for every type and backbone element, its
  children in definition order with their types, cardinality and XML representation; the
  FHIR XML converter (`fhir_gateway/formats/xml.py`) is driven by it, because XML, unlike
  JSON, is ordered and tells attributes from elements.

Run with the path of `hapi-fhir-validation-resources-r4-<version>.jar` (in ~/.m2 once
`make hapi` has built HAPI, which depends on it).
"""

import json
import sys
import zipfile
from pathlib import Path

from lxml import etree

SP_ENTRY = "org/hl7/fhir/r4/model/sp/search-parameters.json"
PROFILES_ENTRY = "org/hl7/fhir/r4/model/profile/profiles-resources.xml"
TYPES_ENTRY = "org/hl7/fhir/r4/model/profile/profiles-types.xml"
FHIR = "{http://hl7.org/fhir}"
KEEP = ("url", "code", "base", "type", "expression", "target", "modifier", "comparator")
PACKAGE = Path(__file__).resolve().parents[1] / "fhir_gateway"
OUT = PACKAGE / "search" / "r4-definitions.json"
ELEMENTS_OUT = PACKAGE / "formats" / "r4-elements.json"
SYSTEM_STRING = "http://hl7.org/fhirpath/System.String"


def _values(sd) -> dict:
    return {child.tag[len(FHIR):]: child.get("value") for child in sd}


def _concrete(xml: bytes, kinds: tuple[str, ...]):
    """The non-abstract specialisations (no profiles such as SimpleQuantity) of these kinds."""
    for sd in etree.fromstring(xml).iter(f"{FHIR}StructureDefinition"):
        value = _values(sd)
        if value.get("kind") in kinds and value.get("abstract") == "false" \
                and value.get("derivation") == "specialization":
            yield value["type"], sd


def resource_types(xml: bytes) -> list[str]:
    return sorted(name for name, _ in _concrete(xml, ("resource",)))


def _child(ed) -> tuple[str, list]:
    """(path, [name, types, many, attr]) of one snapshot element.

    A backbone element's type is its own path (its children are listed under it); a
    `contentReference` (`#Questionnaire.item`) is the path it refers to; FHIRPath's
    System.String (Element.id, Extension.url, Resource.id) is a `string`.
    """
    path = ed.find(f"{FHIR}path").get("value")
    reference = ed.find(f"{FHIR}contentReference")
    codes = [t.find(f"{FHIR}code").get("value") for t in ed.findall(f"{FHIR}type")]
    if reference is not None:
        types = [reference.get("value").lstrip("#")]
    else:
        types = [path if code in ("Element", "BackboneElement") else
                 "string" if code == SYSTEM_STRING else code for code in codes]
    many = ed.find(f"{FHIR}max").get("value") != "1"
    attr = any(r.get("value") == "xmlAttr" for r in ed.findall(f"{FHIR}representation"))
    return path, [path.rsplit(".", 1)[1], types, int(many), int(attr)]


def elements(*xmls: bytes) -> dict[str, list]:
    """{type or backbone path: [[name, types, many, attr], ...] in snapshot order}."""
    table: dict[str, list] = {}
    for xml in xmls:
        for name, sd in _concrete(xml, ("resource", "complex-type", "primitive-type")):
            table[name] = []
            for ed in sd.find(f"{FHIR}snapshot").iter(f"{FHIR}element"):
                if "." in ed.find(f"{FHIR}path").get("value"):
                    path, entry = _child(ed)
                    table.setdefault(path.rsplit(".", 1)[0], []).append(entry)
    return table


def main(jar: str) -> None:
    with zipfile.ZipFile(jar) as zf:
        bundle = json.loads(zf.read(SP_ENTRY))
        resources, types = zf.read(PROFILES_ENTRY), zf.read(TYPES_ENTRY)
    names = resource_types(resources)
    params = [{k: e["resource"][k] for k in KEEP if k in e["resource"]} for e in bundle["entry"]]
    OUT.write_text(json.dumps({"fhirVersion": "4.0.1", "resourceTypes": names,
                               "searchParameters": params}, indent=0) + "\n")
    print(f"{len(names)} resource types, {len(params)} search parameters -> {OUT}")
    table = elements(types, resources)
    ELEMENTS_OUT.parent.mkdir(exist_ok=True)
    ELEMENTS_OUT.write_text("{\n" + ",\n".join(
        f"{json.dumps(key)}: {json.dumps(children, separators=(',', ':'))}"
        for key, children in table.items()) + "\n}\n")
    print(f"{len(table)} types and backbone elements -> {ELEMENTS_OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
