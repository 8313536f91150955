"""Monthly lists of potential Health Home enrollees, computed from claims.

"MO HealthNet generates from claims data a monthly list of people who are receiving care
from a Health Home provider organization, and who potentially meet qualifications for Health
Home enrollment. Each Health Home provider receives a list" (mo-healthnet-health-homes-and-
dd-coordination.txt, "Identification of New Potential Health Home Enrollees").

A year of a state's claims is tens of millions of lines: analytics, not the store's work.
The SQL in `sql/` (the same text on DuckDB and on Spark, `sql_engines.py`) reduces the
claims to one row of facts per member: the Health Home categories of their diagnoses and of
their principal diagnoses as bit masks, Medicaid and CHIP coverage, pediatric, an enrollment
in force, the attributed provider. Members share few combinations of those facts, so the
eligibility engine (`eligibility.judge_facts`, the rules in `rules/*.yaml`) judges each
distinct combination once and its verdicts go back to the SQL as a table: there is one copy
of the rules, and the rule language need not be translated to SQL. The diagnosis-to-category
table is the engine's own mapping (the IG ConceptMap) applied to each distinct code.

Inputs: the columnar extracts (CSV or Parquet, formats in the README) or FHIR NDJSON
(`fhir_extracts.py` writes them as the columnar format first).
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from string import Template

import yaml

from fhir_gateway.formats import fhirjson
from fhir_gateway.healthhome import fhir_extracts
from fhir_gateway.healthhome.claims_formats import CLAIM_COLUMNS, MEMBER_COLUMNS, InputError
from fhir_gateway.healthhome.eligibility import (
    RuleFiles,
    RuleSet,
    code_categories,
    coverage_kind,
    judge_facts,
)
from fhir_gateway.healthhome.monthly_claims import Month
from fhir_gateway.healthhome.sql_engines import (
    columnar_format,
    engine_errors,
    first_bad_row,
    open_engine,
)
from fhir_gateway.identifiers import CANONICAL_BASE, MO_HEALTHNET_DCN

SQL_DIR = Path(__file__).with_name("sql")
POLICY = Path(__file__).with_name("potential_enrollees.yaml")
#: DuckDB's memory inside the gateway process (`$potential-enrollees`); beyond it, it spills
SERVER_MEMORY = "1GB"
#: diagnosis codes read per claim line (an 837I carries up to 25)
MAX_DIAGNOSES = 40


@dataclass(frozen=True)
class Policy:
    lookback_months: int = 12
    provider_types: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: str | Path = POLICY) -> Policy:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        months = doc.get("lookback_months", 12)
        if not isinstance(months, int) or months < 1:
            raise ValueError(f"{path}: lookback_months must be a whole number of months >= 1")
        return cls(months, tuple(str(t).strip().upper()
                                 for t in doc.get("health_home_provider_types") or ()))

    def window(self, within: Month) -> tuple[date, date]:
        """The look-back: the `lookback_months` calendar months before the month."""
        months = within.first.year * 12 + within.first.month - 1 - self.lookback_months
        return date(months // 12, months % 12 + 1, 1), within.first - timedelta(days=1)


@dataclass
class Enrollee:
    member_id: str
    dcn: str | None
    state: str
    program: str
    rule: str
    diagnoses: list[str]
    visits: int
    last_visit: date


@dataclass
class Lists:
    month: Month
    providers: dict[str, list[Enrollee]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: the member ids are Patient ids (FHIR input) rather than the extract's member ids
    fhir_ids: bool = False

    @property
    def members(self) -> int:
        return len({(p, e.member_id) for p, rows in self.providers.items() for e in rows})


def compute(claims: Path, members: Path, within: Month, files: RuleFiles = RuleFiles(), *,
            engine: str = "duckdb", policy: Policy | None = None, provider: str | None = None,
            spark_session=None, memory_limit: str | None = None) -> Lists:
    """The month's lists from a claims file and a member file (CSV, Parquet or NDJSON)."""
    rules = files.rules()
    policy = policy or Policy.load()
    with tempfile.TemporaryDirectory(prefix="fhir-gateway-enrollees-") as tmp:
        fhir = fhir_extracts.is_ndjson(claims) or fhir_extracts.is_ndjson(members)
        if fhir_extracts.is_ndjson(claims):
            claims = fhir_extracts.claims_csv(claims, Path(tmp) / "claims.csv")
        if fhir_extracts.is_ndjson(members):
            members = fhir_extracts.members_csv(members, Path(tmp) / "members.csv", within, rules)
        db = open_engine(engine, spark_session, memory_limit)
        try:
            lists = run(db, claims, members, within, rules, policy, provider)
        except engine_errors() as err:  # e.g. a CSV row with more fields than the header
            raise InputError(_engine_message(str(err), claims, members)) from None
        finally:
            db.close()
    lists.fhir_ids = fhir
    return lists


