"""`fhir-gateway load` throughput on a Synthea-like Bulk Data export, with peak RSS.

The export (tests/bulk_export.py) has one NDJSON file per type and references across files,
within files and in a cycle; the files are loaded in name order, as `load export/*.ndjson`
hands them over. Each stage runs in its own process, so its peak RSS is its own:

- bare: orjson.loads of every line of every file, nothing else (the same-run baseline);
- load: `load_paths` into the embedded store, validation on, as the CLI does it;
- load (HAPI): the same into a HAPI server, with `--hapi http://host:port/fhir`.

Two export sizes show whether memory stays flat.

    .venv/bin/python bench/load_bench.py [--resources 50000] [--hapi URL]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def stage(kind: str, export: str, store_url: str) -> dict:
    """Run in a child process: one stage over the export; prints its figures as JSON."""
    import orjson

    paths = sorted(Path(export).glob("*.ndjson"))
    started, records = time.perf_counter(), 0
    if kind == "generate":  # here, not in the parent: a child inherits its parent's peak RSS
        from bulk_export import write_export

        write_export(Path(export), int(store_url))
        return {}
    if kind == "bare":
        for path in paths:
            with path.open("rb") as fh:
                for line in fh:
                    orjson.loads(line)
                    records += 1
        failed = 0
    else:
        from fhir_gateway.loader import load_paths
        from fhir_gateway.store import open_store

        store = open_store(store_url)
        summary = load_paths(store, paths)
        store.close()
        records, failed = summary.records, summary.failed
    seconds = time.perf_counter() - started
    return {"records": records, "failed": failed, "seconds": seconds,
            "rate": records / seconds,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(kind: str, export: Path, store_url: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stage", kind, str(export), store_url],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=50_000)
    parser.add_argument("--hapi", default="", help="also load into this HAPI server (emptied "
                                                   "first with $expunge)")
    parser.add_argument("--stage", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(*args.stage)))
        return

    from bulk_export import RESOURCES_PER_MEMBER

    print(f"{'export':>8} {'stage':<12} {'records':>8} {'failed':>6} {'s':>7} {'rec/s':>8} "
          f"{'vs bare':>8} {'peak RSS MB':>12}")
    for resources in (args.resources // 4, args.resources):
        members = -(-resources // (RESOURCES_PER_MEMBER + 0.2))  # + shared per 10 members
        with tempfile.TemporaryDirectory() as tmp:
            export = Path(tmp) / "export"
            run("generate", export, str(int(members)))
            bare = run("bare", export, "")
            rows = [("bare", bare), ("load", run("load", export, f"sqlite:///{tmp}/load.db"))]
            if args.hapi:
                import httpx

                httpx.post(f"{args.hapi}/$expunge", timeout=600,
                           json={"resourceType": "Parameters", "parameter": [
                               {"name": "expungeEverything", "valueBoolean": True}]})
                rows.append(("load (HAPI)", run("load", export, args.hapi)))
            for name, figures in rows:
                print(f"{bare['records']:>8} {name:<12} {figures['records']:>8} "
                      f"{figures['failed']:>6} {figures['seconds']:>7.2f} {figures['rate']:>8.0f} "
                      f"{figures['rate'] / bare['rate']:>8.3f} {figures['rss_mb']:>12.0f}",
                      flush=True)


if __name__ == "__main__":
    main()
