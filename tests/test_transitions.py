"""Transitional care for Health Home members over HTTP, on both stores: an admission notifies
the member's Health Home (one Communication), an inpatient discharge opens the 7- and 30-day
follow-up Tasks, a transitional-care core service completes them, and the worklist finds
them, whatever channel brought the Encounter ($process-message, a transaction, a plain PUT).
Replays, out-of-order delivery and repeated PUTs make nothing twice; non-members get
nothing."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from exchange_messages import ACT_CODE, VISITS, dcn, message, mrn
from fhir_gateway.healthhome.transitions import SYSTEM, TASK_PROFILE
from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.identifiers import HH_PROGRAM
from fhir_gateway.search.registry import ig_search_parameters
from fhir_gateway.store import backend
from fhir_gateway.store.hapi import HapiStore

@pytest.fixture(autouse=True)
def task_due(request):
    """HAPI: the IG's SearchParameters back after the store fixture's expunge (it removes
    the ones the package installed at start, and HAPI forgets them at its next refresh)."""
    if "store" in request.fixturenames:
        store = backend(request.getfixturevalue("store"))
        if isinstance(store, HapiStore):
            for parameter in ig_search_parameters(DEFAULT_PROFILES):
                store.update("SearchParameter", parameter["id"], parameter)


CORE_SERVICE = "http://fhir.health-home-gateway.org/CodeSystem/hh-core-service"
#: the Da Vinci flow of exchange_messages: discharged 2026-03-04 (hospital's local date)
DUE = ["2026-03-11", "2026-04-03"]


def ok(response, status: int | tuple[int, ...] = 200) -> dict:
    assert response.status_code in (status if isinstance(status, tuple) else (status,)), \
        response.text
    return response.json()


def found(client, query: str) -> list[dict]:
    bundle = ok(client.get(f"/fhir/{query}"))
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def enrolled_member(client, pid: str = "member1", start: str = "2026-01-01",
                    org: str = "hh1", identifier: dict | None = None) -> None:
    """A member (by DCN) enrolled in a Health Home (Organization/<org>) from `start`."""
    ok(client.put(f"/fhir/Organization/{org}", json={
        "resourceType": "Organization", "id": org, "name": "Test Health Home"}), (200, 201))
    patient(client, pid, identifier)
    ok(client.put(f"/fhir/EpisodeOfCare/enr-{pid}", json={
        "resourceType": "EpisodeOfCare", "id": f"enr-{pid}", "status": "active",
        "type": [{"coding": [{"system": HH_PROGRAM, "code": "mo-cmhc"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "managingOrganization": {"reference": f"Organization/{org}"},
        "period": {"start": start}}), 201)


def patient(client, pid: str, identifier: dict | None = None) -> None:
    ok(client.put(f"/fhir/Patient/{pid}", json={
        "resourceType": "Patient", "id": pid, "identifier": [identifier or dcn()],
        "name": [{"family": "Member"}], "gender": "female", "birthDate": "1980-02-02"}),
       (200, 201))


def send(client, kind: str, **options) -> None:
    ok(client.post("/fhir/$process-message", json=message(kind, [dcn(), mrn()], **options)))


def stay(client, value: str = "V1001") -> dict:
    (encounter,) = found(client, f"Encounter?identifier={VISITS}|{value}")
    return encounter


def tasks(client, query: str = "") -> list[dict]:
    return sorted(found(client, f"Task?code={CORE_SERVICE}|transitional-care&_count=50{query}"),
                  key=lambda t: t["restriction"]["period"]["end"])


def assert_followed_up(client, pid: str = "member1", due: list[str] = DUE,
                       value: str = "V1001") -> list[dict]:
    """One notification of the stay and its two open follow-up Tasks, due as given."""
    encounter = stay(client, value)
    ref = {"reference": f"Encounter/{encounter['id']}"}
    (note,) = found(client, "Communication")
    assert note["status"] == "completed" and note["sent"]
    assert note["recipient"] == [{"reference": "Organization/hh1"}]
    assert note["subject"] == {"reference": f"Patient/{pid}"} and note["about"] == [ref]
    assert note["category"][0]["coding"][0]["code"] == "notification"
    assert note["identifier"][0] == {"system": SYSTEM, "value": f"{VISITS}|{value}#admission"}
    found_tasks = tasks(client)
    assert [t["restriction"]["period"]["end"] for t in found_tasks] == due
    for task in found_tasks:
        assert task["status"] == "requested" and task["intent"] == "order"
        assert task["code"]["coding"][0] == {"system": CORE_SERVICE, "code": "transitional-care",
                                             "display": "Comprehensive transitional care"}
        assert task["for"] == {"reference": f"Patient/{pid}"} and task["focus"] == ref
        assert task["owner"] == {"reference": "Organization/hh1"}
        assert task["meta"]["profile"] == [TASK_PROFILE]
        outcome = ok(client.post("/fhir/Task/$validate", json=task))
        assert not [i for i in outcome["issue"] if i["severity"] in ("error", "fatal")], outcome
    assert [t["identifier"][0]["value"] for t in found_tasks] == \
        [f"{VISITS}|{value}#tc-7", f"{VISITS}|{value}#tc-30"]
    return found_tasks


def test_da_vinci_flow_notifies_the_health_home_and_opens_two_follow_ups(client):
    enrolled_member(client)
    send(client, "admit")
    assert len(found(client, "Communication")) == 1 and tasks(client) == []  # not discharged
    send(client, "transfer")
    send(client, "discharge")
    assert_followed_up(client)


def test_replayed_and_out_of_order_messages_end_in_the_same_state(client):
    enrolled_member(client)
    for kind in ("discharge", "admit", "transfer", "discharge", "admit"):
        send(client, kind)  # the last two: the same messages again
    send(client, "discharge", header_id="resent-with-a-new-header-id")
    assert stay(client)["status"] == "finished"
    assert_followed_up(client)


def test_non_members_get_the_encounter_and_nothing_else(client):
    patient(client, "other", dcn())  # known, never enrolled
    for kind in ("admit", "transfer", "discharge"):
        send(client, kind)
    assert stay(client)["status"] == "finished"
    assert found(client, "Communication") == [] and tasks(client) == []


def test_an_enrollment_that_starts_after_the_stay_asks_for_nothing(client):
    enrolled_member(client, start="2026-06-01")
    for kind in ("admit", "discharge"):
        send(client, kind)
    assert found(client, "Communication") == [] and tasks(client) == []


def encounter(status: str, klass: str, end: str | None = None, pid: str = "member1",
              value: str = "V2002") -> dict:
    period = {"start": "2026-03-01T09:40:00-06:00"}
    if end:
        period["end"] = end
    return {"resourceType": "Encounter", "id": "stay2", "status": status,
            "class": {"system": ACT_CODE, "code": klass},
            "identifier": [{"system": VISITS, "value": value}],
            "subject": {"reference": f"Patient/{pid}"}, "period": period}


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_discharge_in_a_transaction_or_batch_opens_the_follow_ups_once(client, kind):
    enrolled_member(client)
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [{
        "resource": encounter("finished", "IMP", "2026-03-04T10:30:00-06:00"),
        "request": {"method": "PUT", "url": "Encounter/stay2"}}]}
    for _ in range(2):
        answer = ok(client.post("/fhir", json=bundle))
        assert "resource" not in answer["entry"][0]  # return=minimal is kept
    assert_followed_up(client, value="V2002")


def test_plain_puts_notify_once_and_a_corrected_discharge_moves_the_due_dates(client):
    enrolled_member(client)
    for status in (201, 200):  # the same PUT twice
        ok(client.put("/fhir/Encounter/stay2", json=encounter("in-progress", "EMER")), status)
    assert len(found(client, "Communication")) == 1 and tasks(client) == []  # ER: no Tasks
    ok(client.put("/fhir/Encounter/stay2", json=encounter("finished", "IMP",
                                                          "2026-03-04T10:30:00-06:00")))
    first = assert_followed_up(client, value="V2002")
    ok(client.put("/fhir/Encounter/stay2", json=encounter("finished", "IMP",
                                                          "2026-03-06T08:00:00-06:00")))
    moved = assert_followed_up(client, due=["2026-03-13", "2026-04-05"], value="V2002")
    assert [t["id"] for t in moved] == [t["id"] for t in first]
    assert all(t["restriction"]["period"]["start"] == "2026-03-06" for t in moved)


def service(day: str, pid: str = "member1", status: str = "completed") -> dict:
    return {"resourceType": "Procedure", "status": status,
            "code": {"coding": [{"system": CORE_SERVICE, "code": "transitional-care"}]},
            "subject": {"reference": f"Patient/{pid}"}, "performedDateTime": day}


def test_a_transitional_care_service_completes_the_follow_up_due_first(client):
    enrolled_member(client)
    for kind in ("admit", "discharge"):
        send(client, kind)
    early = ok(client.post("/fhir/Procedure", json=service("2026-03-06")), 201)
    seven, thirty = tasks(client)
    assert seven["status"] == "completed" and thirty["status"] == "requested"
    assert seven["output"][0]["valueReference"] == {"reference": f"Procedure/{early['id']}"}
    ok(client.put(f"/fhir/Procedure/{early['id']}", json={**early, "note": [{"text": "again"}]}))
    assert tasks(client)[1]["status"] == "requested"  # the same service completes no more
    ok(client.post("/fhir/Procedure", json=service("2026-05-01")), 201)  # outside the window
    ok(client.post("/fhir/Procedure", json=service("2026-03-20", status="not-done")), 201)
    assert tasks(client)[1]["status"] == "requested"
    late = ok(client.post("/fhir/Procedure", json=service("2026-03-20")), 201)
    seven, thirty = tasks(client)
    assert thirty["status"] == "completed"
    assert thirty["output"][0]["valueReference"] == {"reference": f"Procedure/{late['id']}"}
    assert seven["output"][0]["valueReference"] == {"reference": f"Procedure/{early['id']}"}


def test_the_worklist_sorts_by_due_date_and_finds_the_overdue(client):
    enrolled_member(client)
    enrolled_member(client, "member2", identifier=dcn("900000002"))
    send(client, "discharge")  # member1: due 03-11 and 04-03
    ok(client.put("/fhir/Encounter/stay2", json=encounter(
        "finished", "IMP", "2026-03-08T10:00:00-06:00", pid="member2")), 201)  # 03-15, 04-07
    worklist = found(client, "Task?owner=Organization/hh1&status=requested&_sort=due")
    assert [t["restriction"]["period"]["end"] for t in worklist] == \
        ["2026-03-11", "2026-03-15", "2026-04-03", "2026-04-07"]
    assert [t["for"]["reference"] for t in worklist] == \
        ["Patient/member1", "Patient/member2", "Patient/member1", "Patient/member2"]
    overdue = found(client, "Task?owner=Organization/hh1&status=requested&due=lt2026-03-16"
                            "&_sort=due")
    assert [t["restriction"]["period"]["end"] for t in overdue] == ["2026-03-11", "2026-03-15"]
    today = date.today().isoformat()
    assert len(found(client, f"Task?owner=Organization/hh1&due=lt{today}")) == 4
    assert found(client, "Task?owner=Organization/other&status=requested") == []


def test_an_enrollment_written_after_a_recent_stay_catches_it_up(client):
    patient(client, "member1")
    discharged = date.today() - timedelta(days=2)
    ok(client.put("/fhir/Encounter/stay2", json={
        **encounter("finished", "IMP", discharged.isoformat()),
        "period": {"start": (discharged - timedelta(days=3)).isoformat(),
                   "end": discharged.isoformat()}}), 201)
    assert found(client, "Communication") == []
    enrolled_member(client, start=(discharged - timedelta(days=60)).isoformat())
    assert len(found(client, "Communication")) == 1
    assert [t["restriction"]["period"]["end"] for t in tasks(client)] == \
        [(discharged + timedelta(days=d)).isoformat() for d in (7, 30)]


@pytest.mark.parametrize("klass", ["AMB", "HH"])
def test_other_encounters_of_members_ask_for_nothing(client, klass):
    enrolled_member(client)
    ok(client.put("/fhir/Encounter/stay2", json=encounter("finished", klass,
                                                          "2026-03-04T10:30:00-06:00")), 201)
    assert found(client, "Communication") == [] and tasks(client) == []


def test_the_rule_file_decides_which_stays_count_and_what_one_service_completes():
    """`transitions.yaml` is data: a psychiatric stay marked only by its type counts when
    its coding is listed, and `completes: all` lets one service complete both windows."""
    from dataclasses import replace

    from fhir_gateway.healthhome import transitions

    rules = transitions.Rules.load()
    psych = {**encounter("finished", "NONAC", "2026-03-04T10:30:00-06:00"), "id": "stay2",
             "type": [{"coding": [{"system": "http://example.org/encounter-type",
                                   "code": "psych-inpatient"}]}]}
    assert transitions.discharged_on(psych, rules) is None  # NONAC is not a listed class
    listed = replace(rules, discharge_types=frozenset({
        "http://example.org/encounter-type|psych-inpatient"}))
    assert transitions.discharged_on(psych, listed) == date(2026, 3, 4)
    enrollment = {"managingOrganization": {"reference": "Organization/hh1"}}
    open_tasks = [{**t, "id": t["identifier"][0]["value"][-5:]} for t in
                  transitions.follow_up_tasks(psych, enrollment, date(2026, 3, 4), rules, "now")]
    procedure = {**service("2026-03-06"), "id": "p1"}
    assert len(transitions.completed(procedure, date(2026, 3, 6), open_tasks, rules, "now")) == 1
    both = replace(rules, completes="all")
    done = transitions.completed(procedure, date(2026, 3, 6), open_tasks, both, "now")
    assert [t["status"] for t in done] == ["completed", "completed"]


def test_a_store_from_before_task_due_is_upgraded_by_reindex(tmp_path):
    """Schema version 2 indexes the IG's `due`: a version-1 file (no `due` rows) is refused
    until `fhir-gateway reindex` rebuilds its index, then the worklist finds its Tasks."""
    import sqlite3

    from test_cli import cli, output, store_url, total
    from fhir_gateway.store.sqlite import SQLiteStore

    db = tmp_path / "v1.db"
    store = SQLiteStore(db)
    store.create({"resourceType": "Task", "status": "requested", "intent": "order",
                  "restriction": {"period": {"start": "2026-03-04", "end": "2026-03-11"}}})
    store.close()
    with sqlite3.connect(db) as conn:  # as version 1 wrote it: no index rows for `due`
        conn.execute("DELETE FROM idx_date WHERE pid IN (SELECT pid FROM param WHERE "
                     "type = 'Task' AND code = 'due')")
        conn.execute("PRAGMA user_version = 1")
    served = cli("serve", "--no-demo", "--store", store_url(db), cwd=tmp_path)
    assert served.returncode == 2 and "has schema version 1" in output(served)
    assert cli("reindex", "--store", store_url(db), cwd=tmp_path).returncode == 0
    assert total(db, "Task", ("due", "lt2026-03-12")) == 1
