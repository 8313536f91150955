"""Vendor the FHIR R4 search parameters and resource type list from HAPI's Maven artifact.

The spec content is CC0. We keep only what the gateway's search index needs (code, base,
type, expression, target, url) so the package stays small. Run with the path of
`hapi-fhir-validation-resources-r4-<version>.jar` (e.g. from ~/.m2 after
`mvn dependency:get -Dartifact=ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4:8.4.0`).
"""

import json
import sys
import zipfile
from pathlib import Path

from lxml import etree

SP_ENTRY = "org/hl7/fhir/r4/model/sp/search-parameters.json"
PROFILES_ENTRY = "org/hl7/fhir/r4/model/profile/profiles-resources.xml"
FHIR = "{http://hl7.org/fhir}"
KEEP = ("url", "code", "base", "type", "expression", "target", "modifier", "comparator")
OUT = Path(__file__).resolve().parents[1] / "fhir_gateway" / "search" / "r4-definitions.json"


def resource_types(xml: bytes) -> list[str]:
    types = []
    for sd in etree.fromstring(xml).iter(f"{FHIR}StructureDefinition"):
        value = {child.tag[len(FHIR):]: child.get("value") for child in sd}
        if value.get("kind") == "resource" and value.get("abstract") == "false" \
                and value.get("derivation") == "specialization":
            types.append(value["type"])
    return sorted(types)


def main(jar: str) -> None:
    with zipfile.ZipFile(jar) as zf:
        bundle = json.loads(zf.read(SP_ENTRY))
        types = resource_types(zf.read(PROFILES_ENTRY))
    params = [{k: e["resource"][k] for k in KEEP if k in e["resource"]} for e in bundle["entry"]]
    OUT.write_text(json.dumps({"fhirVersion": "4.0.1", "resourceTypes": types,
                               "searchParameters": params}, indent=0) + "\n")
    print(f"{len(types)} resource types, {len(params)} search parameters -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
