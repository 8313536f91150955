"""CIMOR and CyberAccess extract parsing: records/s and memory, at several file sizes.

For each size, synthetic extracts are written (fhir_gateway.adapters.synth), then each is parsed in a
fresh child process so that its peak RSS (`resource.getrusage`, ru_maxrss) belongs to that
parse alone. Printed next to each figure:
- floor: the same file through bare `lxml.etree.iterparse` with the same clearing, no
  validation, no dict, no re-serialisation — what streaming alone costs;
- growth: peak RSS minus the RSS after the first 1,000 records. Flat memory means the growth
  stays about the same (a few MB) whatever the size of the file;
- DOM peak: peak RSS of `lxml.etree.parse` loading the same file whole — what not
  streaming would cost (and proof that the RSS figures do move when memory grows).
`--tracemalloc` adds the peak of Python allocations (lxml's own memory is not traced).

    .venv/bin/python bench/adapter_parse_bench.py [--sizes 10000,100000] [--keep DIR]
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
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(system: str, path: str, trace: bool) -> None:
    """Parse one file; print a JSON line of figures."""
    from lxml import etree

    if system == "dom":
        etree.parse(path, etree.XMLParser(huge_tree=True))
        print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    from fhir_gateway.adapters.cimor import parser as cimor
    from fhir_gateway.adapters.cyberaccess import parser as cyberaccess

    module = {"cimor": cimor, "cyberaccess": cyberaccess}[system]
    fmt = module.FORMAT
    fmt.schema()  # compile outside the timing
    if trace:
        import tracemalloc
        tracemalloc.start()
    start_rss = rss_mb()
    count = invalid = 0
    warm_rss = start_rss
    started = time.perf_counter()
    for record in module.parse(path):
        count += 1
        invalid += bool(record.errors)
        if count == 1000:
            warm_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {"records": count, "invalid": invalid, "seconds": elapsed, "rate": count / elapsed,
               "start_rss": start_rss, "peak_rss": peak, "growth": peak - warm_rss}
    if trace:
        figures["py_peak"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    # the floor: streaming alone
    started = time.perf_counter()
    floor = 0
    for _, element in etree.iterparse(path, events=("end",), tag=fmt.tag(fmt.record), huge_tree=True):
        floor += 1
        element.clear(keep_tail=True)
        while element.getprevious() is not None:
            del element.getparent()[0]
    figures["floor_rate"] = floor / (time.perf_counter() - started)
    print(json.dumps(figures))


def measure(system: str, path: Path, trace: bool) -> dict:
    args = [sys.executable, __file__, "--child", system, str(path)] + (["--tracemalloc"] if trace else [])
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--keep", type=Path, help="write the extracts here and keep them")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("SYSTEM", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.tracemalloc)
        return

    from fhir_gateway.adapters.synth import write_extracts

    print(f"{'records':>8} {'system':<12} {'MB':>6} {'rec/s':>8} {'floor rec/s':>11} "
          f"{'peak RSS MB':>11} {'growth MB':>9} {'DOM peak MB':>11}"
          + (f" {'py peak MB':>10}" if args.tracemalloc else ""))
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            out = args.keep / str(size) if args.keep else Path(tmp)
            started = time.perf_counter()
            paths = write_extracts(size, out)
            wrote = time.perf_counter() - started
            for system, path in zip(("cimor", "cyberaccess"), paths):
                f = measure(system, path, args.tracemalloc)
                dom = measure("dom", path, False)
                assert f["records"] == size and f["invalid"] == 0, f
                print(f"{size:>8} {system:<12} {path.stat().st_size / 2**20:>6.0f} {f['rate']:>8,.0f} "
                      f"{f['floor_rate']:>11,.0f} {f['peak_rss']:>11.1f} {f['growth']:>9.1f} "
                      f"{dom['peak_rss']:>11.0f}"
                      + (f" {f['py_peak']:>10.1f}" if args.tracemalloc else ""))
            print(f"{'':>8} (synth wrote both files in {wrote:.1f} s: {size / wrote:,.0f} members/s)")


if __name__ == "__main__":
    main()
