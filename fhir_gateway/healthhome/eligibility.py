"""Health Home eligibility: one small engine over rules that are data.

The rules live in YAML (`healthhome/rules/`: `facts.yaml` for thresholds, code lists and
category groups; one file per state with its gates, programs and rule alternatives, each
citing its seed). This module only derives facts from a member's FHIR resources and
interprets the rule language documented at the top of `rules/mo.yaml`; a state changes a
rule by editing a file (or pointing the `hh_rules` setting at another folder), not code.

Pure functions over FHIR dicts: the only I/O is reading the rule files named by `RuleFiles`
once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from functools import cache, lru_cache
from pathlib import Path

import yaml

from fhir_gateway import identifiers
from fhir_gateway.config import DEFAULT_HH_ENROLLMENT, DEFAULT_HH_RULES, DEFAULT_PROFILES
from fhir_gateway.healthhome.categories import ONSET_BEFORE_AGE, STATE
from fhir_gateway.healthhome.categories import targets as icd10_targets
from fhir_gateway.identifiers import (
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    ICD10CM,
    LOINC,
    SNOMED,
)
from fhir_gateway.outcome import FhirError

RULES_DIR = Path(DEFAULT_HH_RULES)
FACTS = ("medicaid", "chip", "pediatric")
CONDITION_KEYS = ("all_of", "any_of", "not", "count_at_least", "one_plus", "primary")
#: where a primary diagnosis is recorded: resource type -> (member element, rank element,
#: the date it starts); the diagnosis ranked 1 is primary
PRIMARY_SOURCES = {"EpisodeOfCare": ("patient", "rank", "period.start"),
                   "Encounter": ("subject", "rank", "period.start"),
                   "Claim": ("patient", "sequence", "created")}
#: Age units (UCUM code, or the unit's name without a plural s) -> per year
AGE_UNITS = {"a": 1, "year": 1, "mo": 12, "month": 12, "wk": 52.1775, "week": 52.1775,
             "d": 365.25, "day": 365.25}


class EligibilityInputError(FhirError, ValueError):
    """Bad input (no Patient, two Patients, unknown state, bad date): an HTTP 400."""

    def __init__(self, message: str, where: str | None = None):
        super().__init__(400, message, "invalid", where)
        self.message = message
        self.where = where


class RuleFileError(ValueError):
    """A rule file that does not follow the rule language (a deployment error, not a 400)."""


@dataclass
class ProgramVerdict:
    code: str
    eligible: bool
    basis: list[str]
    rule: str
    explanation: str
    source: str = ""
    #: ids of later rule alternatives that also matched (the verdict names the first)
    also_met: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    state: str
    as_of: date
    categories: list[str]
    medicaid: bool
    chip: bool
    programs: list[ProgramVerdict]
    age: int | None = None
    notes: list[str] = field(default_factory=list)

    def program(self, code: str) -> ProgramVerdict:
        return next(p for p in self.programs if p.code == code)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["as_of"] = self.as_of.isoformat()
        return out


# ---------------------------------------------------------------- rule files


@dataclass(frozen=True)
class RuleFiles:
    """Where the Health Home rules are read from: the eligibility rules folder, the
    enrollment policy file and the IG package whose ConceptMap maps diagnoses to categories.
    A value (hashable, picklable): it keys the caches and travels to worker processes."""

    eligibility: str = DEFAULT_HH_RULES
    enrollment: str = DEFAULT_HH_ENROLLMENT
    package: str = DEFAULT_PROFILES

    @classmethod
    def of(cls, settings) -> RuleFiles:
        """The files a `Settings` names (`hh_rules`, `hh_enrollment`, `profiles`)."""
        return cls(settings.hh_rules, settings.hh_enrollment, settings.profiles)

    def rules(self) -> RuleSet:
        return load_rules(self.eligibility, self.package)


@dataclass(frozen=True, eq=False)  # hashed by identity: `load_rules` makes one per folder
class RuleSet:
    facts: dict
    states: dict  # state code -> state document
    groups: dict  # group name -> frozenset of categories
    aliases: dict  # upper-case name or code -> state code
    uses_age: bool = False  # some explanation says {age}: verdicts then depend on the age
    #: state code -> identifier systems that make a Coverage that state's
    coverage_systems: dict = field(default_factory=dict)
    #: the IG package whose ConceptMap maps ICD-10-CM codes to categories
    package: str = DEFAULT_PROFILES


@cache
def load_rules(rules_dir: str, package: str = DEFAULT_PROFILES) -> RuleSet:
    """Read and check `facts.yaml` and every state file in `rules_dir` (once per folder)."""
    folder = Path(rules_dir)
    facts = yaml.safe_load((folder / "facts.yaml").read_text())
    known = set(facts["categories"])
    groups = {name: frozenset(members) for name, members in (facts.get("groups") or {}).items()}
    for name, members in groups.items():
        if name in known or name in FACTS:
            raise RuleFileError(f"facts.yaml: group {name!r} shadows a category or fact")
        if unknown := members - known:
            raise RuleFileError(f"facts.yaml: group {name!r} has unknown {sorted(unknown)}")
    names = known | set(groups) | set(FACTS)
    states, aliases = {}, {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "facts.yaml":
            continue
        doc = yaml.safe_load(path.read_text())
        code = str(doc["state"]).upper()
        _check_state(doc, names, path.name)
        states[code] = doc
        aliases[code] = code
    for code, spelled in (facts.get("state_names") or {}).items():
        for name in spelled:
            aliases[str(name).upper()] = code
    return RuleSet(facts, states, groups, aliases, any(map(_quotes_age, states.values())),
                   _coverage_systems(facts), package)


def _coverage_systems(facts: dict) -> dict[str, frozenset]:
    """Per state, the identifier systems that mark a Coverage (or its payor) as that state's."""
    named = [facts.get("state_identifiers") or {}, facts["coverage"].get("state_systems") or {}]
    return {state: frozenset(_system(n) for table in named for n in table.get(state) or ())
            for state in set().union(*named)}


