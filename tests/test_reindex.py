"""`fhir-gateway reindex` and the embedded store's schema version, run as a user runs them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import patient
from test_cli import cli, output, patients, store_url, total, write_ndjson
from fhir_gateway.store.sqlite import SCHEMA_VERSION, SQLiteStore

DCN = "http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn"
MEMBERS = 30


def filled(db: Path) -> list[str]:
    """A store of members, each with a Condition; the members' ids."""
    store = SQLiteStore(db)
    try:
        ids = [store.create(patient(f"{n:08d}", family=f"Reindex{n}")).resource["id"]
               for n in range(MEMBERS)]
        for pid in ids:
            store.create({"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                          "onsetDateTime": "2024-05-01",
                          "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                               "code": "F20.9"}]}})
        return ids
    finally:
        store.close()


def searches(db: Path, pid: str) -> list[int]:
    return [total(db, "Patient", ("identifier", f"{DCN}|00000007")),
            total(db, "Patient", ("family", "Reindex1")),  # Reindex1 and Reindex10-19
            total(db, "Condition", ("subject", f"Patient/{pid}")),
            total(db, "Condition", ("onset-date", "ge2024-01-01")),
            total(db, "Patient", ("birthdate", "1980-04-02"))]


def test_reindex_rebuilds_an_emptied_index_and_searches_find_again(tmp_path):
    db = tmp_path / "store.db"
    pid = filled(db)[3]
    expected = [1, 11, 1, MEMBERS, MEMBERS]
    assert searches(db, pid) == expected
    with sqlite3.connect(db) as conn:  # the index goes stale: every row of it lost
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                     "AND name LIKE 'idx_%'").fetchall():
            conn.execute(f"DELETE FROM {table}")
    assert searches(db, pid) == [0] * len(expected)

    result = cli("reindex", "--store", store_url(db), cwd=tmp_path)

    assert result.returncode == 0, output(result)
    assert f"Reindexed {2 * MEMBERS} resources" in output(result)
    assert searches(db, pid) == expected


def test_an_older_store_is_refused_with_the_command_that_upgrades_it(tmp_path):
    db = tmp_path / "old.db"
    filled(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("PRAGMA user_version = 0")  # as a file made before versioning reads
    source = write_ndjson(tmp_path / "more.ndjson", patients(3))

    refused = cli("load", "--store", store_url(db), source.name, cwd=tmp_path)

    assert refused.returncode == 2, output(refused)
    assert f"The store {db} has schema version 0" in output(refused)
    assert f"fhir-gateway reindex --store sqlite://{db}" in output(refused)
    assert cli("reindex", "--store", store_url(db), cwd=tmp_path).returncode == 0
    loaded = cli("load", "--store", store_url(db), source.name, cwd=tmp_path)
    assert loaded.returncode == 0, output(loaded)
    assert total(db, "Patient") == MEMBERS + 3


def test_a_store_of_a_newer_gateway_is_refused_even_by_reindex(tmp_path):
    db = tmp_path / "new.db"
    filled(db)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for command in (["reindex"], ["serve", "--no-demo"]):
        result = cli(*command, "--store", store_url(db), cwd=tmp_path)
        assert result.returncode == 2, output(result)
        assert "written by a newer fhir-gateway" in output(result)


def test_reindex_of_a_hapi_store_says_hapi_keeps_its_own(tmp_path):
    result = cli("reindex", "--store", "http://127.0.0.1:9/fhir", cwd=tmp_path)
    assert result.returncode == 2, output(result)
    assert "HAPI keeps its own ($reindex)" in output(result)
