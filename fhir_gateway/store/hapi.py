"""The store contract over HTTP, against a HAPI FHIR JPA server (the production store).

HAPI does the storing, versioning, searching and transaction processing; this class maps
each store operation onto one FHIR request, passes HAPI's OperationOutcomes through
unchanged, and turns an unreachable HAPI into a 503 OperationOutcome. Connections are
pooled and retried by the gateway's one HTTP client (`fhir_gateway/http_client.py`): a
connection that failed, for any request; one that dropped, for GET, PUT and DELETE and a
transaction whose entries are all safe to repeat; never a read timeout or an answer.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fhir_gateway import http_client
from fhir_gateway.formats import fhirjson
from fhir_gateway.http_client import REPEATABLE, Response
from fhir_gateway.outcome import FhirError
from fhir_gateway.search.query import WITHIN, WITHOUT, SearchQuery, parse_query
from fhir_gateway.search.registry import resource_types
from fhir_gateway.store.base import (
    HistoryEntry,
    HistoryResult,
    SearchResult,
    StoredResource,
    StoredSearchset,
    Written,
    version_number,
)
from fhir_gateway.store.units import BundleOperations, Entries

FHIR_JSON = "application/fhir+json"
#: HAPI answers a stale If-Match with 409 (400 inside a transaction); FHIR and the
#: gateway's contract say 412
_VERSION_CONFLICT = "HAPI-0989"
#: the loser of two concurrent conditional creates gets 409; asking again finds the winner
_CONDITIONAL_RACE = "HAPI-2745"


class HapiStore(BundleOperations):
    """FhirStore backed by a FHIR server's REST API (HAPI FHIR JPA in production)."""

    #: HAPI keeps the earlier versions' meta.tag and meta.security on update (they are
    #: removed only by $meta-delete): the Part 2 labels and the recorder carry over by
    #: themselves (`privacy/write.py`)
    meta_is_additive = True

    def __init__(self, base_url: str, timeout: float = 30.0, retries: int = 2,
                 pool_size: int = 32):
        self.base = base_url.rstrip("/")
        self.client = http_client.Client(self.base, timeout=timeout, retries=retries,
                                         backoff=0.1, pool_size=pool_size,
                                         headers={"Accept": FHIR_JSON})

    # -- HTTP ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, params=None, json=None, form=None,
                 headers=None, repeatable: bool = False) -> Response:
        body = None
        if json is not None:  # orjson: the JSON library of the hot paths
            body = fhirjson.dumps(json)
            headers = {"Content-Type": FHIR_JSON, **(headers or {})}
        if form is not None:
            body = urlencode(form).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        try:
            return self.client.request(method, path, params=params, body=body,
                                       headers=headers, repeatable=repeatable)
        except http_client.Unreachable as exc:
            raise FhirError(503, f"The FHIR store at {self.base} is unreachable ({exc})",
                            "transient") from None

    def _json(self, response: Response, ok: tuple[int, ...] = (200, 201)) -> dict:
        if response.status_code in ok:
            return fhirjson.loads(response.content) if response.content else {}
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            status = response.status_code
            if status in (400, 409) and _VERSION_CONFLICT in response.text:
                status = 412
            raise FhirError.passthrough(status, body)
        raise FhirError(502 if response.status_code < 400 else response.status_code,
                        f"The FHIR store answered HTTP {response.status_code} without an "
                        "OperationOutcome", "exception")

    # -- contract -----------------------------------------------------------------------
    def create(self, resource: dict, if_none_exist: str | None = None) -> Written:
        if if_none_exist:
            return self.conditional_create(resource, if_none_exist)
        response = self._request("POST", resource["resourceType"], json=resource,
                                 headers={"Prefer": "return=representation"})
        return Written(self._json(response), response.status_code)

    def read(self, resource_type: str, resource_id: str) -> dict:
        return self._json(self._request("GET", f"{resource_type}/{resource_id}"))

    def vread(self, resource_type: str, resource_id: str, version: str) -> dict:
        version_number(resource_type, resource_id, version)
        return self._json(self._request("GET", f"{resource_type}/{resource_id}/_history/{version}"))

    def read_raw(self, resource_type: str, resource_id: str) -> StoredResource:
        return self._stored(self._request("GET", f"{resource_type}/{resource_id}"))

    def vread_raw(self, resource_type: str, resource_id: str, version: str) -> StoredResource:
        version_number(resource_type, resource_id, version)
        return self._stored(self._request("GET",
                                          f"{resource_type}/{resource_id}/_history/{version}"))

    def _stored(self, response: Response) -> StoredResource:
        """The resource HAPI sent, unparsed, with HAPI's ETag and Last-Modified."""
        if response.status_code != 200:
            self._json(response, ok=())  # raises HAPI's OperationOutcome
        return StoredResource(response.content, response.headers.get("etag"),
                              response.headers.get("last-modified"))

    def update(self, resource_type: str, resource_id: str, resource: dict,
               if_match: str | None = None) -> Written:
        headers = {"Prefer": "return=representation"}
        if if_match:
            headers["If-Match"] = if_match
        response = self._request("PUT", f"{resource_type}/{resource_id}", json=resource,
                                 headers=headers)
        try:
            return Written(self._json(response), response.status_code)
        except FhirError as err:
            if if_match and err.status == 409:  # lost a race to another writer (HAPI-0823)
                err.status = 412
            raise

    def delete(self, resource_type: str, resource_id: str) -> None:
        self._json(self._request("DELETE", f"{resource_type}/{resource_id}"), ok=(200, 204))

    def search(self, resource_type: str, params: list[tuple[str, str]],
               strict: bool = False) -> SearchResult:
        query, response = self._search(resource_type, params, strict)
        return _search_result(query, self._json(response))

    def search_raw(self, resource_type: str, params: list[tuple[str, str]],
                   strict: bool = False) -> StoredSearchset | SearchResult:
        """HAPI's searchset left as bytes when the gateway changes nothing in it but the
        base URL and the links; else the parsed result, for the gateway to build it (warnings
        to add, a `_summary` to apply, entries a bytes replace cannot re-base)."""
        query, response = self._search(resource_type, params, strict)
        if response.status_code == 200 and not query.warnings and not query.summary:
            stored = _stored_searchset(response.content, resource_type, query)
            if stored is not None:
                return stored
        return _search_result(query, self._json(response))

    def _search(self, resource_type: str, params: list[tuple[str, str]], strict: bool
                ) -> tuple[SearchQuery, Response]:
        if resource_type not in resource_types():
            raise FhirError(404, f"Unknown resource type '{resource_type}'", "not-supported")
        query = parse_query(resource_type, params, strict)  # same meaning, same errors
        unknown = {w.expression[0] for w in query.warnings}
        forwarded = [(k, v) for k, v in params
                     if k not in unknown and k not in ("_count", "_offset", "_format", "_pretty")]
        forwarded.append(("_count", str(query.count)))
        if query.offset:  # page 1 without it: HAPI's normal search, not its offset mode
            forwarded.append(("_offset", str(query.offset)))
        limits = [c for c in query.criteria if c.modifier in (WITHIN, WITHOUT)]
        if not limits:
            return query, self._request("GET", resource_type, params=forwarded)
        # a client's limits (`auth/context.py Limit`): as many ids as it has, in a form body
        for c in limits:
            ids = c.values if c.param.code == "_id" else [f"Patient/{i}" for i in c.values]
            name = c.param.code if c.modifier == WITHIN else "_id:not"
            forwarded.append((name, ",".join(ids)))
        return query, self._request("POST", f"{resource_type}/_search", repeatable=True,
                                    form=forwarded)

    def _total(self, resource_type: str, criteria: list[tuple[str, str]]) -> int:
        params = [*criteria, ("_summary", "count")]
        return self._json(self._request("GET", resource_type, params=params)).get("total", 0)

    def history(self, resource_type: str | None = None, resource_id: str | None = None,
                since: str | None = None, count: int = 20, offset: int = 0) -> HistoryResult:
        if resource_type and resource_type not in resource_types():
            raise FhirError(404, f"Unknown resource type '{resource_type}'", "not-supported")
        path = "/".join(p for p in (resource_type, resource_id, "_history") if p)
        params = {"_count": str(count + offset)}
        if since:
            params["_since"] = since
        bundle = self._json(self._request("GET", path, params=params))
        entries = []
        for entry in bundle.get("entry", [])[offset:offset + count]:
            request, response = entry.get("request", {}), entry.get("response", {})
            resource = entry.get("resource")
            rtype, rid = _type_and_id(entry, resource)
            version = int(response.get("etag", 'W/"0"').split('"')[1] or 0) if response.get(
                "etag") else int((resource or {}).get("meta", {}).get("versionId", 0))
            entries.append(HistoryEntry(rtype, rid, version,
                                        response.get("lastModified") or
                                        (resource or {}).get("meta", {}).get("lastUpdated", ""),
                                        request.get("method", "PUT"), resource))
        return HistoryResult(entries, bundle.get("total", len(entries)), count, offset)

    def commit(self, entries: Entries, representation: bool = False) -> list[dict]:
        """The entries as one HAPI transaction Bundle: HAPI resolves and applies them in one
        database transaction. Sent again after a dropped connection only if every entry is safe
        to repeat, and when HAPI says a concurrent conditional create won (it now finds it)."""
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [entry for _, entry in entries]}
        headers = {"Prefer": "return=representation"} if representation else None
        repeatable = all(_repeatable(entry.get("request", {})) for _, entry in entries)
        for _ in range(3):
            response = self._request("POST", "", json=bundle, headers=headers,
                                     repeatable=repeatable)
            if not (response.status_code == 409 and _CONDITIONAL_RACE in response.text):
                break
        return self._json(response).get("entry", [])

    def is_empty(self) -> bool:
        return self._total("Patient", []) == 0

    def close(self) -> None:
        self.client.close()


