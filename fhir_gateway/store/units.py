"""Transaction and batch Bundles and the conditional operations, written once for any store.

Each store offers one primitive, `commit`: apply Bundle entries as one atomic unit and answer
each (embedded: one SQLite transaction, `resolve.py`; HAPI: one transaction Bundle, so HAPI's
own ifNoneExist, If-Match and conditional references run inside its transaction and no race
opens between a match and the write). Over it, as Medplum's fhir-router over its repository:
a transaction is the checked entries as one unit; a batch, each entry as a unit of its own,
every entry answered; a conditional create, update or delete, a one-entry unit. Entries are
checked here, so both stores refuse a malformed one with the same 400.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from fhir_gateway import bundle as bundles
from fhir_gateway.outcome import FhirError, invalid
from fhir_gateway.search.registry import resource_types
from fhir_gateway.store.base import Written
from fhir_gateway.validation.structure import check_shape

#: the spec's processing order of a transaction's entries
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}

#: (entry index or None for a single REST request, entry)
Entries = list[tuple[int | None, dict]]
#: left as they are in criteria sent on: what a system|value token is written with
_SAFE = ":/|"


class BundleOperations:
    """The Bundle and conditional operations of the store contract, over `commit`."""

    def commit(self, entries: Entries, representation: bool = False) -> list[dict]:
        """Apply the entries as one atomic unit; one answer per entry, in entry order
        (with the written resource when `representation`). An error names the entry."""
        raise NotImplementedError

    def transaction(self, bundle: dict) -> dict:
        entries = _entries(bundle, "transaction")
        for index, entry in entries:
            _check_entry(index, entry)
        return bundles.response_bundle("transaction-response", self.commit(entries))

    def batch(self, bundle: dict) -> dict:
        answers = []
        for index, entry in _entries(bundle, "batch"):
            try:
                _check_entry(index, entry)
                answers.extend(self.commit([(index, entry)]))  # its own unit: may refuse alone
            except FhirError as err:
                answers.append({"response": {"status": bundles.status_line(err.status),
                                             "outcome": bundles.at_entry(err, index).outcome}})
        return bundles.response_bundle("batch-response", answers)

    def conditional_create(self, resource: dict, if_none_exist: str) -> Written:
        """The resource found by `if_none_exist` (200), or the resource created (201)."""
        return self._one({"resource": resource, "request": {
            "method": "POST", "url": resource["resourceType"], "ifNoneExist": if_none_exist}})

    def conditional_update(self, resource_type: str, criteria: list[tuple[str, str]],
                           resource: dict) -> Written:
        return self._one({"resource": resource, "request": {
            "method": "PUT", "url": f"{resource_type}?{urlencode(criteria, safe=_SAFE)}"}})

    def conditional_delete(self, resource_type: str, criteria: list[tuple[str, str]]) -> None:
        if not criteria:
            raise invalid("A conditional delete needs search criteria")
        url = f"{resource_type}?{urlencode(criteria, safe=_SAFE)}"
        self.commit([(None, {"request": {"method": "DELETE", "url": url}})])

    def _one(self, entry: dict) -> Written:
        answer = self.commit([(None, entry)], representation=True)[0]
        return Written(answer["resource"], int(answer["response"]["status"][:3]))


def _entries(bundle: dict, kind: str) -> Entries:
    if bundle.get("type") != kind:
        raise invalid(f"Expected a Bundle of type '{kind}', got '{bundle.get('type')}'",
                      "Bundle.type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise invalid("Bundle.entry must be an array", "Bundle.entry")
    return [(i, dict(e) if isinstance(e, dict) else e) for i, e in enumerate(entries)]


def _check_entry(index: int, entry: dict) -> None:
    """A 400 naming the entry for what no store could process."""
    where = f"Bundle.entry[{index}]"
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict) or not all(isinstance(request.get(k), str) and request[k]
                                                for k in ("method", "url")):
        raise invalid("Each entry needs request.method and request.url", f"{where}.request")
    method, url = request["method"], request["url"]
    if method not in ORDER:
        raise invalid(f"Unknown request.method '{method}'", f"{where}.request.method")
    parts = urlsplit(url).path.strip("/").split("/")
    rtype = parts[0]
    if rtype not in resource_types():
        raise FhirError(404 if method != "POST" else 400,
                        f"Unknown resource type in request.url '{url}'", "not-supported",
                        f"{where}.request.url")
    if method in ("PUT", "DELETE") and "?" not in url and len(parts) != 2:
        raise invalid(f"A {method} entry's url must be Type/id or Type?criteria, not '{url}'",
                      f"{where}.request.url")
    if method not in ("POST", "PUT"):
        return
    if "resource" not in entry:
        raise invalid(f"A {method} entry needs a resource", f"{where}.resource")
    try:
        check_shape(entry["resource"], rtype)
    except FhirError as err:
        raise bundles.at_entry(err, index) from None
    if method == "PUT" and "?" not in url and entry["resource"].get("id") not in (None, parts[1]):
        raise invalid(f"Resource id '{entry['resource'].get('id')}' does not match the request "
                      f"url '{url}'", f"{where}.resource.id")
