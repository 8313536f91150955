"""The audit trail over HTTP, authorization ON, on both stores: one AuditEvent per /fhir
request (reads, searches, writes, operations, Bundles, refusals) naming the client, its
organization, the interaction, the resource or the query, and the outcome; searched at
/fhir/AuditEvent with its scope, an organization's client seeing only its own events;
append-only; durable across a restart; query strings never in the plain log."""

from __future__ import annotations

import base64
from urllib.parse import unquote

import pytest

from conftest import LiveServer, patient
from fhir_gateway.api.app import create_app
from fhir_gateway.auth import context
from fhir_gateway.auth.setup import AuthConfigError
from fhir_gateway.config import Settings
from fhir_gateway.identifiers import CLIENT_ID, MO_HEALTHNET_DCN
from test_auth import Gateway, _gateway, bearer
import test_member_access
from test_member_access import get

AUDITOR = "system/AuditEvent.rs"
#: the gateway with two Health Homes' clients and their members (a fixture)
homes = test_member_access.homes


@pytest.fixture
def gateway(store, tmp_path):
    settings = Settings(auth=True, data_dir=str(tmp_path / "data"), external_issuer="",
                        external_jwks_url="")
    yield from _gateway(store, settings)


def enrolled(gateway: Gateway, scope: str, organization: str | None = None
             ) -> tuple[str, dict]:
    """A registered client's id and its request headers (a fresh token)."""
    extra = {"organization": organization} if organization else {}
    client_id = gateway.client(scope, **extra)
    answer = gateway.ask(client_id, scope)
    assert answer.status_code == 200, answer.text
    return client_id, bearer(answer.json()["access_token"])


def trail(gateway: Gateway, headers: dict, **params) -> list[dict]:
    found = gateway.http.get(f"{gateway.base}/AuditEvent", headers=headers,
                             params={"_count": "500", **params})
    assert found.status_code == 200, found.text
    assert found.json()["total"] == len(found.json().get("entry", []))
    return [e["resource"] for e in found.json().get("entry", [])]


def subtype(event: dict) -> str | None:
    return next((c["code"] for c in event.get("subtype", [])
                 if c["system"] == "http://hl7.org/fhir/restful-interaction"), None)


def what(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "what" in e]


def query(event: dict) -> str:
    [entity] = [e for e in event.get("entity", []) if "query" in e]
    assert entity["role"]["code"] == "24"
    return unquote(base64.b64decode(entity["query"]).decode())


def client_of(event: dict) -> str | None:
    requestor = next(a for a in event["agent"] if a["requestor"])
    identifier = requestor["who"].get("identifier")
    if identifier is None:
        return None
    assert identifier["system"] == CLIENT_ID and requestor["altId"] == identifier["value"]
    return identifier["value"]


