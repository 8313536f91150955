"""Build searchset and history Bundles, with paging links that a client can follow.

Links are stateless: `next` is the same query with a later `_offset`, so any gateway
process (or a restart) can serve it.
"""

from __future__ import annotations

import uuid
from functools import cache
from http import HTTPStatus
from urllib.parse import urlencode

import orjson

from fhir_gateway.outcome import FhirError, operation_outcome
from fhir_gateway.search.dates import now_instant
from fhir_gateway.store.base import HistoryResult, SearchResult, StoredSearchset

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "Resource encoded in summary mode"}
_PAGING = ("_count", "_offset")


def searchset(result: SearchResult, base: str, resource_type: str,
              params: list[tuple[str, str]]) -> dict:
    prefix = f"{base}/" if base else ""
    bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
              "meta": {"lastUpdated": now_instant()[0]}, "type": "searchset",
              **_total(result.total)}
    if result.summary != "count":
        bundle["link"] = _links(result.total, result.count, result.offset,
                                f"{prefix}{resource_type}", params, result.more)
        entries = [_entry(project(r, result.summary, result.elements), prefix, "match")
                   for r in result.matches]
        entries += [_entry(project(r, result.summary, result.elements), prefix, "include")
                    for r in result.included]
        if result.warnings:
            entries.append({"resource": operation_outcome(result.warnings),
                            "search": {"mode": "outcome"}})
        if entries:
            bundle["entry"] = entries
    return bundle


def stored_searchset(stored: StoredSearchset, base: str, resource_type: str,
                     params: list[tuple[str, str]]) -> bytes:
    """The gateway's searchset around a store's entries, which stay the bytes it wrote.

    The head (id, total, links) is built as for any search, so the links are the gateway's
    stateless ones; the entries' fullUrls get the gateway's base by a bytes replace, which
    `StoredSearchset` guarantees touches nothing else.
    """
    head = orjson.dumps(searchset(SearchResult([], stored.total, stored.count, stored.offset),
                                  base, resource_type, params))
    if not stored.entries:
        return head
    prefix = f"{base}/" if base else ""
    entries = stored.entries.replace(f'"fullUrl":"{stored.store_base}/'.encode(),
                                     f'"fullUrl":"{prefix}'.encode())
    return head[:-1] + entries


def history(result: HistoryResult, base: str, path: str,
            params: list[tuple[str, str]]) -> dict:
    prefix = f"{base}/" if base else ""
    entries = []
    for h in result.entries:
        url = f"{h.resource_type}/{h.id}"
        entry: dict = {"fullUrl": f"{prefix}{url}"}
        if h.resource is not None:
            entry["resource"] = h.resource
        status = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}[h.method]
        entry["request"] = {"method": h.method,
                            "url": h.resource_type if h.method == "POST" else url}
        entry["response"] = {"status": status, "etag": f'W/"{h.version}"',
                             "lastModified": h.last_updated}
        entries.append(entry)
    bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
              "meta": {"lastUpdated": now_instant()[0]}, "type": "history",
              **_total(result.total),
              "link": _links(result.total, result.count, result.offset, f"{prefix}{path}", params,
                             result.more)}
    if entries:
        bundle["entry"] = entries
    return bundle


def _entry(resource: dict, prefix: str, mode: str) -> dict:
    return {"fullUrl": f"{prefix}{resource['resourceType']}/{resource['id']}",
            "resource": resource, "search": {"mode": mode}}


def _total(total: int | None) -> dict:
    """`total`, left out when unknown (a client's view of what the store counted)."""
    return {} if total is None else {"total": total}


def _links(total: int | None, count: int, offset: int, url: str,
           params: list[tuple[str, str]], more: bool = False) -> list[dict]:
    kept = [(k, v) for k, v in params if k not in _PAGING]

    def page(at: int) -> str:
        return f"{url}?{urlencode([*kept, ('_count', str(count)), ('_offset', str(at))])}"

    links = [{"relation": "self", "url": page(offset)}]
    if offset > 0:
        links.append({"relation": "first", "url": page(0)})
        links.append({"relation": "previous", "url": page(max(offset - count, 0))})
    if count and total is not None and offset + count < total:
        links.append({"relation": "next", "url": page(offset + count)})
        links.append({"relation": "last", "url": page((total - 1) // count * count)})
    elif count and total is None and more:
        links.append({"relation": "next", "url": page(offset + count)})
    return links


def project(resource: dict, summary: str | None, elements: list[str]) -> dict:
    """Apply `_summary` / `_elements` (top-level elements) and mark the result SUBSETTED."""
    if not summary and not elements:
        return resource
    keep_always = {"resourceType", "id", "meta"}
    if summary == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    elif summary == "text":
        out = {k: v for k, v in resource.items() if k in keep_always | {"text"}}
    elif summary == "true":
        wanted = _summary_elements(resource["resourceType"])
        out = {k: v for k, v in resource.items() if k in keep_always or k in wanted}
    else:
        wanted = set(elements)
        out = {k: v for k, v in resource.items()
               if k in keep_always or k in wanted or _choice_base(k) in wanted}
    meta = dict(out.get("meta") or {})
    tags = meta.get("tag", [])
    if not any(t.get("code") == "SUBSETTED" for t in tags):  # HAPI may have subsetted already
        meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out


def _choice_base(key: str) -> str:
    """`valueQuantity` -> `value` so `_elements=value` keeps a choice element."""
    for i in range(1, len(key)):
        if key[i].isupper():
            return key[:i]
    return key


@cache
def _summary_elements(resource_type: str) -> frozenset[str]:
    from fhir_gateway.validation.structure import model_fields

    return frozenset(name for name, summary in model_fields(resource_type).items() if summary)


def at_entry(err: FhirError, index: int | None) -> FhirError:
    """Point the error's issues at the entry (`Patient.name` -> `Bundle.entry[3].resource.name`);
    as it is for no entry (None: a single REST request)."""
    if index is None:
        return err
    entry = f"Bundle.entry[{index}]"
    for issue in err.issues:
        issue.expression = [
            e if e.startswith("Bundle.") else
            f"{entry}.resource.{e.split('.', 1)[1]}" if e[:1].isupper() and "." in e else
            f"{entry}.resource" if e[:1].isupper() else f"{entry}.{e}"
            for e in issue.expression] or [entry]
        if f"entry[{index}]" not in issue.diagnostics:
            issue.diagnostics = f"Bundle.entry[{index}]: {issue.diagnostics}"
    return err


def status_line(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def response_bundle(kind: str, entries: list[dict]) -> dict:
    """A transaction-response or batch-response: one entry per request entry, in order."""
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": kind,
            "meta": {"lastUpdated": now_instant()[0]}, "entry": entries}
