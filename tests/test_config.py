"""Configuration is read once, where a command or the app starts, and reaches the behaviour:
the Health Home rule folder, the IG package's category ConceptMap, the README's table."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from fastapi.testclient import TestClient

from conftest import ROOT
from fhir_gateway.api.app import create_app
from fhir_gateway.config import DEFAULT_PROFILES, Settings
from fhir_gateway.healthhome.eligibility import RULES_DIR
from test_eligibility_http import AS_OF, condition, coverage, member


def hypertension_member() -> list[dict]:
    """A Missouri member with hypertension alone: not eligible for mo-cmhc as shipped."""
    return [member("MO"), condition("I10"), coverage()]


def cardiovascular_counts(tmp_path) -> str:
    """A copy of the rules where the CMHC SMI rule takes cardiovascular disease instead."""
    folder = tmp_path / "rules"
    shutil.copytree(RULES_DIR, folder)
    mo = yaml.safe_load((folder / "mo.yaml").read_text())
    program = next(p for p in mo["programs"] if p["code"] == "mo-cmhc")
    program["rules"][0]["when"] = "cardiovascular"
    (folder / "mo.yaml").write_text(yaml.safe_dump(mo))
    return str(folder)


def cmhc(client: TestClient) -> bool:
    r = client.get(f"/fhir/Patient/m1/$hh-eligibility?asOf={AS_OF}")
    assert r.status_code == 200, r.text
    programs = [{q["name"]: q for q in p["part"]} for p in r.json()["parameter"]
                if p["name"] == "program"]
    return next(p["eligible"]["valueBoolean"] for p in programs
                if p["code"]["valueCode"] == "mo-cmhc")


def store_member(store) -> None:
    for resource in hypertension_member():
        if resource["resourceType"] == "Patient":
            store.update("Patient", "m1", resource)
        else:
            store.create(resource)


def test_the_rules_folder_setting_changes_an_eligibility_answer_over_http(
        store, tmp_path, monkeypatch):
    store_member(store)
    assert cmhc(TestClient(create_app(store))) is False
    edited = cardiovascular_counts(tmp_path)
    assert cmhc(TestClient(create_app(store, Settings(hh_rules=edited)))) is True
    monkeypatch.setenv("FHIR_GATEWAY_HH_RULES", edited)
    assert cmhc(TestClient(create_app(store))) is True  # the app factory reads the environment


def test_the_profiles_setting_is_the_concept_map_eligibility_reads(store, tmp_path):
    """`profiles` names the IG package for validation and for ICD-10-CM -> category alike
    (the ConceptMap used to be read from the environment's package, whatever the app was
    given)."""
    package = tmp_path / "package"
    shutil.copytree(DEFAULT_PROFILES, package)
    concept_map = json.loads((package / "ConceptMap-icd10cm-to-hh-category.json").read_text())
    element = next(e for e in concept_map["group"][0]["element"] if e["code"] == "I10")
    element["target"] = [{"code": "smi", "display": "SMI", "equivalence": "wider"}]
    (package / "ConceptMap-icd10cm-to-hh-category.json").write_text(json.dumps(concept_map))
    store_member(store)
    assert cmhc(TestClient(create_app(store))) is False
    assert cmhc(TestClient(create_app(store, Settings(profiles=str(package))))) is True


@pytest.mark.parametrize("source", ["ndjson", "store"])
def test_the_rules_folder_setting_reaches_the_eligibility_command(tmp_path, source):
    lines = tmp_path / "members.ndjson"
    lines.write_text("".join(json.dumps(r) + "\n" for r in hypertension_member()))
    store = f"sqlite:///{tmp_path / 'members.db'}"
    subprocess.run([sys.executable, "-m", "fhir_gateway.cli", "load", str(lines), "--store",
                    store], capture_output=True, cwd=ROOT, timeout=120, check=True)
    given = ["--input", str(lines)] if source == "ndjson" else ["--store", store]

    def eligible(env: dict) -> str:
        report = tmp_path / "report.csv"
        done = subprocess.run([sys.executable, "-m", "fhir_gateway.cli", "eligibility", *given,
                               "--as-of", AS_OF, "--out", str(report)], capture_output=True,
                              text=True, cwd=ROOT, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        return next(r["eligible"] for r in csv.DictReader(report.open())
                    if r["program"] == "mo-cmhc")

    plain = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")}
    assert eligible(plain) == "False"
    assert eligible({**plain, "FHIR_GATEWAY_HH_RULES": cardiovascular_counts(tmp_path)}) == "True"


@pytest.mark.parametrize("name, value, says", [
    ("LOOKUP_TIMEOUT", "soon", "number"),
    ("HH_RULES", "/no/such/rules", "'/no/such/rules' is not a folder"),
    ("HH_ENROLLMENT", "/no/such/enrollment.yaml", "is not a file"),
    ("PROFILES", "/no/such/package", "is not a folder"),
])
def test_a_bad_setting_is_one_clear_error_before_any_command(name, value, says):
    """At start, not at first use (a rules folder that is not there was a 500 on the first
    $hh-eligibility)."""
    done = subprocess.run([sys.executable, "-m", "fhir_gateway.cli", "validate",
                           str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, env={**os.environ, f"FHIR_GATEWAY_{name}": value})
    assert done.returncode == 2, done.stderr
    assert f"FHIR_GATEWAY_{name}" in done.stderr and says in done.stderr
    assert "Traceback" not in done.stderr


def test_the_readme_configuration_table_lists_every_setting_with_its_default():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {name: line for line in table.splitlines() if line.startswith("|")
            for name in re.findall(r"FHIR_GATEWAY_([A-Z0-9_]+)", line)}
    assert sorted(rows) == sorted(name.upper() for name in Settings.model_fields)
    for name, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4 and cells[2], f"FHIR_GATEWAY_{name}: no default in {line}"
