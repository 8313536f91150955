"""Legacy-extract throughput: parse+map and full import into the embedded store, with RSS.

Each stage of each extract size runs in its own process so peak RSS belongs to that stage
alone; the baseline in the same run is bare streaming (iterparse with the same clearing,
no conversion, no validation, no mapping). Stages:

- parse+map: one process, record by record (the parsers and the mapping engine);
- map: the mapping engine alone, CPU time per record (records parsed beforehand);
- bundles: what the import prepares (parse, map, transaction Bundles; no validation), file
  byte ranges in worker processes (one per core, up to 4), in the file's order;
- import: into the embedded store (workers prepare and validate, the main process stores).

Peak RSS is that of the largest process of the stage (the main one or a worker).

    .venv/bin/python bench/adapter_bench.py [--records 100000] [--import-records 20000]

Targets (CIMOR/CyberAccess issue): parse+map >= 5,000 records/s; import >= 1,000 records/s;
peak memory independent of file size.
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


def stage(kind: str, system: str, path: str, db: str) -> dict:
    """Run in a child process: one stage over one extract; prints records/s and peak RSS."""
    from lxml import etree

    from fhir_gateway.adapters.cimor.parser import parse as parse_cimor
    from fhir_gateway.adapters.cyberaccess.parser import parse as parse_cyberaccess
    from fhir_gateway.gc_tuning import bulk_gc
    from fhir_gateway.config import DEFAULT_MAPPINGS
    from fhir_gateway.healthhome.transforms import TRANSFORMS
    from fhir_gateway.importer import default_workers, import_extract, prepare
    from fhir_gateway.mapping import load_mapping
    from fhir_gateway.store import open_store

    started, records = time.perf_counter(), 0
    if kind == "bare":
        tag = "Consumer" if system == "cimor" else "Participant"
        for _, element in etree.iterparse(path, events=("end",), huge_tree=True):
            if etree.QName(element).localname == tag:
                records += 1
                element.clear()
                while element.getprevious() is not None:
                    del element.getparent()[0]
    elif kind == "parse+map":
        mapping = load_mapping(f"{DEFAULT_MAPPINGS}/{system}.yaml", TRANSFORMS)
        with bulk_gc():
            for record in (parse_cimor if system == "cimor" else parse_cyberaccess)(path):
                mapping.apply(record.data)
                records += 1
    elif kind == "map":
        mapping = load_mapping(f"{DEFAULT_MAPPINGS}/{system}.yaml", TRANSFORMS)
        data = [r.data for r in (parse_cimor if system == "cimor" else parse_cyberaccess)(path)]
        cpu = time.process_time()
        with bulk_gc():
            for record in data:
                mapping.apply(record)
        return {"records": len(data),
                "cpu_ms_per_record": (time.process_time() - cpu) * 1000 / len(data)}
    elif kind == "bundles":
        for group in prepare(system, Path(path), None, default_workers(Path(path))):
            records += len(group.records)
    else:
        store = open_store(f"sqlite:///{db}")
        records = import_extract(store, system, Path(path)).records
        store.close()
    seconds = time.perf_counter() - started
    peak = max(resource.getrusage(who).ru_maxrss
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"records": records, "per_second": records / seconds, "peak_rss_mb": peak / 1024,
            "workers": default_workers(Path(path)) if kind != "parse+map" else 0}


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stage", *args], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--import-records", type=int, default=20_000)
    parser.add_argument("--stage", nargs=4)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(*args.stage)))
        return
    from fhir_gateway.adapters.synth import write_extracts

    with tempfile.TemporaryDirectory() as tmp:
        for size in sorted({args.records // 10, args.records}):
            folder = Path(tmp) / str(size)
            write_extracts(size, folder)
            for system in ("cimor", "cyberaccess"):
                path = str(folder / f"{system}.xml")
                bare = child("bare", system, path, "")
                mapped = child("map", system, path, "")
                print(f"{system:11} {size:>7,} records: map, one process, "
                      f"{mapped['cpu_ms_per_record']:.3f} ms of CPU per record")
                for kind in ("parse+map", "bundles"):
                    done = child(kind, system, path, "")
                    how = (f"{kind}, {done['workers']} worker processes" if done["workers"]
                           else f"{kind}, one process")
                    print(f"{system:11} {size:>7,} records: {how:34} {done['per_second']:8,.0f} "
                          f"records/s, peak RSS {done['peak_rss_mb']:5.0f} MB | baseline bare "
                          f"streaming {bare['per_second']:8,.0f} records/s (ratio "
                          f"{done['per_second'] / bare['per_second']:.2f}); target >= 5,000/s")
        size = args.import_records
        folder = Path(tmp) / "import"
        write_extracts(size, folder)
        db = str(folder / "store.db")
        for system in ("cimor", "cyberaccess"):
            path = str(folder / f"{system}.xml")
            bare = child("bare", system, path, "")
            done = child("import", system, path, db)
            print(f"{system:11} {size:>7,} records: import, {done['workers']} worker processes "
                  f"{done['per_second']:8,.0f} records/s into the embedded store, peak RSS "
                  f"{done['peak_rss_mb']:5.0f} MB | baseline "
                  f"bare streaming {bare['per_second']:8,.0f} records/s (ratio "
                  f"{done['per_second'] / bare['per_second']:.2f}); target >= 1,000/s")


if __name__ == "__main__":
    main()