def _quotes_age(doc: dict) -> bool:
    items = [*(doc.get("gates") or [])]
    for program in doc["programs"]:
        items += [*(program.get("gates") or []), *program["rules"],
                  *(program.get("exclusions") or []), program["no_match"]]
    return any("{age}" in str(item["explanation"]) for item in items)


def _check_state(doc: dict, names: set, file: str) -> None:
    def check_cond(cond, where):
        if isinstance(cond, str):
            if cond not in names:
                raise RuleFileError(f"{file} {where}: unknown name {cond!r}")
            return
        if not isinstance(cond, dict) or len(cond) != 1 or next(iter(cond)) not in CONDITION_KEYS:
            raise RuleFileError(f"{file} {where}: a condition is a name or one of "
                                f"{', '.join(CONDITION_KEYS)}, got {cond!r}")
        (key, arg), = cond.items()
        if key in ("all_of", "any_of"):
            for c in arg:
                check_cond(c, where)
        elif key in ("not", "primary"):
            if key == "primary" and not isinstance(arg, str):
                raise RuleFileError(f"{file} {where}: primary takes a category or group name")
            check_cond(arg, where)
        elif key == "count_at_least":
            if not isinstance(arg.get("n"), int):
                raise RuleFileError(f"{file} {where}: count_at_least needs an integer n")
            for c in arg["of"]:
                check_cond(c, where)
        else:  # one_plus
            for c in list(arg["of"]) + list(arg["plus"]):
                check_cond(c, where)

    def check_item(item, kind, need_when=True):
        for key in ("id", "explanation") + (("source", "when") if need_when else ()):
            if key not in item:
                raise RuleFileError(f"{file}: {kind} {item.get('id', '?')} has no {key}")
        if need_when:
            check_cond(item["when"], f"{kind} {item['id']}")

    seen = set()
    for gate in doc.get("gates") or []:
        check_item(gate, "gate")
    for program in doc["programs"]:
        for kind in ("gates", "rules", "exclusions"):
            for item in program.get(kind) or []:
                check_item(item, kind[:-1])
                if item["id"] in seen:
                    raise RuleFileError(f"{file}: duplicate id {item['id']}")
                seen.add(item["id"])
        if not program.get("rules"):
            raise RuleFileError(f"{file}: program {program['code']} has no rules")
        check_item(program["no_match"], "no_match", need_when=False)


# ---------------------------------------------------------------- facts from FHIR