def _engine_message(text: str, claims: Path, members: Path) -> str:
    """An engine's error about an input file, as file, line and what is wrong."""
    where = re.search(r"^\s*file = (.+)$", text, re.M)
    line = re.search(r"CSV Error on Line: (\d+)", text)
    detail = next((row.strip() for row in text.splitlines()[1:] if row.strip()
                   and not row.startswith(("Original Line", "Possible fixes", "*"))), "")
    if where and line:
        return f"{where[1].strip()} line {line[1]}: {detail or 'not readable as CSV'}"
    return f"{claims} / {members}: {text.strip().splitlines()[0]}"


def _sql(name: str, **values) -> str:
    return Template((SQL_DIR / f"{name}.sql").read_text()).substitute(values)


def _literal(value) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return f"DATE '{value.isoformat()}'"


def _columns(db, view: str, path: Path, wanted: dict[str, bool]) -> str:
    """A view of the file with the format's columns (absent optional ones as NULL)."""
    try:
        kind = columnar_format(path)
        have = db.read(f"{view}_file", path)
    except ValueError as err:
        raise InputError(str(err)) from None
    except engine_errors() as err:  # a file that is not CSV or Parquet
        raise InputError(f"{path}: cannot be read as {kind.upper()} "
                         f"({str(err).splitlines()[0]})") from None
    missing = [name for name, required in wanted.items() if required and name not in have]
    if missing:
        raise InputError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(have)}); "
                         "see README 'Claims extract and member file'")
    return ", ".join(name if name in have else f"CAST(NULL AS STRING) AS {name}"
                     for name in wanted)


def run(db, claims: Path, members: Path, within: Month, rules: RuleSet, policy: Policy,
        provider: str | None = None) -> Lists:
    """The lists, on an engine (`sql_engines`), from columnar files."""
    for view, path, wanted in (("claims_in", claims, CLAIM_COLUMNS),
                               ("members_in", members, MEMBER_COLUMNS)):
        db.view(view, f"SELECT {_columns(db, view, path, wanted)} FROM {view}_file")
    db.table("positions", "pos INT", [(n,) for n in range(1, MAX_DIAGNOSES + 1)])
    db.table("state_alias", "name STRING, code STRING", sorted(rules.aliases.items()))
    db.table("hh_provider_types", "provider_type STRING", [(t,) for t in policy.provider_types])
    db.view("claims", _sql("claims"))
    db.view("members", _sql("members"))
    _check(db, {"claims": claims, "members": members}, set(rules.aliases))

    start, end = policy.window(within)
    as_of = within.first
    pediatric_after = date(as_of.year - rules.facts["pediatric_age"], as_of.month, as_of.day)
    values = {"window_start": _literal(start), "window_end": _literal(end),
              "as_of": _literal(as_of), "pediatric_after": _literal(pediatric_after),
              "any_provider_type": _literal(not policy.provider_types)}
    db.view("member_dx", _sql("member_dx", **values), materialise=True)
    bits = {cat: 1 << n for n, cat in enumerate(rules.facts["categories"])}
    _code_tables(db, rules, bits)
    db.view("attribution", _sql("attribution", **values), materialise=True)
    db.view("member_facts", _sql("member_facts", **values), materialise=True)
    _verdict_table(db, rules, bits)

    lists = Lists(within)
    claim_lines, member_count, attributed, enrolled = db.fetch(_sql("counts"))[0]
    lists.counts = {"claim_lines": claim_lines, "members": member_count,
                    "attributed": attributed, "enrolled": enrolled}
    last = None
    for prov, member, dcn, state, program, rule, code, visits, last_visit in db.stream(
            _sql("enrollees")):
        if provider is not None and prov != provider:
            continue
        key = (prov, member, program)
        if key != last:
            lists.providers.setdefault(prov, []).append(
                Enrollee(member, dcn, state, program, rule, [], visits, last_visit))
            last = key
        lists.providers[prov][-1].diagnoses.append(code)
    lists.counts["potential_enrollees"] = lists.members
    return lists


