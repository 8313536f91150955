"""`fhir-gateway load` on a Bulk Data export, as a user runs it: `load export/*.ndjson`.

The files come in name order (AllergyIntolerance before Patient); records refer to records
of later files, to later lines of their own file, and to each other. Everything that
resolves within the export or the store loads; what resolves nowhere is reported with its
own file, line and reason, and quarantined; the counts are true; on both stores.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from bulk_export import write_export
from conftest import expunge
from test_cli import cli, output, summary

from fhir_gateway.store import open_store

MEMBERS = 12
BAD_MEMBER = 5
OUTSIDE = "Patient/not-in-this-export"


@pytest.fixture(params=["sqlite", "hapi"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'load.db'}"
    url = request.getfixturevalue("hapi_url")
    expunge(url)
    return url


def damaged_export(directory: Path) -> tuple[dict[str, list[bytes]], dict]:
    """The export with an invalid Patient and an Observation pointing outside it."""
    files = write_export(directory, MEMBERS)
    patients = files["Patient.000.ndjson"]
    bad = next(i for i, line in enumerate(patients)
               if orjson.loads(line)["name"][0]["family"] == f"Synthetic{BAD_MEMBER}")
    patients[bad] = orjson.dumps({**orjson.loads(patients[bad]), "birthDate": "1980-13-45"})
    observations = files["Observation.000.ndjson"]
    dangling = 7
    observations[dangling] = orjson.dumps({**orjson.loads(observations[dangling]),
                                           "subject": {"reference": OUTSIDE}})
    for name, lines in files.items():
        (directory / name).write_bytes(b"\n".join(lines) + b"\n")
    return files, {"patient": (bad + 1, orjson.loads(patients[bad])["id"]),
                   "observation": dangling + 1}


def expected_failures(files: dict[str, list[bytes]], roots: set[str]) -> dict[tuple[str, int], str]:
    """(file, line) -> Type/id of every record that cannot load: the roots and, transitively,
    every record that refers to one of them."""
    records = {}
    for name, lines in files.items():
        for number, line in enumerate(lines, start=1):
            resource = orjson.loads(line)
            records[(name, number)] = (f"{resource['resourceType']}/{resource['id']}",
                                       set(_references(resource)))
    failing = set(roots)
    while True:
        more = {key for key, (ident, refs) in records.items()
                if ident not in failing and (refs & failing or OUTSIDE in refs)}
        if not more:
            break
        failing |= {records[k][0] for k in more}
    return {key: ident for key, (ident, refs) in records.items() if ident in failing}


def _references(node):
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node["reference"]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def stored_count(url: str, resource_type: str) -> int:
    store = open_store(url)
    try:
        return store.search(resource_type, [("_summary", "count")]).total
    finally:
        store.close()


def test_a_bulk_export_loads_whatever_the_order_of_its_files(tmp_path, store_url):
    export, quarantine = tmp_path / "export", tmp_path / "quarantine.ndjson"
    files, damage = damaged_export(export)
    bad_line, bad_patient = damage["patient"]
    dangling_obs = files["Observation.000.ndjson"][damage["observation"] - 1]
    failing = expected_failures(files, {f"Patient/{bad_patient}",
                                        "Observation/" + orjson.loads(dangling_obs)["id"]})
    names = sorted(files)  # what `export/*.ndjson` expands to
    assert names[0] == "AllergyIntolerance.000.ndjson"
    total = sum(len(lines) for lines in files.values())

    result = cli("load", "--store", store_url, "--quarantine", str(quarantine),
                 *[str(export / n) for n in names], cwd=tmp_path)

    text = output(result)
    assert result.returncode == 1, text
    assert summary(result) == {"files": len(files), "created": total - len(failing),
                               "updated": 0, "failed": len(failing)}
    # each problem carries its own line and reason
    assert f"Patient.000.ndjson line {bad_line}: " in text
    assert "Patient.birthDate" in text.split(f"Patient.000.ndjson line {bad_line}: ")[1].split("\n")[0]
    obs_line = text.split(f"Observation.000.ndjson line {damage['observation']}: ")[1].split("\n")[0]
    assert f"Resource {OUTSIDE} not found" in obs_line and "Observation.subject" in obs_line
    # the quarantine holds exactly the failed records, each with its own raw line
    rows = [json.loads(line) for line in quarantine.read_text().splitlines()]
    got = {(Path(r["file"]).name, int(r["record"].removeprefix("line "))): r for r in rows}
    assert set(got) == set(failing)
    for (name, number), row in got.items():
        assert row["raw"].encode() == files[name][number - 1]
        ident = failing[(name, number)]
        if ident != f"Patient/{bad_patient}" and (name, number) != (
                "Observation.000.ndjson", damage["observation"]):
            assert "not found" in row["reason"], row  # refers to a record that failed
    # the store holds exactly what was reported as stored
    for name, lines in files.items():
        rtype = name.split(".")[0]
        failed_here = sum(1 for (n, _) in failing if n == name)
        assert stored_count(store_url, rtype) == len(lines) - failed_here, rtype
    # a reload changes nothing and reports the same failures
    again = cli("load", "--store", store_url, *[str(export / n) for n in reversed(names)],
                cwd=tmp_path)
    assert summary(again) == {"files": len(files), "created": 0,
                              "updated": total - len(failing), "failed": len(failing)}


def test_references_to_resources_already_in_the_store_resolve(tmp_path, store_url):
    """An export of Observations whose Patients were loaded by an earlier run."""
    export = tmp_path / "export"
    files = write_export(export, 3)
    first = cli("load", "--store", store_url, *[str(export / n) for n in
                                                ("Organization.000.ndjson",
                                                 "Practitioner.000.ndjson",
                                                 "Patient.000.ndjson")], cwd=tmp_path)
    assert summary(first)["failed"] == 0, output(first)
    second = cli("load", "--store", store_url, str(export / "Encounter.000.ndjson"),
                 cwd=tmp_path)
    assert summary(second) == {"files": 1, "created": len(files["Encounter.000.ndjson"]),
                               "updated": 0, "failed": 0}, output(second)


def test_one_deeply_nested_line_is_quarantined_and_the_others_load(tmp_path, store_url):
    """A line nested beyond the limit crashed the whole load (0 of 3 stored)."""
    deep = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(200):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    lines = [{"resourceType": "Organization", "id": f"deep-{n}", "name": f"Org {n}"}
             for n in range(3)]
    lines[1]["extension"] = [deep]
    path = tmp_path / "Organization.ndjson"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    quarantine = tmp_path / "q.ndjson"
    result = cli("load", "--store", store_url, "--quarantine", str(quarantine), str(path),
                 cwd=tmp_path)
    assert result.returncode == 1, output(result)
    assert "Organization.ndjson line 2: " in output(result)
    assert "deeper than 100" in output(result)
    assert summary(result) == {"files": 1, "created": 2, "updated": 0, "failed": 1}
    assert stored_count(store_url, "Organization") == 2
    assert [json.loads(row)["record"] for row in quarantine.read_text().splitlines()] == ["line 2"]