def _parse_date(value, where: str) -> date:
    """A FHIR date or dateTime (partial dates take the first day) as a date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not value:
        raise EligibilityInputError(f"not a date: {value!r}", where)
    text = value[:10]
    try:
        if len(text) == 4:
            return date(int(text), 1, 1)
        if len(text) == 7 and text[4] == "-":
            return date(int(text[:4]), int(text[5:7]), 1)
        return date.fromisoformat(text)
    except ValueError:
        raise EligibilityInputError(f"not a date: {value!r}", where) from None


def _codes(concept: dict | None, system: str) -> list[str]:
    return [c["code"] for c in (concept or {}).get("coding", [])
            if c.get("system") == system and c.get("code")]


@cache
def _icd_targets(code: str, state: str, package: str
                 ) -> tuple[frozenset, tuple[tuple[str, str], ...]]:
    """The categories a code counts toward in `state` whatever the Condition says, and the
    (category, age) pairs that count only with the onset before that age (dependsOn)."""
    plain, by_onset = set(), []
    for target in icd10_targets(code, package):
        category, needs = target.coding["code"], dict(target.depends_on)
        if unknown := set(needs) - {STATE, ONSET_BEFORE_AGE}:
            raise RuleFileError(f"ConceptMap target {code} -> {category}: dependsOn "
                                f"{sorted(unknown)} is not understood")
        if needs.get(STATE, state) != state:
            continue
        if ONSET_BEFORE_AGE in needs:
            by_onset.append((category, needs[ONSET_BEFORE_AGE]))
        else:
            plain.add(category)
    return frozenset(plain), tuple(by_onset)


def _same_patient(resource: dict, field_name: str, patient_id: str | None) -> bool:
    ref = (resource.get(field_name) or {}).get("reference") or ""
    if not patient_id or not ref.startswith("Patient/"):
        return True
    return ref.split("/")[1] == patient_id


def _has_code(concept: dict | None, system: str, wanted) -> bool:
    return any(c.get("system") == system and c.get("code") in wanted
               for c in (concept or {}).get("coding", ()))


def _is_current(condition: dict, facts: dict) -> bool:
    """Active (or relapsed, recurred) and not refuted or entered in error."""
    rules = facts["condition"]
    return _has_code(condition.get("clinicalStatus"), CONDITION_CLINICAL,
                     rules["clinical_active"]) and not _has_code(
        condition.get("verificationStatus"), CONDITION_VERIFICATION,
        rules["verification_excluded"])


def _condition_categories(condition: dict, rules: RuleSet, state: str,
                          birth: date | None) -> tuple[set[str], list[tuple[str, str]]]:
    """The categories a current Condition counts toward in `state`, and (category, sentence)
    for each target left out because its onset was not before the age the map asks for."""
    if not _is_current(condition, rules.facts):
        return set(), []
    return _code_categories(condition.get("code"), condition, rules, state, birth)


def counted_categories(condition: dict, state: str, birth_date: str | None,
                       rules: RuleSet) -> set[str]:
    """The categories a Condition counts toward in `state`, read as eligibility reads it
    (epilepsy or a head injury only with onset before 22, F84.3 as SMI only in Kansas):
    what enrollment links to and refers on must be what made the member eligible."""
    birth = _parse_date(birth_date, "Patient.birthDate") if birth_date else None
    return _code_categories(condition.get("code"), condition, rules, state, birth)[0]


def _code_categories(concept: dict | None, condition: dict, rules: RuleSet, state: str,
                     birth: date | None) -> tuple[set[str], list[tuple[str, str]]]:
    """The categories of a concept's ICD-10-CM codes whose ConceptMap targets hold here."""
    cats, left_out = set(), []
    for code in _codes(concept, ICD10CM):
        plain, by_onset = _icd_targets(code, state, rules.package)
        cats |= plain
        for category, before in by_onset:
            onset = _onset_age(condition, birth)
            if onset is not None and onset < float(before):
                cats.add(category)
            else:
                left_out.append((category, _onset_sentence(rules.facts, code, category,
                                                           before, onset)))
    return cats, left_out


def _onset_age(condition: dict, birth: date | None) -> float | None:
    """Age in years at Condition.onset[x]; None when it cannot be told."""
    if "onsetAge" in condition:
        return _years(condition["onsetAge"])
    if "onsetRange" in condition:  # began no later than the upper bound
        return _years((condition["onsetRange"] or {}).get("high"))
    when = condition.get("onsetDateTime") or (condition.get("onsetPeriod") or {}).get("start")
    if not when or birth is None:
        return None
    return _age(birth, _parse_date(when, "Condition.onset"))


