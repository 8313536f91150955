"""`fhir-gateway import`: synthetic extracts into both stores, counted resource by resource,
idempotent on re-import, bad records quarantined, a broken file stopped at its line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from orjson import dumps as orjson_dumps

from fhir_gateway.adapters import byte_ranges
from fhir_gateway.adapters.cimor.parser import parse as parse_cimor
from fhir_gateway.adapters.cyberaccess.parser import parse as parse_cyberaccess
from fhir_gateway.adapters.synth import inject_bad_records, write_extracts
from conftest import ROOT, patient
from fhir_gateway.config import DEFAULT_MAPPINGS
from fhir_gateway.healthhome.transforms import TRANSFORMS
from fhir_gateway.importer import import_extract
from fhir_gateway.mapping import load_mapping
from fhir_gateway.store import open_store
from fhir_gateway.validation.service import errors

MEMBERS = 60
TYPES = ("Patient", "Condition", "EpisodeOfCare", "Organization", "Coverage", "Practitioner",
         "CareTeam")


@pytest.fixture(scope="module")
def extracts(tmp_path_factory):
    return write_extracts(MEMBERS, tmp_path_factory.mktemp("extracts"))


def expected_counts(*files) -> Counter:
    """What the mappings say the extracts hold: one resource per (type, identifier)."""
    seen = set()
    for system, path, parse in files:
        mapping = load_mapping(f"{DEFAULT_MAPPINGS}/{system}.yaml", TRANSFORMS)
        for record in parse(path):
            seen |= {(m.type, m.identifier) for m in mapping.apply(record.data)}
    return Counter(t for t, _ in seen)


def stored_counts(store) -> Counter:
    return Counter({t: store.search(t, [("_summary", "count")]).total for t in TYPES})


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "worker-processes"])
def test_import_both_extracts_counts_every_resource_and_reimport_changes_nothing(store, extracts,
                                                                                 workers,
                                                                                 monkeypatch):
    monkeypatch.setattr(byte_ranges, "RANGE_BYTES", 5_000)  # a few records a range: many ranges
    cimor, cyberaccess = extracts
    first = [import_extract(store, "cimor", cimor, workers=workers),
             import_extract(store, "cyberaccess", cyberaccess, workers=workers)]
    assert [s.records for s in first] == [MEMBERS, MEMBERS]
    assert [s.quarantined for s in first] == [0, 0], first[0].quarantine[:2] + first[1].quarantine[:2]
    expected = expected_counts(("cimor", cimor, parse_cimor),
                               ("cyberaccess", cyberaccess, parse_cyberaccess))
    assert stored_counts(store) == +expected  # one Patient per DCN across both systems
    assert stored_counts(store)["Patient"] == MEMBERS
    versions = store.history(count=1).total
    again = [import_extract(store, "cimor", cimor, workers=workers),
             import_extract(store, "cyberaccess", cyberaccess, workers=workers)]
    assert [(s.created, s.updated) for s in again] == [(0, 0), (0, 0)]
    assert sum(s.unchanged for s in again) > MEMBERS
    assert store.history(count=1).total == versions  # not one new version


def test_imported_resources_meet_their_profiles(store, extracts):
    from fhir_gateway.config import DEFAULT_PROFILES
    from fhir_gateway.healthhome.checks import health_home_validator

    import_extract(store, "cimor", extracts[0])
    validator = health_home_validator(DEFAULT_PROFILES)
    for rtype in ("Patient", "Condition", "EpisodeOfCare", "CareTeam"):
        found = store.search(rtype, [("_count", "1000")]).matches
        assert found
        claimed = [r for r in found if r.get("meta", {}).get("profile")]
        assert len(claimed) == len(found)
        assert [r["id"] for r in claimed if errors(validator.validate(r))] == []


def test_bad_records_are_quarantined_and_the_rest_imported(store, extracts, tmp_path):
    bad_file = tmp_path / "cimor-bad.xml"
    damaged = inject_bad_records(extracts[0], bad_file, every_nth=7)
    summary = import_extract(store, "cimor", bad_file)
    assert sorted(row["record_id"] for row in summary.quarantine) == sorted(damaged)
    assert summary.records == MEMBERS and summary.quarantined == len(damaged)
    row = summary.quarantine[0]
    assert row["line"] > 1 and row["raw"].lstrip().startswith("<") and row["reason"]
    assert store.search("Patient", [("_summary", "count")]).total == MEMBERS - len(damaged)


def test_a_record_the_store_refuses_is_quarantined_and_the_rest_of_its_group_stored(
        store, extracts):
    """Two Patients already share one DCN: the store cannot tell which one a record means
    (412), so the group's transaction fails, and its records go in one by one (mapped
    again from their XML): that record alone is quarantined."""
    dcn = next(parse_cyberaccess(extracts[1])).record_id
    for family in ("Twin", "Twin"):
        store.create(patient(dcn, family))
    summary = import_extract(store, "cyberaccess", extracts[1], workers=0)
    assert [row["record_id"] for row in summary.quarantine] == [dcn]
    reason = summary.quarantine[0]["reason"]  # the gateway's words, or HAPI's
    assert "more than one Patient" in reason or "matched 2 resources" in reason
    assert summary.records == MEMBERS and summary.quarantined == 1
    assert stored_counts(store)["Patient"] == MEMBERS - 1 + 2


def test_a_broken_file_stops_at_its_line_and_keeps_the_records_before(store, extracts, tmp_path):
    text = extracts[1].read_text()
    cut = text.index("<Participant", len(text) // 2)
    broken = tmp_path / "broken.xml"
    broken.write_text(text[:cut] + "<Participant><DCN>1</DC")
    summary = import_extract(store, "cyberaccess", broken)
    assert summary.malformed and "line" in summary.malformed and "column" in summary.malformed
    complete = text[:cut].count("<Participant>") + text[:cut].count("<Participant ")
    assert summary.records == complete
    assert store.search("Patient", [("_summary", "count")]).total == complete


def test_a_file_broken_in_a_middle_range_imports_as_in_one_process(extracts, tmp_path,
                                                                   monkeypatch):
    """Byte ranges after the break are prepared by the workers too, and must not be stored."""
    text = extracts[1].read_text()
    cut = text.index("<Participant", len(text) // 3)
    broken = tmp_path / "broken.xml"
    broken.write_text(text[:cut] + "<Participant><DCN>1</DCN>\n" + text[cut:])
    monkeypatch.setattr(byte_ranges, "RANGE_BYTES", 5_000)
    results = []
    for workers in (0, 2):
        store = open_store(f"sqlite:///{tmp_path / f'{workers}.db'}")
        summary = import_extract(store, "cyberaccess", broken, workers=workers)
        results.append((summary.records, summary.malformed, stored_counts(store)))
        store.close()
    assert results[0] == results[1]
    records, malformed, counts = results[0]
    assert records == text[:cut].count("<Participant") and malformed.startswith("line ")
    assert counts["Patient"] == records


def test_cli_import_prints_the_summary_and_writes_the_quarantine(tmp_path, extracts):
    bad_file = tmp_path / "ca.xml"
    damaged = inject_bad_records(extracts[1], bad_file, every_nth=10)
    result = subprocess.run(
        [sys.executable, "-m", "fhir_gateway.cli", "import", "cyberaccess", str(bad_file),
         "--store", f"sqlite:///{tmp_path / 'cli.db'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0, text
    assert f"{MEMBERS} records" in text and f"{len(damaged)} quarantined" in text
    rows = [json.loads(line) for line in
            (tmp_path / "ca.quarantine.ndjson").read_text().splitlines()]
    assert {r["record_id"] for r in rows} == set(damaged)
    assert all({"file", "line", "record_id", "reason", "raw"} <= set(r) for r in rows)


def test_cli_synth_then_import_twice_changes_nothing_the_second_time(tmp_path):
    def run(*args):
        result = subprocess.run([sys.executable, "-m", "fhir_gateway.cli", *args],
                                capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr
        return " ".join((result.stdout + result.stderr).split())

    run("synth", "--members", "15", "--out", str(tmp_path))
    store = f"sqlite:///{tmp_path / 'synth.db'}"
    first = run("import", "cimor", str(tmp_path / "cimor.xml"), "--store", store)
    second = run("import", "cimor", str(tmp_path / "cimor.xml"), "--store", store)
    assert "15 records" in first and " 0 created" not in first
    assert "0 created, 0 updated" in second and "0 quarantined" in second


def test_the_workers_validator_is_built_once_per_process(tmp_path):
    """Each byte range sent to a worker carries the store's validator by value; rebuilding it
    there must find the one already built (loading the IG package per range cost memory
    and time), whatever checks are registered with it."""
    import pickle

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    assert store.validator.checks  # the Health Home checks travel too
    assert pickle.loads(pickle.dumps(store.validator)) is store.validator
    store.close()


def test_the_guard_trusts_only_its_own_validator(tmp_path):
    """The importer's transactions skip the guard's checks because the guard's own
    validator passed them; any other validator's word does not count."""
    from fhir_gateway.outcome import FhirError
    from fhir_gateway.validation.service import load_validator

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "birthDate": "not a date"},
         "request": {"method": "POST", "url": "Patient"}}]}
    for other in (None, load_validator()):
        with pytest.raises(FhirError) as refused:
            store.transaction(bundle, checked_by=other)
        assert refused.value.status == 400 and "birthDate" in refused.value.issues[0].diagnostics
    store.close()