#: per field: the check's name -> (input, column, what is wrong with a value)
_PROBLEMS = {"member_id": "is empty", "service_date": "is not a date (YYYY-MM-DD)",
             "provider_id": "is empty", "birth_date": "is not a date (YYYY-MM-DD)",
             "state": "is not a state the rules know", "coverage_start":
             "is not a date (YYYY-MM-DD)", "coverage_end": "is not a date (YYYY-MM-DD)"}


def _check(db, paths: dict[str, Path], states: set[str]) -> None:
    """Refuse an input with an unusable value, naming the first one (file, line, field)."""
    for kind, column, bad in db.fetch(_sql("checks")):
        if not bad:
            continue
        path = paths[kind]
        found = first_bad_row(path, column, _bad_value(column, states))
        where = f"line {found[0]}" if found and columnar_format(path) == "csv" else \
            f"row {found[0]}" if found else "a row"
        value = f" ({found[1][:40]!r})" if found and found[1] else ""
        raise InputError(f"{path} {where}: {column}{value} {_PROBLEMS[column]} "
                         f"({bad} row(s) in all)")


def _bad_value(column: str, states: set[str]):
    if column in ("member_id", "provider_id"):
        return lambda value: not (value or "").strip()
    if column == "state":
        return lambda value: bool((value or "").strip()) and \
            (value or "").strip().upper() not in states
    return lambda value: bool((value or "").strip()) and not _is_date(value.strip()[:10])


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
        return len(text) == 10
    except ValueError:
        return False


def _code_tables(db, rules: RuleSet, bits: dict[str, int]) -> None:
    """`code_category` and `coverage_kind`: each distinct code the inputs hold, mapped once by
    the engine's own functions (the ConceptMap; facts.yaml's coverage codes)."""
    codes = db.fetch(_sql("codes"))
    mapped = []
    for kind, code in codes:
        if kind != "diagnosis":
            continue
        for state in rules.states:
            mask = sum(bits[c] for c in code_categories(_dotted(code), state, rules))
            if mask:
                mapped.append((state, code, mask))
    db.table("code_category", "state STRING, code STRING, mask BIGINT", mapped)
    db.table("coverage_kind", "code STRING, medicaid BOOLEAN, chip BOOLEAN",
             [(code, *coverage_kind(code, rules)) for kind, code in codes if kind == "coverage"])


def _dotted(code: str) -> str:
    """ICD-10-CM as claims often carry it (F209) in the ConceptMap's spelling (F20.9)."""
    return code if "." in code or len(code) <= 3 else f"{code[:3]}.{code[3:]}"


def _verdict_table(db, rules: RuleSet, bits: dict[str, int]) -> None:
    """`verdicts`: the engine's eligible verdicts for each distinct combination of facts."""
    rows = []
    for state, cat_mask, primary_mask, medicaid, chip, pediatric, _ in db.fetch(
            _sql("combinations")):
        cats = frozenset(c for c, bit in bits.items() if cat_mask & bit)
        primary = frozenset(c for c, bit in bits.items() if primary_mask & bit)
        for verdict in judge_facts(rules, state, cats, primary, medicaid, chip, pediatric):
            if verdict.eligible:
                rows.append((state, cat_mask, primary_mask, medicaid, chip, pediatric,
                             verdict.code, verdict.rule,
                             sum(bits.get(c, 0) for c in verdict.basis)))
    db.table("verdicts", "state STRING, cat_mask BIGINT, primary_mask BIGINT, medicaid BOOLEAN, "
             "chip BOOLEAN, pediatric BOOLEAN, program STRING, rule STRING, basis_mask BIGINT",
             rows)


