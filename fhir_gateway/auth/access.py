"""The access decision: the one module every route, search, `_include`, Bundle entry and
operation consults to learn whether a request's client may do what it asks.

`needs(method, path)` says what a request under /fhir needs, from its method and path
alone, so the middleware (`auth/middleware.py`) decides before any route runs, and a route
added later is covered by `default` in `operations.yaml` until it is listed there. What the
path cannot tell is decided here too, called by the routes: each entry of a transaction
(`check_bundle`) or batch (`Scoped`), the resources a search includes (`visible`).

Later rules (per-Health-Home access by `organization`, 42 CFR Part 2, audit) plug into
`Access`: it carries the client's identity as well as its scopes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from fhir_gateway.auth.scopes import LETTERS, Grant
from fhir_gateway.outcome import FhirError
from fhir_gateway.search.registry import params_for, resource_types
from fhir_gateway.store.units import BundleOperations

OPERATIONS = Path(__file__).with_name("operations.yaml")
#: a need: (resource type or '*' for every type, SMART v2 letters)
Need = tuple[str, str]
_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


class Forbidden(FhirError):
    """403: the token is good, its scopes do not cover the request."""

    def __init__(self, diagnostics: str, expression: str | None = None):
        super().__init__(403, diagnostics, "forbidden", expression)


@dataclass(frozen=True)
class Access:
    """Who is asking (`client_id`, `organization`) and what their token grants."""

    client_id: str
    grant: Grant
    scope: str = ""
    organization: str | None = None

    def can(self, resource_type: str, letter: str) -> bool:
        if resource_type == "*":
            return self.grant.everything(letter)
        return self.grant.allows(resource_type, letter)

    def require(self, needs: list[Need], where: str | None = None) -> None:
        """Raise `Forbidden` naming the first permission the scopes lack."""
        for resource_type, letters in needs:
            for letter in letters:
                if not self.can(resource_type, letter):
                    what = "every resource type" if resource_type == "*" else resource_type
                    raise Forbidden(
                        f"The access token's scopes ({self.scope or 'none'}) do not allow "
                        f"{_WORDS[letter]} on {what} (needs system/{resource_type}.{letter})"
                        + (f" at {where}" if where else ""), where)

    def visible(self, resource: dict) -> bool:
        """Whether a resource may be returned alongside others (`_include`, `_revinclude`)."""
        return self.can(resource.get("resourceType", ""), "r")

    def check_chains(self, resource_type: str, params: list[tuple[str, str]]) -> None:
        """A chained parameter (`subject:Patient.family=...`) searches the types it goes
        through: each needs `s`, or the matches would tell what the scopes do not cover."""
        if self.grant.everything("s"):
            return
        for key, _ in params:
            hops = key.split(".")
            current = {resource_type}
            for hop in hops[:-1]:
                code, _, named = hop.partition(":")
                targets = {named} if named else {
                    t for rtype in current for t in getattr(
                        params_for(rtype).get(code), "targets", ())}
                for target in sorted(targets) or ["*"]:
                    self.require([(target, "s")], key)
                current = targets

    def check_bundle(self, bundle: dict) -> None:
        """Each entry of a transaction, as if it came alone: one outside the scopes refuses
        the whole Bundle (403, naming the entry) before anything is written. A batch's
        entries are checked one by one as the batch runs them (`check_entry`)."""
        for index, entry in enumerate(bundle.get("entry") or []):
            if isinstance(entry, dict):  # else the Bundle checks refuse it, with its path
                self.check_entry(index, entry)

    def check_entry(self, index: int | None, entry: dict) -> None:
        request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
        method = str(request.get("method", "")).upper()
        url = str(request.get("url", "")).split("?")[0]
        segments = [s for s in url.split("/") if s]
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else {}
        if not segments and resource.get("resourceType"):
            segments = [str(resource["resourceType"])]
        where = None if index is None else f"Bundle.entry[{index}]"
        self.require(needs(method, segments), where)
        url_text = str(request.get("url", ""))
        if method == "GET" and ("_include" in url_text or "_revinclude" in url_text) \
                and not self.grant.everything("r"):
            raise Forbidden("_include and _revinclude inside a batch or transaction need "
                            "read on every type (system/*.r); send the search on its own "
                            "to have what the scopes do not cover left out", where)


class Scoped(BundleOperations):
    """A store whose `commit` first checks each entry against the client's scopes: a
    batch over it (each entry its own commit) answers an entry outside the scopes with
    its own 403 and stores the others."""

    def __init__(self, store, access: Access):
        self.store, self.access = store, access

    def commit(self, entries, representation: bool = False) -> list[dict]:
        for index, entry in entries:
            self.access.check_entry(index, entry)
        return self.store.commit(entries, representation)


#: the access of a gateway run with FHIR_GATEWAY_AUTH=off (loopback only)
UNRESTRICTED = Access("anonymous", Grant((("*", LETTERS),)), "system/*.cruds")
#: no access at all: what a route sees if the middleware did not run (fails closed)
NOBODY = Access("nobody", Grant(), "")


def access_of(request) -> Access:
    """The requesting client's Access, as the bearer middleware recorded it."""
    return request.scope.get("state", {}).get("access", NOBODY)


def needs(method: str, segments: list[str]) -> list[Need]:
    """What a request needs, from its method and its path below /fhir (split at '/'). A
    transaction or batch (`POST /fhir`) needs nothing here: each entry is checked by
    `Access.check_bundle` when the route has read the body."""
    types = resource_types()
    method = method.upper()
    if method == "HEAD":
        method = "GET"
    operation = next((s for s in segments if s.startswith("$")), None)
    if operation is not None:
        return _operation(segments)
    if not segments:
        return [] if method == "POST" else [("*", "s")] if method == "GET" else _default()
    if segments == ["_history"] and method == "GET":
        return [("*", "s")]
    head, rest = segments[0], segments[1:]
    if head not in types:
        return _default()
    shape = (method, len(rest), rest[0] if rest else None)
    if shape in (("GET", 0, None), ("POST", 1, "_search"), ("GET", 1, "_history")):
        return [(head, "s")]
    if shape == ("POST", 0, None):
        return [(head, "c")]
    if method == "PUT" and len(rest) <= 1:
        return [(head, "u")]
    if method == "DELETE" and len(rest) <= 1:
        return [(head, "d")]
    if method == "GET" and (len(rest) == 1 or (len(rest) in (2, 3) and rest[1] == "_history")):
        return [(head, "r")]
    return _default()


def _operation(segments: list[str]) -> list[Need]:
    """An operation's needs from operations.yaml, by its URL pattern. What follows the
    operation's name (`$export-status/<job>`) belongs to it."""
    table = _table()
    at = next(i for i, s in enumerate(segments) if s.startswith("$"))
    name, prefix = segments[at], segments[:at]
    if prefix and prefix[0] not in resource_types():
        return _default()
    patterns = {0: [name], 1: [f"{prefix[0]}/{name}", f"{{type}}/{name}"] if prefix else [],
                2: [f"{prefix[0]}/{{id}}/{name}", f"{{type}}/{{id}}/{name}"] if prefix else []
                }.get(len(prefix), [])
    for pattern in patterns:
        if pattern in table["operations"]:
            rules = table["operations"][pattern] or {}
            return [(prefix[0] if t == "{type}" else t, letters) for t, letters in rules.items()]
    return _default()


def _default() -> list[Need]:
    return list(_table()["default"].items())


@cache
def _table() -> dict:
    return yaml.safe_load(OPERATIONS.read_text())