def _years(age: dict | None) -> float | None:
    age = age if isinstance(age, dict) else {}
    unit = str(age.get("code") or age.get("unit") or "").lower()
    per_year = AGE_UNITS.get(unit) or AGE_UNITS.get(unit.removesuffix("s"))
    value = age.get("value")
    if per_year is None or not isinstance(value, (int, float)):
        return None
    return value / per_year


def _onset_sentence(facts: dict, code: str, category: str, before: str,
                    onset: float | None) -> str:
    rules = facts["condition"]
    template = rules["onset_not_verified"] if onset is None else rules["onset_too_late"]
    return " ".join(template.split()).format(
        code=code, category=category, before=before, onset=f"{onset or 0:g}",
        source=" ".join(rules["onset_source"].split()))


def _primary_categories(by_type: dict, pid: str | None, conditions: list[dict],
                        rule_set: RuleSet, state: str, birth: date | None, as_of: date
                        ) -> frozenset | None:
    """The categories of the member's primary diagnoses (see PRIMARY_SOURCES), or None when
    no primary diagnosis is known: a rule on the primary diagnosis then reads them all."""
    if not any(kind in by_type for kind in PRIMARY_SOURCES):
        return None
    rules = rule_set.facts["primary_diagnosis"]
    by_ref = {f"Condition/{c['id']}": c for c in conditions if c.get("id")}
    known, cats = False, set()
    for kind, (member, rank, start) in PRIMARY_SOURCES.items():
        for res in by_type.get(kind, []):
            began = _path(res, start)
            if (not _same_patient(res, member, pid) or res.get("status") in
                    rules["excluded_status"] or (began and _parse_date(
                        began, f"{kind}.{start}") > as_of)):
                continue
            for dx in res.get("diagnosis") or []:
                if not isinstance(dx, dict) or dx.get(rank) != 1:
                    continue
                ref = (dx.get("condition") or dx.get("diagnosisReference") or {})
                condition = by_ref.get(ref.get("reference"))
                if condition is not None:
                    known = True
                    cats |= _condition_categories(condition, rule_set, state, birth)[0]
                elif dx.get("diagnosisCodeableConcept"):
                    known = True
                    cats |= _code_categories(dx["diagnosisCodeableConcept"], {}, rule_set,
                                             state, birth)[0]
    return frozenset(cats) if known else None


def _path(resource: dict, dotted: str):
    for name in dotted.split("."):
        resource = resource.get(name) if isinstance(resource, dict) else None
    return resource


def _observation_time(obs: dict) -> str:
    return (obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("end")
            or (obs.get("effectivePeriod") or {}).get("start") or obs.get("effectiveInstant")
            or obs.get("issued") or "")


def _latest(observations: list[dict], loinc: str, facts: dict, as_of: date) -> dict | None:
    usable = facts["observation"]["usable_status"]
    found = []
    for obs in observations:
        if obs.get("status") not in usable or loinc not in _codes(obs.get("code"), LOINC):
            continue
        when = _observation_time(obs)
        if when and _parse_date(when, "Observation.effective") > as_of:
            continue  # recorded after the evaluation date
        found.append((when[:10] if when else "", obs))
    return max(found, key=lambda pair: pair[0])[1] if found else None


def observation_codes(rules: RuleSet) -> list[str]:
    """The LOINC codes of the Observations eligibility reads (what a member record fetches)."""
    observation = rules.facts["observation"]
    return [observation[k]["loinc"] for k in ("bmi", "bmi_for_age", "smoking")]


def _observation_categories(observations: list[dict], facts: dict, as_of: date,
                            pediatric: bool) -> set[str]:
    """Weight from the latest BMI (for a child: BMI-for-age percentile, the adult BMI does
    not apply), tobacco from the latest smoking status."""
    out = set()
    rules = facts["observation"]
    bmi_rules, smoking = rules["bmi_for_age" if pediatric else "bmi"], rules["smoking"]
    bmi = _latest(observations, bmi_rules["loinc"], facts, as_of)
    value = ((bmi or {}).get("valueQuantity") or {}).get("value")
    if isinstance(value, (int, float)):
        out |= {cat for cat in ("overweight", "obesity") if _reaches(value, bmi_rules[cat])}
    status = _latest(observations, smoking["loinc"], facts, as_of)
    if status and set(_codes(status.get("valueCodeableConcept"), SNOMED)) & set(
            smoking["current_smoker"]):
        out.add("tobacco")
    return out


