"""Notifications through `POST /fhir/$process-message` on the embedded store, messages/s,
next to a same-run baseline: the same resources sent as plain transactions (`POST /fhir`,
each entry a PUT of its own id), which skips what a message adds (the checks, patient
matching, the Encounter merge, the replay check, deterministic ids).

Each stay is admit, transfer and discharge of one synthetic patient (half of them members
already stored with a DCN, the others known to the hospital by an MRN only); in-process
(the ASGI app through httpx's ASGITransport, one client sending one message at a time:
Starlette's TestClient costs several milliseconds a request on its own), a fresh store
per run.

    .venv/bin/python bench/message_bench.py [--stays 300]

Target (issue 14): >= 300 messages/s on the embedded store.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402

from exchange_messages import dcn, message, mrn  # noqa: E402
from fhir_gateway.api.app import create_app  # noqa: E402
from fhir_gateway.config import DEFAULT_PROFILES  # noqa: E402
from fhir_gateway.healthhome.checks import health_home_validator  # noqa: E402
from fhir_gateway.store.sqlite import SQLiteStore  # noqa: E402
from fhir_gateway.store import guarded  # noqa: E402

os.environ.setdefault("FHIR_GATEWAY_AUTH", "off")  # loopback; tokens: bench/auth_overhead.py

KINDS = ("admit", "transfer", "discharge")


def identifiers(stay: int) -> list[dict]:
    ids = [mrn(f"MRN-{stay:06d}")]
    return [dcn(f"9{stay:08d}"), *ids] if stay % 2 == 0 else ids


def messages(stays: int, plain_ids: bool) -> list[dict]:
    return [message(kind, identifiers(stay), stay=f"V{stay:06d}", plain_ids=plain_ids)
            for stay in range(stays) for kind in KINDS]


def as_transaction(bundle: dict) -> dict:
    """The message's resources as a transaction of PUTs (references are plain Type/ids)."""
    entries = [{"resource": e["resource"], "request": {
        "method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"}}
        for e in copy.deepcopy(bundle["entry"])]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def run(stays: int, kind: str) -> float:
    """Messages/s of one kind of work over a fresh store holding the members (even stays,
    by DCN)."""
    with tempfile.TemporaryDirectory() as folder:
        store = guarded(SQLiteStore(Path(folder) / "bench.db"),
                        health_home_validator(DEFAULT_PROFILES))
        transport = httpx.ASGITransport(app=create_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            for stay in range(0, stays, 2):
                r = await c.put(f"/fhir/Patient/m{stay}", json={
                    "resourceType": "Patient", "id": f"m{stay}",
                    "identifier": [dcn(f"9{stay:08d}")], "name": [{"family": "Member"}],
                    "gender": "female", "birthDate": "1980-02-02"})
                assert r.status_code == 201, r.text
            if kind == "message":
                work = [("/fhir/$process-message", m) for m in messages(stays, plain_ids=False)]
            else:
                work = [("/fhir", as_transaction(m)) for m in messages(stays, plain_ids=True)]
            started = time.perf_counter()
            for path, body in work:
                r = await c.post(path, json=body)
                assert r.status_code == 200, r.text
            elapsed = time.perf_counter() - started
        store.close()
    return len(work) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each, taken in turn (the median is reported): a "
                             "shared VM's load swings between runs")
    args = parser.parse_args()
    rates = {"transaction": [], "message": []}
    for _ in range(args.rounds):
        for kind, found in rates.items():
            found.append(asyncio.run(run(args.stays, kind)))
    baseline, processed = (statistics.median(rates[k]) for k in ("transaction", "message"))
    print(f"{args.stays * 3} messages ({args.stays} stays x admit/transfer/discharge), "
          f"embedded store, in-process; median of {args.rounds} runs (all: "
          + ", ".join(f"{k} {' '.join(f'{r:.0f}' for r in v)}" for k, v in rates.items()) + ")")
    print(f"  plain transaction (baseline)  {baseline:8.0f} /s")
    print(f"  $process-message              {processed:8.0f} /s   "
          f"ratio {processed / baseline:.2f}   target >= 300/s: "
          f"{'met' if processed >= 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
