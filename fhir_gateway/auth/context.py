"""Who the request being served is for, where only a deep callee needs to know.

The bearer middleware sets `access` for each /fhir request; code that runs far below the
route without a request in hand reads it here: the write guard (which organization
recorded a resource, for 42 CFR Part 2), and the audit trail (what was withheld). Context
variables follow the request into the worker threads Starlette runs the stores in; work
that runs on its own (export jobs, Subscription deliveries) has none, and says for whom it
works explicitly.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fhir_gateway.auth.access import Access

access: ContextVar[Access | None] = ContextVar("access", default=None)


@dataclass(frozen=True)
class Limit:
    """What a search made for a client is limited to: the members (the Patients `param`
    names, for a Health Home's client) and not the ids in `excluded` (what 42 CFR Part 2
    withholds). Set by `auth/view.py` around the store's search only, read by
    `search/query.py parse_query`, so both stores add it to the criteria the client sent
    (and a client cannot send it), however many ids it holds."""

    resource_type: str
    param: str | None = None
    members: frozenset[str] | None = None
    excluded: frozenset[str] = frozenset()


within: ContextVar[Limit | None] = ContextVar("within", default=None)
#: (reference, reason) of each resource the request's answer left out for access reasons;
#: a list per request, made by whoever audits it (`begin_withholding`)
_withheld: ContextVar[list[tuple[str, str]] | None] = ContextVar("withheld", default=None)


def recording_organization() -> str | None:
    """`Organization/<id>` of the client writing now (None: no client, or none recorded)."""
    current = access.get()
    return current.organization if current is not None else None


def begin_withholding() -> list[tuple[str, str]]:
    """A fresh list of what this request withholds (call once per request, first)."""
    notes: list[tuple[str, str]] = []
    _withheld.set(notes)
    return notes


def note_withheld(reference: str, reason: str) -> None:
    """Record that `reference` (`Type/id`) was left out of the answer, and why
    (`not-member`: outside the client's Health Home; `42CFRPart2`: no consent)."""
    notes = _withheld.get()
    if notes is not None and len(notes) < 1000:
        notes.append((reference, reason))
