"""Subscriptions out: delivery latency from commit to receiver, and what the outbox costs a commit.

1. Commit cost (embedded store): creating Tasks one transaction each, with no Subscription
   (the baseline) and with N rest-hook Subscriptions on Task (one of which matches each
   write, the others have other owners): the ratio, same run, same store code. The outbox
   rows are written in the writing transaction, so this is the price of never losing one.
2. Latency: a matching Task written, then timed until the subscriber simulator has it
   (p50/p95 over sequential writes), with the delivery engine running as `serve` runs it.
   Embedded: a commit that queued rows wakes the worker at once. HAPI (`--hapi URL`, a
   server of your own: it is expunged): the worker polls HAPI's history every
   `--interval` seconds, so half of that is the expected floor.

    .venv/bin/python bench/subscription_bench.py [--writes 300] [--subscriptions 20]
        [--hapi http://localhost:18100/fhir] [--interval 0.2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from fhir_gateway.config import DEFAULT_PROFILES, Settings
from fhir_gateway.exchange.engine import Engine
from fhir_gateway.exchange.simulator import Simulator
from fhir_gateway.healthhome.checks import health_home_validator
from fhir_gateway.store.hapi import HapiStore
from fhir_gateway.store.sqlite import SQLiteStore
from fhir_gateway.validation.guard import ValidatingStore

os.environ.setdefault("FHIR_GATEWAY_AUTH", "off")  # loopback; tokens: bench/auth_overhead.py


def subscription(criteria: str, endpoint: str) -> dict:
    return {"resourceType": "Subscription", "status": "requested", "reason": "bench",
            "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": endpoint,
                        "payload": "application/fhir+json"}}


def task(owner: str) -> dict:
    return {"resourceType": "Task", "status": "requested", "intent": "order",
            "owner": {"reference": f"Organization/{owner}"}}


def setup(store, subscriptions: int, endpoint: str) -> str:
    """Organizations and `subscriptions` Subscriptions on Task (the first on the owner the
    writes use); the owner's id."""
    owners = [store.create({"resourceType": "Organization", "name": f"HH {i}"}).resource["id"]
              for i in range(max(subscriptions, 1))]
    for owner in owners[:subscriptions]:
        store.create(subscription(f"Task?owner=Organization/{owner}", endpoint))
    return owners[0]


def commit_cost(folder: Path, writes: int, subscriptions: int, endpoint: str) -> float:
    """Seconds per create, `subscriptions` Subscriptions in the store (none delivered)."""
    folder.mkdir(exist_ok=True)
    store = ValidatingStore(SQLiteStore(folder / f"commit-{subscriptions}.db"),
                            health_home_validator(DEFAULT_PROFILES))
    owner = setup(store, subscriptions, endpoint)
    for _ in range(50):  # warm up
        store.create(task(owner))
    started = time.perf_counter()
    for _ in range(writes):
        store.create(task(owner))
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed / writes


def latency(store, settings: Settings, writes: int, sim: Simulator) -> list[float]:
    """Seconds from each write's commit until the simulator received its notification."""
    engine = Engine(store, settings)
    owner = setup(store, 1, sim.url)
    engine.start()
    try:
        times = []
        for _ in range(writes):
            httpx.post(f"{sim.url}/_control/reset")
            store.create(task(owner))
            committed = time.time()
            while True:
                got = httpx.get(f"{sim.url}/_control/received").json()
                if got:
                    times.append(got[0]["at"] - committed)
                    break
                time.sleep(0.0005)
        return times
    finally:
        engine.stop()


def report(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    print(f"  {name:<10} p50 {statistics.median(ordered) * 1000:7.1f} ms   "
          f"p95 {p95 * 1000:7.1f} ms   ({len(ordered)} notifications)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--subscriptions", type=int, default=20)
    parser.add_argument("--hapi", default="", help="a HAPI base URL of your own (expunged)")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sim = Simulator()
    sim.start()
    folder = Path(tempfile.mkdtemp(prefix="subscription-bench-"))
    validator = health_home_validator(DEFAULT_PROFILES)
    settings = Settings(exchange_db=str(folder / "exchange.db"), deliver_interval=args.interval,
                        feed_lag=2.0)

    runs: dict[int, list[float]] = {0: [], args.subscriptions: []}
    for round_ in range(args.rounds):  # taken in turn: a shared machine's load swings
        for n in runs:
            runs[n].append(commit_cost(folder / f"round-{round_}", args.writes, n, sim.url))
    none, some = (statistics.median(runs[n]) for n in runs)
    print(f"Commit cost, embedded store ({args.writes} Task creates, one transaction each; "
          f"medians of {args.rounds} runs taken in turn):")
    print(f"  no Subscription          {none * 1e6:8.0f} µs per create (baseline)")
    print(f"  {args.subscriptions:>3} Subscriptions on Task {some * 1e6:8.0f} µs per create "
          f"({some / none:.2f}x the baseline)")

    print("Delivery latency, commit -> receiver:")
    embedded = ValidatingStore(SQLiteStore(folder / "latency.db"), validator)
    report("embedded", latency(embedded, settings, args.writes, sim))
    embedded.close()
    if args.hapi:
        httpx.post(f"{args.hapi}/$expunge", timeout=300, headers={
            "Content-Type": "application/fhir+json"}, json={
            "resourceType": "Parameters",
            "parameter": [{"name": "expungeEverything", "valueBoolean": True}]})
        hapi = ValidatingStore(HapiStore(args.hapi), validator)
        report("HAPI", latency(hapi, settings, min(args.writes, 100), sim))
        hapi.close()
        print(f"  (HAPI: history polled every {args.interval}s)")
    sim.stop()


if __name__ == "__main__":
    main()
