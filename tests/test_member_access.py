"""Per-Health-Home access over HTTP with real tokens, on both stores: two Health Home
clients (registered with `--organization`) cannot see or write each other's members through
reads, searches and totals, `_include`/`_revinclude`, history, the Health Home operations,
transactions and batches; a client without an organization sees everything its scopes allow.
"""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from fhir_gateway.config import Settings
from fhir_gateway.exchange.engine import Engine
from fhir_gateway.exchange.simulator import Simulator
from fhir_gateway.identifiers import HH_PROGRAM
from test_auth import ES, _gateway, bearer
from test_enrollment_http import enroll_params
from test_eligibility_http import condition, coverage, member

ICD = "http://hl7.org/fhir/sid/icd-10-cm"


def _seed(store) -> None:
    for org in ("hh-a", "hh-b"):
        store.update("Organization", org, {"resourceType": "Organization", "id": org,
                                           "name": f"Health Home {org}"})
    for pid, dcn, home in (("pa", "30000001", "hh-a"), ("pb", "30000002", "hh-b"),
                           ("pn", "30000003", None)):
        patient = member("MO") | {"id": pid, "identifier": [
            {"system": member("MO")["identifier"][0]["system"], "value": dcn}]}
        store.update("Patient", pid, patient)
        subject = {"reference": f"Patient/{pid}"}
        store.update("Condition", f"c-{pid}", condition("F20.0") | {"id": f"c-{pid}",
                                                                    "subject": subject})
        store.update("Coverage", f"cov-{pid}", coverage() | {"id": f"cov-{pid}",
                                                             "beneficiary": subject})
        if home:
            store.update("EpisodeOfCare", f"enr-{pid}", {
                "resourceType": "EpisodeOfCare", "id": f"enr-{pid}", "status": "active",
                "type": [{"coding": [{"system": HH_PROGRAM, "code": "mo-cmhc"}]}],
                "patient": subject, "managingOrganization": {"reference": f"Organization/{home}"},
                "period": {"start": "2026-01-01"}})


@pytest.fixture
def homes(store, tmp_path):
    yield from home_clients(store, tmp_path)


def home_clients(store, tmp_path):
    """The gateway (auth on) with the seeded store, and a token per client: `a`, `b` (the
    two Health Homes), `state` (no organization)."""
    _seed(store)
    settings = Settings(auth=True, data_dir=str(tmp_path / "data"), external_issuer="",
                        external_jwks_url="")
    for gateway in _gateway(store, settings):
        tokens = {"state": gateway.token("system/*.cruds")}
        for name in ("a", "b"):
            client = gateway.registry.add(f"hh {name}", "system/*.cruds",
                                          jwks=ES.jwks,
                                          organization=f"Organization/hh-{name}").id
            answer = gateway.ask(client, "system/*.cruds")
            assert answer.status_code == 200, answer.text
            tokens[name] = answer.json()["access_token"]
        gateway.tokens = tokens
        yield gateway


def get(gw, who: str, path: str):
    return gw.http.get(f"{gw.base}/{path}", headers=bearer(gw.tokens[who]))


def send(gw, who: str, method: str, path: str, body: dict | None = None, **headers):
    return gw.http.request(method, f"{gw.base}/{path}", json=body,
                           headers={**bearer(gw.tokens[who]), **headers})


def ids(bundle: dict, mode: str | None = None) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in bundle.get("entry", [])
            if "resource" in e and (mode is None or e.get("search", {}).get("mode") == mode)}


