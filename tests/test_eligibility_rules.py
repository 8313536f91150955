"""Health Home eligibility rules (healthhome/rules/*.yaml) through the one engine.

One table: each row builds a member from small helpers, evaluates it, and asserts the
verdict (eligible or not) and the rule id for one program; some rows also assert the basis.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from fhir_gateway.healthhome.eligibility import (
    RULES_DIR,
    EligibilityInputError,
    RuleFileError,
    RuleFiles,
    evaluate,
    load_rules,
)
from fhir_gateway.identifiers import (
    CANONICAL_BASE,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    ICD10CM,
    KANCARE_ID,
    LOINC,
    MO_HEALTHNET_DCN,
    SNOMED,
    SOURCE_OF_PAYMENT,
)

AS_OF = date(2024, 6, 1)


# ---------------------------------------------------------------- member builders


def patient(born="1980-03-15", state=None, dcn=None, kancare=None):
    res = {"resourceType": "Patient", "id": "m1", "birthDate": born}
    ids = [{"system": MO_HEALTHNET_DCN, "value": dcn}] if dcn else []
    ids += [{"system": KANCARE_ID, "value": kancare}] if kancare else []
    if ids:
        res["identifier"] = ids
    if state:
        res["address"] = [{"use": "home", "state": state}]
    return res


def cond(icd, clinical="active", verification="confirmed", id=None, **onset):
    """A Condition; `onset` are Condition.onset[x] elements (onsetAge=..., onsetDateTime=...)."""
    return {"resourceType": "Condition", "subject": {"reference": "Patient/m1"},
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": clinical}]},
            "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION,
                                               "code": verification}]},
            "code": {"coding": [{"system": ICD10CM, "code": icd}]},
            **({"id": id} if id else {}), **onset}


def years(n, code="a"):
    return {"value": n, "unit": code, "system": "http://unitsofmeasure.org", "code": code}


def ranked(kind, condition_id, rank=1, status=None, start="2024-01-10"):
    """An EpisodeOfCare or Encounter whose diagnosis of rank `rank` is Condition/<id>."""
    res = {"resourceType": kind, "status": status or ("active" if kind == "EpisodeOfCare"
                                                      else "finished"),
           "subject" if kind == "Encounter" else "patient": {"reference": "Patient/m1"},
           "period": {"start": start},
           "diagnosis": [{"condition": {"reference": f"Condition/{condition_id}"},
                          "rank": rank}]}
    return res


def claim(icd, sequence=1, status="active"):
    return {"resourceType": "Claim", "status": status, "patient": {"reference": "Patient/m1"},
            "created": "2024-02-01",
            "diagnosis": [{"sequence": sequence, "diagnosisCodeableConcept": {
                "coding": [{"system": ICD10CM, "code": icd}]}}]}


def bmi_for_age(percentile, when="2024-05-01"):
    return {"resourceType": "Observation", "status": "final",
            "subject": {"reference": "Patient/m1"},
            "code": {"coding": [{"system": LOINC, "code": "59576-9"}]},
            "effectiveDateTime": when, "valueQuantity": {"value": percentile, "unit": "%"}}


def bmi(value, when="2024-05-01", status="final"):
    return {"resourceType": "Observation", "status": status, "subject": {"reference": "Patient/m1"},
            "code": {"coding": [{"system": LOINC, "code": "39156-5"}]},
            "effectiveDateTime": when, "valueQuantity": {"value": value, "unit": "kg/m2"}}


def smoking(snomed="449868002", when="2024-05-01", status="final"):
    return {"resourceType": "Observation", "status": status, "subject": {"reference": "Patient/m1"},
            "code": {"coding": [{"system": LOINC, "code": "72166-2"}]},
            "effectiveDateTime": when,
            "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": snomed}]}}


def coverage(code="211", start="2023-01-01", end=None, status="active", ident=None,
             payor=None):
    res = {"resourceType": "Coverage", "status": status,
           "beneficiary": {"reference": "Patient/m1"},
           "type": {"coding": [{"system": SOURCE_OF_PAYMENT, "code": code}]},
           "period": {"start": start, **({"end": end} if end else {})}}
    if ident:
        res["identifier"] = [ident]
    if payor:
        res["payor"] = [{"identifier": payor}]
    return res


def member(*extra, pat=None, cov="default"):
    """A Medicaid member (unless cov is given) with the extra Conditions/Observations."""
    covs = [coverage()] if cov == "default" else list(cov or [])
    return [pat or patient(), *covs, *extra]


CHILD = patient(born="2014-02-01")          # 10 on AS_OF
SEVENTEEN = patient(born="2006-06-02")      # 17 (18 tomorrow)
EIGHTEEN = patient(born="2006-06-01")       # 18 today

SCHIZOPHRENIA, BIPOLAR, MDD = "F20.9", "F31.9", "F33.1"
ANXIETY, MH_OTHER, ALCOHOL, NICOTINE = "F41.1", "F99", "F10.20", "F17.210"
ASTHMA, COPD, DIABETES, HTN, CHF = "J45.909", "J44.9", "E11.9", "I10", "I50.9"
AUTISM, HIV, OBESITY_DX, BMI27_DX, CHRONIC_PAIN = "F84.0", "B20", "E66.9", "Z68.27", "G89.4"
EPILEPSY, HEAD_INJURY, CDD, URI = "G40.909", "S06.2X1S", "F84.3", "J06.9"
MO_ELIGIBILITY = {"system": f"{CANONICAL_BASE}/sid/mo-healthnet-eligibility", "value": "1/11/x"}

# (row id, state, resources, program, eligible, rule, basis or None)
ROWS = [
    # ---------------- Missouri CMHC
    ("cmhc smi", "MO", member(cond(SCHIZOPHRENIA)), "mo-cmhc", True, "cmhc-smi", ["smi"]),
    ("cmhc bipolar", "MO", member(cond(BIPOLAR)), "mo-cmhc", True, "cmhc-smi", ["smi"]),
    ("cmhc mh and sud", "MO", member(cond(ANXIETY), cond(ALCOHOL)), "mo-cmhc", True,
     "cmhc-mh-and-sud", ["anxiety", "mental-health", "sud"]),
    ("cmhc mh plus asthma", "MO", member(cond(MH_OTHER), cond(ASTHMA)), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", ["asthma", "mental-health"]),
    ("cmhc sud plus diabetes", "MO", member(cond(ALCOHOL), cond(DIABETES)), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", ["diabetes", "sud"]),
    ("cmhc mh plus hypertension", "MO", member(cond(MH_OTHER), cond(HTN)), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", ["cardiovascular", "hypertension", "mental-health"]),
    ("cmhc mh plus dd", "MO", member(cond(MH_OTHER), cond(AUTISM)), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", None),
    ("cmhc mh plus bmi 27", "MO", member(cond(MH_OTHER), bmi(27)), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", ["mental-health", "overweight"]),
    ("cmhc mh plus smoker obs", "MO", member(cond(MH_OTHER), smoking()), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", ["mental-health", "tobacco"]),
    ("cmhc mh plus F17 nicotine", "MO", member(cond(ANXIETY), cond(NICOTINE)), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", None),
    ("cmhc mh alone", "MO", member(cond(MH_OTHER)), "mo-cmhc", False, "cmhc-no-match", None),
    ("cmhc sud alone", "MO", member(cond(ALCOHOL)), "mo-cmhc", False, "cmhc-no-match", None),
    ("cmhc mh plus hiv (not in list)", "MO", member(cond(MH_OTHER), cond(HIV)), "mo-cmhc",
     False, "cmhc-no-match", None),
    ("cmhc physical only", "MO", member(cond(ASTHMA), cond(DIABETES)), "mo-cmhc", False,
     "cmhc-no-match", None),
    ("cmhc bmi 24 not overweight", "MO", member(cond(MH_OTHER), bmi(24)), "mo-cmhc", False,
     "cmhc-no-match", None),
    ("cmhc bmi exactly 25 not overweight", "MO", member(cond(MH_OTHER), bmi(25)), "mo-cmhc",
     False, "cmhc-no-match", None),
    ("cmhc former smoker", "MO", member(cond(MH_OTHER), smoking("8517006")), "mo-cmhc", False,
     "cmhc-no-match", None),
    ("cmhc latest smoking status wins", "MO",
     member(cond(MH_OTHER), smoking(when="2020-01-01"), smoking("8517006", when="2023-01-01")),
     "mo-cmhc", False, "cmhc-no-match", None),
    ("cmhc smoker after as_of ignored", "MO", member(cond(MH_OTHER), smoking(when="2024-07-01")),
     "mo-cmhc", False, "cmhc-no-match", None),
    ("cmhc resolved smi", "MO", member(cond(SCHIZOPHRENIA, clinical="resolved")), "mo-cmhc",
     False, "cmhc-no-match", None),
    ("cmhc refuted smi", "MO", member(cond(SCHIZOPHRENIA, verification="refuted")), "mo-cmhc",
     False, "cmhc-no-match", None),
    ("cmhc entered in error smi", "MO",
     member(cond(SCHIZOPHRENIA, verification="entered-in-error")), "mo-cmhc", False,
     "cmhc-no-match", None),
    ("cmhc relapse smi counts", "MO", member(cond(SCHIZOPHRENIA, clinical="relapse")), "mo-cmhc",
     True, "cmhc-smi", None),
    ("cmhc recurrence + provisional counts", "MO",
     member(cond(MDD, clinical="recurrence", verification="provisional")), "mo-cmhc", True,
     "cmhc-smi", None),
    ("cmhc no medicaid", "MO", member(cond(SCHIZOPHRENIA), cov=[]), "mo-cmhc", False,
     "mo-medicaid", []),
    ("cmhc commercial only", "MO", member(cond(SCHIZOPHRENIA), cov=[coverage("5")]), "mo-cmhc",
     False, "mo-medicaid", None),
    ("cmhc coverage expired", "MO",
     member(cond(SCHIZOPHRENIA), cov=[coverage(end="2024-05-31")]), "mo-cmhc", False,
     "mo-medicaid", None),
    ("cmhc coverage not yet started", "MO",
     member(cond(SCHIZOPHRENIA), cov=[coverage(start="2024-07-01")]), "mo-cmhc", False,
     "mo-medicaid", None),
    ("cmhc coverage cancelled", "MO",
     member(cond(SCHIZOPHRENIA), cov=[coverage(status="cancelled")]), "mo-cmhc", False,
     "mo-medicaid", None),
    ("cmhc coverage ends on as_of still active", "MO",
     member(cond(SCHIZOPHRENIA), cov=[coverage(end="2024-06-01")]), "mo-cmhc", True,
     "cmhc-smi", None),
    ("cmhc medicaid code 2", "MO", member(cond(SCHIZOPHRENIA), cov=[coverage("2")]), "mo-cmhc",
     True, "cmhc-smi", None),
    ("cmhc medicaid code 29", "MO", member(cond(SCHIZOPHRENIA), cov=[coverage("29")]),
     "mo-cmhc", True, "cmhc-smi", None),
    # coverage: the state's own Medicaid (or its plans), dual eligibles included
    ("cmhc medicaid out of state (25)", "MO", member(cond(SCHIZOPHRENIA), cov=[coverage("25")]),
     "mo-cmhc", False, "mo-medicaid", None),
    ("cmhc dual eligible (14)", "MO", member(cond(SCHIZOPHRENIA), cov=[coverage("14")]),
     "mo-cmhc", True, "cmhc-smi", None),
    ("cmhc KanCare coverage is not MO HealthNet", "MO",
     member(cond(SCHIZOPHRENIA), cov=[coverage("2", ident={"system": KANCARE_ID, "value": "K"})]),
     "mo-cmhc", False, "mo-medicaid", None),
    ("cmhc MO HealthNet coverage identifier", "MO",
     member(cond(SCHIZOPHRENIA), cov=[coverage("2", ident=MO_ELIGIBILITY)]), "mo-cmhc", True,
     "cmhc-smi", None),
    # primary diagnosis (the SMI must be it, where a primary diagnosis is known)
    ("cmhc smi not the primary diagnosis", "MO",
     member(cond(SCHIZOPHRENIA), cond(URI, id="uri"), ranked("Encounter", "uri")), "mo-cmhc",
     False, "cmhc-no-match", None),
    ("cmhc smi primary on an episode", "MO",
     member(cond(SCHIZOPHRENIA, id="scz"), ranked("EpisodeOfCare", "scz")), "mo-cmhc", True,
     "cmhc-smi", ["smi"]),
    ("cmhc smi primary on a claim", "MO", member(cond(SCHIZOPHRENIA), claim(SCHIZOPHRENIA)),
     "mo-cmhc", True, "cmhc-smi", None),
    ("cmhc smi ranked 2 is not primary", "MO",
     member(cond(SCHIZOPHRENIA, id="scz"), cond(URI, id="uri"), ranked("Encounter", "uri"),
            ranked("Encounter", "scz", rank=2)), "mo-cmhc", False, "cmhc-no-match", None),
    ("cmhc entered-in-error encounter ignored", "MO",
     member(cond(SCHIZOPHRENIA), cond(URI, id="uri"),
            ranked("Encounter", "uri", status="entered-in-error")), "mo-cmhc", True,
     "cmhc-smi", None),
    ("cmhc encounter after as_of ignored", "MO",
     member(cond(SCHIZOPHRENIA), cond(URI, id="uri"),
            ranked("Encounter", "uri", start="2024-07-01")), "mo-cmhc", True, "cmhc-smi", None),
    ("cmhc smi not primary, with sud still mh and sud", "MO",
     member(cond(SCHIZOPHRENIA), cond(ALCOHOL), claim(URI)), "mo-cmhc", True,
     "cmhc-mh-and-sud", None),
    # ConceptMap corrections
    ("cmhc F32.A depression unspecified is not smi", "MO", member(cond("F32.A")), "mo-cmhc",
     False, "cmhc-no-match", None),
    ("cmhc F32.89 is not smi", "MO", member(cond("F32.89")), "mo-cmhc", False,
     "cmhc-no-match", None),
    ("cmhc F32.9 major depression is smi", "MO", member(cond("F32.9")), "mo-cmhc", True,
     "cmhc-smi", ["smi"]),
    ("cmhc history of nicotine dependence is not tobacco use", "MO",
     member(cond(MH_OTHER), cond("Z87.891")), "mo-cmhc", False, "cmhc-no-match", None),
    ("cmhc F84.3 in Missouri is not smi", "MO", member(cond(CDD)), "mo-cmhc", False,
     "cmhc-no-match", None),
    ("cmhc mh plus epilepsy, onset unknown", "MO", member(cond(MH_OTHER), cond(EPILEPSY)),
     "mo-cmhc", False, "cmhc-no-match", None),
    ("cmhc mh plus epilepsy, onset age 10", "MO",
     member(cond(MH_OTHER), cond(EPILEPSY, onsetAge=years(10))), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", ["developmental-disability", "mental-health"]),
    ("cmhc mh plus epilepsy, onset 30 months", "MO",
     member(cond(MH_OTHER), cond(EPILEPSY, onsetAge=years(30, "mo"))), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", None),
    ("cmhc mh plus epilepsy, onset age 22", "MO",
     member(cond(MH_OTHER), cond(EPILEPSY, onsetAge=years(22))), "mo-cmhc", False,
     "cmhc-no-match", None),
    ("cmhc mh plus epilepsy, onset date at 21", "MO",
     member(cond(MH_OTHER), cond(EPILEPSY, onsetDateTime="2001-12-01")), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", None),
    ("cmhc mh plus epilepsy, onset date at 30", "MO",
     member(cond(MH_OTHER), cond(EPILEPSY, onsetDateTime="2010-06-01")), "mo-cmhc", False,
     "cmhc-no-match", None),
    ("cmhc mh plus epilepsy, onset period from age 5", "MO",
     member(cond(MH_OTHER), cond(EPILEPSY, onsetPeriod={"start": "1985-04-01"})), "mo-cmhc",
     True, "cmhc-bh-plus-chronic", None),
    ("cmhc mh plus epilepsy, onset range up to 18", "MO",
     member(cond(MH_OTHER), cond(EPILEPSY, onsetRange={"low": years(10), "high": years(18)})),
     "mo-cmhc", True, "cmhc-bh-plus-chronic", None),
    ("cmhc mh plus epilepsy, onset only as text", "MO",
     member(cond(MH_OTHER), cond(EPILEPSY, onsetString="childhood")), "mo-cmhc", False,
     "cmhc-no-match", None),
    ("cmhc mh plus epilepsy, onset date but no birth date", "MO",
     member(cond(MH_OTHER), cond(EPILEPSY, onsetDateTime="1990-01-01"),
            pat={"resourceType": "Patient", "id": "m1"}), "mo-cmhc", False, "cmhc-no-match",
     None),
    ("cmhc mh plus head injury at 16", "MO",
     member(cond(MH_OTHER), cond(HEAD_INJURY, onsetDateTime="1996-07-01")), "mo-cmhc", True,
     "cmhc-bh-plus-chronic", ["developmental-disability", "mental-health"]),
    ("cmhc mh plus head injury, onset unknown", "MO", member(cond(MH_OTHER), cond(HEAD_INJURY)),
     "mo-cmhc", False, "cmhc-no-match", None),

    # ---------------- Missouri PCHH
    ("pchh pediatric asthma", "MO", member(cond(ASTHMA), pat=CHILD), "mo-pchh", True,
     "pchh-single-condition", ["asthma"]),
    ("pchh 17-year-old asthma", "MO", member(cond(ASTHMA), pat=SEVENTEEN), "mo-pchh", True,
     "pchh-single-condition", ["asthma"]),
    ("pchh adult (18) asthma alone", "MO", member(cond(ASTHMA), pat=EIGHTEEN), "mo-pchh",
     False, "pchh-no-match", None),
    ("pchh adult asthma alone", "MO", member(cond(ASTHMA)), "mo-pchh", False, "pchh-no-match",
     None),
    ("pchh diabetes alone", "MO", member(cond(DIABETES)), "mo-pchh", True,
     "pchh-single-condition", ["diabetes"]),
    ("pchh obesity bmi 31", "MO", member(bmi(31)), "mo-pchh", True, "pchh-single-condition",
     ["obesity"]),
    ("pchh obesity E66 code", "MO", member(cond(OBESITY_DX)), "mo-pchh", True,
     "pchh-single-condition", ["obesity"]),
    ("pchh overweight bmi 27 alone", "MO", member(bmi(27)), "mo-pchh", False, "pchh-no-match",
     None),
    ("pchh overweight Z68.27 alone", "MO", member(cond(BMI27_DX)), "mo-pchh", False,
     "pchh-no-match", None),
    ("pchh latest bmi wins (31 then 27)", "MO",
     member(bmi(31, when="2023-01-01"), bmi(27, when="2024-01-01")), "mo-pchh", False,
     "pchh-no-match", None),
    ("pchh preliminary bmi ignored", "MO", member(bmi(27), bmi(31, when="2024-05-20",
                                                            status="preliminary")),
     "mo-pchh", False, "pchh-no-match", None),
    ("pchh amended bmi used", "MO", member(bmi(31, status="amended")), "mo-pchh", True,
     "pchh-single-condition", None),
    ("pchh asthma plus smoking = at risk", "MO", member(cond(ASTHMA), smoking()), "mo-pchh",
     True, "pchh-one-plus-risk", ["asthma", "tobacco"]),
    ("pchh anxiety plus F17 = at risk", "MO", member(cond(ANXIETY), cond(NICOTINE)), "mo-pchh",
     True, "pchh-one-plus-risk", None),
    ("pchh smoking alone", "MO", member(smoking()), "mo-pchh", False, "pchh-no-match", None),
    ("pchh copd plus hypertension", "MO", member(cond(COPD), cond(HTN)), "mo-pchh", True,
     "pchh-two-chronic", ["copd", "cardiovascular", "hypertension"]),
    ("pchh depression plus dd", "MO", member(cond(ANXIETY), cond(AUTISM)), "mo-pchh", True,
     "pchh-two-chronic", None),
    ("pchh sud plus bmi 27", "MO", member(cond(ALCOHOL), bmi(27)), "mo-pchh", True,
     "pchh-two-chronic", ["overweight", "sud"]),
    ("pchh asthma plus copd count once", "MO", member(cond(ASTHMA), cond(COPD)), "mo-pchh",
     False, "pchh-no-match", None),
    ("pchh heart + hypertension count once", "MO", member(cond(HTN), cond(CHF)), "mo-pchh",
     False, "pchh-no-match", None),
    ("pchh chronic pain not listed", "MO", member(cond(CHRONIC_PAIN), cond(HTN)), "mo-pchh",
     False, "pchh-no-match", None),
    # behavioral health conditions are anxiety, depression, substance use disorder
    ("pchh schizophrenia is not a pchh behavioral condition", "MO",
     member(cond(SCHIZOPHRENIA), cond(ASTHMA)), "mo-pchh", False, "pchh-no-match", None),
    ("pchh dementia is not", "MO", member(cond("F03.90"), cond(ASTHMA)), "mo-pchh", False,
     "pchh-no-match", None),
    ("pchh adhd is not", "MO", member(cond("F90.2"), cond(HTN)), "mo-pchh", False,
     "pchh-no-match", None),
    ("pchh other mental health code is not", "MO", member(cond(MH_OTHER), cond(COPD)),
     "mo-pchh", False, "pchh-no-match", None),
    ("pchh major depression plus asthma", "MO", member(cond(MDD), cond(ASTHMA)), "mo-pchh",
     True, "pchh-two-chronic", ["asthma", "depression"]),
    ("pchh depression unspecified plus copd", "MO", member(cond("F32.A"), cond(COPD)), "mo-pchh",
     True, "pchh-two-chronic", ["copd", "depression"]),
    # weight: E66.3 and Z68.53 are overweight, not obesity
    ("pchh E66.3 overweight alone", "MO", member(cond("E66.3")), "mo-pchh", False,
     "pchh-no-match", None),
    ("pchh E66.3 plus asthma", "MO", member(cond("E66.3"), cond(ASTHMA)), "mo-pchh", True,
     "pchh-two-chronic", ["asthma", "overweight"]),
    ("pchh child Z68.53 (85th-<95th) alone", "MO", member(cond("Z68.53"), pat=CHILD), "mo-pchh",
     False, "pchh-no-match", None),
    ("pchh child Z68.54 (>=95th)", "MO", member(cond("Z68.54"), pat=CHILD), "mo-pchh", True,
     "pchh-single-condition", ["obesity"]),
    # children's weight is BMI-for-age, not adult BMI
    ("pchh child bmi-for-age 96th = obesity", "MO", member(bmi_for_age(96), pat=CHILD),
     "mo-pchh", True, "pchh-single-condition", ["obesity"]),
    ("pchh child bmi-for-age 95th = obesity", "MO", member(bmi_for_age(95), pat=SEVENTEEN),
     "mo-pchh", True, "pchh-single-condition", ["obesity"]),
    ("pchh child bmi-for-age 90th is overweight only", "MO", member(bmi_for_age(90), pat=CHILD),
     "mo-pchh", False, "pchh-no-match", None),
    ("pchh child bmi-for-age 90th + hypertension", "MO",
     member(bmi_for_age(90), cond(HTN), pat=CHILD), "mo-pchh", True, "pchh-two-chronic",
     ["cardiovascular", "hypertension", "overweight"]),
    ("pchh child adult bmi 31 is not obesity", "MO", member(bmi(31), pat=CHILD), "mo-pchh",
     False, "pchh-no-match", None),
    ("pchh adult bmi-for-age ignored", "MO", member(bmi_for_age(99)), "mo-pchh", False,
     "pchh-no-match", None),
    # heart disease ranges
    ("pchh copd plus cardiomyopathy I42", "MO", member(cond(COPD), cond("I42.9")), "mo-pchh",
     True, "pchh-two-chronic", ["cardiovascular", "copd"]),
    # CHIP: the Missouri seeds are silent; the default follows "a state plan service"
    ("pchh CHIP child", "MO", member(cond(ASTHMA), pat=CHILD, cov=[coverage("23")]), "mo-pchh",
     False, "mo-no-chip", None),
    ("pchh CHIP and Medicaid", "MO",
     member(cond(ASTHMA), pat=CHILD, cov=[coverage("23"), coverage("2")]), "mo-pchh", True,
     "pchh-single-condition", None),
    ("pchh no medicaid", "MO", member(cond(DIABETES), cov=[]), "mo-pchh", False, "mo-medicaid",
     None),
    ("pchh resolved diabetes", "MO", member(cond(DIABETES, clinical="resolved")), "mo-pchh",
     False, "pchh-no-match", None),
    ("pchh inactive diabetes", "MO", member(cond(DIABETES, clinical="inactive")), "mo-pchh",
     False, "pchh-no-match", None),

    # ---------------- KanCare SMI
    ("ks smi schizophrenia", "KS", member(cond(SCHIZOPHRENIA)), "ks-smi", True,
     "ks-smi-primary", ["smi"]),
    ("ks smi major depression", "KS", member(cond(MDD)), "ks-smi", True, "ks-smi-primary",
     ["smi"]),
    ("ks smi with co-occurring sud", "KS", member(cond(SCHIZOPHRENIA), cond(ALCOHOL)), "ks-smi",
     False, "ks-smi-cooccurring-sud", ["smi", "sud"]),
    ("ks smi with resolved sud", "KS",
     member(cond(SCHIZOPHRENIA), cond(ALCOHOL, clinical="resolved")), "ks-smi", True,
     "ks-smi-primary", None),
    ("ks smi anxiety is not smi", "KS", member(cond(ANXIETY)), "ks-smi", False,
     "ks-smi-no-match", None),
    ("ks smi F32.A is not major depression", "KS", member(cond("F32.A")), "ks-smi", False,
     "ks-smi-no-match", None),
    ("ks smi child disintegrative disorder", "KS", member(cond(CDD)), "ks-smi", True,
     "ks-smi-primary", ["smi"]),
    ("ks smi not the primary diagnosis", "KS",
     member(cond(BIPOLAR), cond(ASTHMA, id="a"), ranked("Encounter", "a")), "ks-smi", False,
     "ks-smi-no-match", None),
    ("ks smi primary on an encounter", "KS",
     member(cond(BIPOLAR, id="b"), ranked("Encounter", "b")), "ks-smi", True, "ks-smi-primary",
     None),
    ("ks smi out-of-state medicaid (25)", "KS", member(cond(SCHIZOPHRENIA), cov=[coverage("25")]),
     "ks-smi", False, "ks-medicaid", None),
    ("ks smi MO HealthNet coverage", "KS",
     member(cond(SCHIZOPHRENIA), cov=[coverage("2", ident=MO_ELIGIBILITY)]), "ks-smi", False,
     "ks-medicaid", None),
    ("ks smi MO HealthNet plan as payor", "KS",
     member(cond(SCHIZOPHRENIA), cov=[coverage("211", payor={
         "system": f"{CANONICAL_BASE}/sid/mo-healthnet-mco-plan", "value": "100000029"})]),
     "ks-smi", False, "ks-medicaid", None),
    ("ks smi dual eligible (14)", "KS", member(cond(SCHIZOPHRENIA), cov=[coverage("14")]),
     "ks-smi", True, "ks-smi-primary", None),
    ("ks smi CHIP", "KS", member(cond(SCHIZOPHRENIA), pat=CHILD, cov=[coverage("23")]),
     "ks-smi", False, "ks-no-chip", None),
    ("ks smi no medicaid", "KS", member(cond(SCHIZOPHRENIA), cov=[]), "ks-smi", False,
     "ks-medicaid", None),
    ("ks smi expired coverage", "KS",
     member(cond(SCHIZOPHRENIA), cov=[coverage(end="2024-01-31")]), "ks-smi", False,
     "ks-medicaid", None),
    ("ks smi expired CHIP, active medicaid", "KS",
     member(cond(SCHIZOPHRENIA), cov=[coverage("23", end="2023-12-31"), coverage("2")]),
     "ks-smi", True, "ks-smi-primary", None),

    # ---------------- KanCare CC (federal criteria)
    ("ks cc one smi", "KS", member(cond(BIPOLAR)), "ks-cc", True, "ks-cc-smi", ["smi"]),
    ("ks cc smi with sud still cc", "KS", member(cond(SCHIZOPHRENIA), cond(ALCOHOL)), "ks-cc",
     True, "ks-cc-smi", None),
    ("ks cc asthma plus diabetes", "KS", member(cond(ASTHMA), cond(DIABETES)), "ks-cc", True,
     "ks-cc-two-chronic", ["asthma", "diabetes"]),
    ("ks cc hiv plus bmi 27", "KS", member(cond(HIV), bmi(27)), "ks-cc", True,
     "ks-cc-two-chronic", ["hiv", "overweight"]),
    ("ks cc sud plus heart disease", "KS", member(cond(ALCOHOL), cond(CHF)), "ks-cc", True,
     "ks-cc-two-chronic", ["cardiovascular", "sud"]),
    ("ks cc asthma plus smoking = at risk", "KS", member(cond(ASTHMA), smoking()), "ks-cc",
     True, "ks-cc-one-plus-risk", ["asthma", "tobacco"]),
    ("ks cc diabetes alone", "KS", member(cond(DIABETES)), "ks-cc", False, "ks-cc-no-match",
     None),
    ("ks cc smoking alone", "KS", member(smoking()), "ks-cc", False, "ks-cc-no-match", None),
    ("ks cc copd plus dd not federal", "KS", member(cond(COPD), cond(AUTISM)), "ks-cc", False,
     "ks-cc-no-match", None),
    ("ks cc hypertension + chf count once", "KS", member(cond(HTN), cond(CHF)), "ks-cc", False,
     "ks-cc-no-match", None),
    ("ks cc history of nicotine is no risk", "KS", member(cond(ASTHMA), cond("Z87.891")), "ks-cc",
     False, "ks-cc-no-match", None),
    ("ks cc asthma plus atrial fibrillation", "KS", member(cond(ASTHMA), cond("I48.91")), "ks-cc",
     True, "ks-cc-two-chronic", ["asthma", "cardiovascular"]),
    ("ks cc asthma plus valve disease I35", "KS", member(cond(ASTHMA), cond("I35.0")), "ks-cc",
     True, "ks-cc-two-chronic", ["asthma", "cardiovascular"]),
    ("ks cc CHIP", "KS", member(cond(ASTHMA), cond(DIABETES), pat=CHILD, cov=[coverage("23")]),
     "ks-cc", False, "ks-no-chip", None),
    ("ks cc no medicaid", "KS", member(cond(ASTHMA), cond(DIABETES), cov=[]), "ks-cc", False,
     "ks-medicaid", None),

    # ---------------- state derivation (state=None)
    ("derive MO from DCN", None, member(cond(SCHIZOPHRENIA), pat=patient(dcn="12345678")),
     "mo-cmhc", True, "cmhc-smi", None),
    ("derive KS from KanCare ID", None,
     member(cond(SCHIZOPHRENIA), pat=patient(kancare="K0001")), "ks-smi", True,
     "ks-smi-primary", None),
    ("derive KS from Coverage identifier", None,
     member(cond(SCHIZOPHRENIA), cov=[coverage(ident={"system": KANCARE_ID, "value": "K1"})]),
     "ks-smi", True, "ks-smi-primary", None),
    ("derive MO from address", None, member(cond(DIABETES), pat=patient(state="MO")),
     "mo-pchh", True, "pchh-single-condition", None),
    ("derive KS from address name", None, member(cond(DIABETES), pat=patient(state="Kansas")),
     "ks-cc", False, "ks-cc-no-match", None),
    ("derive: identifier beats address", None,
     member(cond(SCHIZOPHRENIA), pat=patient(state="KS", dcn="1")), "mo-cmhc", True,
     "cmhc-smi", None),
]


@pytest.mark.parametrize("state, resources, program, eligible, rule, basis",
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_rule_table(state, resources, program, eligible, rule, basis):
    result = evaluate(resources, state=state, as_of=AS_OF)
    verdict = result.program(program)
    assert (verdict.eligible, verdict.rule) == (eligible, rule), verdict.explanation
    if basis is not None:
        assert verdict.basis == sorted(basis)
    assert verdict.explanation and verdict.source
    assert ".txt" in verdict.explanation  # cites a seed


def _rule_ids(kind=("rules", "gates", "exclusions")):
    ids = set()
    for path in RULES_DIR.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        ids |= {g["id"] for g in doc.get("gates") or []}
        for program in doc.get("programs", []):
            for key in kind:
                ids |= {r["id"] for r in program.get(key) or []}
            ids.add(program["no_match"]["id"])
    return ids


def test_table_covers_every_rule_positive_and_negative():
    """Every rule id of every file appears in the table; every program has both outcomes."""
    assert _rule_ids() <= {row[5] for row in ROWS}
    for program in ("mo-cmhc", "mo-pchh", "ks-smi", "ks-cc"):
        assert {row[4] for row in ROWS if row[3] == program} == {True, False}


def test_every_rule_cites_a_seed():
    seeds = {"kancare-health-homes-program-manual.txt", "mo-dmh-behavioral-health-homes.txt",
             "mo-health-care-home-2012.txt", "mo-healthnet-health-homes-and-dd-coordination.txt",
             "mo-primary-care-health-homes.txt"}
    for path in RULES_DIR.glob("*.yaml"):
        if path.name == "facts.yaml":
            continue
        doc = yaml.safe_load(path.read_text())
        items = list(doc.get("gates") or []) + list(doc.get("mutually_exclusive") or [])
        for program in doc["programs"]:
            for key in ("gates", "rules", "exclusions"):
                items += program.get(key) or []
        for item in items:
            assert any(seed in item["source"] for seed in seeds), item["id"]


def test_evaluation_shape_and_program_order():
    result = evaluate(member(cond(ANXIETY), cond(ALCOHOL), bmi(31)), "mo", AS_OF)
    assert result.state == "MO" and result.as_of == AS_OF and result.age == 44
    assert result.medicaid is True and result.chip is False
    assert result.categories == ["anxiety", "mental-health", "obesity", "overweight", "sud"]
    assert [p.code for p in result.programs] == ["mo-cmhc", "mo-pchh"]
    assert [p.code for p in evaluate(member(), "KS", AS_OF).programs] == ["ks-smi", "ks-cc"]
    pchh = result.program("mo-pchh")
    assert pchh.rule == "pchh-single-condition" and "pchh-two-chronic" in pchh.also_met
    assert "Also meets" in pchh.explanation
    assert result.to_dict()["as_of"] == "2024-06-01"


def test_kansas_both_programs_reported_with_choose_one_note():
    result = evaluate(member(cond(SCHIZOPHRENIA)), "KS", AS_OF)
    assert all(p.eligible for p in result.programs)
    assert result.notes and "only one" in result.notes[0]
    assert all("only one" in p.explanation for p in result.programs)
    single = evaluate(member(cond(ASTHMA), cond(DIABETES)), "KS", AS_OF)
    assert not single.notes and "only one" not in single.program("ks-cc").explanation


def test_chip_flag_and_missouri_chip_only_is_not_medicaid():
    result = evaluate(member(cond(ASTHMA), pat=CHILD, cov=[coverage("23")]), "MO", AS_OF)
    assert (result.medicaid, result.chip) == (False, True)
    verdict = result.program("mo-pchh")
    assert verdict.rule == "mo-no-chip" and "silent" in verdict.source


def test_missouri_chip_is_one_setting_in_mo_yaml(tmp_path):
    """The seeds are silent on CHIP in Missouri: admitting it is an edit of mo.yaml."""
    for path in RULES_DIR.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    mo = yaml.safe_load((tmp_path / "mo.yaml").read_text())
    mo["gates"] = [g for g in mo["gates"] if g["id"] != "mo-no-chip"]
    mo["gates"][0]["when"] = {"any_of": ["medicaid", "chip"]}
    (tmp_path / "mo.yaml").write_text(yaml.safe_dump(mo))
    chip_child = member(cond(ASTHMA), pat=CHILD, cov=[coverage("23")])
    verdict = evaluate(chip_child, "MO", AS_OF,
                       files=RuleFiles(str(tmp_path))).program("mo-pchh")
    assert (verdict.eligible, verdict.rule) == (True, "pchh-single-condition")


@pytest.mark.parametrize("code", ["I05.0", "I06.9", "I07.1", "I08.0", "I09.81", "I26.99",
                                  "I27.20", "I28.0", "I30.9", "I34.0", "I35.0", "I36.8",
                                  "I37.0", "I42.0", "I44.7", "I45.10", "I46.9", "I47.1",
                                  "I49.9", "I51.7", "I73.9"])
def test_heart_disease_ranges_are_cardiovascular(code):
    assert evaluate(member(cond(code)), "MO", AS_OF).categories == ["cardiovascular"]


def test_onset_not_verified_is_explained_in_every_verdict():
    result = evaluate(member(cond(MH_OTHER), cond(EPILEPSY)), "MO", AS_OF)
    assert "developmental-disability" not in result.categories
    for verdict in result.programs:
        assert "G40.909 is not counted as developmental-disability" in verdict.explanation
        assert "onset was not verified" in verdict.explanation
        assert "before age 22" in verdict.explanation
    late = evaluate(member(cond(MH_OTHER), cond(EPILEPSY, onsetAge=years(40))), "MO", AS_OF)
    assert "onset at age 40" in late.program("mo-cmhc").explanation
    # another diagnosis brings the category: nothing to explain
    both = evaluate(member(cond(MH_OTHER), cond(EPILEPSY), cond(AUTISM)), "MO", AS_OF)
    assert "not counted" not in both.program("mo-cmhc").explanation


def test_primary_diagnosis_not_verified_is_explained():
    unknown = evaluate(member(cond(SCHIZOPHRENIA)), "MO", AS_OF).program("mo-cmhc")
    assert unknown.rule == "cmhc-smi"
    assert "primary diagnosis was not verified" in unknown.explanation
    known = evaluate(member(cond(SCHIZOPHRENIA, id="s"), ranked("EpisodeOfCare", "s")), "MO",
                     AS_OF).program("mo-cmhc")
    assert known.rule == "cmhc-smi" and "not verified" not in known.explanation
    ks = evaluate(member(cond(SCHIZOPHRENIA)), "KS", AS_OF).program("ks-smi")
    assert "primary diagnosis was not verified" in ks.explanation
    # a rule that does not ask for the primary diagnosis says nothing about it
    other = evaluate(member(cond(ANXIETY), cond(ALCOHOL)), "MO", AS_OF).program("mo-cmhc")
    assert other.rule == "cmhc-mh-and-sud" and "primary" not in other.explanation


def test_other_patients_resources_ignored():
    other = cond(SCHIZOPHRENIA)
    other["subject"] = {"reference": "Patient/someone-else"}
    assert evaluate(member(other), "MO", AS_OF).program("mo-cmhc").rule == "cmhc-no-match"


def test_as_of_defaults_to_today_and_accepts_iso_string():
    assert evaluate(member(), "MO").as_of == date.today()
    assert evaluate(member(), "MO", "2024-06-01").as_of == AS_OF


@pytest.mark.parametrize("resources, state, as_of, where", [
    ([coverage()], "MO", AS_OF, "Patient"),
    ([patient(), patient()], "MO", AS_OF, "Patient"),
    (member(), "TX", AS_OF, "state"),
    (member(), "MO", "2024-13-45", "as_of"),
    (member(pat=patient(born="not-a-date")), "MO", AS_OF, "Patient.birthDate"),
    (member(cov=[coverage(end="someday")]), "MO", AS_OF, "Coverage.period.end"),
    (member(), None, AS_OF, "state"),                               # nothing to derive from
    (member(pat=patient(dcn="1", kancare="2")), None, AS_OF, "state"),  # ambiguous
    ("not a list", "MO", AS_OF, "resources"),
])
def test_bad_input_raises(resources, state, as_of, where):
    with pytest.raises(EligibilityInputError) as err:
        evaluate(resources, state, as_of)
    assert err.value.where == where and err.value.message


def test_a_state_changes_a_rule_without_code(tmp_path):
    """Copy the rules, lower the pediatric age to 12 and drop obesity: the verdicts follow."""
    for path in RULES_DIR.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    facts = yaml.safe_load((tmp_path / "facts.yaml").read_text())
    facts["pediatric_age"] = 12
    (tmp_path / "facts.yaml").write_text(yaml.safe_dump(facts))
    mo = yaml.safe_load((tmp_path / "mo.yaml").read_text())
    single = mo["programs"][1]["rules"][0]
    single["when"]["any_of"] = [c for c in single["when"]["any_of"] if c != "obesity"]
    (tmp_path / "mo.yaml").write_text(yaml.safe_dump(mo))

    teen_asthma = member(cond(ASTHMA), pat=patient(born="2010-01-01"))  # 14
    assert evaluate(teen_asthma, "MO", AS_OF).program("mo-pchh").eligible
    edited = RuleFiles(str(tmp_path))
    changed = evaluate(teen_asthma, "MO", AS_OF, files=edited).program("mo-pchh")
    assert (changed.eligible, changed.rule) == (False, "pchh-no-match")
    obese = evaluate(member(bmi(31)), "MO", AS_OF, files=edited).program("mo-pchh")
    assert obese.eligible is False


@pytest.mark.parametrize("edit, message", [
    (lambda mo: mo["programs"][0]["rules"][0].update(when="schizo"), "unknown name"),
    (lambda mo: mo["programs"][0]["rules"][0].update(when={"some_of": ["smi"]}), "condition"),
    (lambda mo: mo["programs"][0]["rules"][0].pop("source"), "no source"),
    (lambda mo: mo["programs"][0]["rules"][1].update(id="cmhc-smi"), "duplicate"),
    (lambda mo: mo["programs"][0]["rules"][0].update(when={"primary": ["smi"]}), "primary"),
])
def test_rule_files_are_checked_on_load(tmp_path, edit, message):
    for path in RULES_DIR.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    mo = yaml.safe_load((tmp_path / "mo.yaml").read_text())
    edit(mo)
    (tmp_path / "mo.yaml").write_text(yaml.safe_dump(mo))
    with pytest.raises(RuleFileError, match=message):
        load_rules(str(tmp_path))


def test_shipped_rules_load():
    rules = load_rules(str(RULES_DIR))
    assert set(rules.states) == {"MO", "KS"}
    assert Path(RULES_DIR / "facts.yaml").exists()
