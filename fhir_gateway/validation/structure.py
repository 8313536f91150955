"""Is this JSON a structurally valid FHIR R4 resource? If not, say where.

Structure (known elements, datatypes, primitive formats, required elements) is checked
with the `fhir.resources` models (R4B, wire-compatible with R4 for the resources we use);
the resource we store is still the JSON the client sent, never the model's re-serialisation.
"""

from __future__ import annotations

import json
import re
from datetime import date, time
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, List, Union, get_args, get_origin  # noqa: UP035

from pydantic import TypeAdapter, ValidationError

from fhir_gateway.outcome import FhirError, Issue, invalid
from fhir_gateway.search.registry import resource_types

#: FHIR's id (R4 2.24.0.1), less "." and "..": a URL path cannot hold them (RFC 3986
#: removes dot segments), so a resource with either id could never be read back
ID_PATTERN = re.compile(r"^(?!\.\.?$)[A-Za-z0-9\-.]{1,64}$")

_MESSAGES = {
    "extra_forbidden": "Unknown element",
    "missing": "Missing required element",
    "string_type": "Expected a string",
    "bool_type": "Expected a boolean",
    "int_type": "Expected an integer",
    "list_type": "Expected an array",
    "model_type": "Expected an object",
    "dict_type": "Expected an object",
}


@cache
def _model(resource_type: str):
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError, TypeError):
        return None  # an R4 type that R4B dropped: stored after the basic checks only


def check_resource(resource: object, expected_type: str | None = None) -> dict:
    """Return the resource if structurally valid; raise a 400 FhirError naming the problem."""
    resource = check_shape(resource, expected_type)
    resource_type = resource["resourceType"]
    model = _model(resource_type)
    if model is not None:
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            issues = [_issue(resource_type, err) for err in exc.errors()]
            raise FhirError(400, issues[0].diagnostics, issues=issues) from None
        except (KeyError, TypeError):  # fhir_core meeting a nested resource of no type it knows
            found = _unknown_nested_type(resource, resource_type)
            if found is None:
                raise
            path, found_type = found
            message = (f"A {found_type} cannot be checked inside another resource (R4B, "
                       "whose models check nested resources, dropped the type)"
                       if isinstance(found_type, str) and found_type in resource_types()
                       else f"Unknown resourceType '{found_type}'")
            raise FhirError(400, message, "not-supported", f"{path}.resourceType") from None
        issues = []
        _check_json_types(resource, _schema(resource_type), resource_type, issues)
        if issues:
            raise FhirError(400, issues[0].diagnostics, issues=issues)
    return resource


def _unknown_nested_type(node: object, where: str) -> tuple[str, object] | None:
    """The path and type of the first resource inside `node` that has no R4B model (not an
    R4 type, or one that R4B dropped, or not a type name at all)."""
    if isinstance(node, dict):
        children = ((f"{where}.{key}", value) for key, value in node.items())
    elif isinstance(node, list):
        children = ((f"{where}[{i}]", value) for i, value in enumerate(node))
    else:
        return None
    for path, value in children:
        if isinstance(value, dict):
            nested = value.get("resourceType", "Basic")
            if not isinstance(nested, str) or _model(nested) is None:
                return path, nested
        if found := _unknown_nested_type(value, path):
            return found
    return None


def check_shape(resource: object, expected_type: str | None = None) -> dict:
    """The cheap checks: a JSON object of a known type (the URL's), with a well-formed id."""
    if not isinstance(resource, dict):
        raise FhirError(400, "The body must be a JSON object holding a FHIR resource", "structure")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise FhirError(400, "The resource has no resourceType", "required", "resourceType")
    if resource_type not in resource_types():
        raise FhirError(400, f"Unknown resourceType '{resource_type}'", "not-supported",
                        "resourceType")
    if expected_type and resource_type != expected_type:
        raise FhirError(400, f"resourceType '{resource_type}' does not match the URL's "
                             f"resource type '{expected_type}'", "invalid", "resourceType")
    rid = resource.get("id")
    if rid is not None and not (isinstance(rid, str) and ID_PATTERN.match(rid)):
        raise FhirError(400, f"Invalid resource id {rid!r}: 1-64 of A-Z a-z 0-9 - . (not . or .. alone)",
                        "value", f"{resource_type}.id")
    if _flawed(resource, MAX_DEPTH):
        path, message, code = _first_flaw(resource, resource_type, MAX_DEPTH)
        raise FhirError(400, message, code, path)
    return resource


#: JSON nesting the gateway accepts in a resource. FHIR sets no limit; the serialiser
#: writes at most 254 levels (orjson), and a stored resource travels inside a Bundle, so
#: deeper input would be accepted and then fail to be written or answered.
MAX_DEPTH = 100