def _repeatable(request: dict) -> bool:
    return request.get("method") in REPEATABLE or bool(request.get("ifNoneExist"))


def _search_result(query: SearchQuery, bundle: dict) -> SearchResult:
    result = SearchResult([], bundle.get("total"), query.count, query.offset,
                          warnings=query.warnings, summary=query.summary)
    for entry in bundle.get("entry", []):
        mode = entry.get("search", {}).get("mode", "match")
        if mode == "match":
            result.matches.append(entry["resource"])
        elif mode == "include":
            result.included.append(entry["resource"])
    return result


def _stored_searchset(content: bytes, resource_type: str, query: SearchQuery
                      ) -> StoredSearchset | None:
    """HAPI's compact searchset split where its entries start: the head (a few hundred
    bytes: total, links) is parsed, the entries are not.

    `,"entry":[` cannot occur inside a JSON string (its quotes would be escaped) and HAPI
    writes Bundle elements in the order of the spec (total, link, entry), so its first
    occurrence is the top-level one. None when a bytes replace of HAPI's base could change
    more than the entries' own fullUrls (a stored Bundle among them), or the entries hold
    something the gateway leaves out (an outcome), or any fullUrl is not under HAPI's base.
    """
    cut = content.find(b',"entry":[')
    head = fhirjson.loads(content[:cut] + b"}" if cut >= 0 else content)
    entries = content[cut:] if cut >= 0 else b""
    self_url = next((link.get("url", "") for link in head.get("link", [])
                     if link.get("relation") == "self"), "")
    base = self_url.partition(f"/{resource_type}?")[0]
    if "entry" in head or b'"resourceType":"Bundle"' in entries or \
            b'"mode":"outcome"' in entries or \
            entries.count(b'"fullUrl":"') != entries.count(f'"fullUrl":"{base}/'.encode()):
        return None
    return StoredSearchset(entries, base, head.get("total"), query.count, query.offset)


def _type_and_id(entry: dict, resource: dict | None) -> tuple[str, str]:
    if resource:
        return resource["resourceType"], resource["id"]
    url = entry.get("fullUrl") or entry.get("request", {}).get("url", "")
    parts = url.split("/_history/")[0].rstrip("/").split("/")
    return parts[-2], parts[-1]

