"""What the gateway costs in front of HAPI: the same workloads sent directly to HAPI and
through `fhir-gateway serve --store <hapi>`, in one run, from one client.

Prints one table: p50/p95 per workload, direct and through the gateway, the milliseconds the
gateway adds and the gateway/direct p50 ratio against its target (<= 1.15 for reads and
searches, <= 1.10 for 100-entry transactions); and HAPI's transaction ingest rate next to the
embedded store's. The machine's CPU count and load are printed with it: the gateway is one
more process on the same CPUs, so a loaded machine raises the ratio. The CPU time the gateway
process spends per request (Linux) does not depend on that load.

    .venv/bin/python bench/gateway_overhead.py [--requests 300] [--hapi-url URL]

Without --hapi-url it starts docker/hapi-local on a free port (and stops it afterwards).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from store_bench import DCN, member_bundles  # noqa: E402

from fhir_gateway.store.sqlite import SQLiteStore  # noqa: E402

os.environ.setdefault("FHIR_GATEWAY_AUTH", "off")  # loopback; tokens: bench/auth_overhead.py

ROOT = Path(__file__).resolve().parents[1]
JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def hapi(url: str | None, workdir: Path):
    if url:
        yield url.rstrip("/")
        return
    port = free_port()
    env = {**os.environ, "HAPI_PORT": str(port), "HAPI_RUN_DIR": str(workdir / "hapi"),
           "HAPI_DATA_DIR": str(workdir / "hapi" / "data")}
    run = str(ROOT / "docker" / "hapi-local" / "run")
    subprocess.run([run, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}/fhir"
    finally:
        subprocess.run([run, "stop"], env=env, stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def gateway(store_url: str, workdir: Path):
    port = free_port()
    log = (workdir / "gateway.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "fhir_gateway.cli", "serve", "--no-demo",
                             "--port", str(port), "--store", store_url, "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/fhir/metadata")
        yield f"http://127.0.0.1:{port}/fhir", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def timed(client: httpx.Client, requests: list[tuple[str, str, dict | None]]) -> list[float]:
    out = []
    for method, url, body in requests:
        started = time.perf_counter()
        response = client.request(method, url, json=body, headers=JSON)
        out.append((time.perf_counter() - started) * 1000)
        assert response.status_code < 300, response.text[:300]
    return out


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100)[p - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--transactions", type=int, default=40)
    parser.add_argument("--hapi-url")
    args = parser.parse_args()
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as tmp, hapi(args.hapi_url, Path(tmp)) as hapi_url, \
            gateway(hapi_url, Path(tmp)) as (gateway_url, gateway_pid), \
            httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=4)) as client:
        # data to read and search: 2,000 resources loaded directly into HAPI, timed (ingest)
        bundles = list(member_bundles(2000, rng, start=900_000))
        started = time.perf_counter()
        for bundle in bundles:
            client.post(hapi_url, json=bundle, headers=JSON).raise_for_status()
        hapi_rate = 2000 / (time.perf_counter() - started)
        embedded = SQLiteStore(Path(tmp) / "embedded.db")
        started = time.perf_counter()
        for bundle in member_bundles(2000, random.Random(3), start=900_000):
            embedded.transaction(bundle)
        embedded_rate = 2000 / (time.perf_counter() - started)
        embedded.close()

        ids = [e["resource"]["id"] for e in client.get(
            f"{hapi_url}/Patient", params={"_count": "500", "_elements": "id"}).json()["entry"]]
        n = args.requests
        reads = [("GET", f"Patient/{rng.choice(ids)}", None) for _ in range(n)]
        searches = [("GET", f"Patient?identifier={DCN}|{900_000 + rng.randrange(500):08d}", None)
                    for _ in range(n)]
        tx_start = 2_000_000
        print(f"HAPI ingest: {hapi_rate:,.0f} resources/s; embedded store ingest: "
              f"{embedded_rate:,.0f} resources/s (same 100-entry transactions)")
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; direct and "
              f"gateway requests interleaved, {n - n // 10} of each per read/search workload "
              "after a warm-up; times in ms, gateway CPU per request")
        print(f"{'workload':12} {'direct p50':>10} {'p95':>7} {'gateway p50':>11} {'p95':>7} "
              f"{'added p50':>9} {'gateway CPU':>11} {'p50 ratio':>9}  target")
        for name, workload in (("read", reads), ("search", searches), ("transaction", None)):
            if workload is None:  # fresh members for every transaction: each one writes
                count = 2 * args.transactions + 10
                bodies = list(member_bundles(100 * count, rng, start=tx_start))
                tx_start += 100 * count
                pairs = [(("POST", hapi_url, b), ("POST", gateway_url, c))
                         for b, c in zip(bodies[0::2], bodies[1::2])]
            else:
                pairs = [((m, f"{hapi_url}/{u}", b), (m, f"{gateway_url}/{u}", b))
                         for m, u, b in workload]
            warm, pairs = pairs[:len(pairs) // 10], pairs[len(pairs) // 10:]
            timed(client, [r for pair in warm for r in pair])
            # interleaved, alternating which goes first, so HAPI's JIT warm-up and the
            # machine's load fall on both sides alike
            results = {"direct": [], "gateway": []}
            cpu = cpu_seconds(gateway_pid)
            for i, (direct, via) in enumerate(pairs):
                order = [("direct", direct), ("gateway", via)]
                for target, request in (order if i % 2 else order[::-1]):
                    results[target] += timed(client, [request])
            cpu = (cpu_seconds(gateway_pid) - cpu) * 1000 / len(pairs)
            d50, g50 = pct(results["direct"], 50), pct(results["gateway"], 50)
            target = 1.10 if name == "transaction" else 1.15
            verdict = "met" if g50 / d50 <= target else "MISSED"
            print(f"{name:12} {d50:10.2f} {pct(results['direct'], 95):7.2f} {g50:11.2f} "
                  f"{pct(results['gateway'], 95):7.2f} {g50 - d50:+9.2f} {cpu:11.2f} "
                  f"{g50 / d50:9.3f}  "
                  f"<= {target} {verdict}")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