def _paired(node: dict, key: str) -> bool:
    """Whether `key` is one of a primitive array and its `_key` twin, where a null item
    stands for "no value" or "no extension" at that position (FHIR R4 JSON 2.6.2)."""
    return key[1:] in node if key.startswith("_") else f"_{key}" in node


def _flawed(node: dict, limit: int) -> bool:
    """Whether `node` is not FHIR JSON in a way the models let through: nested more than
    `limit` levels, a null (but in a primitive array's twins), an empty object or array
    ("JSON objects and arrays are never empty"), an array in an array. One recursive walk,
    ~4 µs for a Patient; `_first_flaw` says where, on the rare way out."""
    if limit == 0:
        return True
    for key, value in node.items():
        kind = type(value)
        if kind is dict:
            if not value or _flawed(value, limit - 1):
                return True
        elif kind is list:
            if not value or limit == 1:
                return True
            for item in value:
                if type(item) is dict:
                    if not item or _flawed(item, limit - 2):
                        return True
                elif type(item) is list or (item is None and not _paired(node, key)):
                    return True
        elif value is None:
            return True
    return False


def _first_flaw(node: dict, where: str, limit: int) -> tuple[str, str, str]:
    """(FHIRPath, message, issue code) of the first flaw `_flawed` finds."""
    if limit == 0:
        return (where, f"The resource nests deeper than {MAX_DEPTH} JSON levels, the most "
                       "this server keeps", "too-costly")
    for key, value in node.items():
        path = f"{where}.{key}"
        if type(value) is list:
            if not value:
                return path, "An empty array is not FHIR JSON: leave the element out", "structure"
            if limit == 1:
                return _first_flaw({}, path, 0)
            for i, item in enumerate(value):
                if type(item) is dict and (not item or _flawed(item, limit - 2)):
                    if not item:
                        return (f"{path}[{i}]", "An empty object is not FHIR JSON: leave it "
                                                "out", "structure")
                    return _first_flaw(item, f"{path}[{i}]", limit - 2)
                if type(item) is list:
                    return f"{path}[{i}]", "An array inside an array is not FHIR JSON", "structure"
                if item is None and not _paired(node, key):
                    return (f"{path}[{i}]", f"null is not a FHIR JSON value here (only in a "
                                            f"primitive array with its _{key.lstrip('_')} "
                                            "twin)", "structure")
        elif type(value) is dict and (not value or _flawed(value, limit - 1)):
            if not value:
                return path, "An empty object is not FHIR JSON: leave it out", "structure"
            return _first_flaw(value, path, limit - 1)
        elif value is None:
            return path, "null is not a FHIR JSON value: leave the element out", "structure"
    raise AssertionError("no flaw")  # only called when `_flawed` found one


def check_update_id(resource: dict, resource_id: str) -> None:
    """An update's body must carry the id of the URL it is PUT to."""
    where = f"{resource['resourceType']}.id"
    if resource.get("id") is None:
        raise invalid("The resource in an update must have an id", where)
    if resource["id"] != resource_id:
        raise invalid(f"The resource id '{resource['id']}' does not match the URL id "
                      f"'{resource_id}'", where)


# -- JSON datatypes and required code bindings --------------------------------------------
# The models coerce ("yes" -> True, "1.5" -> Decimal) and do not enforce required
# bindings; FHIR JSON does not allow either, so we walk the JSON against the model's fields.

_PRIMITIVE_KIND = {bool: "boolean", int: "integer", Decimal: "decimal"}
_JSON_OK = {
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "decimal": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
}


@cache
def _complete_codes() -> dict[str, list[str]]:
    """The R4 code lists the models cut short (`code-lists.json`)."""
    return json.loads(Path(__file__).with_name("code-lists.json").read_text())


@cache
def _schema(type_name: str) -> dict[str, tuple[str, str | None, tuple | None,
                                              Primitive | None]]:
    """alias -> (kind, complex type name, required codes, Primitive) for one model class.

    The Primitive is None unless the field holds values of one primitive type.
    """
    model = _model(type_name)
    fields = {}
    config = _config(model)
    for name, info in (model.model_fields.items() if model else ()):
        alias = info.alias or name
        if alias.startswith("_") or alias == "fhir_comments":
            continue
        base = _unwrap(info.annotation)
        extra = info.json_schema_extra or {}
        if isinstance(base, type) and base in _PRIMITIVE_KIND:
            kind, sub = _PRIMITIVE_KIND[base], None
        elif isinstance(base, type) and issubclass(base, (str, date, time)):
            kind, sub = "string", None
        else:
            sub = getattr(base, "__name__", "").removesuffix("Type")
            kind = "resource" if sub == "Resource" else "complex"
        codes = tuple(extra["enum_values"]) if extra.get("enum_values") else None
        if codes and "+" in codes:  # the model lists the first codes and "+" (Task.status)
            codes = tuple(_complete_codes().get(f"{model.__name__}.{alias}") or ()) or None
        annotation = _item_annotation(info.annotation) if not info.metadata else None
        primitive = _primitive(annotation, kind, config) \
            if kind in _JSON_OK and annotation and config is not None else None
        fields[alias] = (kind, sub, codes, primitive)
    return fields