def test_each_interaction_leaves_one_event_naming_client_interaction_entity_outcome(gateway):
    writer, headers = enrolled(gateway, "system/*.cruds")
    made = gateway.http.post(f"{gateway.base}/Patient", json=patient(), headers=headers)
    assert made.status_code == 201
    pid = made.json()["id"]
    assert gateway.http.get(f"{gateway.base}/Patient/{pid}", headers=headers).status_code == 200
    assert gateway.http.get(f"{gateway.base}/Patient", headers=headers, params={
        "identifier": f"{MO_HEALTHNET_DCN}|12345678"}).status_code == 200
    assert gateway.http.post(f"{gateway.base}/Patient/_search", headers={
        "Authorization": headers["Authorization"]}, data={"family": "Testperson"}
    ).status_code == 200
    assert gateway.http.post(f"{gateway.base}/Patient/$validate", json=patient(),
                             headers=headers).status_code == 200
    assert gateway.http.get(f"{gateway.base}/Patient/{pid}/$hh-status",
                            headers=headers).status_code == 200
    assert gateway.http.delete(f"{gateway.base}/Patient/{pid}", headers=headers).status_code == 200
    assert gateway.http.get(f"{gateway.base}/Patient/{pid}", headers=headers).status_code == 410

    _, auditor = enrolled(gateway, AUDITOR)
    events = trail(gateway, auditor, altid=writer)
    assert sorted(subtype(e) for e in events) == sorted(
        ["create", "read", "search-type", "search-type", "operation", "operation", "delete",
         "read"])
    for event in events:
        assert event["type"]["code"] == "rest"
        assert client_of(event) == writer
        assert len(event["agent"]) == 1  # no organization registered
        assert event["recorded"].startswith("20")
    by = {}
    for event in events:
        by.setdefault(subtype(event), []).append(event)
    [created] = by["create"]
    assert created["action"] == "C" and created["outcome"] == "0"
    assert what(created) == [f"Patient/{pid}/_history/1"]
    ok, gone = sorted(by["read"], key=lambda e: e["outcome"])
    assert ok["action"] == "R" and ok["outcome"] == "0" and what(ok) == [f"Patient/{pid}"]
    assert gone["outcome"] == "4" and "HTTP 410" in gone["outcomeDesc"]
    searches = sorted(query(e) for e in by["search-type"])
    assert searches == ["family=Testperson", f"identifier={MO_HEALTHNET_DCN}|12345678"]
    assert all(e["action"] == "E" and not what(e) for e in by["search-type"])
    names = {e["subtype"][1]["code"]: e for e in by["operation"]}
    assert set(names) == {"$validate", "$hh-status"}
    assert what(names["$hh-status"]) == [f"Patient/{pid}"] and not what(names["$validate"])
    [deleted] = by["delete"]
    assert deleted["action"] == "D" and what(deleted) == [f"Patient/{pid}"]
    # searchable by the FHIR parameters
    assert len(trail(gateway, auditor, altid=writer, entity=f"Patient/{pid}")) == 5
    assert len(trail(gateway, auditor, altid=writer, action="C")) == 1
    assert len(trail(gateway, auditor, altid=writer, outcome="4")) == 1
    assert len(trail(gateway, auditor, altid=writer,
                     subtype="http://hl7.org/fhir/restful-interaction|delete")) == 1


def test_a_transaction_is_one_event_listing_its_entries(gateway):
    writer, headers = enrolled(gateway, "system/*.cruds")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient("87654321", "Other"), "request": {"method": "POST", "url": "Patient"}}]}
    assert gateway.http.post(gateway.base, json=bundle, headers=headers).status_code == 200
    [event] = trail(gateway, enrolled(gateway, AUDITOR)[1], altid=writer)
    assert subtype(event) == "transaction" and event["action"] == "E"
    assert [e["description"] for e in event["entity"]] == ["POST Patient", "POST Patient"]


def test_refusals_are_audited(gateway):
    missing = gateway.http.get(f"{gateway.base}/Patient", params={"identifier": "x|55501234"})
    assert missing.status_code == 401
    reader, headers = enrolled(gateway, "system/Patient.rs")
    assert gateway.http.get(f"{gateway.base}/Condition", headers=headers).status_code == 403
    # the trail needs its own scope, and asking without it is on the trail too
    assert gateway.http.get(f"{gateway.base}/AuditEvent", headers=headers).status_code == 403
    _, auditor = enrolled(gateway, AUDITOR)
    refused = trail(gateway, auditor, outcome="4")
    anonymous = [e for e in refused if client_of(e) is None]
    assert len(anonymous) == 1 and "HTTP 401" in anonymous[0]["outcomeDesc"]
    assert query(anonymous[0]) == "identifier=x|55501234"
    assert anonymous[0]["agent"][0]["who"]["display"].startswith("unidentified")
    mine = [e for e in refused if client_of(e) == reader]
    assert sorted(e["outcomeDesc"] for e in mine) == [
        "HTTP 403 on GET /fhir/AuditEvent", "HTTP 403 on GET /fhir/Condition"]


