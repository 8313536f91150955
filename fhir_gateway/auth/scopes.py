"""SMART scopes (App Launch 1.0 and 2.x), read into one shape: per resource type, the
permissions granted, as SMART v2's letters `c r u d s`.

v1 `system/Patient.read` is `rs`, `.write` is `cud`, `.*` is `cruds`; v2 `system/Patient.rs`
says its letters itself (in the order c, r, u, d, s). Only `system/` scopes grant anything
here: this is a Backend Services server, with no user or patient context. A v2 scope with a
query (`system/Observation.rs?category=...`) is a finer grant than this server can enforce,
so it grants nothing rather than more than it says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LETTERS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": LETTERS}
_SCOPE = re.compile(r"^system/(\*|[A-Z][A-Za-z]{1,63})\.([a-z*]+)$")


def permissions(scope: str) -> tuple[str, str] | None:
    """('Patient', 'rs') for `system/Patient.read` or `system/Patient.rs`; None when the
    scope grants nothing on this server (another context, a query, not a scope)."""
    found = _SCOPE.match(scope)
    if not found:
        return None
    resource_type, what = found.groups()
    if what in _V1:
        return resource_type, _V1[what]
    ordered = [c for c in LETTERS if c in what]
    if not what or len(set(what)) != len(what) or "".join(ordered) != what:
        return None  # v2 letters are each at most once, in the order c r u d s
    return resource_type, what


@dataclass(frozen=True)
class Grant:
    """What a set of scopes allows: `{resource type or '*': letters}`."""

    rights: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, scopes: str | list[str]) -> Grant:
        words = scopes.split() if isinstance(scopes, str) else list(scopes)
        rights: dict[str, set[str]] = {}
        for word in words:
            found = permissions(word)
            if found:
                rights.setdefault(found[0], set()).update(found[1])
        return cls(tuple((t, "".join(c for c in LETTERS if c in p)) for t, p in rights.items()))

    def allows(self, resource_type: str, letter: str) -> bool:
        return any((t == "*" or t == resource_type) and letter in p for t, p in self.rights)

    def allows_all(self, resource_type: str, letters: str) -> bool:
        return all(self.allows(resource_type, c) for c in letters)

    def everything(self, letter: str) -> bool:
        """Whether `letter` is granted on every type (`system/*.x`)."""
        return any(t == "*" and letter in p for t, p in self.rights)


def narrowed(requested: str, allowed: str) -> str:
    """Of the requested scopes, those within the client's registered ones ('' for none)."""
    grant = Grant.of(allowed)
    kept = []
    for word in requested.split():
        found = permissions(word)
        if found and _within(grant, *found) and word not in kept:
            kept.append(word)
    return " ".join(kept)


def _within(grant: Grant, resource_type: str, letters: str) -> bool:
    if resource_type == "*":
        return all(grant.everything(c) for c in letters)
    return grant.allows_all(resource_type, letters)


#: every scope form this server understands, for the SMART configuration
SUPPORTED = ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write", "system/*.*"]
