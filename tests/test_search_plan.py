"""The embedded store's search SQL reads indexes in an order whose cost does not grow with
the square of the store: each probe reads the candidate row's own index rows, a chain reads
the set of target ids once. (Before, `Patient?name=x` repeated 40 times and
`Observation?subject:Patient.name:contains=` each took minutes on 15k Patients: the probes
walked the value index per candidate, the chain every target per reference.)"""

from __future__ import annotations

from fhir_gateway.search.query import parse_query
from fhir_gateway.store.sqlite import SQLiteStore
from fhir_gateway.store.sqlsearch import _where


def _plan(store: SQLiteStore, resource_type: str, params: list[tuple[str, str]]) -> list[str]:
    where, args = _where(store, parse_query(resource_type, params), "r")
    rows = store.connection().execute(
        f"EXPLAIN QUERY PLAN SELECT COUNT(*) FROM resource r WHERE {where}", args)
    return [row[3] for row in rows]


def _store(tmp_path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "plan.db")
    store.commit([(0, {"resource": {"resourceType": "Patient", "id": "p", "gender": "male",
                                    "name": [{"family": "Ring"}]},
                       "request": {"method": "PUT", "url": "Patient/p"}}),
                  (1, {"resource": {"resourceType": "Observation", "id": "o", "status": "final",
                                    "code": {"text": "x"}, "subject": {"reference": "Patient/p"}},
                       "request": {"method": "PUT", "url": "Observation/o"}})])
    return store


def test_probes_read_the_candidate_rows_own_index_rows(tmp_path):
    store = _store(tmp_path)
    plan = _plan(store, "Patient", [("name", "Ring1"), ("name", "Ring2"), ("gender:not", "x")])
    probes = [step for step in plan if step.startswith("SEARCH idx_") and "(rid=?" in step]
    assert len(probes) == 2, plan  # the second name and the :not, each by (rid, pid)
    assert sum("idx_string_norm" in step for step in plan) == 1, plan  # only the driver


def test_criteria_repeated_word_for_word_are_one_condition(tmp_path):
    store = _store(tmp_path)
    assert _plan(store, "Patient", [("name", "Ring")] * 30) == _plan(
        store, "Patient", [("name", "Ring")])
    assert store.search("Patient", [("name", "Ring")] * 30).total == 1


def test_a_chain_reads_its_target_ids_once_then_the_references_to_them(tmp_path):
    store = _store(tmp_path)
    plan = _plan(store, "Observation", [("subject:Patient.name:contains", "in")])
    assert any("idx_ref_target (pid=? AND tid=? AND ttype=?)" in step for step in plan), plan
    assert not any("rowid=?)" in step and "autoindex_resource" in step for step in plan), plan
    assert store.search("Observation", [("subject:Patient.name:contains", "in")]).total == 1
