"""The 42 CFR Part 2 labels on a resource, and who recorded it: read them, and work out a
written version's labels from what the client sent and the version stored before.

`meta.security` carries `v3-ActCode|42CFRPart2` (the data is Part 2 protected) and
`v3-Confidentiality|R` (restricted); `meta.tag` `{CANONICAL_BASE}/CodeSystem/recorded-by`
names the organization whose client first wrote the resource (`Organization/<id>`): Part 2
data is always disclosed to the organization that recorded it (`consent.py`).

Conservative by design: labels are only ever added (a client's own labels are kept, the
stored version's Part 2 labels carry over to the next version even when its codes no longer
say SUD: the earlier versions stay in the history), and the recorder never changes once set,
nor can a client name another organization as the recorder.
"""

from __future__ import annotations

from fhir_gateway.identifiers import CANONICAL_BASE

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
PART2 = {"system": ACT_CODE, "code": "42CFRPart2", "display": "42 CFR Part2"}
RESTRICTED = {"system": CONFIDENTIALITY, "code": "R", "display": "restricted"}
PART2_LABELS = (PART2, RESTRICTED)
RECORDED_BY = f"{CANONICAL_BASE}/CodeSystem/recorded-by"
#: the `_security` search token that finds Part 2 data
PART2_TOKEN = f"{ACT_CODE}|42CFRPart2"


def is_part2(resource: dict) -> bool:
    """Whether the resource carries the 42CFRPart2 security label."""
    return any(same_code(coding, PART2) for coding in _codings(resource, "security"))


def recorded_by(resource: dict) -> str | None:
    """`Organization/<id>` of the organization that recorded the resource (None: unknown)."""
    for coding in _codings(resource, "tag"):
        if coding.get("system") == RECORDED_BY and isinstance(coding.get("code"), str):
            return coding["code"]
    return None


def labelled(resource: dict, sud: bool, prior: dict | None, organization: str | None,
             trusted: bool) -> dict:
    """The resource as it is to be stored: with the Part 2 labels when `sud` or when the
    stored version (`prior`) had them, and one recorded-by tag.

    The recorder is the stored version's when it has one; a new resource's is the writing
    client's `organization` (an update of a resource stored without one gets none: an update
    never hands a resource to a new organization).
    A recorded-by tag the client sent is dropped unless it names the client's own
    organization; a `trusted` writer (the operator's loader, importer, demo: no client)
    keeps the tags of its files. Returns `resource` itself when nothing changes."""
    security = _codings(resource, "security")
    if sud or (prior is not None and is_part2(prior)):
        for label in PART2_LABELS:
            if not any(same_code(c, label) for c in security):
                security.append(dict(label))
    sent = _codings(resource, "tag")
    recorder = _recorder(sent, prior, organization, trusted)
    tags, kept = [], False
    for coding in sent:  # one recorded-by tag, the recorder's, where the client put it
        if coding.get("system") != RECORDED_BY:
            tags.append(coding)
        elif coding.get("code") == recorder and not kept:
            tags.append(coding)
            kept = True
    if recorder and not kept:
        tags.append({"system": RECORDED_BY, "code": recorder})
    if security == _codings(resource, "security") and tags == sent:
        return resource
    meta = dict(resource.get("meta") or {})
    for key, codings in (("security", security), ("tag", tags)):
        if codings:
            meta[key] = codings
        else:
            meta.pop(key, None)
    return {**resource, "meta": meta}


def _recorder(sent: list[dict], prior: dict | None, organization: str | None,
              trusted: bool) -> str | None:
    if prior is not None and recorded_by(prior):
        return recorded_by(prior)
    claimed = next((c.get("code") for c in sent if c.get("system") == RECORDED_BY), None)
    if trusted and isinstance(claimed, str) and claimed:
        return claimed
    return organization if prior is None else None


def same_code(coding: dict, label: dict) -> bool:
    """Whether a Coding is `label` (same system and code; display aside)."""
    return coding.get("system") == label["system"] and coding.get("code") == label["code"]


def _codings(resource: dict, key: str) -> list[dict]:
    meta = resource.get("meta") if isinstance(resource, dict) else None
    found = meta.get(key) if isinstance(meta, dict) else None
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []
