"""Health Home workflows over any store: a member's record, eligibility, status, enrollment
and disenrollment.

Each takes a store (the `FhirStore` contract), the `RuleFiles` the settings name and plain
inputs, and returns plain results (resources, an `Evaluation`, `SourceStatus`es); what it
refuses it raises as a `FhirError`. The HTTP operations and the CLI call these, and only
render what comes back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from fhir_gateway.export.writer import scan
from fhir_gateway.healthhome import enrollment as hh_enrollment
from fhir_gateway.healthhome import rosters
from fhir_gateway.healthhome.eligibility import (
    PRIMARY_SOURCES,
    Evaluation,
    RuleFiles,
    evaluate,
    observation_codes,
)
from fhir_gateway.healthhome.status import (
    SourceStatus,
    episode_program,
    from_cimor,
    from_cyberaccess,
    from_store,
)
from fhir_gateway.identifiers import HH_PROGRAM, LOINC, MO_HEALTHNET_DCN
from fhir_gateway.outcome import FhirError, invalid
from fhir_gateway.search.dates import now_instant
from fhir_gateway.store.base import FhirStore

#: how often `enroll` decides again after losing a race with a concurrent change
ATTEMPTS = 3
#: members read per page when every stored member is evaluated
PAGE = 500


# -- the member's record and eligibility --------------------------------------------------

def member_record(store: FhirStore, files: RuleFiles, patient_id: str) -> list[dict]:
    """The facts eligibility reads: the Patient, Conditions, the BMI, BMI-for-age and
    smoking Observations, Coverage, and what ranks diagnoses (the primary diagnosis):
    EpisodesOfCare, Encounters, Claims."""
    patient = store.read("Patient", patient_id)
    subject = f"Patient/{patient_id}"
    loinc = ",".join(f"{LOINC}|{code}" for code in observation_codes(files.rules()))
    found = [patient]
    for resource_type, params in (
            ("Condition", [("patient", subject)]),
            ("Observation", [("patient", subject), ("code", loinc)]),
            ("Coverage", [("beneficiary", subject)]),
            *((kind, [("patient", subject)]) for kind in PRIMARY_SOURCES)):
        found += store.search(resource_type, [*params, ("_count", "1000")]).matches
    return found


def stored_members(store: FhirStore, files: RuleFiles) -> Iterator[list[dict]]:
    """Each stored member's record, page by page (what batch eligibility reads)."""
    offset = 0
    while True:
        page = store.search("Patient", [("_count", str(PAGE)), ("_offset", str(offset)),
                                        ("_elements", "id")]).matches
        for patient in page:
            yield member_record(store, files, patient["id"])
        if len(page) < PAGE:
            return
        offset += PAGE


def member_eligibility(store: FhirStore, files: RuleFiles, patient_id: str, state: str | None,
                       as_of: date | None) -> Evaluation:
    """Eligibility on what the store holds for one member."""
    return evaluate(member_record(store, files, patient_id), state, as_of, files=files)


# -- status as each source sees it ----------------------------------------------------------

def member_status(store: FhirStore, lookups: dict, patient_id: str | None,
                  identifier: str | None) -> list[SourceStatus]:
    """CIMOR's, CyberAccess's and the store's view of the member (by id, or by identifier
    `system|value`), the two live lookups asked in parallel."""
    patient = _patient(store, patient_id, identifier)
    dcn = next((i.get("value") for i in patient.get("identifier", [])
                if i.get("system") == MO_HEALTHNET_DCN), None)
    with ThreadPoolExecutor(max_workers=2) as pool:
        asked = {name: pool.submit(_ask, lookups.get(name), name, dcn)
                 for name in ("cimor", "cyberaccess")}
        held = _held(store, patient["id"])
        return [asked["cimor"].result(), asked["cyberaccess"].result(), held]


def _patient(store: FhirStore, patient_id: str | None, identifier: str | None) -> dict:
    if patient_id:
        return store.read("Patient", patient_id)
    found = store.search("Patient", [("identifier", identifier), ("_count", "2")]).matches
    if not found:
        raise FhirError(404, "No Patient has the identifier given", "not-found", "identifier")
    if len(found) > 1:
        raise FhirError(412, "More than one Patient has the identifier given", "duplicate",
                        "identifier")
    return found[0]


def _ask(client, name: str, dcn: str | None) -> SourceStatus:
    """One live lookup; a source that is down or not configured is reported, not raised."""
    reduce = from_cimor if name == "cimor" else from_cyberaccess
    if client is None:
        return SourceStatus(name, reachable=False, problem="no lookup endpoint configured")
    if dcn is None:
        return SourceStatus(name, reachable=False, problem="the member has no MO HealthNet DCN")
    try:
        record = client.lookup(dcn)
    except Exception as exc:  # SourceUnavailable, or anything the client did not expect
        return SourceStatus(name, reachable=False, problem=str(exc) or type(exc).__name__)
    return reduce(record.data if record else None)


def _held(store: FhirStore, patient_id: str) -> SourceStatus:
    result = store.search("EpisodeOfCare", [("patient", f"Patient/{patient_id}"),
                                            ("_include", "EpisodeOfCare:organization"),
                                            ("_count", "100")])
    names = {f"Organization/{o['id']}": o.get("name") for o in result.included
             if o.get("resourceType") == "Organization" and o.get("name")}
    return from_store(result.matches, names)


# -- enrollment and disenrollment -----------------------------------------------------------

def enroll(store: FhirStore, files: RuleFiles, patient_id: str,
           wanted: hh_enrollment.Request) -> dict:
    """Decide and write in one transaction, with the member's enrollment List as the guard:
    each attempt reads the List, then the record, and writes with If-Match on the List's
    version. Of concurrent enrollments of one member the store commits one; the others fail
    (409/412 from either store, HAPI included) and decide again on what was committed.
    Returns the EpisodeOfCare as stored."""
    if wanted.consent and wanted.consent.by.startswith("RelatedPerson/"):
        wanted.consent.guardian = _referenced(store, wanted.consent.by, "consent.agreedBy")
    program = hh_enrollment.find_program(wanted.program, files)
    _referenced(store, wanted.provider, "provider")
    response = _retrying(store, patient_id, lambda: _enrollment_bundle(
        store, files, patient_id, wanted, program, _enrollments_list(store, patient_id),
        _roster(store, wanted.provider, wanted.program)))
    location = response["entry"][0]["response"]["location"].split("/")
    return store.read(location[0], location[1])


def _retrying(store: FhirStore, patient_id: str, make_bundle: Callable[[], dict]) -> dict:
    """Commit the transaction `make_bundle` builds; when a version it was built on (its
    If-Match: the member's List, the roster) changed meanwhile, build it again from what
    is stored. 409 after `ATTEMPTS`."""
    for _ in range(ATTEMPTS):
        bundle = make_bundle()  # its refusals (409: enrolled elsewhere) are answers
        try:
            return store.transaction(bundle)
        except FhirError as err:
            if err.status not in (409, 412):
                raise
    raise FhirError(409, f"The enrollments of Patient/{patient_id} changed during each of "
                         f"{ATTEMPTS} attempts; try again", "conflict")


def _referenced(store: FhirStore, reference: str, where: str) -> dict:
    try:
        return store.read(*reference.split("/", 1))
    except FhirError as err:
        if err.status in (404, 410):
            raise invalid(f"{reference} is not on record", where) from None
        raise


def _enrollments_list(store: FhirStore, patient_id: str) -> dict:
    """The member's enrollment List, created on their first `$enroll` (after the Patient is
    known to exist). Two first requests may both write it: the content is the same."""
    def first() -> dict:
        store.read("Patient", patient_id)
        return hh_enrollment.enrollments_list(patient_id)

    return _read_or_create(store, "List", hh_enrollment.enrollments_list_id(patient_id), first)


def _roster(store: FhirStore, provider: str, program: str) -> dict:
    """The Health Home's roster Group for the program, created empty on first use (a
    conditional create: concurrent first enrollments make one)."""
    identifier = f"{rosters.ROSTER_SYSTEM}|{rosters.roster_key(provider, program)}"
    found = store.search("Group", [("identifier", identifier)]).matches
    if found:
        return found[0]
    name = store.read(*provider.split("/", 1)).get("name")
    return store.create(rosters.empty_roster(provider, program, name),
                        if_none_exist=f"identifier={identifier}").resource


def _read_or_create(store: FhirStore, resource_type: str, resource_id: str,
                    first: Callable[[], dict]) -> dict:
    """The resource as stored; when there is none yet, `first()` written under that id. Two
    first requests may both write it: the content is the same."""
    try:
        return store.read(resource_type, resource_id)
    except FhirError as err:
        if err.status not in (404, 410):
            raise
    try:
        return store.update(resource_type, resource_id, first()).resource
    except FhirError as err:
        if err.status not in (409, 412):
            raise
        return store.read(resource_type, resource_id)


def _put(resource: dict, version: str) -> dict:
    """A transaction entry writing `resource` If-Match the version it was built from."""
    return {"resource": resource, "request": {
        "method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}",
        "ifMatch": f'W/"{version}"'}}


def _enrollment_bundle(store: FhirStore, files: RuleFiles, patient_id: str,
                       wanted: hh_enrollment.Request, program: hh_enrollment.Program,
                       guard: dict, roster: dict) -> dict:
    """The transaction of one enrollment: the EpisodeOfCare, what goes with it (consent,
    override Provenance, care team, Regional Office referral, KanCare assignment letter),
    the List and the Health Home's roster, each rewritten If-Match its version read before
    the record was."""
    record = member_record(store, files, patient_id)
    programs = evaluate(record, None, wanted.start, files=files).programs
    verdict = next((p for p in programs if p.code == wanted.program), None)
    conditions = [r for r in record if r["resourceType"] == "Condition"]
    episodes = _episodes(store, patient_id)
    episode = hh_enrollment.enroll(record[0], wanted, program, verdict, conditions, episodes)
    target, when, member = f"urn:uuid:{uuid.uuid4()}", now_instant()[0], f"Patient/{patient_id}"
    entries = [{"fullUrl": target, "resource": episode,
                "request": {"method": "POST", "url": "EpisodeOfCare"}}]

    def add(resource: dict, full_url: str | None = None) -> None:
        entries.append({**({"fullUrl": full_url} if full_url else {}), "resource": resource,
                        "request": {"method": "POST", "url": resource["resourceType"]}})

    if wanted.consent:
        add(hh_enrollment.consent(member, wanted, program, target))
    if wanted.override_reason:
        add(hh_enrollment.override_provenance(target, member, wanted.override_reason, when))
    coordination = hh_enrollment.coordination_episodes(program, episodes)
    team = hh_enrollment.care_team(program, member, target, coordination)
    if team:
        add(team, f"urn:uuid:{uuid.uuid4()}")
        episode["team"] = [{"reference": entries[-1]["fullUrl"]}]
    if hh_enrollment.dd_referral_needed(program, record[0], conditions, coordination):
        add(hh_enrollment.dd_referral(program, record[0], when))
    if hh_enrollment.sends_letter(program, wanted.source):
        provider = store.read(*wanted.provider.split("/", 1))
        add(hh_enrollment.assignment_letter(record[0], target, program, verdict, provider,
                                            when))
    entries.append(_put(hh_enrollment.enrollments_list(patient_id, target, when),
                        guard["meta"]["versionId"]))
    entries.append(_put(rosters.with_enrollment(roster, episode), roster["meta"]["versionId"]))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def disenroll(store: FhirStore, files: RuleFiles, patient_id: str, program: str, reason: str,
              end: date) -> dict:
    """Close the member's active enrollment in `program`, end its Consent (withdrawn on an
    opt-out) and mark them inactive on their Health Home's roster: one transaction, If-Match the versions read, so a concurrent
    change makes it decide again on what is stored rather than overwrite it. Returns the
    EpisodeOfCare as stored."""
    store.read("Patient", patient_id)
    plan = hh_enrollment.find_program(program, files)
    closed: list[str] = []

    def bundle() -> dict:
        episode = hh_enrollment.disenroll(_episodes(store, patient_id), plan, reason, end)
        closed[:] = [episode["id"]]
        entries = [_put(episode, episode["meta"]["versionId"])]
        agreements = store.search("Consent", [("data", f"EpisodeOfCare/{episode['id']}"),
                                              ("status", "active"), ("_count", "50")]).matches
        entries += [_put(hh_enrollment.consent_ended(a, reason, end), a["meta"]["versionId"])
                    for a in agreements]
        provider = (episode.get("managingOrganization") or {}).get("reference", "")
        if provider.startswith("Organization/"):
            roster = _roster(store, provider, program)
            entries.append(_put(rosters.with_enrollment(roster, episode),
                                roster["meta"]["versionId"]))
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    _retrying(store, patient_id, bundle)
    return store.read("EpisodeOfCare", closed[0])


def _episodes(store: FhirStore, patient_id: str) -> list[dict]:
    return store.search("EpisodeOfCare", [("patient", f"Patient/{patient_id}"),
                                          ("_count", "1000")]).matches


def rebuild_rosters(store: FhirStore) -> int:
    """Every Health Home's roster recomputed from the stored enrollments (after an import,
    or writes that went around `$enroll`/`$disenroll`); returns the rosters written. Reads
    the enrollments page by page; holds the rosters' members only."""
    found: dict[tuple[str, str], list[dict]] = {}
    for episode in scan(store, "EpisodeOfCare", [("type", f"{HH_PROGRAM}|")], PAGE):
        provider = (episode.get("managingOrganization") or {}).get("reference", "")
        program = episode_program(episode)
        if provider.startswith("Organization/") and program and "patient" in episode:
            found.setdefault((provider, program), []).append(
                {k: episode[k] for k in ("patient", "period", "status") if k in episode})
    for (provider, program), episodes in found.items():
        for _ in range(ATTEMPTS):
            roster = _roster(store, provider, program)
            rebuilt = rosters.rebuild(roster, episodes)
            if rebuilt["member"] == roster.get("member"):
                break  # unchanged: a re-import writes nothing
            try:
                store.update("Group", roster["id"], rebuilt, f'W/"{roster["meta"]["versionId"]}"')
                break
            except FhirError as err:
                if err.status not in (409, 412):
                    raise
    return len(found)
