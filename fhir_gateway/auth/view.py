"""A store as one client may use it: the store contract, with what the client may not see
left out and what it may not write refused.

Every route that touches stored data takes its store from `store_for(request)`, so reads,
searches, `_include`, history, transactions, batches and the Health Home operations all
answer from the same rules (`audience.py`: a Health Home's members, 42 CFR Part 2): what a
client may not see reads as absent (404, never counted), what it may not write is a 403. A
client whose access is not restricted (FHIR_GATEWAY_AUTH=off) gets the store itself.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qsl, urlsplit

from fhir_gateway import bundle as bundles
from fhir_gateway.auth import context
from fhir_gateway.auth.access import Access, Forbidden, access_of
from fhir_gateway.auth.context import Limit
from fhir_gateway.auth.audience import OWNER, Audience, layout, owner, with_owner
from fhir_gateway.outcome import FhirError, not_found
from fhir_gateway.privacy.labels import PART2_TOKEN
from fhir_gateway.privacy.relabel import labelled_types
from fhir_gateway.search.query import RESULT_PARAMS, parse_query
from fhir_gateway.store.base import FhirStore, HistoryResult, SearchResult, Written
from fhir_gateway.store.resolve import answer_get
from fhir_gateway.store.units import BundleOperations, Entries


#: labelled resources a Health Home client's search looks at to leave out what is not
#: disclosed to it; beyond that, the answer has no total (the page is still filtered)
PART2_SCAN = 1000
INCLUDES = ("_include", "_revinclude")


def store_for(request) -> FhirStore:
    """The app's store as the requesting client may use it."""
    settings = request.app.state.settings
    return view(request.app.state.store, access_of(request), settings.members_cache_seconds,
                settings.part2_unaffiliated)


def view(store: FhirStore, access: Access, cache_seconds: float = 0.0,
         part2: str | None = "withhold") -> FhirStore:
    audience = Audience.of(store, access, cache_seconds, part2)
    if audience.restricted or audience.part2_restricted:
        return ClientView(store, audience)
    return store


def admitting(store: FhirStore, patient_id: str, provider: str) -> FhirStore:
    """The view `$enroll` works on: the member-to-be counts as the client's member (if the
    client may enroll them into `provider`)."""
    if isinstance(store, ClientView):
        store.audience.check_enroll(patient_id, provider)
    return store


def own_provider(access: Access, provider: str | None) -> str | None:
    """The Health Home a monthly operation runs for: a Health Home client's own."""
    if access.organization is None:
        return provider
    if provider not in (None, access.organization):
        raise Forbidden(f"A Health Home client runs this for its own Health Home "
                        f"({access.organization}), not {provider}", "provider")
    return access.organization


class ClientView(BundleOperations):
    def __init__(self, store: FhirStore, audience: Audience):
        self._store, self.audience = store, audience

    # -- reading ---------------------------------------------------------------------------
    def read(self, resource_type: str, resource_id: str) -> dict:
        try:
            return self._shown(self._store.read(resource_type, resource_id))
        except FhirError as err:
            if err.status == 410:  # deleted: that it was there is the client's to know only
                self.read_any(resource_type, resource_id)
            raise

    def vread(self, resource_type: str, resource_id: str, version: str) -> dict:
        return self._shown(self._store.vread(resource_type, resource_id, version))

    def _shown(self, resource: dict) -> dict:
        if not self._sees(resource):
            raise not_found(resource["resourceType"], resource["id"])
        return resource

    def _sees(self, resource: dict) -> bool:
        """Whether the client may see it; what it may not is noted for the audit trail."""
        if not self.audience.sees_member(resource):
            reason = "not-member"
        elif not self.audience.discloses(resource):
            reason = "42CFRPart2"
        else:
            return True
        context.note_withheld(f"{resource.get('resourceType')}/{resource.get('id')}", reason)
        return False

    def search(self, resource_type: str, params: list[tuple[str, str]],
               strict: bool = False) -> SearchResult:
        """The store's search with the client's limits added to its own criteria (totals
        and pages count only what the client sees); 42 CFR Part 2 data is left out by
        label (`_security:not`) for a client without organization, by id for a Health
        Home's client (what its search would find that is not disclosed to it)."""
        limit = self.audience.limit(resource_type)
        if limit is False:  # a type about members, and the client has none, or no member type
            query = parse_query(resource_type, params, strict)
            return SearchResult([], 0, query.count, query.offset, warnings=query.warnings,
                                summary=query.summary, elements=query.elements)
        if resource_type in layout().owned and self.audience.restricted:
            params = [*params, ("_tag", f"{OWNER}|{self.audience.organization}")]
        counted = True
        if self.audience.part2_restricted and resource_type in labelled_types():
            if not self.audience.restricted:
                params = [*params, ("_security:not", PART2_TOKEN)]
                context.note_withheld(f"{resource_type}?_security={PART2_TOKEN}", "42CFRPart2")
            else:
                withheld = self._part2_withheld(resource_type, params, strict, limit)
                counted = withheld is not None
                if withheld:
                    limit = replace(limit or Limit(resource_type), excluded=withheld)
        result = self._limited(resource_type, params, strict, limit)
        result.included = [r for r in result.included if self._sees(r)]
        if self.audience.part2_restricted:  # unlabelled SUD data (stored before labelling)
            result.matches = [r for r in result.matches if self._sees(r)]
        if not counted:
            result.more = result.total is not None and result.offset + result.count < result.total
            result.total = None
        return result

    def _limited(self, resource_type: str, params: list[tuple[str, str]], strict: bool,
                 limit: Limit | None) -> SearchResult:
        token = context.within.set(limit)
        try:
            return self._store.search(resource_type, params, strict)
        finally:
            context.within.reset(token)

    def _part2_withheld(self, resource_type: str, params: list[tuple[str, str]],
                        strict: bool, limit: Limit | None) -> frozenset[str] | None:
        """The ids of the labelled resources the search would find that are not disclosed
        to the client (None: more than `PART2_SCAN` labelled ones, not all looked at)."""
        criteria = [(k, v) for k, v in params
                    if k not in RESULT_PARAMS and k.split(":")[0] not in INCLUDES]
        found = self._limited(resource_type, [*criteria, ("_security", PART2_TOKEN),
                                              ("_count", str(PART2_SCAN))], strict, limit)
        if found.total is not None and found.total > PART2_SCAN:
            return None
        return frozenset(r["id"] for r in found.matches if not self._sees(r))

    def history(self, resource_type: str | None = None, resource_id: str | None = None,
                since: str | None = None, count: int = 20, offset: int = 0) -> HistoryResult:
        """What the client may see of the history; deletions only of what it may see. The
        store's total counts versions the client may not see: it is left out."""
        if resource_id is not None:
            self.read_any(resource_type, resource_id)
        result = self._store.history(resource_type, resource_id, since, count, offset)
        kept = [e for e in result.entries if (e.resource is None and resource_id is not None)
                or (e.resource is not None and self._sees(e.resource))]
        if resource_id is not None and len(kept) == len(result.entries):
            return result
        return HistoryResult(kept, None, count, offset,
                             more=result.total is not None and offset + count < result.total)

    def read_any(self, resource_type: str, resource_id: str) -> None:
        """404 unless some version of the resource is the client's to see."""
        page = self._store.history(resource_type, resource_id, None, 100, 0)
        if not any(e.resource is not None and self.audience.sees(e.resource)
                   for e in page.entries):
            raise not_found(resource_type, resource_id)

    # -- writing ---------------------------------------------------------------------------
    def create(self, resource: dict, if_none_exist: str | None = None) -> Written:
        if if_none_exist:
            return self.conditional_create(resource, if_none_exist)
        return self._store.create(self._writable(resource))

    def update(self, resource_type: str, resource_id: str, resource: dict,
               if_match: str | None = None) -> Written:
        self._replaceable(resource_type, resource_id)
        return self._store.update(resource_type, resource_id, self._writable(resource),
                                  if_match)

    def delete(self, resource_type: str, resource_id: str) -> None:
        self._replaceable(resource_type, resource_id)
        self._store.delete(resource_type, resource_id)

    def commit(self, entries: Entries, representation: bool = False) -> list[dict]:
        """A GET entry alone (a batch runs each entry alone) is answered through this view.
        Inside a transaction, whose reads see its writes in one unit, a Health Home's client
        may not read (its limits cannot reach into the store's unit); for other clients
        the reads' answers leave out what 42 CFR Part 2 withholds."""
        reads = [(i, e) for i, e in entries
                 if str((e.get("request") or {}).get("method", "")).upper() in ("GET", "HEAD")]
        if reads and len(entries) == 1:
            url = str(reads[0][1]["request"].get("url", ""))
            return [{"resource": answer_get(self, url), "response": {"status": "200 OK"}}]
        if reads and self.audience.restricted:
            raise bundles.at_entry(Forbidden(
                "A Health Home client's transaction cannot read: send reads and searches on "
                "their own or in a batch", f"Bundle.entry[{reads[0][0]}]"), reads[0][0])
        checked = []
        for index, entry in entries:
            where = None if index is None else f"Bundle.entry[{index}]"
            try:
                checked.append((index, self._checked_entry(entry, where)))
            except FhirError as err:
                raise err if index is None else bundles.at_entry(err, index) from None
        answers = self._store.commit(checked, representation)
        read_at = {i for i, _ in reads}
        return [self._disclosed(a) if i in read_at else a for (i, _), a in zip(checked, answers)]

    def _disclosed(self, answer: dict) -> dict:
        """A transaction's read answer with what 42 CFR Part 2 withholds taken out."""
        found = answer.get("resource")
        if not isinstance(found, dict):
            return answer
        if found.get("resourceType") == "Bundle" and found.get("type") == "searchset":
            entries = [e for e in found.get("entry", []) if not isinstance(
                e.get("resource"), dict) or self._sees(e["resource"])]
            found = {k: v for k, v in found.items() if k not in ("total", "entry")}
            return {**answer, "resource": {**found, **({"entry": entries} if entries else {})}}
        if self._sees(found):
            return answer
        error = not_found(found.get("resourceType", ""), found.get("id", ""))
        return {"response": {"status": "404 Not Found", "outcome": error.outcome}}

    def _checked_entry(self, entry: dict, where: str | None) -> dict:
        request = entry.get("request") or {}
        method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
        split = urlsplit(url)
        parts = [p for p in split.path.split("/") if p]
        if split.query:
            self.audience.check_criteria(parts[0], parse_qsl(split.query), where)
        elif method in ("PUT", "PATCH", "DELETE") and len(parts) == 2:
            self._replaceable(parts[0], parts[1], where)
        if isinstance(request.get("ifNoneExist"), str) and parts:
            self.audience.check_criteria(parts[0], parse_qsl(request["ifNoneExist"]), where)
        if isinstance(entry.get("resource"), dict):
            entry = {**entry, "resource": self._writable(entry["resource"], where)}
        return entry

    def _writable(self, resource: dict, where: str | None = None) -> dict:
        self.audience.check_write(resource, where)
        if self.audience.restricted and resource.get("resourceType") in layout().owned:
            return with_owner(resource, self.audience.organization)
        return resource

    def _replaceable(self, resource_type: str, resource_id: str, where: str | None = None
                     ) -> None:
        """What an update or delete replaces must be the client's to write too."""
        if not self.audience.restricted:
            return
        try:
            existing = self._store.read(resource_type, resource_id)
        except FhirError:
            return  # nothing there (or deleted): the new content decides
        if resource_type in layout().owned and owner(existing) != self.audience.organization:
            raise Forbidden(f"{resource_type}/{resource_id} belongs to another client's "
                            "organization", where)
        self.audience.check_write(existing, where)

    # -- the rest of the contract ----------------------------------------------------------
    def is_empty(self) -> bool:
        return self._store.is_empty()

    def close(self) -> None:
        pass  # the app's store outlives a request's view
