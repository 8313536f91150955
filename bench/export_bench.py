"""`$export` throughput (resources/s) next to a bare scan of the same store, same run.

A Synthea-like population (tests/bulk_export.py, 15 resources per member) is loaded into
the embedded store (or, with `--hapi URL`, into that HAPI server, emptied first). Then:

- scan: the store contract's search, paged exactly as the export pages it (sorted by id,
  `--page` resources a page), every resource of every type read and dropped: the floor
  for anything built on the contract;
- scan, snapshot: the same with `_lastUpdated=le<now>`, the store-side way to bound an
  export at its transaction time (the export bounds it by reading `meta.lastUpdated`);
- $export: system-level, over HTTP in-process (kick-off, poll every 50 ms, done), the
  NDJSON written to disk;
- Patient/$export: the same with the Patient compartment test on every resource.

Memory: the process's RSS sampled during each export, against its RSS before it (flat:
the export holds one page at a time).

    .venv/bin/python bench/export_bench.py [--members 2000] [--page 500] [--hapi URL]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("FHIR_GATEWAY_AUTH", "off")  # loopback; tokens: bench/auth_overhead.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The highest RSS seen while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.before, self.peak, self._done = rss_mb(), rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def export_over_http(client, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    status = client.get(path, headers={"Prefer": "respond-async"}).headers["Content-Location"]
    while (answer := client.get(status)).status_code == 202:
        time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    return sum(o["count"] for o in answer.json()["output"]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--page", type=int, default=500)
    parser.add_argument("--hapi", default="", help="bench this (emptied) HAPI server instead")
    args = parser.parse_args()

    import httpx
    from fastapi.testclient import TestClient

    from bulk_export import write_export
    from fhir_gateway.api.app import create_app
    from fhir_gateway.config import Settings
    from fhir_gateway.search.dates import now_instant
    from fhir_gateway.export.writer import scan
    from fhir_gateway.loader import load_paths
    from fhir_gateway.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        files = write_export(Path(tmp) / "in", args.members)
        types = sorted({name.split(".")[0] for name in files})
        if args.hapi:
            httpx.post(f"{args.hapi}/$expunge", timeout=600, json={
                "resourceType": "Parameters",
                "parameter": [{"name": "expungeEverything", "valueBoolean": True}]})
        store = open_store(args.hapi or f"sqlite:///{tmp}/store.db")
        load_paths(store, sorted((Path(tmp) / "in").glob("*.ndjson")))

        for t in types:  # warm-up, untimed: HAPI's first searches pay its JIT and caches
            sum(1 for _ in scan(store, t, [], args.page))
        started = time.perf_counter()
        scanned = sum(1 for t in types for _ in scan(store, t, [], args.page))
        scan_s = time.perf_counter() - started
        bound = [("_lastUpdated", f"le{now_instant()[0]}")]
        started = time.perf_counter()
        bounded = sum(1 for t in types for _ in scan(store, t, bound, args.page))
        bounded_s = time.perf_counter() - started
        client = TestClient(create_app(store, Settings(
            export_dir=f"{tmp}/exports", export_page_size=args.page, demo=False)))
        print(f"store: {'HAPI' if args.hapi else 'embedded SQLite'}; {args.members} members, "
              f"{scanned} resources of {len(types)} types; page {args.page}")
        print(f"{'run':<16} {'resources':>9} {'s':>7} {'res/s':>8} {'vs scan':>8} "
              f"{'RSS before MB':>14} {'peak MB':>8}")
        print(f"{'scan':<16} {scanned:>9} {scan_s:>7.2f} {scanned / scan_s:>8.0f} {1:>8.2f}")
        print(f"{'scan, snapshot':<16} {bounded:>9} {bounded_s:>7.2f} {bounded / bounded_s:>8.0f} "
              f"{(bounded / bounded_s) / (scanned / scan_s):>8.2f}")
        for name, path in (("$export", f"/fhir/$export?_type={','.join(types)}"),
                           ("Patient/$export", "/fhir/Patient/$export")):
            with PeakRss() as memory:
                count, seconds = export_over_http(client, path)
            print(f"{name:<16} {count:>9} {seconds:>7.2f} {count / seconds:>8.0f} "
                  f"{(count / seconds) / (scanned / scan_s):>8.2f} {memory.before:>14.0f} "
                  f"{memory.peak:>8.0f}", flush=True)
        store.close()


if __name__ == "__main__":
    main()
