"""The embedded store's atomic unit: Bundle entries resolved and applied in one transaction.

Inside one SQLite write transaction the gateway itself resolves what a FHIR server resolves
in a transaction: `urn:uuid` full URLs and conditional references (`Patient?identifier=
sys|val`) become real ids, conditional creates, updates and deletes find their match, the
entries run in the spec's order (DELETE, POST, PUT/PATCH, GET), and any failing entry rolls
everything back. The write lock is held throughout, so no match can go stale before the
write. (HAPI does all this in its own transaction: `HapiStore.commit`.)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol
from urllib.parse import parse_qsl

from fhir_gateway import bundle as bundles
from fhir_gateway.outcome import FhirError, invalid
from fhir_gateway.search.registry import params_for, resource_types
from fhir_gateway.search.values import each_reference
from fhir_gateway.store.base import FhirStore, Written, one_match
from fhir_gateway.store.units import ORDER, Entries


class Resolvable(FhirStore, Protocol):
    """What resolving needs beyond the contract: a unit the gateway reads inside, new ids,
    match by criteria, and a create that takes the id resolving assigned."""

    def atomic(self) -> AbstractContextManager: ...

    def assign_id(self) -> str: ...

    def match(self, resource_type: str, criteria: list[tuple[str, str]], what: str
              ) -> str | None: ...

    def match_identifiers(self, resource_type: str, pairs: set[tuple[str, str]]
                          ) -> dict[tuple[str, str], list[str]]: ...

    def head(self, resource_type: str, resource_id: str) -> dict: ...

    def create(self, resource: dict, if_none_exist: str | None = None,
               new_id: str | None = None) -> Written: ...


#: what a single REST request's parts are called (no entry to name)
_REST = {"request.ifNoneExist": "If-None-Exist", "request.url": "conditional update"}


def _at(index: int | None, part: str) -> str:
    return f"Bundle.entry[{index}].{part}" if index is not None else _REST.get(part, part)


def commit(store: Resolvable, entries: Entries, representation: bool = False) -> list[dict]:
    """Resolve and apply the (checked) entries in one write transaction; their answers."""
    answers: dict[int, dict] = {}
    try:
        with store.atomic():
            ids = _assign_ids(store, entries)
            for index, entry in entries:
                if "resource" in entry:
                    where = _at(index, "resource") if index is not None \
                        else entry["resource"]["resourceType"]
                    _rewrite_references(entry["resource"], ids,
                                        lambda ref, at: _resolve_conditional(store, ref, at),
                                        where)
            for position in sorted(range(len(entries)),
                                   key=lambda p: ORDER[entries[p][1]["request"]["method"]]):
                index, entry = entries[position]
                try:
                    answers[position] = _process(store, entry, representation)
                except FhirError as err:
                    raise bundles.at_entry(err, index) from None
    except FhirError as err:
        raise named(err, entries) from None
    return [answers[position] for position in range(len(entries))]


def named(err: FhirError, entries: Entries) -> FhirError:
    """An error the transaction was refused with at commit, pointed at the entry whose
    resource it was (a unit that joined an outer one is refused when that one commits)."""
    index = next((i for i, e in entries if err.source and "resource" in e
                  and (e["resource"].get("resourceType"), e.get("_id")) == err.source), None)
    return bundles.at_entry(err, index)


def _assign_ids(store: Resolvable, entries: Entries) -> dict[str, str]:
    """fullUrl -> 'Type/id' for every entry that creates or updates a resource."""
    ids: dict[str, str] = {}
    conditional: dict[tuple[str, str], str] = {}  # the same ifNoneExist twice: one resource
    touched: set[str] = set()  # the spec: one entry per resource identity
    known = _identifier_matches(store, entries)
    for index, entry in entries:
        request, full_url = entry["request"], entry.get("fullUrl")
        method, url = request["method"], request["url"]
        rtype = entry.get("resource", {}).get("resourceType")
        target = None
        criteria = _conditional(entry)
        if method == "POST":
            existing = None
            if criteria:
                existing = conditional.get(criteria) or _match(
                    store, *criteria, known, _at(index, "request.ifNoneExist"))
            entry["_id"] = existing or store.assign_id()
            entry["_existing"] = existing is not None
            if criteria:
                conditional[criteria] = entry["_id"]
            target = f"{rtype}/{entry['_id']}"
        elif method == "PUT":
            if criteria:
                found = _match(store, *criteria, known, _at(index, "request.url"))
                resource_id = entry["resource"].get("id")
                if found and resource_id not in (None, found):
                    raise invalid(f"The resource id '{resource_id}' does not match the resource "
                                  f"found by the conditional update ({found})", f"{rtype}.id")
                entry["_id"] = found or resource_id or store.assign_id()
            else:
                entry["_id"] = url.split("/")[1]
            target = f"{rtype}/{entry['_id']}"
        if target:
            if target in touched and not entry.get("_existing"):
                raise invalid(f"The transaction changes {target} more than once",
                              f"Bundle.entry[{index}]")
            touched.add(target)
        if method == "DELETE" and "?" not in url:
            touched.add(url.strip("/"))
        if target and full_url:
            if full_url in ids:
                raise invalid(f"Duplicate fullUrl '{full_url}'", f"Bundle.entry[{index}].fullUrl")
            ids[full_url] = target
    return ids


def _identifier_matches(store: Resolvable, entries: Entries
                        ) -> dict[tuple[str, str], list[str]]:
    """(type, criteria) -> matching ids, for every conditional entry whose criteria are
    one plain `identifier=system|value`: one query per type instead of one per entry."""
    wanted: dict[str, dict[str, tuple[str, str]]] = {}
    for _, entry in entries:
        if (criteria := _conditional(entry)) is None:
            continue
        rtype, query = criteria
        if (pair := _plain_identifier(rtype, query)) is not None:
            wanted.setdefault(rtype, {})[query] = pair
    known = {}
    for rtype, queries in wanted.items():
        found = store.match_identifiers(rtype, set(queries.values()))
        known.update({(rtype, query): found[pair] for query, pair in queries.items()})
    return known


def _match(store: Resolvable, rtype: str, query: str, known: dict, what: str) -> str | None:
    if (rtype, query) in known:
        return one_match(known[rtype, query], rtype, what)
    return store.match(rtype, parse_qsl(query), what)


def _resolve_conditional(store: Resolvable, reference: str, where: str) -> str:
    rtype, _, query = reference.partition("?")
    if rtype not in resource_types():
        raise invalid(f"Invalid conditional reference '{reference}'", where)
    found = store.match(rtype, parse_qsl(query), f"conditional reference at {where}")
    if found is None:
        raise FhirError(404, f"Conditional reference '{reference}' matches no resource",
                        "not-found", where)
    return f"{rtype}/{found}"


def _process(store: Resolvable, entry: dict, representation: bool) -> dict:
    request = entry["request"]
    method, url = request["method"], request["url"]
    if method == "POST":
        resource = entry["resource"]
        if entry.get("_existing"):  # the answer names its version: no need of the body
            rtype = resource["resourceType"]
            found = store.read(rtype, entry["_id"]) if representation \
                else store.head(rtype, entry["_id"])
            return _write_response(Written(found, 200), representation)
        return _write_response(store.create(resource, new_id=entry["_id"]), representation)
    if method == "PUT":
        rtype = url.partition("?")[0].split("/")[0]
        resource = {**entry["resource"], "id": entry["_id"]}
        return _write_response(store.update(rtype, entry["_id"], resource,
                                            request.get("ifMatch")), representation)
    if method == "DELETE":
        path, _, query = url.partition("?")
        found = store.match(path, parse_qsl(query), "conditional delete") if query \
            else path.split("/")[1]
        if found:
            store.delete(path.split("/")[0], found)
        return {"response": {"status": "204 No Content"}}
    if method in ("GET", "HEAD"):
        return {"resource": answer_get(store, url), "response": {"status": "200 OK"}}
    raise FhirError(405, f"Method {method} is not supported in a Bundle entry", "not-supported")


def answer_get(store: Resolvable, url: str) -> dict:
    """What a GET entry of a Bundle answers: a searchset, a resource, a version."""
    path, _, query = url.partition("?")
    parts = path.strip("/").split("/")
    if len(parts) == 1:
        result = store.search(parts[0], parse_qsl(query))
        return bundles.searchset(result, "", parts[0], parse_qsl(query))
    if len(parts) == 2:
        return store.read(parts[0], parts[1])
    if len(parts) == 4 and parts[2] == "_history":
        return store.vread(parts[0], parts[1], parts[3])
    raise invalid(f"Unsupported GET url in a Bundle entry: '{url}'")


# -- references -------------------------------------------------------------------------
Resolve = Callable[[str, str], str]


def _rewrite_references(node, ids: dict[str, str], resolve: Resolve, where: str) -> None:
    """Replace urn:uuid and conditional references in place.

    The walk keeps no paths (naming every node of every entry is most of its cost); a
    reference that fails is walked to again with paths, for the error to say where.
    """
    try:
        _rewrite(node, ids, resolve)
    except FhirError:
        _rewrite_at(node, ids, resolve, where)  # what was rewritten already passes again
        raise


def _rewrite_one(node: dict, ids: dict[str, str], resolve: Resolve, where: str) -> None:
    ref = node.get("reference")
    if isinstance(ref, str):
        if ref in ids:
            node["reference"] = ids[ref]
        elif "?" in ref and not ref.startswith(("http:", "https:")):
            node["reference"] = resolve(ref, where)
        elif ref.startswith(("urn:uuid:", "urn:oid:")):
            raise FhirError(400, f"Reference '{ref}' does not match any fullUrl in the "
                                 "Bundle", "invalid", where)


def _rewrite(node, ids: dict[str, str], resolve: Resolve) -> None:
    for reference in each_reference(node):
        _rewrite_one(reference, ids, resolve, "")


def _rewrite_at(node, ids: dict[str, str], resolve: Resolve, where: str) -> None:
    if isinstance(node, dict):
        _rewrite_one(node, ids, resolve, where)
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                _rewrite_at(value, ids, resolve, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _rewrite_at(value, ids, resolve, f"{where}[{i}]")


def _conditional(entry: dict) -> tuple[str, str] | None:
    """(type, criteria) of a conditional create or update entry; None for any other."""
    request = entry.get("request") or {}
    if request.get("method") == "POST" and request.get("ifNoneExist"):
        return (entry.get("resource") or {}).get("resourceType"), \
            request["ifNoneExist"].split("?", 1)[-1]
    if request.get("method") == "PUT" and "?" in request.get("url", ""):
        rtype, _, query = request["url"].partition("?")
        return rtype, query
    return None


def _plain_identifier(rtype: object, query: str) -> tuple[str, str] | None:
    """(system, value) of criteria that are just `identifier=system|value`, with no escapes,
    modifiers or alternatives; None for anything `store.match` must parse itself."""
    if query.startswith("identifier=") and not any(c in query for c in "&;%+"):
        params = [("identifier", query[11:])]  # nothing to decode (an import's thousands)
    else:
        params = parse_qsl(query)
    if len(params) != 1 or params[0][0] != "identifier" or not isinstance(rtype, str) \
            or rtype not in resource_types():
        return None
    param = params_for(rtype).get("identifier")
    system, bar, value = params[0][1].partition("|")
    if param is None or param.type != "token" or not (bar and system and value) \
            or any(c in value or c in system for c in "\\,|$"):
        return None
    return system, value


def _write_response(written: Written, representation: bool) -> dict:
    res = written.resource
    response = {"status": "201 Created" if written.created else "200 OK",
                "location": f"{res['resourceType']}/{res['id']}/_history/{res['meta']['versionId']}",
                "etag": f'W/"{res["meta"]["versionId"]}"',
                "lastModified": res["meta"]["lastUpdated"]}
    answer = {"fullUrl": f"{res['resourceType']}/{res['id']}", "response": response}
    if representation:
        answer["resource"] = res
    return answer
