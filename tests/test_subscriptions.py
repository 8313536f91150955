"""Subscriptions out (issue 14 item 3), over HTTP and the CLI, on both stores.

A Subscription is made through the REST API; writes through the API queue notifications in
the outbox (the embedded store: in the writing transaction; HAPI: from its history); the
delivery engine sends them to the subscriber simulator, which records what it receives and
can be told to fail. `exchange retry/status/run` drive the outbox from the CLI, and a
`serve` process killed with SIGKILL mid-delivery delivers again after its restart.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import LiveServer
from fhir_gateway.cli import app as cli
from fhir_gateway.config import Settings
from fhir_gateway.exchange.engine import Engine
from fhir_gateway.exchange.simulator import Simulator
from fhir_gateway.store import backend
from fhir_gateway.store.hapi import HapiStore

FAST = {"deliver_backoff": 0.0, "deliver_attempts": 3, "deliver_timeout": 2.0,
        "deliver_interval": 0.2, "feed_lag": 2.0}


@pytest.fixture
def simulator():
    sim = Simulator()
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def exchange_env(store, tmp_path) -> dict[str, str]:
    """The environment that points the CLI (and a `serve`) at the test's store."""
    inner = backend(store)
    url = inner.base if isinstance(inner, HapiStore) else f"sqlite:///{inner.path}"
    return {"FHIR_GATEWAY_STORE": url, "FHIR_GATEWAY_EXCHANGE_DB": str(tmp_path / "exchange.db"),
            **{f"FHIR_GATEWAY_{k.upper()}": str(v) for k, v in FAST.items()}}


@pytest.fixture
def engine(store, tmp_path):
    """Made before the test writes anything (HAPI's feed starts its cursor at 'now')."""
    e = Engine(store, Settings(exchange_db=str(tmp_path / "exchange.db"), **FAST))
    yield e
    e.stop()


def received(sim: Simulator) -> list[dict]:
    return httpx.get(f"{sim.url}/_control/received").json()


def control(sim: Simulator, command: str, **params) -> None:
    assert httpx.post(f"{sim.url}/_control/{command}", params=params).status_code == 200


def organization(client) -> str:
    r = client.post("/fhir/Organization", json={"resourceType": "Organization", "name": "HH"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def subscribe(client, criteria: str, endpoint: str, payload: bool = True, end: str | None = None,
              **channel) -> dict:
    body = {"resourceType": "Subscription", "status": "requested", "reason": "HH worklist",
            "criteria": criteria, **({"end": end} if end else {}),
            "channel": {"type": "rest-hook", "endpoint": endpoint, **channel,
                        **({"payload": "application/fhir+json"} if payload else {})}}
    r = client.post("/fhir/Subscription", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def task(client, owner: str | None, status: str = "requested") -> dict:
    body = {"resourceType": "Task", "status": status, "intent": "order"}
    if owner:
        body["owner"] = {"reference": f"Organization/{owner}"}
    r = client.post("/fhir/Task", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_matching_write_reaches_the_subscriber_as_the_full_resource(client, engine, simulator):
    org = organization(client)
    sub = subscribe(client, f"Task?owner=Organization/{org}", f"{simulator.url}/hook",
                    header=["Authorization: Bearer partner-token", "X-Partner: khin"])
    assert sub["status"] == "active"  # requested -> active when accepted
    written = task(client, org)
    done = engine.run_once()
    assert done.delivered == 1
    [got] = received(simulator)
    assert got["method"] == "PUT"  # R4 rest-hook with a payload: PUT [endpoint]/[type]/[id]
    assert got["path"] == f"/hook/Task/{written['id']}"
    assert got["body"]["id"] == written["id"]
    assert got["body"]["meta"]["versionId"] == written["meta"]["versionId"]
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert headers["authorization"] == "Bearer partner-token"
    assert headers["x-partner"] == "khin"
    assert headers["x-subscription-id"] == sub["id"]
    assert headers["x-resource"] == f"Task/{written['id']}/_history/1"
    assert headers["x-notification-id"]
    assert engine.run_once().delivered == 0  # delivered once, then done


def test_id_only_notifications_are_an_empty_post(client, engine, simulator):
    sub = subscribe(client, "EpisodeOfCare?status=active", f"{simulator.url}/notify",
                    payload=False)
    patient = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()
    episode = client.post("/fhir/EpisodeOfCare", json={
        "resourceType": "EpisodeOfCare", "status": "active",
        "patient": {"reference": f"Patient/{patient['id']}"}}).json()
    assert engine.run_once().delivered == 1
    [got] = received(simulator)
    assert (got["method"], got["path"], got["body"]) == ("POST", "/notify", None)
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert headers["x-resource"] == f"EpisodeOfCare/{episode['id']}/_history/1"
    assert headers["x-subscription-id"] == sub["id"]


def test_writes_that_do_not_match_send_nothing(client, engine, simulator):
    org, other = organization(client), organization(client)
    subscribe(client, f"Task?owner=Organization/{org}&status=requested", simulator.url)
    task(client, other)  # another owner
    task(client, org, status="accepted")  # another status
    task(client, None)
    client.post("/fhir/Patient", json={"resourceType": "Patient"})  # another type
    assert engine.run_once().delivered == 0
    assert received(simulator) == []
    task(client, org)
    assert engine.run_once().delivered == 1


def test_a_refused_transaction_queues_nothing(client, engine, simulator):
    org = organization(client)
    subscribe(client, f"Task?owner=Organization/{org}", simulator.url)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Task", "status": "requested", "intent": "order",
                      "owner": {"reference": f"Organization/{org}"}},
         "request": {"method": "POST", "url": "Task"}},
        {"resource": {"resourceType": "Task", "status": "not-a-status", "intent": "order"},
         "request": {"method": "POST", "url": "Task"}}]}
    assert client.post("/fhir", json=bundle).status_code == 400
    assert engine.run_once().delivered == 0
    assert engine.status()[1] == []  # no outbox row at all
    bundle["entry"].pop()
    assert client.post("/fhir", json=bundle).status_code == 200
    assert engine.run_once().delivered == 1