def _reaches(value: float, threshold: dict) -> bool:
    if "above" in threshold:
        return value > threshold["above"]
    return value >= threshold["at_least"]


def _covers(period: dict | None, as_of: date, where: str) -> bool:
    period = period or {}
    if period.get("start") and _parse_date(period["start"], f"{where}.start") > as_of:
        return False
    return not (period.get("end") and _parse_date(period["end"], f"{where}.end") < as_of)


def _coverage(coverages: list[dict], rules_set: RuleSet, state: str,
              as_of: date) -> tuple[bool, bool]:
    """(Medicaid, CHIP) on the date, from active Coverages that are not another state's."""
    rules = rules_set.facts["coverage"]
    foreign = set().union(*(systems for other, systems in rules_set.coverage_systems.items()
                            if other != state))
    medicaid = chip = False
    for cov in coverages:
        if cov.get("status") != "active" or not _covers(cov.get("period"), as_of,
                                                         "Coverage.period"):
            continue
        if _identifier_systems(cov) & foreign:
            continue  # another state's Medicaid or CHIP
        for code in _codes(cov.get("type"), rules["system"]):
            is_medicaid, is_chip = coverage_kind(code, rules_set)
            medicaid, chip = medicaid or is_medicaid, chip or is_chip
    return medicaid, chip


def coverage_kind(code: str, rules: RuleSet) -> tuple[bool, bool]:
    """Whether a Source of Payment Typology code is (Medicaid, CHIP) coverage."""
    kinds = rules.facts["coverage"]
    return (code in kinds["medicaid_codes"] or any(code.startswith(p) for p in
                                                    kinds["medicaid_prefixes"]),
            code in kinds["chip_codes"])


def _identifier_systems(cov: dict) -> set[str]:
    ids = [*(cov.get("identifier") or []),
           *((p or {}).get("identifier") or {} for p in cov.get("payor") or [])]
    return {i.get("system") for i in ids if isinstance(i, dict)}


def _age(birth: date, as_of: date) -> int:
    return as_of.year - birth.year - ((as_of.month, as_of.day) < (birth.month, birth.day))


def _system(name: str) -> str:
    if "{" in name:
        return name.format(CANONICAL_BASE=identifiers.CANONICAL_BASE)
    return name if ":" in name else getattr(identifiers, name)


def _derive_state(patient: dict, coverages: list[dict], rules: RuleSet) -> str:
    by_system = {_system(n): state for state, systems in
                 (rules.facts.get("state_identifiers") or {}).items() for n in systems}
    found = {by_system[i["system"]] for res in [patient, *coverages]
             for i in res.get("identifier", []) if i.get("system") in by_system}
    if len(found) == 1:
        return found.pop()
    addresses = sorted(patient.get("address", []), key=lambda a: a.get("use") != "home")
    from_address = [rules.aliases.get(str(a.get("state", "")).upper()) for a in addresses]
    from_address = [s for s in from_address if s in rules.states]
    if from_address and (not found or from_address[0] in found):
        return from_address[0]
    if found:
        raise EligibilityInputError(
            f"cannot tell the state: identifiers of {', '.join(sorted(found))}; pass state",
            "state")
    raise EligibilityInputError("cannot tell the state: no DCN / KanCare ID and no address "
                                "state; pass state", "state")


# ---------------------------------------------------------------- the engine


class _Context:
    def __init__(self, cats: set[str], facts: dict[str, bool], groups: dict,
                 primary: frozenset | None = None):
        self.cats, self.facts, self.groups, self.primary = cats, facts, groups, primary
        #: set by `check` when a {primary: ...} held only because no primary is known
        self.unverified = False

    def present(self, name: str, among: set[str] | frozenset | None = None) -> set[str]:
        """The categories that make `name` (category or group) present; empty if absent."""
        among = self.cats if among is None else among
        if name in self.groups:
            return self.groups[name] & among
        return {name} if name in among else set()

    def check(self, cond) -> tuple[bool, set[str], bool]:
        """`test`, and whether the answer rests on an unverified primary diagnosis."""
        self.unverified = False
        ok, basis = self.test(cond)
        return ok, basis, self.unverified

    def test(self, cond) -> tuple[bool, set[str]]:
        if isinstance(cond, str):
            if cond in self.facts:
                return self.facts[cond], set()
            hit = self.present(cond)
            return bool(hit), hit
        (key, arg), = cond.items()
        if key == "primary":
            hit = self.present(arg, self.primary)
            if self.primary is None and hit:
                self.unverified = True
            return bool(hit), hit
        if key == "all_of":
            basis = set()
            for c in arg:
                ok, hit = self.test(c)
                if not ok:
                    return False, set()
                basis |= hit
            return True, basis
        if key == "any_of":
            results = [self.test(c) for c in arg]
            hits = [hit for ok, hit in results if ok]
            return bool(hits), set().union(*hits)
        if key == "not":
            return not self.test(arg)[0], set()
        if key == "count_at_least":
            hits = [h for h in (self.present(n) for n in arg["of"]) if h]
            return len(hits) >= arg["n"], set().union(*hits) if len(hits) >= arg["n"] else set()
        # one_plus: one of `of`, and a different one of `plus` (adding a category)
        basis = set()
        for first in (self.present(n) for n in arg["of"]):
            for second in (self.present(n) for n in arg["plus"]):
                if first and second - first:
                    basis |= first | second
        return bool(basis), basis