def _unwrap(annotation):
    while True:
        origin = get_origin(annotation)
        if origin in (Union, UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        elif origin in (list, List, Annotated):
            annotation = get_args(annotation)[0]
        else:
            return annotation


def _item_annotation(annotation):
    """The annotated type of one value of a field (no Optional, no List); None if unclear."""
    while True:
        origin = get_origin(annotation)
        if origin in (Union, UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return None
            annotation = members[0]
        elif origin is list:
            annotation = get_args(annotation)[0]
        else:
            try:
                hash(annotation)
            except TypeError:
                return None
            return annotation


_SAMPLES = {"boolean": (True,), "integer": (1,), "decimal": (1,),
            "string": ("x", "2000-01-01", "2000-01-01T00:00:00Z", "00:00:00", "urn:oid:1.2")}


class Primitive:
    """A primitive type as the models check one value of it: pydantic's validator for the
    field's annotated type under the model's config (the models add no field constraints
    and no validator that compares values), and a fixed value of its JSON kind that it
    accepts (None: none of `_SAMPLES` is)."""

    __slots__ = ("adapter", "sample")

    def __init__(self, annotation, kind: str, config: tuple):
        self.adapter = TypeAdapter(annotation, config=dict(config))
        self.sample = next((v for v in _SAMPLES[kind] if accepts_primitive(self, v)), None)


@cache
def _primitive(annotation, kind: str, config: tuple) -> Primitive:
    return Primitive(annotation, kind, config)


def _config(model) -> tuple | None:
    """A model's pydantic config as a hashable key; None when it cannot be one."""
    config = tuple(sorted((model.model_config if model else {}).items()))
    try:
        hash(config)
    except TypeError:
        return None
    return config


@lru_cache(maxsize=16384, typed=True)
def accepts_primitive(primitive: Primitive, value: Any) -> bool:
    """Whether the models accept `value` in a field of this primitive type."""
    try:
        primitive.adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _check_json_types(node: dict, schema: dict, path: str, issues: list[Issue]) -> None:
    for key, value in node.items():
        spec = schema.get(key)
        if spec is None:
            continue
        kind, sub, codes, _ = spec
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{path}.{key}" + (f"[{i}]" if isinstance(value, list) else "")
            if item is None and _has_extension(node, key, i):
                continue  # `"given": [null], "_given": [{"extension": ...}]` (R4 json.html)
            if kind in _JSON_OK:
                if not _JSON_OK[kind](item):
                    issues.append(Issue(f"{where}: Expected a JSON {kind}, got {item!r}", "value",
                                        "error", [where]))
                elif codes and item not in codes:
                    issues.append(Issue(f"{where}: '{item}' is not one of {', '.join(codes)}",
                                        "code-invalid", "error", [where]))
            elif isinstance(item, dict):
                child = item.get("resourceType") if kind == "resource" else sub
                if child:
                    _check_json_types(item, _schema(child), where, issues)


def _has_extension(node: dict, key: str, i: int) -> bool:
    """Whether item i of a primitive array has its id/extensions in the `_key` array."""
    extras = node.get("_" + key)
    return isinstance(extras, list) and i < len(extras) and extras[i] is not None


def _issue(resource_type: str, err: dict) -> Issue:
    path = resource_type
    for part in err["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "__root__":
            path += f".{part}"
    message = _MESSAGES.get(err["type"], err["msg"].removeprefix("Value error, "))
    code = "structure" if err["type"] == "extra_forbidden" else (
        "required" if err["type"] == "missing" else "value")
    return Issue(f"{path}: {message}", code, "error", [path])


def model_fields(resource_type: str) -> dict[str, bool]:
    """Top-level element names of a resource type -> whether they are summary elements."""
    model = _model(resource_type)
    if model is None:
        return {}
    return {field.alias or name: bool((field.json_schema_extra or {}).get("summary_element_property"))
            for name, field in model.model_fields.items()}