def test_a_subscription_turned_off_or_ended_sends_nothing(client, engine, simulator, on_hapi):
    org = organization(client)
    sub = subscribe(client, f"Task?owner=Organization/{org}", simulator.url)
    task(client, org)  # queued while active ...
    off = {k: v for k, v in sub.items() if k != "meta"} | {"status": "off"}
    assert client.put(f"/fhir/Subscription/{sub['id']}", json=off).status_code == 200
    task(client, org)  # ... and not queued once off
    done = engine.run_once()
    # the embedded store queued the first Task in its transaction (cancelled now); HAPI's
    # feed reads the history after the Subscription went off, so queues neither
    assert (done.delivered, done.cancelled) == (0, 0 if on_hapi else 1)
    ended = subscribe(client, f"Task?owner=Organization/{org}", simulator.url,
                      end="2020-01-01T00:00:00Z")
    assert ended["status"] == "active"
    task(client, org)
    assert engine.run_once().delivered == 0
    assert received(simulator) == []


@pytest.mark.parametrize("change, where", [
    ({"criteria": "Task?no-such-param=1"}, "Subscription.criteria"),
    ({"criteria": "NoSuchType?status=active"}, "Subscription.criteria"),
    ({"criteria": "Task?_sort=date"}, "Subscription.criteria"),
    ({"channel": {"type": "websocket", "endpoint": "http://partner.example/hook"}},
     "Subscription.channel.type"),
    ({"channel": {"type": "rest-hook", "endpoint": "ftp://partner.example/hook"}},
     "Subscription.channel.endpoint"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://partner.example/hook",
                  "payload": "application/fhir+xml"}}, "Subscription.channel.payload"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://partner.example/hook",
                  "header": ["no colon here"]}}, "Subscription.channel.header[0]"),
])
def test_a_subscription_the_gateway_cannot_serve_is_refused_naming_the_element(
        client, change, where):
    body = {"resourceType": "Subscription", "status": "requested", "reason": "r",
            "criteria": "Task?status=requested",
            "channel": {"type": "rest-hook", "endpoint": "http://partner.example/hook"},
            **change}
    r = client.post("/fhir/Subscription", json=body)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == [where]
    assert client.get("/fhir/Subscription").json().get("total", 0) == 0  # nothing stored


def test_a_transient_failure_is_retried_after_its_backoff(client, store, tmp_path, simulator):
    engine = Engine(store, Settings(exchange_db=str(tmp_path / "exchange.db"),
                                    **{**FAST, "deliver_backoff": 0.5}))
    try:
        org = organization(client)
        subscribe(client, f"Task?owner=Organization/{org}", simulator.url)
        control(simulator, "fail", times=1)
        task(client, org)
        assert engine.run_once().failed == 1
        assert engine.run_once().delivered == 0  # waiting out its backoff
        time.sleep(0.6)
        assert engine.run_once().delivered == 1
        first, second = received(simulator)
        assert (first["status"], second["status"]) == (503, 200)
        assert first["headers"]["X-Notification-Id"] == second["headers"]["X-Notification-Id"]
    finally:
        engine.stop()