def test_the_trail_is_append_only(gateway):
    _, writer = enrolled(gateway, "system/*.cruds")
    _, everything = enrolled(gateway, "system/*.cruds")
    gateway.http.get(f"{gateway.base}/Patient", headers=writer)
    [event] = trail(gateway, everything, subtype="search-type")
    eid = event["id"]
    attempts = [
        gateway.http.post(f"{gateway.base}/AuditEvent", json=event, headers=writer),
        gateway.http.put(f"{gateway.base}/AuditEvent/{eid}", json=event, headers=writer),
        gateway.http.delete(f"{gateway.base}/AuditEvent/{eid}", headers=writer),
        gateway.http.put(f"{gateway.base}/AuditEvent", params={"outcome": "0"}, json=event,
                         headers=writer),
        gateway.http.delete(f"{gateway.base}/AuditEvent", params={"outcome": "0"},
                            headers=writer),
    ]
    for attempt in attempts:
        assert attempt.status_code == 405, attempt.text
        assert attempt.json()["resourceType"] == "OperationOutcome"
        assert "append-only" in attempt.json()["issue"][0]["diagnostics"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**event, "outcome": "0"},
         "request": {"method": "PUT", "url": f"AuditEvent/{eid}"}}]}
    refused = gateway.http.post(gateway.base, json=bundle, headers=writer)
    assert refused.status_code == 405 and \
        refused.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert gateway.http.get(f"{gateway.base}/Patient", headers=writer).json()["total"] == 0
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": f"AuditEvent/{eid}"}}]}
    assert gateway.http.post(gateway.base, json=batch, headers=writer).status_code == 405
    # the event is as it was, read by id, by version and in its history
    kept = gateway.http.get(f"{gateway.base}/AuditEvent/{eid}", headers=everything)
    assert kept.status_code == 200 and kept.json() == event
    assert gateway.http.get(f"{gateway.base}/AuditEvent/{eid}/_history/1",
                            headers=everything).json() == event
    history = gateway.http.get(f"{gateway.base}/AuditEvent/{eid}/_history", headers=everything)
    assert history.json()["total"] == 1
    assert gateway.http.get(f"{gateway.base}/AuditEvent/no-such-event",
                            headers=everything).status_code == 404


def test_an_organization_client_sees_only_its_own_events(gateway):
    directory = "system/Organization.rs system/AuditEvent.rs"
    a, a_headers = enrolled(gateway, directory, "Organization/hh-a")
    b, b_headers = enrolled(gateway, directory, "Organization/hh-b")
    for _ in range(2):
        assert gateway.http.get(f"{gateway.base}/Organization", headers=a_headers).status_code == 200
    assert gateway.http.get(f"{gateway.base}/Organization", headers=b_headers).status_code == 200
    mine = trail(gateway, a_headers)
    assert len(mine) == 2  # A's two searches; B's is not there, not even in the total
    for event in mine:
        assert client_of(event) == a
        assert event["agent"][1] == {"who": {"reference": "Organization/hh-a"},
                                     "requestor": False,
                                     "type": {"text": "organization of the requesting client"}}
    theirs = trail(gateway, b_headers, subtype="search-type")
    assert [client_of(e) for e in theirs] == [b]
    assert gateway.http.get(f"{gateway.base}/AuditEvent/{theirs[0]['id']}",
                            headers=a_headers).status_code == 404
    counted = gateway.http.get(f"{gateway.base}/AuditEvent", params={"_summary": "count"},
                               headers=a_headers).json()
    assert counted["total"] == 4  # its two searches, its search and its read of the trail
    # asking for another organization's events finds none, by GET or POST _search
    assert trail(gateway, a_headers, agent="Organization/hh-b") == []
    posted = gateway.http.post(f"{gateway.base}/AuditEvent/_search",
                               data={"agent": "Organization/hh-b"},
                               headers={"Authorization": a_headers["Authorization"]})
    assert posted.status_code == 200 and posted.json()["total"] == 0
    everyone = trail(gateway, enrolled(gateway, AUDITOR)[1], agent="Organization/hh-b")
    assert {client_of(e) for e in everyone} == {b}


