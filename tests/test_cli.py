"""The `fhir-gateway` command line, run as a user runs it: a subprocess per command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, patient
from fhir_gateway.store.sqlite import SQLiteStore

GOOD = 250
SUMMARY = re.compile(r"(\d+) file\(s\), (\d+) records: (\d+) created, (\d+) updated/unchanged, "
                     r"(\d+) failed")


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "fhir_gateway.cli", *args], cwd=cwd,
                          env={**environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=60)


def output(result: subprocess.CompletedProcess) -> str:
    """stdout + stderr with whitespace collapsed: rich wraps long lines at 80 columns."""
    return " ".join((result.stdout + result.stderr).split())


def summary(result: subprocess.CompletedProcess) -> dict[str, int]:
    found = SUMMARY.findall(output(result))
    assert len(found) == 1, output(result)
    counts = dict(zip(("files", "records", "created", "updated", "failed"), map(int, found[0])))
    # the summary is true: every record read was stored or reported
    assert counts["records"] == counts["created"] + counts["updated"] + counts["failed"]
    return {k: v for k, v in counts.items() if k != "records"}


def store_url(path: Path) -> str:
    return f"sqlite:///{path}"


def write_ndjson(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def patients(n: int, ids: bool = False) -> list[str]:
    return [json.dumps(patient(f"{i:08d}", **({"id": f"p{i}"} if ids else {})))
            for i in range(1, n + 1)]


def total(db: Path, resource_type: str, *params: tuple[str, str]) -> int:
    store = SQLiteStore(db)
    try:
        return store.search(resource_type, [*params, ("_summary", "count")]).total
    finally:
        store.close()


def read(db: Path, resource_type: str, resource_id: str) -> dict:
    store = SQLiteStore(db)
    try:
        return store.read(resource_type, resource_id)
    finally:
        store.close()


# -- load: bad lines are reported, the rest is stored ---------------------------------------

BAD_JSON_LINE = 101
BAD_DATE_LINE = 202


@pytest.fixture
def mixed_ndjson(tmp_path) -> Path:
    """250 valid Patients with a malformed line and an invalid birthDate among them."""
    lines = patients(GOOD)
    lines.insert(BAD_JSON_LINE - 1, '{"resourceType": "Patient", "gender": ')
    lines.insert(BAD_DATE_LINE - 1, json.dumps(patient("bad-date", birthDate="1980-13-45")))
    return write_ndjson(tmp_path / "members.ndjson", lines)


def test_load_reports_bad_lines_and_stores_the_rest(tmp_path, mixed_ndjson):
    db = tmp_path / "x.db"
    result = cli("load", "--store", store_url(db), mixed_ndjson.name, cwd=tmp_path)

    assert result.returncode == 1, output(result)
    text = output(result)
    assert f"members.ndjson line {BAD_JSON_LINE}: malformed JSON" in text
    assert f"members.ndjson line {BAD_DATE_LINE}: Patient.birthDate" in text
    assert summary(result) == {"files": 1, "created": GOOD, "updated": 0, "failed": 2}
    assert total(db, "Patient") == GOOD
    assert total(db, "Patient", ("identifier", "bad-date")) == 0


def test_load_quarantines_bad_lines(tmp_path, mixed_ndjson):
    db, quarantine = tmp_path / "x.db", tmp_path / "q.ndjson"
    result = cli("load", "--store", store_url(db), "--quarantine", str(quarantine),
                 str(mixed_ndjson), cwd=tmp_path)

    assert result.returncode == 1, output(result)
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [r["record"] for r in records] == [f"line {BAD_JSON_LINE}", f"line {BAD_DATE_LINE}"]
    assert all(r["file"] == str(mixed_ndjson) for r in records)
    assert all(set(r) == {"file", "record", "reason", "raw"} for r in records)
    malformed, bad_date = records
    assert malformed["reason"].startswith("malformed JSON")
    assert malformed["raw"] == '{"resourceType": "Patient", "gender": '
    assert "Patient.birthDate" in bad_date["reason"]
    assert json.loads(bad_date["raw"])["birthDate"] == "1980-13-45"
    assert total(db, "Patient") == GOOD  # nothing accepted was lost


def test_each_problem_is_reported_on_one_line(tmp_path, mixed_ndjson):
    """`load ... 2> errors.log` must stay greppable: one problem, one line, full path."""
    result = cli("load", "--store", store_url(tmp_path / "x.db"), str(mixed_ndjson),
                 cwd=tmp_path)
    lines = result.stderr.splitlines()
    for number, reason in ((BAD_JSON_LINE, "malformed JSON"), (BAD_DATE_LINE, "Patient.birthDate")):
        prefix = f"{mixed_ndjson} line {number}: "
        assert any(line.startswith(prefix) and reason in line for line in lines), result.stderr


def test_record_content_is_not_read_as_console_markup(tmp_path):
    lines = [*patients(2), json.dumps({"resourceType": "[/red]"})]
    source = write_ndjson(tmp_path / "markup.ndjson", lines)
    quarantine = tmp_path / "q.ndjson"
    result = cli("load", "--store", store_url(tmp_path / "x.db"), "--quarantine",
                 str(quarantine), source.name, cwd=tmp_path)

    assert "Traceback" not in output(result), output(result)
    assert result.returncode == 1
    assert "markup.ndjson line 3: Unknown resourceType '[/red]'" in output(result)
    assert summary(result) == {"files": 1, "created": 2, "updated": 0, "failed": 1}
    assert len(quarantine.read_text().splitlines()) == 1


def test_file_name_with_brackets_is_reported_verbatim(tmp_path):
    source = write_ndjson(tmp_path / "export[v2].ndjson",
                          [json.dumps(patient("00000001", birthDate="1980-13-45"))])
    result = cli("load", "--store", store_url(tmp_path / "x.db"), source.name, cwd=tmp_path)
    assert result.returncode == 1, output(result)
    assert "export[v2].ndjson line 1: Patient.birthDate" in output(result)


# -- load: Bundles, single resources, reloads -------------------------------------------------

def test_load_transaction_bundle_and_single_resource(tmp_path):
    p_url = f"urn:uuid:{uuid.uuid4()}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": p_url, "resource": patient("00000001"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Condition", "subject": {"reference": p_url},
                      "code": {"text": "asthma"}},
         "request": {"method": "POST", "url": "Condition"}},
    ]}
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    (tmp_path / "single.json").write_text(json.dumps(patient("00000002")))
    db = tmp_path / "x.db"

    result = cli("load", "--store", store_url(db), "bundle.json", "single.json", cwd=tmp_path)

    assert result.returncode == 0, output(result)
    assert summary(result) == {"files": 2, "created": 3, "updated": 0, "failed": 0}
    assert total(db, "Patient") == 2
    assert total(db, "Condition", ("subject:Patient.identifier", "00000001")) == 1


def test_reloading_ndjson_with_ids_updates_nothing(tmp_path):
    source = write_ndjson(tmp_path / "with-ids.ndjson", patients(120, ids=True))
    db = tmp_path / "x.db"

    first = cli("load", "--store", store_url(db), source.name, cwd=tmp_path)
    assert first.returncode == 0, output(first)
    assert summary(first) == {"files": 1, "created": 120, "updated": 0, "failed": 0}

    second = cli("load", "--store", store_url(db), source.name, cwd=tmp_path)
    assert second.returncode == 0, output(second)
    assert summary(second) == {"files": 1, "created": 0, "updated": 120, "failed": 0}

    assert total(db, "Patient") == 120
    assert read(db, "Patient", "p1")["meta"]["versionId"] == "1"  # a no-op update
    assert read(db, "Patient", "p120")["meta"]["versionId"] == "1"


def test_store_from_environment_variable(tmp_path):
    source = write_ndjson(tmp_path / "few.ndjson", patients(3))
    db = tmp_path / "from-env.db"

    result = cli("load", source.name, cwd=tmp_path, env={"FHIR_GATEWAY_STORE": store_url(db)})

    assert result.returncode == 0, output(result)
    assert summary(result)["created"] == 3
    assert total(db, "Patient") == 3


# -- store URLs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    ("ftp://x", "Unknown store URL 'ftp://x'"),
    ("http://127.0.0.1:9/fhir", "is unreachable"),
    ("sqlite:///", "names no file"),
])
def test_bad_store_url_exits_2(tmp_path, url, message):
    source = write_ndjson(tmp_path / "one.ndjson", patients(1))
    result = cli("load", "--store", url, source.name, cwd=tmp_path)
    assert result.returncode == 2, output(result)
    assert message in output(result)
    assert "Traceback" not in output(result)


def test_bad_store_url_from_environment_exits_2(tmp_path):
    source = write_ndjson(tmp_path / "one.ndjson", patients(1))
    result = cli("load", source.name, cwd=tmp_path, env={"FHIR_GATEWAY_STORE": "ftp://x"})
    assert result.returncode == 2, output(result)
    assert "Unknown store URL 'ftp://x'" in output(result)


# -- help ------------------------------------------------------------------------------------------

def test_installed_script_help_lists_commands(tmp_path):
    script = Path(sys.executable).with_name("fhir-gateway")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    commands = re.findall(r"^│ (\w+)\s", result.stdout, re.MULTILINE)
    assert {"serve", "load"} <= set(commands), result.stdout


# -- validate --------------------------------------------------------------------------------

EXAMPLES = ROOT / "profiles" / "examples"


def test_validate_passes_valid_examples(tmp_path):
    files = sorted(str(p) for p in (EXAMPLES / "valid").glob("*.json"))
    result = cli("validate", *files, cwd=tmp_path)
    assert result.returncode == 0, output(result)
    assert f"{len(files)} file(s), 0 with errors" in output(result)


def test_validate_reports_the_file_path_and_rule_and_exits_1(tmp_path):
    bad = EXAMPLES / "invalid" / "hh-patient-no-birthdate.json"
    good = EXAMPLES / "valid" / "hh-patient-mo.json"
    malformed = tmp_path / "broken.json"
    malformed.write_text('{"resourceType": "Patient",')
    result = cli("validate", str(good), str(bad), str(malformed), cwd=tmp_path)
    text = output(result)
    assert result.returncode == 1
    assert "hh-patient-no-birthdate.json" in text and "Patient.birthDate" in text
    assert "broken.json: malformed JSON" in text
    assert "3 file(s), 2 with errors" in text