# -------------------------------------------------------------------- the lists as files

CSV_COLUMNS = ("member_id", "dcn", "state", "program", "rule", "qualifying_diagnoses",
               "visits", "last_visit")
LIST_ID_SYSTEM = f"{CANONICAL_BASE}/sid/potential-enrollees"
#: members of a columnar extract without a DCN are named by the extract's member id
MEMBER_ID_SYSTEM = f"{CANONICAL_BASE}/sid/claims-member-id"


def csv_rows(rows: list[Enrollee]) -> list[list]:
    return [[e.member_id, e.dcn or "", e.state, e.program, e.rule, " ".join(e.diagnoses),
             e.visits, e.last_visit.isoformat()] for e in rows]


def csv_text(rows: list[Enrollee]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(rows))
    return out.getvalue()


def _entity(e: Enrollee, fhir_ids: bool) -> dict:
    if fhir_ids:
        return {"reference": f"Patient/{e.member_id}"}
    if e.dcn:
        return {"identifier": {"system": MO_HEALTHNET_DCN, "value": e.dcn}}
    return {"identifier": {"system": MEMBER_ID_SYSTEM, "value": e.member_id}}


def group(provider: str, rows: list[Enrollee], lists: Lists) -> dict:
    """The provider's list as a Group: the month's potential enrollees, one member each."""
    members = list(dict.fromkeys(e.member_id for e in rows))
    first = {e.member_id: e for e in reversed(rows)}
    within = lists.month
    managing = {"reference": provider} if provider.startswith("Organization/") else \
        {"identifier": {"value": provider}}
    return {
        "resourceType": "Group",
        "identifier": [{"system": LIST_ID_SYSTEM, "value": f"{within.text}|{provider}"}],
        "type": "person", "actual": True,
        "name": f"Potential Health Home enrollees {within.text}: {provider}",
        "managingEntity": managing,
        "quantity": len(members),
        "characteristic": [{
            "code": {"text": "Potential Health Home enrollee: meets a Health Home program's "
                             "rules on claims data, not enrolled, attributed to this provider"},
            "valuePeriod": {"start": within.first.isoformat(), "end": within.last.isoformat()},
            "exclude": False}],
        "member": [{"entity": _entity(first[m], lists.fhir_ids)} for m in members],
    }


def file_stem(lists: Lists, provider: str) -> str:
    return f"potential-enrollees-{lists.month.text}-{re.sub(r'[^A-Za-z0-9._-]', '_', provider)}"


def write(lists: Lists, folder: Path) -> list[Path]:
    """Per provider `<stem>.csv` and `<stem>.group.json` in `folder`; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for provider, rows in lists.providers.items():
        stem = folder / file_stem(lists, provider)
        csv_path, group_path = stem.with_suffix(".csv"), stem.with_suffix(".group.json")
        csv_path.write_text(csv_text(rows))
        group_path.write_bytes(fhirjson.dumps(group(provider, rows, lists)))
        written += [csv_path, group_path]
    return written


def from_store(store, files: RuleFiles, within: Month, provider: str | None = None) -> Lists:
    """The month's lists over what the store holds (`$potential-enrollees`): its Claims,
    ExplanationOfBenefits, Patients, Coverages and HH enrollments are written page by page to
    temporary files of the columnar formats, then the same SQL runs on them with DuckDB."""
    rules = files.rules()
    with tempfile.TemporaryDirectory(prefix="fhir-gateway-enrollees-") as tmp:
        claims, members = fhir_extracts.export_store(store, Path(tmp), within, rules)
        db = open_engine("duckdb", memory_limit=SERVER_MEMORY)
        try:
            lists = run(db, claims, members, within, rules, Policy.load(), provider)
        finally:
            db.close()
    lists.fhir_ids = True
    return lists