def _with_entity(source, target, entity: str, declaration: str):
    """The extract with a DOCTYPE declaring `entity`, used in the second record's text."""
    head, _, body = source.read_text().partition("?>")
    root = body.split("-->")[-1].split("<", 1)[1].split()[0]
    first = body.find("<Last>")
    second = body.find("<Last>", first + 1) + len("<Last>")
    body = body[:second] + f"&{entity};" + body[second:]
    target.write_text(f"{head}?>\n<!DOCTYPE {root} [{declaration}]>{body}")
    return target


@pytest.mark.parametrize("system", ["cimor", "cyberaccess"])
@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "worker-processes"])
@pytest.mark.parametrize("entity, declaration", [
    ("x", '<!ENTITY x "inside">'),
    ("ext", '<!ENTITY ext SYSTEM "file:///etc/passwd">')], ids=["internal", "external"])
def test_an_entity_reference_quarantines_its_record_and_the_others_import(
        tmp_path, extracts, system, workers, entity, declaration):
    """Was a traceback (XMLSchemaValidateError; with workers an unpicklable error log):
    the record before the bad one lost, CyberAccess stored 0 of 10."""
    source = extracts[0] if system == "cimor" else extracts[1]
    damaged = _with_entity(source, tmp_path / f"{system}-entity.xml", entity, declaration)
    store = open_store(f"sqlite:///{tmp_path / 'entity.db'}")
    try:
        summary = import_extract(store, system, damaged, workers=workers)
        assert summary.malformed is None
        assert summary.records == MEMBERS and summary.quarantined == 1
        row = summary.quarantine[0]
        assert row["reason"] == (f"Name/Last: entity reference &{entity}; is not allowed in an "
                                 "extract (entities are never expanded)")
        assert f"&{entity};" in row["raw"]
        assert damaged.read_text().splitlines()[row["line"] - 1].lstrip().startswith("<")
        assert store.search("Patient", [("_summary", "count")]).total == MEMBERS - 1
        body = orjson_dumps(store.search("Patient", [("_count", "500")]).matches)
        assert b"root:" not in body and b"inside" not in body  # nothing expanded, nothing leaked
    finally:
        store.close()
