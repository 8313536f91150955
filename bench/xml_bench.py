"""FHIR XML parse and serialise cost next to FHIR JSON (orjson), per resource type.

Every resource of the demo population (`fhir_gateway.demo.demo_population`) is timed four
ways in the same run, best of `--repeat`:
- parse: XML bytes -> dict (`formats.xml.from_xml`) vs JSON bytes -> dict (`orjson.loads`);
- serialise: dict -> XML bytes (`formats.xml.to_xml`) vs dict -> JSON bytes (`orjson.dumps`);
and the two paths the gateway runs per XML request, bytes to bytes: an XML body made JSON
(`xml_to_json`) and a JSON answer made XML (`json_to_xml`, which reads decimals as text).
Ratios are XML / JSON. For scale, `fhir.resources`' own XML codec (`model_validate_xml` /
`model_dump_xml`, the rejected option) on the Observations.

    .venv/bin/python bench/xml_bench.py [--members 60] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_gateway.demo import demo_population  # noqa: E402
from fhir_gateway.formats.xml import from_xml, json_to_xml, to_xml, xml_to_json  # noqa: E402


def best(fn, items: list, repeat: int) -> float:
    """Seconds per item, the best of `repeat` passes over all items."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            fn(item)
        times.append(time.perf_counter() - started)
    return min(times) / len(items)


def by_type(members: int) -> dict[str, list[dict]]:
    found = defaultdict(list)
    for bundle in demo_population(members):
        for entry in bundle["entry"]:
            found[entry["resource"]["resourceType"]].append(entry["resource"])
    return dict(sorted(found.items()))


def fhir_resources_observation(resources: list[dict], repeat: int) -> tuple[float, float]:
    from fhir.resources.R4B.observation import Observation

    xmls = [Observation.model_validate(r).model_dump_xml() for r in resources]
    return (best(Observation.model_validate_xml, xmls, repeat),
            best(lambda r: Observation.model_validate(r).model_dump_xml(), resources, repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    types = by_type(args.members)
    print(f"demo population of {args.members} members: "
          f"{sum(map(len, types.values()))} resources; µs per resource, best of {args.repeat}")
    print(f"{'type':<16}{'n':>5} | {'parse json':>10}{'xml':>8}{'ratio':>7} | "
          f"{'write json':>10}{'xml':>8}{'ratio':>7} | {'xml->json':>9}{'json->xml':>10}")
    totals = defaultdict(float)
    for name, resources in types.items():
        as_json = [orjson.dumps(r) for r in resources]
        as_xml = [to_xml(r) for r in resources]
        row = {"pj": best(orjson.loads, as_json, args.repeat),
               "px": best(from_xml, as_xml, args.repeat),
               "wj": best(orjson.dumps, resources, args.repeat),
               "wx": best(to_xml, resources, args.repeat),
               "in": best(xml_to_json, as_xml, args.repeat),
               "out": best(json_to_xml, as_json, args.repeat)}
        for key, value in row.items():
            totals[key] += value * len(resources)
        us = {k: v * 1e6 for k, v in row.items()}
        print(f"{name:<16}{len(resources):>5} | {us['pj']:>10.1f}{us['px']:>8.1f}"
              f"{row['px'] / row['pj']:>6.0f}x | {us['wj']:>10.1f}{us['wx']:>8.1f}"
              f"{row['wx'] / row['wj']:>6.0f}x | {us['in']:>9.1f}{us['out']:>10.1f}")
    print(f"{'all':<16}{sum(map(len, types.values())):>5} | parse {totals['px'] / totals['pj']:.0f}x"
          f" JSON's cost, serialise {totals['wx'] / totals['wj']:.0f}x")
    if "Observation" in types:
        parse, write = fhir_resources_observation(types["Observation"], args.repeat)
        ours_parse = best(from_xml, [to_xml(r) for r in types["Observation"]], args.repeat)
        ours_write = best(to_xml, types["Observation"], args.repeat)
        print(f"fhir.resources XML on Observation: parse {parse * 1e6:.0f} µs "
              f"({parse / ours_parse:.0f}x ours), serialise {write * 1e6:.0f} µs "
              f"({write / ours_write:.0f}x ours)")


if __name__ == "__main__":
    main()