class Withholding:
    """The store, with reads and searches that note what they left out, as the access
    views do (`context.note_withheld`) deep below the route."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        found = getattr(self.inner, name)
        if name not in ("read", "read_raw", "search", "search_raw"):
            return found

        def noting(*args, **kwargs):
            context.note_withheld("Condition/sud-1", "42CFRPart2")
            context.note_withheld("Patient/other-home", "not-member")
            return found(*args, **kwargs)
        return noting


def test_what_a_request_withheld_lands_in_its_event(store, tmp_path):
    settings = Settings(auth=True, data_dir=str(tmp_path / "data"), external_issuer="",
                        external_jwks_url="")
    for gateway in _gateway(Withholding(store), settings):
        reader, headers = enrolled(gateway, "system/Patient.rs")
        assert gateway.http.get(f"{gateway.base}/Patient", headers=headers).status_code == 200
        [event] = trail(gateway, enrolled(gateway, AUDITOR)[1], altid=reader)
        withheld = [e for e in event["entity"] if e.get("description", "").startswith("withheld")]
        assert [(e["what"]["reference"], e["description"]) for e in withheld] == [
            ("Condition/sud-1", "withheld: 42CFRPart2"),
            ("Patient/other-home", "withheld: not-member")]
        assert withheld[0]["securityLabel"] == [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "42CFRPart2"}]
        assert "securityLabel" not in withheld[1]


def test_the_trail_survives_a_restart(store, tmp_path):
    settings = Settings(auth=True, data_dir=str(tmp_path / "data"), external_issuer="",
                        external_jwks_url="")
    for gateway in _gateway(store, settings):
        reader, headers = enrolled(gateway, "system/Patient.rs")
        for _ in range(3):
            gateway.http.get(f"{gateway.base}/Patient", headers=headers)
    # a new app on the same data dir: the first one wrote its trail as it stopped
    for gateway in _gateway(store, settings):
        events = trail(gateway, enrolled(gateway, AUDITOR)[1], altid=reader)
        assert len(events) == 3
    assert (tmp_path / "data" / "audit.db").is_file()


def test_query_strings_go_to_the_trail_never_to_the_plain_log(tmp_path):
    """`fhir-gateway serve` as run: its log has the path of each request, not the query."""
    server = LiveServer(tmp_path / "live.db", env={"FHIR_GATEWAY_DATA_DIR": str(tmp_path / "d"),
                                                   "FHIR_GATEWAY_LOG_LEVEL": "info"})
    import httpx

    try:
        for params in ({"identifier": f"{MO_HEALTHNET_DCN}|99887766"}, {"family": "Zyxwvut"},
                       {"_format": "xml", "birthdate": "1961-07-13"}):
            assert httpx.get(f"{server.base}/Patient", params=params).status_code == 200
        events = httpx.get(f"{server.base}/AuditEvent", params={"_count": "50"}).json()
    finally:
        server.stop()
    log = server.log.read_text()
    assert "GET /fhir/Patient 200" in log  # the access log is on, path only
    for secret in ("99887766", "Zyxwvut", "1961-07-13", "identifier=", "family="):
        assert secret not in log, secret
    queries = sorted(query(e["resource"]) for e in events["entry"]
                     if subtype(e["resource"]) == "search-type" and
                     e["resource"]["outcomeDesc"].endswith("/fhir/Patient"))
    assert queries == ["birthdate=1961-07-13", "family=Zyxwvut",
                       f"identifier={MO_HEALTHNET_DCN}|99887766"]


def test_audit_off_only_on_loopback_and_then_nothing_is_recorded(store, tmp_path):
    with pytest.raises(AuthConfigError, match="FHIR_GATEWAY_AUDIT=off"):
        create_app(store, Settings(auth=True, audit=False, host="0.0.0.0",
                                   data_dir=str(tmp_path / "x")))
    settings = Settings(auth=True, audit=False, data_dir=str(tmp_path / "data"),
                        external_issuer="", external_jwks_url="")
    for gateway in _gateway(store, settings):
        _, headers = enrolled(gateway, "system/Patient.rs system/AuditEvent.rs")
        gateway.http.get(f"{gateway.base}/Patient", headers=headers)
        assert trail(gateway, headers) == []


def test_each_subscription_notification_sent_is_audited(client, store, tmp_path):
    """`fhir-gateway exchange run` (the engine `serve` runs too) records each delivery
    attempt: the resource version sent, the Subscription, the partner, its answer."""
    from typer.testing import CliRunner

    from fhir_gateway.audit.trail import Trail
    from fhir_gateway.cli import app as cli
    from fhir_gateway.exchange.simulator import Simulator
    from fhir_gateway.store import backend
    from fhir_gateway.store.hapi import HapiStore
    from test_subscriptions import FAST, control, organization, subscribe, task

    inner = backend(store)
    env = {"FHIR_GATEWAY_STORE": inner.base if isinstance(inner, HapiStore)
           else f"sqlite:///{inner.path}",
           "FHIR_GATEWAY_EXCHANGE_DB": str(tmp_path / "exchange.db"),
           "FHIR_GATEWAY_DATA_DIR": str(tmp_path / "data"),
           **{f"FHIR_GATEWAY_{k.upper()}": str(v) for k, v in FAST.items()}}
    runner = CliRunner()
    assert runner.invoke(cli, ["exchange", "run"], env=env).exit_code == 0  # HAPI: cursor now
    simulator = Simulator()
    simulator.start()
    try:
        org = organization(client)
        sub = subscribe(client, f"Task?owner=Organization/{org}", f"{simulator.url}/hook")
        sent = task(client, org)
        ran = runner.invoke(cli, ["exchange", "run"], env=env)
        assert ran.exit_code == 0 and "1 delivered" in ran.output, ran.output
        control(simulator, "fail", status=503)
        task(client, org)
        assert runner.invoke(cli, ["exchange", "run"], env=env).exit_code == 1
    finally:
        simulator.stop()
    trail = Trail(tmp_path / "data" / "audit.db")
    events = trail.search([("subtype", "transmit"), ("_sort", "date")]).matches
    trail.close()
    assert [e["outcome"] for e in events] == ["0", "4"]
    delivered = events[0]
    assert what(delivered) == [f"Task/{sent['id']}/_history/1", f"Subscription/{sub['id']}"]
    assert delivered["agent"][1]["who"]["display"] == f"{simulator.url}/hook"
    assert "HTTP 503" in events[1]["outcomeDesc"]


def test_what_the_access_views_withhold_is_on_the_event(homes):
    """Health Home A asks for B's member: 404, and the trail says what was withheld, why."""
    assert get(homes, "a", "Patient/pb").status_code == 404
    assert get(homes, "a", "Patient/pa").status_code == 200
    found = get(homes, "state", "AuditEvent?subtype=read&agent=Organization/hh-a").json()
    events = {e["resource"]["outcome"]: e["resource"] for e in found["entry"]}
    assert set(events) == {"0", "4"}
    refused = events["4"]
    assert "HTTP 404" in refused["outcomeDesc"]
    withheld = [e for e in refused["entity"] if e.get("description") == "withheld: not-member"]
    assert [e["what"]["reference"] for e in withheld] == ["Patient/pb"]
    assert not any(e.get("description", "").startswith("withheld")
                   for e in events["0"].get("entity", []))


def test_the_capability_statement_says_audit_events_are_read_only(gateway):
    statement = gateway.http.get(f"{gateway.base}/metadata").json()
    [audit] = [r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert [i["code"] for i in audit["interaction"]] == [
        "read", "vread", "history-instance", "search-type"]
    assert "updateCreate" not in audit and "conditionalDelete" not in audit
    [patient_type] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Patient"]
    assert {"create", "update", "delete"} <= {i["code"] for i in patient_type["interaction"]}
