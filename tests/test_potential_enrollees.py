"""Monthly lists of potential Health Home enrollees (issue 16 item 3): members who meet a
program's rules on their claims, are not enrolled, listed under the provider they are
attributed to. The same small population as a CSV extract, Parquet and FHIR NDJSON, with
each member's expected line worked out by hand below; DuckDB and Spark give identical
lists; the command (files, counts, bad input) and `POST /fhir/$potential-enrollees` on both
stores."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from fhir_gateway.healthhome import potential_enrollees as pe
from fhir_gateway.healthhome.monthly_claims import month
from fhir_gateway.identifiers import HH_PROGRAM, ICD10CM, KANCARE_ID, MO_HEALTHNET_DCN

ROOT = Path(__file__).resolve().parents[1]
JUNE = month("2026-06")  # look-back: 2025-06-01 .. 2026-05-31; facts as of 2026-06-01
SOPT = "urn:oid:2.16.840.1.113883.3.221.5"

#: member -> (DCN, birth date, state, coverage type, coverage start, end, enrolled program)
MEMBERS = {
    "m1": ("D1", "1980-01-01", "MO", "2", "2020-01-01", "", ""),
    "m2": ("D2", "1970-05-05", "MO", "21", "2020-01-01", "", ""),
    "m3": ("D3", "1990-02-02", "MO", "2", "", "", ""),
    "m4": ("D4", "1985-03-03", "MO", "2", "", "", "mo-cmhc"),
    "m5": ("D5", "1975-04-04", "MO", "2", "", "", ""),
    "m6": ("D6", "2015-06-06", "MO", "2", "", "", ""),
    "m7": ("D7", "2012-07-07", "MO", "23", "", "", ""),
    "m8": ("D8", "1960-08-08", "MO", "2", "", "", ""),
    "m9": ("", "1982-09-09", "KS", "2", "", "", ""),
    "m10": ("D10", "1999-10-10", "MO", "2", "2020-01-01", "2026-05-31", ""),
    "m11": ("D11", "1965-11-11", "MO", "2", "", "", ""),
}
#: claim lines: member, service date, provider, provider type, diagnoses (principal first)
CLAIMS = [
    ("m1", "2026-01-10", "P1", "CMHC", "F209"),          # no dot, as claims often carry it
    ("m1", "2026-02-10", "P1", "CMHC", "F209;I10"),
    ("m2", "2025-09-01", "P1", "FQHC", "E11.9;I10"),
    ("m2", "2025-10-01", "P1", "FQHC", "E11.9"),
    ("m2", "2025-11-01", "P2", "FQHC", "E11.9"),
    ("m2", "2026-03-01", "P2", "FQHC", "Z00.00"),
    ("m3", "2026-04-01", "P1", "CMHC", "F10.20;F32.9"),
    ("m4", "2026-04-01", "P1", "CMHC", "F20.9"),
    ("m5", "2026-04-01", "P2", "FQHC", "J45.909"),
    ("m6", "2026-04-01", "P3", "FQHC", "J45.909"),
    ("m7", "2026-04-01", "P2", "FQHC", "E11.9"),
    ("m8", "2025-05-15", "P1", "CMHC", "F20.9"),
    ("m9", "2026-05-31", "P1", "CMHC", "F20.9"),
    ("m10", "2026-04-01", "P1", "CMHC", "F20.9"),
    ("m11", "2026-04-01", "P5", "FQHC", "E11.9"),
    ("m11", "2026-04-01", "P4", "FQHC", "E11.9"),
    ("m9", "2026-06-02", "P2", "FQHC", "F20.9"),         # in the month itself: not read
]
#: provider -> [(member, program, rule, qualifying diagnoses)], worked out by hand:
EXPECTED = {
    "P1": [
        ("m1", "mo-cmhc", "cmhc-smi", "F209"),          # SMI as the principal diagnosis
        ("m3", "mo-cmhc", "cmhc-mh-and-sud", "F10.20 F32.9"),  # principal is the SUD
        ("m9", "ks-cc", "ks-cc-smi", "F20.9"),          # KanCare: both programs (choose one)
        ("m9", "ks-smi", "ks-smi-primary", "F20.9"),
    ],
    # m2: two visits each at P1 and P2, P2's the most recent; only E11.9 made the rule
    "P2": [("m2", "mo-pchh", "pchh-single-condition", "E11.9")],
    "P3": [("m6", "mo-pchh", "pchh-single-condition", "J45.909")],  # pediatric asthma
    # m11: one visit each at P4 and P5 on the same day: the lower id
    "P4": [("m11", "mo-pchh", "pchh-single-condition", "E11.9")],
}
# Not listed: m4 enrolled already; m5 adult asthma alone qualifies for nothing; m7 CHIP
# only; m8 claims before the look-back; m10 coverage ended the day before the month.


def lines(lists: pe.Lists) -> dict[str, list[tuple]]:
    return {provider: [(e.member_id, e.program, e.rule, " ".join(e.diagnoses)) for e in rows]
            for provider, rows in lists.providers.items()}


def write_csv(folder: Path) -> tuple[Path, Path]:
    claims, members = folder / "claims.csv", folder / "members.csv"
    with claims.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["member_id", "service_date", "provider_id", "provider_type",
                      "diagnosis_codes", "procedure_code"])
        out.writerows([*c, "99213"] for c in CLAIMS)
    with members.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(pe.MEMBER_COLUMNS)
        out.writerows([m, *row] for m, row in MEMBERS.items())
    return claims, members


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory) -> tuple[Path, Path]:
    return write_csv(tmp_path_factory.mktemp("csv"))


@pytest.fixture(scope="module")
def parquet_files(csv_files, tmp_path_factory) -> tuple[Path, Path]:
    """The same extracts as Parquet with typed columns (dates as DATE), written by DuckDB."""
    folder = tmp_path_factory.mktemp("parquet")
    claims, members = folder / "claims.parquet", folder / "members.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * REPLACE (CAST(service_date AS DATE) AS service_date) "
                f"FROM read_csv('{csv_files[0]}', all_varchar = true)) TO '{claims}' (FORMAT parquet)")
    con.execute(f"COPY (SELECT * REPLACE (CAST(birth_date AS DATE) AS birth_date) "
                f"FROM read_csv('{csv_files[1]}', all_varchar = true)) TO '{members}' (FORMAT parquet)")
    return claims, members


# ------------------------------------------------------------------ FHIR

def fhir_members() -> list[dict]:
    out = []
    for member, (dcn, birth, state, cov, start, end, enrolled) in MEMBERS.items():
        system, value = (MO_HEALTHNET_DCN, dcn) if state == "MO" else (KANCARE_ID, f"K{member}")
        out.append({"resourceType": "Patient", "id": member, "birthDate": birth,
                    "identifier": [{"system": system, "value": value}]})
        period = {k: v for k, v in (("start", start), ("end", end)) if v}
        out.append({"resourceType": "Coverage", "id": f"cov-{member}", "status": "active",
                    "type": {"coding": [{"system": SOPT, "code": cov}]},
                    "beneficiary": {"reference": f"Patient/{member}"},
                    "payor": [{"reference": "Organization/payer"}],
                    **({"period": period} if period else {})})
        if enrolled:
            out.append({"resourceType": "EpisodeOfCare", "id": f"enr-{member}",
                        "status": "active", "patient": {"reference": f"Patient/{member}"},
                        "type": [{"coding": [{"system": HH_PROGRAM, "code": enrolled}]}],
                        "managingOrganization": {"reference": "Organization/P1"},
                        "period": {"start": "2026-01-01"}})
    return out


def fhir_claims() -> list[dict]:
    out = []
    for n, (member, day, provider, _, codes) in enumerate(CLAIMS):
        out.append({
            "resourceType": "Claim" if n % 2 else "ExplanationOfBenefit", "id": f"c{n}",
            "status": "active", "use": "claim",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                                 "code": "professional"}]},
            "patient": {"reference": f"Patient/{member}"}, "created": day,
            "provider": {"reference": f"Organization/{provider}"},
            "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority",
                                     "code": "normal"}]},
            "insurance": [{"sequence": 1, "focal": True,
                           "coverage": {"reference": f"Coverage/cov-{member}"}}],
            # listed out of order on purpose: sequence 1 is the principal diagnosis
            "diagnosis": sorted(({"sequence": i, "diagnosisCodeableConcept": {"coding": [
                {"system": ICD10CM, "code": code}]}} for i, code in enumerate(codes.split(";"), 1)),
                key=lambda d: -d["sequence"]),
            "item": [{"sequence": 1, "servicedDate": day, "productOrService": {"coding": [
                {"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]}}],
        })
        if out[-1]["resourceType"] == "ExplanationOfBenefit":
            out[-1].update({"outcome": "complete", "insurer": {"reference": "Organization/payer"},
                            "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/cov-{member}"}}]})
            out[-1]["diagnosis"] = sorted(out[-1]["diagnosis"], key=lambda d: d["sequence"])
    return out


def fhir_expected() -> dict[str, list[tuple]]:
    return {f"Organization/{p}": rows for p, rows in EXPECTED.items()}


def write_ndjson(path: Path, resources: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


# ------------------------------------------------------------------ the lists, DuckDB

def test_csv_extracts_give_the_hand_checked_lists(csv_files):
    lists = pe.compute(*csv_files, JUNE)
    assert lines(lists) == EXPECTED
    assert lists.counts == {"claim_lines": len(CLAIMS), "members": len(MEMBERS),
                            "attributed": 10, "enrolled": 1, "potential_enrollees": 6}


def test_parquet_extracts_give_the_same_lists(parquet_files):
    assert lines(pe.compute(*parquet_files, JUNE)) == EXPECTED


def test_fhir_ndjson_gives_the_same_lists(tmp_path):
    claims = write_ndjson(tmp_path / "claims.ndjson", [*fhir_claims(),
                                                       {"resourceType": "Organization", "id": "P1"}])
    members = write_ndjson(tmp_path / "members.ndjson", fhir_members())
    lists = pe.compute(claims, members, JUNE)
    assert lines(lists) == fhir_expected()
    group = pe.group("Organization/P2", lists.providers["Organization/P2"], lists)
    assert group["member"] == [{"entity": {"reference": "Patient/m2"}}]
    assert group["managingEntity"] == {"reference": "Organization/P2"}


def test_one_provider_and_the_month_and_policy_choose_what_is_listed(csv_files, tmp_path):
    assert lines(pe.compute(*csv_files, JUNE, provider="P2")) == {"P2": EXPECTED["P2"]}
    # only CMHC claims count for the attribution: the FQHCs' patients are nobody's
    cmhc = pe.compute(*csv_files, JUNE, policy=pe.Policy(12, ("CMHC",)))
    assert set(lines(cmhc)) == {"P1"}
    # a month later the look-back starts 2025-07-01: m2's P1 visits of 2025-09/10 still count
    # and m9's June visit at P2 (the only one in the window besides May 31) is read
    july = lines(pe.compute(*csv_files, month("2026-07")))
    assert ("m9", "ks-smi", "ks-smi-primary", "F20.9") in july["P2"]


def test_the_group_lists_each_member_once_with_the_month(csv_files):
    lists = pe.compute(*csv_files, JUNE)
    group = pe.group("P1", lists.providers["P1"], lists)
    assert group["quantity"] == 3 and len(group["member"]) == 3
    assert group["member"][0] == {"entity": {"identifier": {"system": MO_HEALTHNET_DCN,
                                                            "value": "D1"}}}
    assert group["member"][2]["entity"]["identifier"]["value"] == "m9"  # no DCN: the member id
    assert group["characteristic"][0]["valuePeriod"] == {"start": "2026-06-01",
                                                         "end": "2026-06-30"}


# ------------------------------------------------------------------ the same SQL on Spark

@pytest.fixture(scope="module")
def spark():
    """One local Spark session for the module (a JVM start costs seconds)."""
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("tests")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_and_duckdb_give_identical_lists(spark, csv_files, parquet_files):
    for files in (csv_files, parquet_files):
        on_spark = pe.compute(*files, JUNE, engine="spark", spark_session=spark)
        on_duckdb = pe.compute(*files, JUNE)
        assert lines(on_spark) == EXPECTED
        assert {p: pe.csv_text(r) for p, r in on_spark.providers.items()} == \
            {p: pe.csv_text(r) for p, r in on_duckdb.providers.items()}
        assert on_spark.counts == on_duckdb.counts


# ------------------------------------------------------------------ the command

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fhir_gateway.cli", "potential-enrollees",
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_the_command_writes_a_csv_and_a_group_per_provider(csv_files, tmp_path):
    out = tmp_path / "lists"
    result = cli("--month", "2026-06", "--claims", str(csv_files[0]), "--members",
                 str(csv_files[1]), "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stderr.split())
    assert (f"2026-06: {len(CLAIMS)} claim lines, {len(MEMBERS)} members, 10 attributed to a "
            "provider, 1 of them already enrolled; 6 potential enrollees on 4 provider list(s)"
            ) in text
    assert "P1: 3 member(s)" in text
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"potential-enrollees-2026-06-{p}{ext}" for p in EXPECTED for ext in (".csv", ".group.json"))
    with (out / "potential-enrollees-2026-06-P1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["member_id"], r["program"], r["rule"], r["qualifying_diagnoses"]) for r in rows] \
        == EXPECTED["P1"]
    assert rows[0]["dcn"] == "D1" and rows[0]["visits"] == "2" and rows[0]["last_visit"] == "2026-02-10"
    group = json.loads((out / "potential-enrollees-2026-06-P3.group.json").read_text())
    assert group["resourceType"] == "Group" and group["quantity"] == 1


def test_the_command_reads_fhir_ndjson(tmp_path):
    claims = write_ndjson(tmp_path / "claims.ndjson", fhir_claims())
    members = write_ndjson(tmp_path / "members.ndjson", fhir_members())
    result = cli("--month", "2026-06", "--claims", str(claims), "--members", str(members),
                 "--out", str(tmp_path / "out"), "--provider", "Organization/P3")
    assert result.returncode == 0, result.stderr
    group = json.loads((tmp_path / "out" / "potential-enrollees-2026-06-Organization_P3.group.json")
                       .read_text())
    assert group["member"] == [{"entity": {"reference": "Patient/m6"}}]


def test_bad_input_is_named_by_file_line_and_field(csv_files, tmp_path):
    claims, members = csv_files

    def refused(bad_claims=claims, bad_members=members) -> str:
        result = cli("--month", "2026-06", "--claims", str(bad_claims), "--members",
                     str(bad_members), "--out", str(tmp_path / "o"))
        assert result.returncode == 2
        return " ".join(result.stderr.split())

    bad_date = tmp_path / "bad-date.csv"
    bad_date.write_text(claims.read_text().replace("m3,2026-04-01", "m3,2026-04-31"))
    assert f"{bad_date} line 8: service_date ('2026-04-31') is not a date" in \
        refused(bad_claims=bad_date)
    bad_state = tmp_path / "bad-state.csv"
    bad_state.write_text(members.read_text().replace("m5,D5,1975-04-04,MO", "m5,D5,1975-04-04,TX"))
    assert f"{bad_state} line 6: state ('TX') is not a state the rules know" in \
        refused(bad_members=bad_state)
    no_column = tmp_path / "no-column.csv"
    no_column.write_text("member_id,service_date\nm1,2026-01-01\n")
    assert "no column provider_id, diagnosis_codes" in refused(bad_claims=no_column)

    extra_field = tmp_path / "extra-field.csv"
    extra_field.write_text(claims.read_text() + "m1,2026-01-11,P1,CMHC,F209,99213,surplus\n")
    result = cli("--month", "2026-06", "--claims", str(extra_field), "--members", str(members),
                 "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert f"{extra_field} line {len(CLAIMS) + 2}: Expected Number of Columns: 6 Found: 7" in \
        " ".join(result.stderr.split())

    ndjson = write_ndjson(tmp_path / "c.ndjson", [fhir_claims()[1],
                                                  {**fhir_claims()[1], "provider": None}])
    result = cli("--month", "2026-06", "--claims", str(ndjson), "--members", str(members),
                 "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert f"{ndjson} line 2: Claim.provider is missing" in " ".join(result.stderr.split())

    result = cli("--month", "2026-6", "--claims", str(claims), "--members", str(members),
                 "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "must be a month as YYYY-MM" in result.stderr
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ $potential-enrollees

def put(client, resource: dict) -> None:
    answer = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert answer.status_code in (200, 201), answer.text


def ask(client, month_text: str, provider: str | None = None):
    params = [{"name": "month", "valueDate": month_text}]
    if provider:
        params.append({"name": "provider", "valueReference": {"reference": provider}})
    return client.post("/fhir/$potential-enrollees",
                       json={"resourceType": "Parameters", "parameter": params})


def answered(body: dict) -> dict[str, list[tuple]]:
    out = {}
    for p in body["parameter"]:
        if p["name"] != "list":
            continue
        parts = p["part"]
        provider = next(q["valueReference"]["reference"] for q in parts if q["name"] == "provider")
        out[provider] = [
            (next(q["valueReference"]["reference"] for q in e["part"] if q["name"] == "patient")
             .removeprefix("Patient/"),
             next(q["valueCode"] for q in e["part"] if q["name"] == "program"),
             next(q["valueString"] for q in e["part"] if q["name"] == "rule"),
             " ".join(q["valueCode"] for q in e["part"] if q["name"] == "diagnosis"))
            for e in parts if e["name"] == "enrollee"]
    return out


def test_the_operation_lists_what_the_store_holds(client):
    for org in ("payer", "P1", "P2", "P3", "P4", "P5"):
        put(client, {"resourceType": "Organization", "id": org, "name": f"Provider {org}"})
    for resource in [*fhir_members(), *fhir_claims()]:
        put(client, resource)
    answer = ask(client, "2026-06")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert answered(body) == fhir_expected()
    assert next(p["valueInteger"] for p in body["parameter"]
                if p["name"] == "potentialEnrollees") == 6
    p3 = next(p for p in body["parameter"] if p["name"] == "list"
              and p["part"][0]["valueReference"]["reference"] == "Organization/P3")
    group = next(q["resource"] for q in p3["part"] if q["name"] == "group")
    assert group["member"] == [{"entity": {"reference": "Patient/m6"}}]
    csv_part = next(q["valueAttachment"] for q in p3["part"] if q["name"] == "csv")
    assert csv_part["contentType"] == "text/csv"

    assert answered(ask(client, "2026-06", "Organization/P2").json()) == {
        "Organization/P2": EXPECTED["P2"]}
    bad = ask(client, "2026-13")
    assert bad.status_code == 400 and "YYYY-MM" in bad.text
    assert ask(client, "2026-06", "Patient/m1").status_code == 400


def test_a_store_without_claims_answers_no_lists(client):
    """A store with members but no claims (the demo's) was a 500: DuckDB sniffed an empty
    code table and found no CSV dialect."""
    for org in ("payer", "P1", "P2", "P3", "P4", "P5"):
        put(client, {"resourceType": "Organization", "id": org, "name": f"Provider {org}"})
    for resource in fhir_members():
        put(client, resource)
    answer = ask(client, "2026-06")
    assert answer.status_code == 200, answer.text
    assert answered(answer.json()) == {}
    assert next(p["valueInteger"] for p in answer.json()["parameter"]
                if p["name"] == "potentialEnrollees") == 0