def test_reads_of_another_health_homes_member_are_404(homes):
    assert get(homes, "a", "Patient/pa").status_code == 200
    assert get(homes, "b", "Patient/pb").status_code == 200
    for path in ("Patient/pb", "Condition/c-pb", "EpisodeOfCare/enr-pb", "Coverage/cov-pb",
                 "Patient/pn", "Patient/pb/_history/1"):
        answer = get(homes, "a", path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["resourceType"] == "OperationOutcome"
    assert get(homes, "b", "Condition/c-pa").status_code == 404
    # directory data is shared
    assert get(homes, "a", "Organization/hh-b").status_code == 200
    # a client without an organization sees everyone
    for path in ("Patient/pa", "Patient/pb", "Patient/pn", "Condition/c-pb"):
        assert get(homes, "state", path).status_code == 200


def test_searches_and_totals_count_only_the_members(homes):
    for who, mine in (("a", "pa"), ("b", "pb")):
        patients = get(homes, who, "Patient").json()
        assert patients["total"] == 1 and ids(patients) == {f"Patient/{mine}"}
        conditions = get(homes, who, "Condition?code=F20.0").json()
        assert conditions["total"] == 1 and ids(conditions) == {f"Condition/c-{mine}"}
        counted = get(homes, who, "Condition?_summary=count").json()
        assert counted["total"] == 1
    other = get(homes, "a", "Condition?patient=Patient/pb").json()
    assert other["total"] == 0 and "entry" not in other
    by_dcn = get(homes, "a", "Patient?identifier=30000002").json()
    assert by_dcn["total"] == 0
    assert get(homes, "state", "Patient").json()["total"] == 3
    # chained through a member's reference: still only the client's members
    chained = get(homes, "a", "Condition?subject:Patient.identifier=30000002").json()
    assert chained["total"] == 0


def test_include_and_revinclude_leave_out_other_members(homes):
    episodes = get(homes, "a", "EpisodeOfCare?_include=EpisodeOfCare:patient"
                               "&_include=EpisodeOfCare:organization").json()
    assert ids(episodes, "match") == {"EpisodeOfCare/enr-pa"}
    assert ids(episodes, "include") == {"Patient/pa", "Organization/hh-a"}
    # Organization is shared; its episodes' patients are not
    orgs = get(homes, "a", "Organization?_revinclude=EpisodeOfCare:organization").json()
    assert ids(orgs, "include") == {"EpisodeOfCare/enr-pa"}
    patients = get(homes, "b", "Patient?_revinclude=Condition:patient").json()
    assert ids(patients) == {"Patient/pb", "Condition/c-pb"}


def test_history_shows_only_the_members(homes):
    assert get(homes, "a", "Patient/pb/_history").status_code == 404
    own = get(homes, "a", "Patient/pa/_history").json()
    assert own["total"] >= 1 and ids(own) == {"Patient/pa"}
    for path in ("Condition/_history", "_history"):
        history = get(homes, "a", path).json()
        assert "Condition/c-pb" not in ids(history) and "Patient/pb" not in ids(history)
        assert "Condition/c-pa" in ids(history) or path == "_history"
        assert "total" not in history  # the store's count includes others' versions
    assert get(homes, "a", "_history?_count=200").json().get("entry")
    everything = get(homes, "state", "Condition/_history").json()
    assert {"Condition/c-pa", "Condition/c-pb"} <= ids(everything)


def test_writes_about_another_health_homes_member_are_403(homes):
    about_b = condition("F31.9") | {"subject": {"reference": "Patient/pb"}}
    assert send(homes, "a", "POST", "Condition", about_b).status_code == 403
    stored_b = get(homes, "state", "Condition/c-pb").json()
    assert send(homes, "a", "PUT", "Condition/c-pb", stored_b).status_code == 403
    assert send(homes, "a", "DELETE", "Condition/c-pb").status_code == 403
    # moving one's own Condition onto the other's member is a write about them too
    mine = get(homes, "a", "Condition/c-pa").json()
    moved = mine | {"subject": {"reference": "Patient/pb"}}
    assert send(homes, "a", "PUT", "Condition/c-pa", moved).status_code == 403
    # conditional forms: the criteria match the other's member
    conditional = send(homes, "a", "POST", "Patient",
                       {k: v for k, v in member("MO").items() if k != "id"},
                       **{"If-None-Exist": "identifier=30000002"})
    assert conditional.status_code == 403, conditional.text
    assert send(homes, "a", "DELETE", "Condition?patient=Patient/pb").status_code == 403
    # a conditional reference naming the other's member
    by_reference = condition("F31.9") | {"subject": {"reference": "Patient?identifier=30000002"}}
    assert send(homes, "a", "POST", "Condition", by_reference).status_code == 403
    # an enrollment managed by another Health Home
    episode = {"resourceType": "EpisodeOfCare", "status": "active",
               "type": [{"coding": [{"system": HH_PROGRAM, "code": "mo-cmhc"}]}],
               "patient": {"reference": "Patient/pn"},
               "managingOrganization": {"reference": "Organization/hh-b"},
               "period": {"start": "2026-02-01"}}
    assert send(homes, "a", "POST", "EpisodeOfCare", episode).status_code == 403
    # nothing of it was written
    assert get(homes, "state", "Condition?code=F31.9").json()["total"] == 0
    assert get(homes, "state", "Condition/c-pb").json()["meta"] == stored_b["meta"]
    # about one's own members, and about people no Health Home has enrolled: allowed
    about_a = condition("F31.9") | {"subject": {"reference": "Patient/pa"}}
    assert send(homes, "a", "POST", "Condition", about_a).status_code == 201
    about_nobody = condition("F31.9") | {"subject": {"reference": "Patient/pn"}}
    assert send(homes, "a", "POST", "Condition", about_nobody).status_code == 201


def _entry(resource: dict, method: str = "POST", url: str | None = None) -> dict:
    return {"resource": resource, "request": {"method": method,
                                              "url": url or resource["resourceType"]}}


def test_transactions_and_batches(homes):
    about_a = condition("F33.1") | {"subject": {"reference": "Patient/pa"}}
    about_b = condition("F33.1") | {"subject": {"reference": "Patient/pb"}}
    transaction = {"resourceType": "Bundle", "type": "transaction",
                   "entry": [_entry(about_a), _entry(about_b)]}
    refused = send(homes, "a", "POST", "", transaction)
    assert refused.status_code == 403, refused.text
    assert "Bundle.entry[1]" in refused.text
    assert get(homes, "state", "Condition?code=F33.1").json()["total"] == 0
    # a batch: the entry about the other's member is refused alone, the rest is stored
    # reads and searches in a batch see what the client sees
    batch = {"resourceType": "Bundle", "type": "batch",
             "entry": [_entry(about_a), _entry(about_b),
                       {"request": {"method": "GET", "url": "Patient/pb"}},
                       {"request": {"method": "GET", "url": "Patient/pa"}},
                       {"request": {"method": "GET", "url": "Condition?code=F20.0"}}]}
    answer = send(homes, "a", "POST", "", batch)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["201", "403", "404", "200", "200"]
    assert entries[3]["resource"]["id"] == "pa"
    assert entries[4]["resource"]["total"] == 1
    assert ids(entries[4]["resource"]) == {"Condition/c-pa"}
    assert get(homes, "state", "Condition?code=F33.1").json()["total"] == 1
    # a transaction's reads would see its writes in one unit: refused, nothing written
    reading = {"resourceType": "Bundle", "type": "transaction",
               "entry": [_entry(about_a), {"request": {"method": "GET", "url": "Patient/pa"}}]}
    refused = send(homes, "a", "POST", "", reading)
    assert refused.status_code == 403 and "Bundle.entry[1]" in refused.text
    assert get(homes, "state", "Condition?code=F33.1").json()["total"] == 1
    # the state's client writes about anyone
    assert send(homes, "state", "POST", "", transaction).status_code == 200


def enrollment(pid: str, home: str) -> dict:
    params = enroll_params("mo-cmhc", agreed_by=f"Patient/{pid}")
    provider = next(p for p in params["parameter"] if p["name"] == "provider")
    provider["valueReference"]["reference"] = f"Organization/{home}"
    return params


def test_health_home_operations(homes):
    assert get(homes, "a", "Patient/pb/$hh-status").status_code == 404
    assert get(homes, "a", "Patient/pa/$hh-status").status_code == 200
    assert get(homes, "a", "Patient/$hh-status?identifier=30000002").status_code == 404
    assert get(homes, "a", "Patient/pb/$hh-eligibility").status_code == 404
    assert get(homes, "b", "Patient/pb/$hh-eligibility").status_code == 200
    # $enroll: another's member no; into another Health Home no; someone new yes
    into_b = send(homes, "a", "POST", "Patient/pn/$enroll", enrollment("pn", "hh-b"))
    assert into_b.status_code == 403 and "provider" in into_b.text
    assert send(homes, "a", "POST", "Patient/pb/$enroll",
                enrollment("pb", "hh-a")).status_code == 403
    assert get(homes, "a", "Patient/pn").status_code == 404
    enrolled = send(homes, "a", "POST", "Patient/pn/$enroll", enrollment("pn", "hh-a"))
    assert enrolled.status_code == 201, enrolled.text
    # from now on pn is a's member, and still not b's
    assert get(homes, "a", "Patient/pn").status_code == 200
    assert get(homes, "a", "Condition?patient=Patient/pn").json()["total"] == 1
    assert get(homes, "b", "Patient/pn").status_code == 404
    # monthly operations run for the client's own Health Home
    claims = {"resourceType": "Parameters", "parameter": [
        {"name": "month", "valueDate": "2026-06"},
        {"name": "provider", "valueReference": {"reference": "Organization/hh-b"}}]}
    assert send(homes, "a", "POST", "$generate-claims", claims).status_code == 403
    # hospital notifications are an HIE's (a client without an organization) to send
    message = {"resourceType": "Bundle", "type": "message", "entry": []}
    refused = send(homes, "a", "POST", "$process-message", message)
    assert refused.status_code == 403 and "HIE" in refused.text
    assert send(homes, "state", "POST", "$process-message", message).status_code == 400


def _export(gw, who: str, path: str) -> dict[str, list[dict]]:
    """Kick off an export as `who`, wait for it, and read its files back."""
    headers = {**bearer(gw.tokens[who]), "Prefer": "respond-async"}
    kicked = gw.http.get(f"{gw.base}/{path}", headers=headers)
    assert kicked.status_code == 202, kicked.text
    status_url = kicked.headers["Content-Location"]
    other = "b" if who == "a" else "a"
    assert gw.http.get(status_url, headers=bearer(gw.tokens[other])).status_code == 404
    deadline = time.time() + 120
    while (answer := gw.http.get(status_url, headers=bearer(gw.tokens[who]))).status_code == 202:
        assert time.time() < deadline, "the export did not finish"
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text
    files = {}
    for output in answer.json()["output"]:
        assert gw.http.get(output["url"], headers=bearer(gw.tokens[other])).status_code == 404
        got = gw.http.get(output["url"], headers=bearer(gw.tokens[who]))
        files[output["type"]] = [orjson.loads(line) for line in got.content.splitlines()]
        assert len(files[output["type"]]) == output["count"]
    return files


def test_bulk_exports_hold_only_what_the_client_may_see(homes):
    for path in ("$export", "Patient/$export"):
        files = _export(homes, "a", path)
        exported = {f"{r['resourceType']}/{r['id']}" for rs in files.values() for r in rs}
        assert {"Patient/pa", "Condition/c-pa", "EpisodeOfCare/enr-pa"} <= exported
        assert not exported & {"Patient/pb", "Condition/c-pb", "Patient/pn", "Coverage/cov-pn"}
    everything = _export(homes, "state", "Patient/$export")
    assert {r["id"] for r in everything["Patient"]} == {"pa", "pb", "pn"}


def test_subscriptions_deliver_only_what_their_creator_may_see(homes, store, tmp_path):
    sim = Simulator()
    sim.start()
    engine = Engine(store, Settings(exchange_db=str(tmp_path / "exchange.db"),
                                    deliver_backoff=0.0, deliver_interval=0.2, feed_lag=2.0))
    try:
        body = {"resourceType": "Subscription", "status": "requested", "reason": "worklist",
                "criteria": "Condition?code=F41.1",
                "channel": {"type": "rest-hook", "endpoint": f"{sim.url}/hook",
                            "payload": "application/fhir+json"}}
        created = send(homes, "a", "POST", "Subscription", body)
        assert created.status_code == 201, created.text
        sub = created.json()
        # the Subscription is a's: b neither reads nor finds it
        assert get(homes, "b", f"Subscription/{sub['id']}").status_code == 404
        assert get(homes, "b", "Subscription").json()["total"] == 0
        assert get(homes, "a", "Subscription").json()["total"] == 1
        for pid in ("pa", "pb"):
            anxiety = condition("F41.1") | {"subject": {"reference": f"Patient/{pid}"}}
            assert send(homes, "state", "POST", "Condition", anxiety).status_code == 201
        done = engine.run_once()
        assert (done.delivered, done.cancelled) == (1, 1)
        [got] = httpx.get(f"{sim.url}/_control/received").json()
        assert got["body"]["subject"]["reference"] == "Patient/pa"
    finally:
        engine.stop()
        sim.stop()


def test_an_enrollment_written_counts_at_once(homes):
    """The member lists are reused between requests, but not past an enrollment write."""
    assert get(homes, "a", "Patient/pn").status_code == 404
    assert get(homes, "a", "Patient").json()["total"] == 1
    episode = {"resourceType": "Bundle", "type": "transaction", "entry": [_entry({
        "resourceType": "EpisodeOfCare", "status": "active",
        "type": [{"coding": [{"system": HH_PROGRAM, "code": "mo-cmhc"}]}],
        "patient": {"reference": "Patient/pn"},
        "managingOrganization": {"reference": "Organization/hh-a"},
        "period": {"start": "2026-03-01"}})]}
    assert send(homes, "state", "POST", "", episode).status_code == 200
    assert get(homes, "a", "Patient/pn").status_code == 200
    assert get(homes, "a", "Patient").json()["total"] == 2
    enrollment_id = get(homes, "a", "EpisodeOfCare?patient=Patient/pn").json()[
        "entry"][0]["resource"]["id"]
    assert send(homes, "state", "DELETE", f"EpisodeOfCare/{enrollment_id}").status_code == 200
    assert get(homes, "a", "Patient/pn").status_code == 404
