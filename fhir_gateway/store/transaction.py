"""Process transaction and batch Bundles against a store that offers `atomic()`.

A transaction is all or nothing: entries run in the spec's order (DELETE, POST, PUT/PATCH,
GET) inside one store transaction, `urn:uuid` full URLs and conditional references
(`Patient?identifier=sys|val`) are resolved to real ids first, and any failing entry rolls
everything back. A batch runs each entry on its own and reports each outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from fhir_gateway import bundle as bundles
from fhir_gateway.outcome import FhirError, invalid
from fhir_gateway.search.registry import params_for, resource_types
from fhir_gateway.store.base import Written, one_match
from fhir_gateway.validation.structure import check_shape

if TYPE_CHECKING:
    from fhir_gateway.store.sqlite import SQLiteStore

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


class BundleProcessor:
    def __init__(self, store: SQLiteStore):
        self.store = store

    # -- entry points -------------------------------------------------------------------
    def transaction(self, bundle: dict) -> dict:
        entries = _entries(bundle, "transaction")
        for index, entry in entries:
            _check_entry(index, entry)
        responses: dict[int, dict] = {}
        try:
            with self.store.atomic(all_or_nothing=True):
                ids = self._assign_ids(entries)
                for index, entry in entries:
                    if "resource" in entry:
                        _rewrite_references(entry["resource"], ids, self._resolve_conditional,
                                            f"Bundle.entry[{index}].resource")
                for index, entry in sorted(entries,
                                           key=lambda e: ORDER[e[1]["request"]["method"]]):
                    try:
                        responses[index] = self._process(entry)
                    except FhirError as err:
                        raise bundles.at_entry(err, index) from None
        except FhirError as err:  # refused at commit: name the entry whose resource it was
            index = next((i for i, e in entries if err.source and "resource" in e
                          and (e["resource"].get("resourceType"), e.get("_id")) == err.source),
                         None)
            raise err if index is None else bundles.at_entry(err, index) from None
        return bundles.response_bundle("transaction-response",
                                       [responses[i] for i in sorted(responses)])

    def batch(self, bundle: dict) -> dict:
        entries = _entries(bundle, "batch")
        out = []
        for index, entry in entries:
            try:
                _check_entry(index, entry)
                with self.store.atomic():  # its commit checks the references: it may refuse
                    self._assign_ids([(index, entry)])
                    if "resource" in entry:
                        _rewrite_references(entry["resource"], {}, self._resolve_conditional,
                                            f"Bundle.entry[{index}].resource")
                    answer = self._process(entry)
            except FhirError as err:
                answer = {"response": {"status": bundles.status_line(err.status),
                                       "outcome": bundles.at_entry(err, index).outcome}}
            out.append(answer)  # one answer per entry, after its commit
        return bundles.response_bundle("batch-response", out)

    # -- steps --------------------------------------------------------------------------
    def _assign_ids(self, entries: list[tuple[int, dict]]) -> dict[str, str]:
        """fullUrl -> 'Type/id' for every entry that creates or updates a resource."""
        ids: dict[str, str] = {}
        conditional: dict[tuple[str, str], str] = {}  # the same ifNoneExist twice: one resource
        touched: set[str] = set()  # the spec: one entry per resource identity
        known = self._identifier_matches(entries)
        for index, entry in entries:
            request, full_url = entry["request"], entry.get("fullUrl")
            method, url = request["method"], request["url"]
            rtype = entry.get("resource", {}).get("resourceType")
            target = None
            criteria = _conditional(entry)
            if method == "POST":
                existing = None
                if criteria:
                    existing = conditional.get(criteria) or self._match(
                        *criteria, known, f"Bundle.entry[{index}].request.ifNoneExist")
                entry["_id"] = existing or self.store.assign_id()
                entry["_existing"] = existing is not None
                if criteria:
                    conditional[criteria] = entry["_id"]
                target = f"{rtype}/{entry['_id']}"
            elif method == "PUT":
                if criteria:
                    found = self._match(*criteria, known, f"Bundle.entry[{index}].request.url")
                    entry["_id"] = found or entry["resource"].get("id") or self.store.assign_id()
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

    def _identifier_matches(self, entries: list[tuple[int, dict]]
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
            found = self.store.match_identifiers(rtype, set(queries.values()))
            known.update({(rtype, query): found[pair] for query, pair in queries.items()})
        return known

    def _match(self, rtype: str, query: str, known: dict, what: str) -> str | None:
        if (rtype, query) in known:
            return one_match(known[rtype, query], rtype, what)
        return self.store.match(rtype, parse_qsl(query), what)

    def _resolve_conditional(self, reference: str, where: str) -> str:
        rtype, _, query = reference.partition("?")
        if rtype not in resource_types():
            raise invalid(f"Invalid conditional reference '{reference}'", where)
        found = self.store.match(rtype, parse_qsl(query), f"conditional reference at {where}")
        if found is None:
            raise FhirError(404, f"Conditional reference '{reference}' matches no resource",
                            "not-found", where)
        return f"{rtype}/{found}"

    def _process(self, entry: dict) -> dict:
        request = entry["request"]
        method, url = request["method"], request["url"]
        store = self.store
        if method == "POST":
            resource = entry["resource"]
            if entry.get("_existing"):  # the answer names its version: no need of the body
                written = Written(store.head(resource["resourceType"], entry["_id"]), 200)
            else:
                written = store.create(resource, new_id=entry["_id"])
            return _write_response(written)
        if method == "PUT":
            rtype = url.partition("?")[0].split("/")[0]
            resource = dict(entry["resource"])
            resource.setdefault("id", entry["_id"])
            if "?" in url and resource["id"] != entry["_id"]:
                raise invalid("The resource id does not match the conditional update's match")
            return _write_response(store.update(rtype, entry["_id"], resource,
                                                request.get("ifMatch")))
        if method == "DELETE":
            path, _, query = url.partition("?")
            if query:
                found = store.match(path, parse_qsl(query), "conditional delete")
                if found:
                    store.delete(path, found)
            else:
                rtype, rid = path.split("/")[:2]
                store.delete(rtype, rid)
            return {"response": {"status": "204 No Content"}}
        if method in ("GET", "HEAD"):
            return {"resource": self._get(url), "response": {"status": "200 OK"}}
        raise FhirError(405, f"Method {method} is not supported in a Bundle entry",
                        "not-supported")

    def _get(self, url: str) -> dict:
        path, _, query = url.partition("?")
        parts = path.strip("/").split("/")
        if len(parts) == 1:
            result = self.store.search(parts[0], parse_qsl(query))
            return bundles.searchset(result, "", parts[0], parse_qsl(query))
        if len(parts) == 2:
            return self.store.read(parts[0], parts[1])
        if len(parts) == 4 and parts[2] == "_history":
            return self.store.vread(parts[0], parts[1], parts[3])
        raise invalid(f"Unsupported GET url in a Bundle entry: '{url}'")


# -- helpers ----------------------------------------------------------------------------
def _entries(bundle: dict, kind: str) -> list[tuple[int, dict]]:
    if bundle.get("type") != kind:
        raise invalid(f"Expected a Bundle of type '{kind}', got '{bundle.get('type')}'",
                      "Bundle.type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise invalid("Bundle.entry must be an array", "Bundle.entry")
    return [(i, dict(e)) for i, e in enumerate(entries)]


def _check_entry(index: int, entry: dict) -> None:
    where = f"Bundle.entry[{index}]"
    request = entry.get("request")
    if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
        raise invalid("Each entry needs request.method and request.url", f"{where}.request")
    method, url = request["method"], request["url"]
    if method not in ORDER:
        raise invalid(f"Unknown request.method '{method}'", f"{where}.request.method")
    rtype = urlsplit(url).path.strip("/").split("/")[0]
    if rtype not in resource_types():
        raise FhirError(404 if method != "POST" else 400,
                        f"Unknown resource type in request.url '{url}'", "not-supported",
                        f"{where}.request.url")
    if method in ("POST", "PUT"):
        if "resource" not in entry:
            raise invalid(f"A {method} entry needs a resource", f"{where}.resource")
        try:
            check_shape(entry["resource"], rtype)
        except FhirError as err:
            raise bundles.at_entry(err, index) from None
        if method == "PUT" and "?" not in url and len(url.strip("/").split("/")) != 2:
            raise invalid(f"A PUT entry's url must be Type/id or Type?criteria, not '{url}'",
                          f"{where}.request.url")
        if method == "PUT" and "?" not in url:
            rid = url.strip("/").split("/")[1]
            if entry["resource"].get("id") not in (None, rid):
                raise invalid(f"Resource id '{entry['resource'].get('id')}' does not match the "
                              f"request url '{url}'", f"{where}.resource.id")


def _rewrite_references(node, ids: dict[str, str], resolve, where: str) -> None:
    """Replace urn:uuid and conditional references in place.

    The walk keeps no paths (naming every node of every entry is most of its cost); a
    reference that fails is walked to again with paths, for the error to say where.
    """
    try:
        _rewrite(node, ids, resolve)
    except FhirError:
        _rewrite_at(node, ids, resolve, where)  # what was rewritten already passes again
        raise


def _rewrite_one(node: dict, ids: dict[str, str], resolve, where: str) -> None:
    ref = node.get("reference")
    if isinstance(ref, str):
        if ref in ids:
            node["reference"] = ids[ref]
        elif "?" in ref and not ref.startswith(("http:", "https:")):
            node["reference"] = resolve(ref, where)
        elif ref.startswith(("urn:uuid:", "urn:oid:")):
            raise FhirError(400, f"Reference '{ref}' does not match any fullUrl in the "
                                 "Bundle", "invalid", where)


def _rewrite(node, ids: dict[str, str], resolve) -> None:
    stack = [node]  # a loop, not recursion: this visits every element of every entry
    push = stack.append
    while stack:
        node = stack.pop()
        if node.__class__ is dict:
            if node.get("reference").__class__ is str:
                _rewrite_one(node, ids, resolve, "")
            node = node.values()
        for value in node:
            if value.__class__ is dict or value.__class__ is list:
                push(value)


def _rewrite_at(node, ids: dict[str, str], resolve, where: str) -> None:
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


def _write_response(written) -> dict:
    res = written.resource
    response = {"status": "201 Created" if written.created else "200 OK",
                "location": f"{res['resourceType']}/{res['id']}/_history/{res['meta']['versionId']}",
                "etag": f'W/"{res["meta"]["versionId"]}"',
                "lastModified": res["meta"]["lastUpdated"]}
    return {"fullUrl": f"{res['resourceType']}/{res['id']}", "response": response}