def test_a_partner_that_is_down_holds_up_only_its_own_notifications(client, engine, simulator):
    healthy = Simulator()
    healthy.start()
    try:
        org = organization(client)
        down = subscribe(client, f"Task?owner=Organization/{org}", simulator.url)
        subscribe(client, f"Task?owner=Organization/{org}", healthy.url)
        control(simulator, "fail")
        tasks = [task(client, org) for _ in range(3)]
        done = engine.run_once()
        # the healthy partner gets all three; the one that is down is tried once, its other
        # notifications wait with the failed one, their attempts not counted
        assert (done.delivered, done.failed) == (3, 1)
        assert sorted(r["body"]["id"] for r in received(healthy)) == sorted(t["id"] for t in tasks)
        assert len(received(simulator)) == 1
        _, counts = engine.status()
        assert (down["id"], "pending", 3) in [c[:3] for c in counts]
    finally:
        healthy.stop()


def test_a_failing_subscriber_goes_error_and_recovers_with_exchange_retry(
        client, engine, simulator, exchange_env):
    org = organization(client)
    sub = subscribe(client, f"Task?owner=Organization/{org}", f"{simulator.url}/hook")
    control(simulator, "fail", status=500)
    first = task(client, org)
    for _ in range(FAST["deliver_attempts"]):
        assert engine.run_once().failed == 1
    stored = client.get(f"/fhir/Subscription/{sub['id']}").json()
    assert stored["status"] == "error"
    assert "HTTP 500" in stored["error"] and "3 attempts" in stored["error"]
    second = task(client, org)  # queued while in error, held until retried
    assert engine.run_once().failed == 0
    assert len(received(simulator)) == 3

    runner = CliRunner()
    status = runner.invoke(cli, ["exchange", "status"], env=exchange_env)
    assert status.exit_code == 0, status.output
    assert f"Subscription/{sub['id']} error" in status.output
    assert "failed: 1" in status.output and "pending: 1" in status.output
    assert "HTTP 500" in status.output

    control(simulator, "reset")
    retried = runner.invoke(cli, ["exchange", "retry", "--subscription", sub["id"]],
                            env=exchange_env)
    assert retried.exit_code == 0, retried.output
    assert "2 notification(s) due now" in retried.output
    assert client.get(f"/fhir/Subscription/{sub['id']}").json()["status"] == "active"
    ran = runner.invoke(cli, ["exchange", "run"], env=exchange_env)
    assert ran.exit_code == 0, ran.output
    assert "2 delivered" in ran.output
    assert sorted(r["body"]["id"] for r in received(simulator)) == sorted(
        [first["id"], second["id"]])
    status = runner.invoke(cli, ["exchange", "status"], env=exchange_env)
    assert f"Subscription/{sub['id']} active" in status.output
    assert "done: 2" in status.output


def test_kill_9_mid_delivery_delivers_again_after_restart(store, tmp_path, simulator,
                                                         exchange_env):
    """SIGKILL while the partner holds the notification: nothing was marked done, so the
    restarted gateway sends it again, with the same notification id."""
    hapi = exchange_env["FHIR_GATEWAY_STORE"] if isinstance(backend(store), HapiStore) else None
    env = {k: v for k, v in exchange_env.items() if k != "FHIR_GATEWAY_STORE"}
    db = tmp_path / "live.db" if hapi else Path(backend(store).path)
    store.close()
    server = LiveServer(db, env=env, store=hapi)
    try:
        http = httpx.Client(base_url=server.base.removesuffix("/fhir"), timeout=30)
        org = organization(http)
        subscribe(http, f"Task?owner=Organization/{org}", simulator.url)
        control(simulator, "delay", seconds=20)
        written = task(http, org)
        deadline = time.time() + 30
        while not received(simulator) and time.time() < deadline:
            time.sleep(0.05)
        assert len(received(simulator)) == 1  # the partner has it, has not answered yet
        server.proc.kill()  # SIGKILL mid-delivery
        server.proc.wait(10)
    finally:
        server.stop()
    control(simulator, "delay", seconds=0)
    restarted = LiveServer(db, env=env, store=hapi)
    try:
        deadline = time.time() + 30
        while len(received(simulator)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        first, again = received(simulator)[:2]
        assert again["status"] == 200 and again["body"]["id"] == written["id"]
        assert first["headers"]["X-Notification-Id"] == again["headers"]["X-Notification-Id"]
    finally:
        restarted.stop()