def _say(item: dict, program: dict, basis, age, source: str | None = None) -> str:
    text = " ".join(str(item["explanation"]).split())
    return text.format(program=program["name"], source=source or item.get("source", ""),
                       basis=", ".join(sorted(basis)) or "none", age=age)


def _verdict(program: dict, state_doc: dict, ctx: _Context, age,
             not_verified: str) -> ProgramVerdict:
    """The first failing gate, else the first matching rule (unless an exclusion holds), else
    no_match; an answer resting on an unknown primary diagnosis says `not_verified`."""
    code = program["code"]
    for gate in [*(state_doc.get("gates") or []), *(program.get("gates") or [])]:
        if not ctx.test(gate["when"])[0]:
            return ProgramVerdict(code, False, [], gate["id"], _say(gate, program, [], age),
                                  gate["source"])
    matched = [(rule, hit, unverified) for rule in program["rules"]
               for ok, hit, unverified in [ctx.check(rule["when"])] if ok]
    if not matched:
        miss = program["no_match"]
        return ProgramVerdict(code, False, [], miss["id"],
                              _say(miss, program, ctx.cats, age), miss.get("source", ""))
    rule, basis, unverified = matched[0]
    caveat = f" {not_verified}" if unverified else ""
    for excl in program.get("exclusions") or []:
        ok, hit = ctx.test(excl["when"])
        if ok:
            return ProgramVerdict(code, False, sorted(basis | hit), excl["id"],
                                  _say(excl, program, basis | hit, age), excl["source"])
    also = [r["id"] for r, _, _ in matched[1:]]
    text = _say(rule, program, basis, age) + caveat
    if also:
        text += f" Also meets: {', '.join(also)}."
    return ProgramVerdict(code, True, sorted(basis), rule["id"], text, rule["source"], also)


def evaluate(resources: list[dict], state: str | None = None, as_of: date | None = None, *,
             files: RuleFiles = RuleFiles()) -> Evaluation:
    """Which Health Home programs of the member's state the member qualifies for, and why.

    `resources`: one member's Patient with their Conditions, Observations and Coverages, and
    the EpisodesOfCare, Encounters and Claims that rank their diagnoses (other resource types
    are ignored). `state`: "MO"/"KS" (or Missouri/Kansas); derived from
    identifiers or the address when omitted. `as_of`: the evaluation date, today by default.
    """
    rules = files.rules()
    facts = rules.facts
    as_of = date.today() if as_of is None else _parse_date(as_of, "as_of")
    if not isinstance(resources, list) or not all(isinstance(r, dict) for r in resources):
        raise EligibilityInputError("resources must be a list of FHIR resources", "resources")
    by_type: dict[str, list[dict]] = {}
    for res in resources:
        by_type.setdefault(res.get("resourceType"), []).append(res)
    patients = by_type.get("Patient", [])
    if len(patients) != 1:
        raise EligibilityInputError(
            "no Patient" if not patients else f"{len(patients)} Patients; evaluate one member",
            "Patient")
    patient = patients[0]
    pid = patient.get("id")
    conditions = [c for c in by_type.get("Condition", []) if _same_patient(c, "subject", pid)]
    observations = [o for o in by_type.get("Observation", [])
                    if _same_patient(o, "subject", pid)]
    coverages = [c for c in by_type.get("Coverage", []) if _same_patient(c, "beneficiary", pid)]

    if state is None:
        code = _derive_state(patient, coverages, rules)
    else:
        code = rules.aliases.get(str(state).strip().upper())
        if code not in rules.states:
            raise EligibilityInputError(
                f"unknown state {state!r}; known: {', '.join(sorted(rules.states))}", "state")

    birth = age = None
    if patient.get("birthDate"):
        birth = _parse_date(patient["birthDate"], "Patient.birthDate")
        age = _age(birth, as_of)
    pediatric = age is not None and age < facts["pediatric_age"]

    cats, left_out = set(), []
    for cond in conditions:
        found, why = _condition_categories(cond, rules, code, birth)
        cats |= found
        left_out += why
    cats = _with_implied(cats | _observation_categories(observations, facts, as_of, pediatric),
                         facts)
    # a diagnosis left out matters only when nothing else brought its category
    left_out = list(dict.fromkeys(why for cat, why in left_out if cat not in cats))
    primary = _primary_categories(by_type, pid, conditions, rules, code, birth, as_of)
    medicaid, chip = _coverage(coverages, rules, code, as_of)

    key_age = age if rules.uses_age else None
    verdicts, notes = _judge(rules, code, frozenset(cats), primary, medicaid, chip,
                             pediatric, key_age)
    told = "".join(f" {why}" for why in left_out)
    return Evaluation(code, as_of, sorted(cats), medicaid, chip, _verdicts(verdicts, told), age,
                      [*notes, *left_out])


