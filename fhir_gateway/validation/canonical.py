"""A resource's canonical form: the same verdict, shared by resources that differ only in
values no check reads.

Validating one mapped resource costs more than storing it, and an import writes thousands
that differ only in names, dates, identifier values and reference ids. The canonical form
keeps the shape of the resource (every key, every list length, every null) and every value
a profile check reads (`reads.py`); each other primitive value that the models accept is
replaced by a fixed value of its type that they also accept (`structure.Primitive.sample`),
and a Reference's `reference` by one naming the same resource type. Values the models
refuse, values of a JSON type other than the element's, coded values (`_check_json_types`
tests them against the element's codes) and anything not described by the models are kept.

So the checks see the same thing in both, and the verdict of the canonical form -- computed
once, by the full checks -- is the resource's: the models check each primitive value on its
own, by its type, and the profile checks read only what is kept.
"""

from __future__ import annotations

from typing import Any

import orjson

from fhir_gateway.formats import fhirjson
from fhir_gateway.search.registry import resource_types
from fhir_gateway.validation.conformance import reference_stand_in
from fhir_gateway.validation.reads import EMPTY, FULL, REFERENCE, Mark, Reads
from fhir_gateway.validation.structure import (
    _JSON_OK,
    _model,
    _schema,
    accepts_primitive,
)


def canonical_key(resource: dict, reads: Reads | Mark) -> bytes | None:
    """The canonical form as JSON bytes; None when there is none to share.

    None when everything is read, when the resource has contained resources (dom-3 reads
    every local reference in the resource), a type the models do not know, or values that
    are not plain JSON (a tuple, NaN, a datetime, an integer beyond 64 bits): JSON bytes
    would not tell those apart from the JSON the checks judge differently.
    """
    if reads is FULL or "contained" in resource or _model(resource["resourceType"]) is None:
        return None
    form = _object(resource, _schema(resource["resourceType"]), reads)
    try:
        key = fhirjson.dumps(form)
    except orjson.JSONEncodeError:
        return None
    return key if fhirjson.loads(key) == form else None


def _object(node: dict, schema: dict, reads: Reads) -> dict:
    """An object with the values it lists in `reads` as they are, the others canonical."""
    out = {}
    for key, value in node.items():
        spec = schema.get(key)
        read = reads.keys.get(key, EMPTY)
        if spec is None or read is FULL:
            out[key] = value
        elif isinstance(value, list):
            out[key] = [_value(item, spec, read) for item in value]
        else:
            out[key] = _value(value, spec, read)
    return out


def _value(value: Any, spec: tuple, read: Reads | Mark) -> Any:
    """One value of a field (`structure._schema` spec): objects walked, primitives set."""
    kind, sub, codes, primitive = spec
    if isinstance(value, dict):
        if read is REFERENCE:
            return value
        if kind == "resource":
            sub = value.get("resourceType")
            if not isinstance(sub, str) or sub not in resource_types():
                return value
        return _object(value, _schema(sub), read) if kind in ("complex", "resource") else value
    if (primitive is None or codes or not _JSON_OK[kind](value)
            or not accepts_primitive(primitive, value)):
        return value
    if read is REFERENCE:
        stand_in = reference_stand_in(value)
        return stand_in if accepts_primitive(primitive, stand_in) else value
    return value if primitive.sample is None else primitive.sample
