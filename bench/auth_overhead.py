"""What authorization costs per request: the same reads and searches sent, interleaved (the
one asked first rotating), to two `fhir-gateway serve` processes over copies of one
embedded store, one with FHIR_GATEWAY_AUTH=off and one with tokens on (a bearer token
verified, then the access decision), in one run, from one client. On the server with tokens, twice: as a client
without an organization (scopes only) and as a Health Home's client (`--organization`: its
members only, the member list from the store, reused until an enrollment is written).

Prints p50/p95 per workload for each and the p50 ratios against auth off, target <= 1.05.
The first request with a token verifies its signature (ES384); later ones find it verified.
The one-time cost of that verification is printed apart, from the token endpoint's view.

    .venv/bin/python bench/auth_overhead.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from gateway_overhead import free_port, pct, wait_for  # noqa: E402
from store_bench import DCN, member_bundles  # noqa: E402

from fhir_gateway.auth.clients import Registry  # noqa: E402
from fhir_gateway.auth.demo import request_token  # noqa: E402
from fhir_gateway.auth.keys import public_jwk, write_private_key  # noqa: E402
from fhir_gateway.identifiers import HH_PROGRAM  # noqa: E402
from fhir_gateway.store.sqlite import SQLiteStore  # noqa: E402

JSON = {"Accept": "application/fhir+json"}


@contextmanager
def serve(db: Path, data_dir: Path, auth: str):
    port = free_port()
    env = {**os.environ, "FHIR_GATEWAY_AUTH": auth, "FHIR_GATEWAY_DATA_DIR": str(data_dir)}
    log = (data_dir / f"serve-{auth}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "fhir_gateway.cli", "serve", "--no-demo",
                             "--port", str(port), "--store", f"sqlite:///{db}",
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    try:
        wait_for(f"http://127.0.0.1:{port}/fhir/metadata")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = SQLiteStore(tmp / "on.db")
        for bundle in member_bundles(1000, rng, start=700_000):
            store.transaction(bundle)
        ids = [p["id"] for p in store.search("Patient", [("_count", "500")]).matches]
        home = {"resourceType": "Organization", "id": "bench-hh", "name": "Bench Health Home"}
        store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": home, "request": {"method": "PUT", "url": "Organization/bench-hh"}},
            *({"resource": {"resourceType": "EpisodeOfCare", "status": "active",
                          "type": [{"coding": [{"system": HH_PROGRAM, "code": "mo-cmhc"}]}],
                          "patient": {"reference": f"Patient/{pid}"},
                          "managingOrganization": {"reference": "Organization/bench-hh"}},
             "request": {"method": "POST", "url": "EpisodeOfCare"}} for pid in ids)]})
        store.close()
        shutil.copy(tmp / "on.db", tmp / "off.db")
        (tmp / "on").mkdir()
        (tmp / "off").mkdir()
        key = ec.generate_private_key(ec.SECP384R1())
        write_private_key(tmp / "client.pem", key)
        jwks = {"keys": [public_jwk(key.public_key(), "ES384")]}
        client_id = Registry(tmp / "on").add("bench", "system/*.rs", jwks=jwks).id
        home_id = Registry(tmp / "on").add("bench hh", "system/*.rs", jwks=jwks,
                                           organization="Organization/bench-hh").id
        with serve(tmp / "on.db", tmp / "on", "on") as on, \
                serve(tmp / "off.db", tmp / "off", "off") as off, \
                httpx.Client(timeout=60) as http:
            started = time.perf_counter()
            token = request_token(f"{on}/auth/token", client_id, tmp / "client.pem",
                                  "system/*.rs")["access_token"]
            issue_ms = (time.perf_counter() - started) * 1000
            home_token = request_token(f"{on}/auth/token", home_id, tmp / "client.pem",
                                       "system/*.rs")["access_token"]
            headers = {"on": {**JSON, "Authorization": f"Bearer {token}"}, "off": JSON,
                       "hh": {**JSON, "Authorization": f"Bearer {home_token}"}}
            started = time.perf_counter()
            http.get(f"{on}/fhir/Patient/{ids[0]}", headers=headers["on"]).raise_for_status()
            first_ms = (time.perf_counter() - started) * 1000
            workloads = {
                "read": [f"/fhir/Patient/{rng.choice(ids)}" for _ in range(args.requests)],
                "search": [f"/fhir/Patient?identifier={DCN}|{700_000 + rng.randrange(500):08d}"
                           for _ in range(args.requests)],
            }
            print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} "
                  f"requests={args.requests} per workload and mode, interleaved")
            print(f"token endpoint (assertion verified, token signed): {issue_ms:.1f} ms; "
                  f"first request with a new token (signature check): {first_ms:.1f} ms")
            print("on: scopes only; hh: a Health Home's client (its 500 members of 1,000)")
            print(f"{'workload':<8} {'off p50':>8} {'on p50':>8} {'hh p50':>8} {'off p95':>8} "
                  f"{'on p95':>8} {'hh p95':>8} {'on/off':>7} {'hh/off':>7} target")
            for name, paths in workloads.items():
                times = {"on": [], "off": [], "hh": []}
                modes = [("off", off), ("on", on), ("hh", on)]
                for n, path in enumerate(paths):  # who goes first rotates: no order bias
                    for mode, base in modes[n % 3:] + modes[:n % 3]:
                        t0 = time.perf_counter()
                        http.get(f"{base}{path}", headers=headers[mode]).raise_for_status()
                        times[mode].append((time.perf_counter() - t0) * 1000)
                p50 = {mode: statistics.median(t) for mode, t in times.items()}
                print(f"{name:<8} {p50['off']:8.2f} {p50['on']:8.2f} {p50['hh']:8.2f} "
                      f"{pct(times['off'], 95):8.2f} {pct(times['on'], 95):8.2f} "
                      f"{pct(times['hh'], 95):8.2f} {p50['on'] / p50['off']:7.3f} "
                      f"{p50['hh'] / p50['off']:7.3f} <= 1.05")


if __name__ == "__main__":
    main()