def judge_facts(rules: RuleSet, state: str, cats: frozenset, primary: frozenset | None,
                medicaid: bool, chip: bool, pediatric: bool) -> list[ProgramVerdict]:
    """The verdicts for facts derived elsewhere: the potential-enrollee lists derive the
    categories from claims in SQL and judge each distinct combination here, with the same
    rules and the same memoised judgement as `evaluate` (`implies` applied as it does)."""
    verdicts, _ = _judge(rules, state, frozenset(_with_implied(set(cats), rules.facts)),
                         primary, medicaid, chip, pediatric, None)
    return _verdicts(verdicts)


def code_categories(code: str, state: str, rules: RuleSet) -> frozenset:
    """The categories an ICD-10-CM code counts toward in `state` on its own: targets that
    need a verified onset (epilepsy, head injury) are left out, as `evaluate` leaves them
    out of a Condition whose onset it cannot tell."""
    return _icd_targets(code, state, rules.package)[0]


def member_state(patient: dict, rules: RuleSet) -> str:
    """The state whose rules apply to a Patient (identifiers, then the address)."""
    return _derive_state(patient, [], rules)


def _with_implied(cats: set[str], facts: dict) -> set[str]:
    for cat, implied in (facts.get("implies") or {}).items():
        if cat in cats:
            cats |= set(implied)
    return cats


def _verdicts(judged: tuple, told: str = "") -> list[ProgramVerdict]:
    return [ProgramVerdict(c, ok, list(basis), rule, text + told, source, list(also))
            for c, ok, basis, rule, text, source, also in judged]


@lru_cache(maxsize=8192)
def _judge(rules: RuleSet, code: str, cats: frozenset, primary: frozenset | None,
           medicaid: bool, chip: bool, pediatric: bool, age: int | None) -> tuple[tuple, tuple]:
    """The verdicts (as tuples) and notes for one combination of facts.

    A verdict depends on nothing but the categories, the primary diagnosis's categories and
    the three facts (and the age, only if an explanation quotes it), and members share few
    combinations: batch evaluation judges each combination once.
    """
    state_doc = rules.states[code]
    ctx = _Context(set(cats), {"medicaid": medicaid, "chip": chip, "pediatric": pediatric},
                   rules.groups, primary)
    not_verified = " ".join(rules.facts["primary_diagnosis"]["not_verified"].split())
    verdicts = [_verdict(p, state_doc, ctx, age, not_verified) for p in state_doc["programs"]]
    notes = []
    eligible = {v.code for v in verdicts if v.eligible}
    for rule in state_doc.get("mutually_exclusive") or []:
        if set(rule["programs"]) <= eligible:
            note = " ".join(rule["note"].split()).format(source=rule["source"])
            notes.append(note)
            for v in verdicts:
                if v.code in rule["programs"]:
                    v.explanation += f" {note}"
    return (tuple((v.code, v.eligible, tuple(v.basis), v.rule, v.explanation, v.source,
                   tuple(v.also_met)) for v in verdicts), tuple(notes))
