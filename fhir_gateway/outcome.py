"""OperationOutcome: the one shape every error takes on the wire.

Raise `FhirError` anywhere below the API; the API turns it into an HTTP status with an
OperationOutcome body, so callers always learn what went wrong and where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Issue:
    diagnostics: str
    code: str = "processing"
    severity: str = "error"
    expression: list[str] = field(default_factory=list)

    def to_fhir(self) -> dict:
        issue = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = self.expression
        return issue


class FhirError(Exception):
    """An error with an HTTP status and the OperationOutcome issues that explain it."""

    def __init__(self, status: int, diagnostics: str, code: str = "processing",
                 expression: list[str] | str | None = None, issues: list[Issue] | None = None):
        super().__init__(diagnostics)
        self.status = status
        if isinstance(expression, str):
            expression = [expression]
        self.issues = issues or [Issue(diagnostics, code, "error", expression or [])]
        self.raw_outcome: dict | None = None
        #: (type, id) of the resource the error is about, when only the commit found it
        #: (a reference check): a transaction then names that resource's entry
        self.source: tuple[str, str] | None = None

    @classmethod
    def passthrough(cls, status: int, outcome: dict) -> FhirError:
        """An upstream server's OperationOutcome, to be answered unchanged."""
        issues = [Issue(i.get("diagnostics", ""), i.get("code", "processing"),
                        i.get("severity", "error"), i.get("expression", []))
                  for i in outcome.get("issue", [])]
        err = cls(status, issues[0].diagnostics if issues else f"HTTP {status}", issues=issues or None)
        err.raw_outcome = outcome
        return err

    @property
    def outcome(self) -> dict:
        return self.raw_outcome or operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def not_found(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(404, f"Resource {resource_type}/{resource_id} is not known", "not-found")


def gone(resource_type: str, resource_id: str, version: int) -> FhirError:
    return FhirError(410, f"Resource {resource_type}/{resource_id} was deleted (version {version})",
                     "deleted")


def invalid(diagnostics: str, expression: list[str] | str | None = None) -> FhirError:
    return FhirError(400, diagnostics, "invalid", expression)


def missing_target(target: str, path: str) -> FhirError:
    """A reference to a resource the store does not hold, in HAPI's words: so the loader
    (`missing_target_in`) and clients read both stores' answers alike."""
    return FhirError(400, f"Resource {target} not found, specified in path: {path}", "not-found",
                     path)


_MISSING_TARGET = re.compile(r"Resource ([A-Za-z]+/[A-Za-z0-9\-.]{1,64}) not found")


def missing_target_in(diagnostics: str) -> str | None:
    """The `Type/id` a store's error names as not held (see `missing_target`), if any."""
    found = _MISSING_TARGET.search(diagnostics)
    return found[1] if found else None
