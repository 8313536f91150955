"""What the audit trail costs per request: the same reads and searches sent, interleaved, to
two `fhir-gateway serve` processes over copies of one embedded store, one with
FHIR_GATEWAY_AUDIT=off and one recording an AuditEvent per request, in one run, from one
client. Both serve with FHIR_GATEWAY_AUTH=off (loopback), so the difference is the trail's
alone: the event built after the answer, queued, and written by the writer thread.

Prints p50/p95 per workload for both and the on/off p50 ratio against its target (<= 1.10),
then checks that the trail holds one event per request sent to the recording server.

    .venv/bin/python bench/audit_overhead.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from auth_overhead import JSON, serve  # noqa: E402
from gateway_overhead import pct  # noqa: E402
from store_bench import DCN, member_bundles  # noqa: E402

from fhir_gateway.store.sqlite import SQLiteStore  # noqa: E402


@contextmanager
def gateway(db: Path, data_dir: Path, audit: str):
    """`serve` without tokens (both modes alike), the trail on or off."""
    os.environ["FHIR_GATEWAY_AUDIT"] = audit  # read by the process `serve` starts
    with serve(db, data_dir, "off") as base:
        yield base


def members(folder: Path) -> list[str]:
    """on.db and its copy off.db, 1000 members; a data dir for each (on/, off/); the ids."""
    first = SQLiteStore(folder / "on.db")
    for bundle in member_bundles(1000, random.Random(5), start=700_000):
        first.transaction(bundle)
    found = first.search("Patient", [("_count", "500")]).matches
    first.close()
    shutil.copy(folder / "on.db", folder / "off.db")
    for mode in ("on", "off"):
        (folder / mode).mkdir()
    return [p["id"] for p in found]


def compare(http: httpx.Client, workloads: dict[str, list[str]], bases: dict[str, str]) -> None:
    """Each path to both servers, which one first alternating (neither always pays for
    going first); p50/p95 of both and the on/off p50 ratio."""
    print(f"{'workload':<8} {'off p50':>8} {'on p50':>8} {'off p95':>8} {'on p95':>8} "
          f"{'ratio':>6} target")
    for name, paths in workloads.items():
        times: dict[str, list[float]] = {"on": [], "off": []}
        for index, path in enumerate(paths):
            for mode in ("off", "on") if index % 2 else ("on", "off"):
                t0 = time.perf_counter()
                http.get(f"{bases[mode]}{path}", headers=JSON).raise_for_status()
                times[mode].append((time.perf_counter() - t0) * 1000)
        on50, off50 = statistics.median(times["on"]), statistics.median(times["off"])
        print(f"{name:<8} {off50:8.2f} {on50:8.2f} {pct(times['off'], 95):8.2f} "
              f"{pct(times['on'], 95):8.2f} {on50 / off50:6.3f} <= 1.10")


def main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        ids = members(tmp)
        with gateway(tmp / "on.db", tmp / "on", "on") as on, \
                gateway(tmp / "off.db", tmp / "off", "off") as off, \
                httpx.Client(timeout=60) as http:
            for base in (on, off):  # warm both (first requests open files, fill caches)
                for pid in ids[:20]:
                    http.get(f"{base}/fhir/Patient/{pid}", headers=JSON).raise_for_status()
            rng = random.Random(6)
            workloads = {
                "read": [f"/fhir/Patient/{rng.choice(ids)}" for _ in range(requests)],
                "search": [f"/fhir/Patient?identifier={DCN}|{700_000 + rng.randrange(500):08d}"
                           for _ in range(requests)]}
            print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} "
                  f"requests={requests} per workload and mode, interleaved")
            compare(http, workloads, {"off": off, "on": on})
        sent = 20 + sum(len(paths) for paths in workloads.values())
        # the servers have stopped: what they queued is written
        trail = sqlite3.connect(tmp / "on" / "audit.db")
        written = trail.execute("SELECT COUNT(*) FROM resource WHERE type = 'AuditEvent'"
                                ).fetchone()[0]
        trail.close()
        print(f"trail: {written} AuditEvents for {sent} requests sent "
              f"({'all' if written == sent else 'MISSING SOME'}); audit off: "
              f"{'no trail file' if not (tmp / 'off' / 'audit.db').exists() else 'a trail file'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    main(parser.parse_args().requests)
