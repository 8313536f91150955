"""Batch eligibility files: streamed NDJSON (chunks judged in worker processes and stitched
back in file order), NDJSON in another order, Bundle files and bad lines, through the CLI."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from datetime import date

import pytest
from conftest import ROOT
from test_eligibility_http import AS_OF, condition, coverage, member

from fhir_gateway.healthhome import batch

CODES = ["F20.9", "F32.9", "F10.20", "J45.909", "E11.9", "I10", "F84.0", "M54.5"]


def population(n: int, seed: int = 3) -> list[dict]:
    """`n` members, each Patient followed by its Coverage and 0-4 Conditions."""
    rng, out = random.Random(seed), []
    for i in range(n):
        patient = member("MO")
        patient["id"] = f"b{i}"
        ref = {"reference": f"Patient/b{i}"}
        out += [patient, {**coverage(), "beneficiary": ref}]
        out += [{**condition(code), "subject": ref} for code in rng.sample(CODES, rng.randint(0, 4))]
    return out


def write_ndjson(path, resources) -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in resources))


def cli(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "fhir_gateway.cli", "eligibility", *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stderr
    return result


def expected(resources) -> list[dict]:
    """What evaluating each member on its own gives, member by member in file order."""
    members: dict[str, list] = {}
    for r in resources:
        members.setdefault(batch._owner(r), []).append(r)
    return [row for group in members.values()
            for row in batch.member_rows(group, "MO", date.fromisoformat(AS_OF))]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_streamed_rows_match_member_by_member_whatever_the_chunk_size(tmp_path, monkeypatch, chunk):
    resources = population(60)
    path = tmp_path / "members.ndjson"
    write_ndjson(path, resources)
    monkeypatch.setattr(batch, "CHUNK", chunk)
    rows = list(batch.rows_from_ndjson(path, "MO", date.fromisoformat(AS_OF), workers=2))
    assert rows == expected(resources)
    assert {r["patient"] for r in rows} == {f"b{i}" for i in range(60)}


def test_a_member_seen_twice_is_noticed(tmp_path, monkeypatch):
    resources = population(10)
    path = tmp_path / "members.ndjson"
    write_ndjson(path, resources + [resources[1]])  # b0's Coverage again, at the end
    monkeypatch.setattr(batch, "CHUNK", 4)
    with pytest.raises(batch.MembersInterleaved, match="Patient/b0"):
        list(batch.rows_from_ndjson(path, "MO", date.fromisoformat(AS_OF), workers=2))


def test_cli_ndjson_in_type_order_bundle_and_bad_line(tmp_path):
    resources = population(40)
    grouped, by_type = tmp_path / "grouped.ndjson", tmp_path / "by-type.ndjson"
    write_ndjson(grouped, resources)
    write_ndjson(by_type, sorted(resources, key=lambda r: r["resourceType"]))  # $export style
    bundle = tmp_path / "members.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": r} for r in resources]}))
    want = {(r["patient"], r["program"]): r["eligible"] for r in expected(resources)}
    for source in (grouped, by_type, bundle):
        out = tmp_path / f"{source.stem}.csv"
        result = cli("--input", str(source), "--state", "MO", "--as-of", AS_OF, "--out", str(out))
        said = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
        assert "40 member(s) evaluated" in said
        got = {(r["patient"], r["program"]): r["eligible"] == "True"
               for r in csv.DictReader(out.open())}
        assert got == want, source.name
        assert ("grouped in memory" in said) == (source is by_type)

    broken = tmp_path / "broken.ndjson"
    broken.write_bytes(grouped.read_bytes() + b"{not json\n")
    out = tmp_path / "broken.ndjson.out.ndjson"
    cli("--input", str(broken), "--as-of", AS_OF, "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["patient"] for r in rows if r["patient"]}) == 40  # nothing else lost
    errors = [r["error"] for r in rows if r.get("error")]
    assert len(errors) == 1 and errors[0].startswith(f"line {len(resources) + 1}: not JSON")
