"""The synthetic population: one generator of people, for the demo, `synth` and the tests.

Why: no real member data may be used, so tests, demos and benchmarks need people who look
like the real population: adults and children, people served by the Division of DD (a
CIMOR DD episode with provider type 15 or 85 and a support coordinator; CyberAccess claim
lines with provider type 15 and 85), both Missouri Health Home programs (CMHC, PCHH),
people not enrolled, and the two sources disagreeing now and then, as real feeds do.
Missouri people are written as CIMOR and CyberAccess extracts (here), which reach FHIR
through the adapters and mappings; Kansas people (`Knobs(state="KS")`: KanCare IDs, the
SMI and Chronic Conditions Health Homes, CHIP children) have no source system with an
extract, so `fhir_gateway/demo.py` writes them as FHIR.

Everything is deterministic for a seed (same seed and size -> the same bytes; the first n
people do not depend on how many follow), fake (names from short lists, 555-01xx phone
numbers, NPIs with a valid check digit from made-up organisations) and streamed
(`lxml.etree.xmlfile`), so a million members need no more memory than ten.

    python -m fhir_gateway.adapters.synth --members 1000 --out /tmp/extracts
    python -m fhir_gateway.adapters.synth --samples    # rewrites adapters/*/sample.xml

The knobs (`Knobs`) are the rates of each kind of person; README.md of each adapter lists
them too.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from lxml import etree

from fhir_gateway.adapters.cimor.parser import NAMESPACE as CIMOR_NS
from fhir_gateway.adapters.cyberaccess.parser import NAMESPACE as CA_NS

MAX_MEMBERS = 1_100_000  # 7-digit consumer ids run out beyond this


@dataclass(frozen=True)
class Knobs:
    """Population mix. Rates are probabilities per person unless said otherwise."""

    as_of: date = date(2025, 1, 31)  # "today" of the extract; all dates fall before it
    child_rate: float = 0.25         # under 18
    dd_rate: float = 0.20            # served by the Division of DD
    waiver_rate: float = 0.50        # of DD people aged 3+: on an HCBS waiver (type 85), else TCM only (15)
    bh_rate: float = 0.40            # open (or past) behavioral-health episode in CIMOR
    enrolled_rate: float = 0.55      # Health Home enrolled (of people with a qualifying condition)
    disenrolled_rate: float = 0.08   # Health Home enrollment ended
    disagree_rate: float = 0.10      # of enrolled people: CIMOR and CyberAccess disagree
    disagreements: tuple[str, ...] = ("cimor-indicator-n", "cyberaccess-not-enrolled",
                                      "provider", "start-date")
    state: str = "MO"                # "KS": KanCare members (see STATES)
    chip_rate: float = 0.40          # of Kansas children: in KanCare's CHIP portion


# ------------------------------------------------------------------ small fake vocabularies

LAST = ["Abernathy", "Brightwater", "Calloway", "Dunmore", "Ellsworth", "Fairbanks", "Galloway",
        "Hollister", "Ingram", "Jessup", "Kettering", "Lockhart", "Merriweather", "Norwood",
        "Oakes", "Pemberton", "Quintrell", "Rutherford", "Stanhope", "Thornbury", "Underhill",
        "Vance", "Whitcombe", "Yardley"]
FIRST = {"F": ["Ada", "Beatrix", "Clara", "Delia", "Eloise", "Frances", "Greta", "Hazel", "Iris",
               "June", "Lena", "Mabel", "Nora", "Opal", "Ruth", "Vera"],
         "M": ["Abel", "Boyd", "Clyde", "Dale", "Emmett", "Floyd", "Gus", "Homer", "Ira", "Jasper",
               "Lyle", "Milo", "Ned", "Otis", "Rex", "Wade"]}
STREETS = ["Elm St", "Oak Ave", "Maple Dr", "Cedar Ln", "Walnut St", "Hickory Rd", "Sycamore Ct",
           "Persimmon Way", "Dogwood Pl", "Bluebird Ln"]
# (city, county, zip, area code): real Missouri places, fake streets.
PLACES = [("Columbia", "Boone", "65201", "573"), ("Jefferson City", "Cole", "65101", "573"),
          ("Springfield", "Greene", "65806", "417"), ("Kansas City", "Jackson", "64106", "816"),
          ("St. Louis", "St. Louis City", "63103", "314"), ("Joplin", "Jasper", "64801", "417"),
          ("Cape Girardeau", "Cape Girardeau", "63701", "573"), ("Kirksville", "Adair", "63501", "660"),
          ("Rolla", "Phelps", "65401", "573"), ("Sedalia", "Pettis", "65301", "660"),
          ("Hannibal", "Marion", "63401", "573"), ("St. Joseph", "Buchanan", "64501", "816")]
KS_PLACES = [("Wichita", "Sedgwick", "67202", "316"), ("Topeka", "Shawnee", "66603", "785"),
             ("Kansas City", "Wyandotte", "66101", "913"), ("Lawrence", "Douglas", "66044", "785"),
             ("Salina", "Saline", "67401", "785")]

# (code, description). Illustrative ME codes: not MO HealthNet's ME code table.
ME_ADULT = [("04", "Permanent and Total Disability"), ("11", "MO HealthNet for Families - Adult"),
            ("86", "Adult Expansion Group")]
ME_CHILD = [("71", "MO HealthNet for Kids"), ("73", "CHIP - MO HealthNet for Kids"),
            ("40", "Children in Care")]
PLANS = [("Gateway Sample Health Plan", "100000011"), ("Show-Me Sample Care", "100000029"),
         ("Prairie Sample Health", "100000037")]

DX_SMI = [("F20.9", "Schizophrenia, unspecified"), ("F25.0", "Schizoaffective disorder, bipolar type"),
          ("F31.9", "Bipolar disorder, unspecified"),
          ("F33.1", "Major depressive disorder, recurrent, moderate"),
          ("F43.10", "Post-traumatic stress disorder, unspecified")]
DX_SUD = [("F10.20", "Alcohol dependence, uncomplicated"), ("F11.20", "Opioid dependence, uncomplicated"),
          ("F12.20", "Cannabis dependence, uncomplicated")]
DX_CHRONIC = [("E11.9", "Type 2 diabetes mellitus without complications"), ("I10", "Essential (primary) hypertension"),
              ("J45.909", "Unspecified asthma, uncomplicated"), ("J44.9", "Chronic obstructive pulmonary disease, unspecified"),
              ("E66.9", "Obesity, unspecified"), ("F17.210", "Nicotine dependence, cigarettes, uncomplicated")]
DX_CHILD = [("J45.909", "Unspecified asthma, uncomplicated"), ("E66.9", "Obesity, unspecified"),
            ("F90.2", "Attention-deficit hyperactivity disorder, combined type")]
DX_DD = [("F70", "Mild intellectual disabilities"), ("F71", "Moderate intellectual disabilities"),
         ("F84.0", "Autistic disorder"), ("G80.9", "Cerebral palsy, unspecified"),
         ("Q90.9", "Down syndrome, unspecified"), ("G40.909", "Epilepsy, unspecified, not intractable")]

PROGRAMS = {"CPR": "Community Psychiatric Rehabilitation",
            "CSTAR": "Comprehensive Substance Treatment and Rehabilitation",
            "OUTPT": "Outpatient Treatment", "DD-ELIG": "DD Eligibility and Intake",
            "DD-TCM": "Targeted Case Management", "DD-WAIVER": "HCBS Waiver Services"}

# HCPCS/CPT billed on waiver (type 85) lines; residential habilitation only on Comprehensive.
WAIVER_PROCEDURES = {"comprehensive": ["T2017", "T2021", "S5150"], "community-support": ["T2021", "S5150"],
                     "partnership-for-hope": ["T2021", "S5150"], "lopez": ["S5150", "T2021"],
                     "autism": ["97153", "S5150"]}

# Provider types other than 15 (TCM) and 85 (waiver) are placeholders of this project,
# not taken from MO HealthNet's provider-type table.
PT_TCM, PT_WAIVER, PT_CLINIC, PT_BEHAVIORAL = "15", "85", "20", "11"


def npi(base: int) -> str:
    """A 10-digit NPI whose last digit is the Luhn check digit (prefix 80840, as CMS does)."""
    digits = f"{base:09d}"
    total = 24  # the constant contribution of the 80840 prefix
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


def _orgs(names: list[str], start: int) -> list[tuple[str, str]]:
    return [(name, npi(start + 7 * n)) for n, name in enumerate(names)]


HH_PROVIDERS = {
    "CMHC": _orgs(["Bluff Country Behavioral Health", "Little Dixie Community Mental Health Center",
                   "Osage Valley Counseling Services", "Riverbend Mental Health Center"], 170000001),
    "PCHH": _orgs(["Meramec Family Health Clinic", "Northland Community Health Center",
                   "Ozark Hills Primary Care", "Salt River Rural Health Clinic"], 180000003),
}
# KanCare Health Home Partners: the same partners run both Kansas programs
HH_PROVIDERS["SMI"] = HH_PROVIDERS["CC"] = _orgs(["Flint Hills Health Home Partner",
                                                  "Smoky Hill Care Coordination"], 160000005)
KS_MCOS = _orgs(["Tallgrass Sample Health Plan", "Prairie Wind Sample Care"], 130000001)


@dataclass(frozen=True)
class State:
    """What differs between the states' people: places, member id, Health Home programs."""

    places: list[tuple[str, str, str, str]]
    first_id: int   # member ids count up from here, `id_digits` long
    id_digits: int
    programs: tuple[str, str]  # (for behavioral health, for chronic conditions)


STATES = {"MO": State(PLACES, 10_000_000, 8, ("CMHC", "PCHH")),  # MO HealthNet DCN
          "KS": State(KS_PLACES, 10_000_000_000, 11, ("SMI", "CC"))}  # KanCare ID
TCM_AGENCIES = _orgs(["Big Muddy Support Coordination", "Ozark Foothills TCM Services",
                      "Three Rivers DD Resource Board", "Prairie Trails Regional Office"], 150000007)
WAIVER_PROVIDERS = _orgs(["Hearthstone Residential Supports", "Bright Path Day Services",
                          "Kestrel Respite Partners"], 190000009)
CLINICS = _orgs(["Cottonwood Family Medicine", "Lakeside Internal Medicine"], 120000005)


# ------------------------------------------------------------------ one synthetic person

@dataclass
class Enrollment:
    program: str
    provider: tuple[str, str]
    start: date
    end: date | None = None


@dataclass
class Person:
    dcn: str                        # the member id: MO HealthNet DCN, or KanCare ID in Kansas
    consumer_id: str
    sex: str
    last: str
    first: str
    middle: str | None
    birth: date
    place: tuple[str, str, str, str]
    line1: str
    line2: str | None
    eligible_from: date             # start of MO HealthNet eligibility (first segment)
    dd: dict | None = None          # {"type": "15"|"85", "waiver", "dx", "admitted", "reason", "sc"}
    bh: list[dict] = field(default_factory=list)  # episodes
    chronic: list[tuple[str, str]] = field(default_factory=list)
    hh: Enrollment | None = None    # the truth (CyberAccess view)
    hh_status: str = "Not Enrolled"
    cimor_hh: Enrollment | None = None  # what CIMOR shows (differs on disagreement)
    cimor_indicator: str = "N"
    disagreement: str | None = None
    chip: bool = False              # Kansas: in the CHIP portion of KanCare (no Health Home)


def _day(rng: random.Random, start: date, end: date) -> date:
    span = (end - start).days
    return start + timedelta(days=rng.randint(0, max(span, 0)))


def _age(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def make_person(i: int, rng: random.Random, k: Knobs) -> Person:
    """Person number i; draws from rng in a fixed order so the output is reproducible."""
    sex = "U" if rng.random() < 0.01 else rng.choice("FM")
    child = rng.random() < k.child_rate
    years = rng.randint(1, 17) if child else rng.randint(18, 84)
    birth = k.as_of - timedelta(days=years * 365 + rng.randint(0, 364))
    state = STATES[k.state]
    place = rng.choice(state.places)
    p = Person(dcn=f"{state.first_id + i * 37 + rng.randint(0, 36):0{state.id_digits}d}",
               consumer_id=f"{1_000_000 + i * 8 + rng.randint(0, 7):07d}",
               sex=sex, last=rng.choice(LAST), first=rng.choice(FIRST[rng.choice("FM") if sex == "U" else sex]),
               middle=rng.choice(FIRST["F"] + FIRST["M"])[0] if rng.random() < 0.4 else None,
               birth=birth, place=place,
               line1=f"{rng.randint(100, 9899)} {rng.choice(STREETS)}",
               line2=f"Apt {rng.randint(1, 40)}" if rng.random() < 0.2 else None,
               eligible_from=max(birth, k.as_of - timedelta(days=365 * 8 - rng.randint(0, 365 * 5))))
    age = _age(birth, k.as_of)
    if k.state == "KS" and age < 18:
        p.chip = rng.random() < k.chip_rate
    if rng.random() < k.dd_rate:
        p.dd = _dd(rng, k, p, age)
    if age >= 12 and rng.random() < k.bh_rate:
        p.bh = _bh(rng, k, p)
    pool = DX_CHILD if age < 18 else DX_CHRONIC
    p.chronic = rng.sample(pool, rng.randint(0 if (p.bh or p.dd) else 1, 2))
    _health_home(rng, k, p)
    return p


def _dd(rng: random.Random, k: Knobs, p: Person, age: int) -> dict:
    """A Division of DD episode: TCM only (type 15) or a waiver (type 85)."""
    dx = rng.choice(DX_DD if age >= 3 else [d for d in DX_DD if d[0] != "F84.0"])
    waiver = None
    if age >= 3 and rng.random() < k.waiver_rate:
        if age <= 18 and dx[0] == "F84.0":
            waiver = "autism"
        elif age < 18:
            waiver = rng.choice(["lopez", "community-support", "partnership-for-hope"])
        else:
            waiver = rng.choice(["comprehensive", "community-support", "partnership-for-hope"])
    earliest = p.birth + timedelta(days=365 * min(age, 3))
    agency = rng.choice(TCM_AGENCIES)
    coordinator = f"{rng.choice(FIRST['F'] + FIRST['M'])} {rng.choice(LAST)}"
    return {"type": PT_WAIVER if waiver else PT_TCM, "waiver": waiver, "dx": dx,
            "admitted": _day(rng, max(earliest, k.as_of - timedelta(days=365 * 15)), k.as_of - timedelta(days=30)),
            "reason": "Administrative Transfer" if rng.random() < 0.1 else "DD Intake and Evaluation",
            "agency": agency, "coordinator": coordinator,
            "phone": f"{p.place[3]}-555-{rng.randint(100, 199):04d}",
            "waiver_provider": rng.choice(WAIVER_PROVIDERS) if waiver else None}


def _bh(rng: random.Random, k: Knobs, p: Person) -> list[dict]:
    """One open behavioral-health episode, sometimes after an older, discharged one."""
    episodes = []
    start = max(p.birth + timedelta(days=365 * 12), k.as_of - timedelta(days=365 * 10))
    if rng.random() < 0.3 and start <= k.as_of - timedelta(days=400):
        admitted = _day(rng, start, k.as_of - timedelta(days=400))
        episodes.append({"admitted": admitted, "discharged": _day(rng, admitted + timedelta(days=30), k.as_of - timedelta(days=200))})
        start = episodes[-1]["discharged"] + timedelta(days=1)
    episodes.append({"admitted": _day(rng, start, k.as_of - timedelta(days=14)), "discharged": None})
    for ep in episodes:
        ep["reason"] = rng.choices(["Criteria Met", "Court Ordered", "Commitment", "Administrative Transfer"],
                                   [80, 10, 5, 5])[0]
        ep["dx"] = [rng.choice(DX_SMI)] + ([rng.choice(DX_SUD)] if rng.random() < 0.3 else [])
        ep["programs"] = ["CPR"] + (["CSTAR"] if len(ep["dx"]) > 1 else []) if rng.random() < 0.7 else ["OUTPT"]
    return episodes


def _health_home(rng: random.Random, k: Knobs, p: Person) -> None:
    """Health Home truth (CyberAccess) and what CIMOR shows, including deliberate disagreements."""
    draw = rng.random()
    qualifies = bool(p.bh or p.chronic) and not p.chip
    program = STATES[k.state].programs[0 if p.bh else 1]
    if qualifies and draw < k.enrolled_rate + k.disenrolled_rate:
        # a CMHC enrolls people it already treats: not before their first BH episode
        earliest = max(p.eligible_from, k.as_of - timedelta(days=365 * 6),
                       p.bh[0]["admitted"] if p.bh else p.eligible_from)
        start = _day(rng, earliest, k.as_of - timedelta(days=60))
        p.hh = Enrollment(program, rng.choice(HH_PROVIDERS[program]), start)
        p.hh_status = "Enrolled"
        if draw >= k.enrolled_rate:
            yesterday = k.as_of - timedelta(days=1)
            p.hh.end = max(start, min(_day(rng, start + timedelta(days=30), yesterday), yesterday))
            p.hh_status = "Disenrolled"
    p.cimor_hh = p.hh
    p.cimor_indicator = "Y" if p.hh_status == "Enrolled" else "N"
    if p.hh_status == "Enrolled" and rng.random() < k.disagree_rate and k.disagreements:
        kind = p.disagreement = rng.choice(k.disagreements)
        if kind == "cimor-indicator-n":
            p.cimor_hh, p.cimor_indicator = None, "N"
        elif kind == "cyberaccess-not-enrolled":
            p.hh, p.hh_status = None, "Not Enrolled"
        elif kind == "provider":
            others = [o for o in HH_PROVIDERS[program] if o != p.hh.provider]
            p.cimor_hh = Enrollment(program, rng.choice(others), p.hh.start)
        elif kind == "start-date":
            shift = timedelta(days=rng.choice([-1, 1]) * rng.randint(1, 90))
            p.cimor_hh = Enrollment(program, p.hh.provider, min(p.hh.start + shift, k.as_of - timedelta(days=1)))


# ------------------------------------------------------------------ rendering the two records

def _el(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    child = etree.SubElement(parent, tag, attrib)
    if text is not None:
        child.text = text
    return child


def _common(rec: etree._Element, ns: str, p: Person, middle: bool) -> None:
    name = _el(rec, f"{{{ns}}}Name")
    _el(name, f"{{{ns}}}Last", p.last)
    _el(name, f"{{{ns}}}First", p.first)
    if middle and p.middle:
        _el(name, f"{{{ns}}}Middle", p.middle)
    _el(rec, f"{{{ns}}}BirthDate", p.birth.isoformat())
    _el(rec, f"{{{ns}}}Sex", p.sex)
    addr = _el(rec, f"{{{ns}}}Address")
    _el(addr, f"{{{ns}}}Line1", p.line1)
    if p.line2:
        _el(addr, f"{{{ns}}}Line2", p.line2)
    _el(addr, f"{{{ns}}}City", p.place[0])
    _el(addr, f"{{{ns}}}State", "MO")
    _el(addr, f"{{{ns}}}Zip", p.place[2])


def _provider(parent: etree._Element, ns: str, tag: str, org: tuple[str, str]) -> None:
    el = _el(parent, f"{{{ns}}}{tag}")
    _el(el, f"{{{ns}}}Name", org[0])
    _el(el, f"{{{ns}}}NPI", org[1])


def _enrollment(hh: etree._Element, ns: str, enrollment: Enrollment, start_tag: str) -> None:
    """Program, provider and dates of a Health Home enrollment; the systems differ only in
    what they call the start date."""
    n = f"{{{ns}}}"
    _el(hh, n + "Program", enrollment.program)
    _provider(hh, ns, "Provider", enrollment.provider)
    _el(hh, n + start_tag, enrollment.start.isoformat())
    if enrollment.end:
        _el(hh, n + "EndDate", enrollment.end.isoformat())


def cimor_consumer(p: Person) -> etree._Element:
    """The person as CIMOR shows them: demographics, HH indicator, episodes, resources."""
    n = f"{{{CIMOR_NS}}}"
    rec = etree.Element(n + "Consumer", nsmap={None: CIMOR_NS})
    _el(rec, n + "ConsumerId", p.consumer_id)
    _el(rec, n + "DCN", p.dcn)
    _common(rec, CIMOR_NS, p, middle=True)
    _el(rec, n + "County", p.place[1])
    hh = _el(rec, n + "HealthHome")
    _el(hh, n + "Indicator", p.cimor_indicator)
    if p.cimor_hh:
        _enrollment(hh, CIMOR_NS, p.cimor_hh, "EffectiveDate")
    if p.dd or p.bh:
        episodes = _el(rec, n + "Episodes")
        serial = 0
        for ep in p.bh:
            serial += 1
            _episode(episodes, p, serial, ep["admitted"], ep["discharged"], ep["reason"], "BH", None, None,
                     ep["programs"], ep["dx"])
        if p.dd:
            serial += 1
            programs = ["DD-ELIG", "DD-TCM"] + (["DD-WAIVER"] if p.dd["waiver"] else [])
            _episode(episodes, p, serial, p.dd["admitted"], None, p.dd["reason"], "DD", p.dd["type"],
                     p.dd["waiver"], programs, [p.dd["dx"]])
    if p.dd:
        sc = _el(_el(rec, n + "ConsumerResources"), n + "SupportCoordinator")
        _el(sc, n + "Name", p.dd["coordinator"])
        _el(sc, n + "Agency", p.dd["agency"][0])
        _el(sc, n + "Phone", p.dd["phone"])
    return rec


def _episode(parent, p: Person, serial: int, admitted: date, discharged: date | None, reason: str,
             division: str, provider_type: str | None, waiver: str | None, programs: list[str],
             dx: list[tuple[str, str]]) -> None:
    n = f"{{{CIMOR_NS}}}"
    ep = _el(parent, n + "Episode")
    _el(ep, n + "EpisodeId", f"{p.consumer_id}{serial:02d}")
    _el(ep, n + "AdmissionDate", admitted.isoformat())
    if discharged:
        _el(ep, n + "DischargeDate", discharged.isoformat())
    _el(ep, n + "AdmissionReason", reason)
    _el(ep, n + "Division", division)
    if provider_type:
        _el(ep, n + "ProviderType", provider_type)
    if waiver:
        _el(ep, n + "WaiverProgram", waiver)
    progs = _el(ep, n + "Programs")
    for code in programs:
        _el(progs, n + "Program", PROGRAMS[code], code=code)
    diags = _el(ep, n + "Diagnoses")
    for pos, (code, text) in enumerate(dx):
        _el(diags, n + "Diagnosis", text, code=code, primary="true" if pos == 0 else "false")


def cyberaccess_participant(p: Person, i: int, rng: random.Random, k: Knobs) -> etree._Element:
    """The person as CyberAccess shows them: demographics, eligibility, HH status, claims."""
    n = f"{{{CA_NS}}}"
    rec = etree.Element(n + "Participant", nsmap={None: CA_NS})
    _el(rec, n + "DCN", p.dcn)
    _common(rec, CA_NS, p, middle=False)
    _eligibility(_el(rec, n + "Eligibility"), p, rng, k)
    if p.hh_status != "Not Enrolled" or rng.random() < 0.5:
        hh = _el(rec, n + "HealthHome")
        _el(hh, n + "Status", p.hh_status)
        if p.hh:
            _enrollment(hh, CA_NS, p.hh, "StartDate")
    claims = [c for c in _claims(p, rng, k) if c]
    if claims:
        parent = _el(rec, n + "Claims")
        for serial, lines in enumerate(claims):
            claim = _el(parent, n + "Claim")
            _el(claim, n + "ClaimId", f"{2_000_000_000_000 + i * 100 + serial}")
            sl = _el(claim, n + "ServiceLines")
            for frm, to, org, ptype, proc, codes in lines:
                line = _el(sl, n + "Line")
                _el(line, n + "FromDate", frm.isoformat())
                _el(line, n + "ToDate", to.isoformat())
                _el(line, n + "ProviderNPI", org[1])
                _el(line, n + "ProviderType", ptype)
                _el(line, n + "Procedure", proc)
                if codes:
                    dx = _el(line, n + "Diagnoses")
                    for code in codes:
                        _el(dx, n + "Code", code)
    return rec


def _eligibility(parent, p: Person, rng: random.Random, k: Knobs) -> None:
    n = f"{{{CA_NS}}}"
    codes = ME_CHILD if _age(p.birth, k.as_of) < 18 else ME_ADULT
    start = p.eligible_from
    spans = []
    if rng.random() < 0.35:
        first_end = _day(rng, start + timedelta(days=90), k.as_of - timedelta(days=120))
        spans.append((start, first_end))
        start = first_end + timedelta(days=1)
    spans.append((start, None))
    for begin, end in spans:
        seg = _el(parent, n + "Segment")
        code, text = rng.choice(codes)
        _el(seg, n + "MECode", code)
        _el(seg, n + "Description", text)
        _el(seg, n + "StartDate", begin.isoformat())
        if end:
            _el(seg, n + "EndDate", end.isoformat())
        if rng.random() < 0.7:
            plan = rng.choice(PLANS)
            mc = _el(seg, n + "ManagedCarePlan")
            _el(mc, n + "Name", plan[0])
            _el(mc, n + "PlanId", plan[1])


def _claims(p: Person, rng: random.Random, k: Knobs) -> list[list[tuple]]:
    """Claims of the last year: office visits, DD TCM (15) and waiver (85), HH S0281 months."""
    year_ago = k.as_of - timedelta(days=365)
    dx_all = [d[0] for d in p.chronic] + [d[0] for ep in p.bh for d in ep["dx"]] + ([p.dd["dx"][0]] if p.dd else [])
    claims: list[list[tuple]] = []

    def visit(org, ptype, proc, codes, n_lines=1):
        days = sorted(_day(rng, year_ago, k.as_of - timedelta(days=1)) for _ in range(n_lines))
        return [(day, day, org, ptype, proc, codes) for day in days]

    if p.chronic or rng.random() < 0.3:
        codes = [d[0] for d in p.chronic][:3]
        claims.append(visit(rng.choice(CLINICS), PT_CLINIC, rng.choice(["99213", "99214"]), codes))
    if p.bh:
        claims.append(visit(rng.choice(HH_PROVIDERS["CMHC"]), PT_BEHAVIORAL, rng.choice(["90834", "90837"]),
                            [d[0] for d in p.bh[-1]["dx"]]))
    if p.dd:
        dd = [p.dd["dx"][0]]
        claims.append(visit(p.dd["agency"], PT_TCM, "T1016", dd, rng.randint(1, 3)))
        if p.dd["waiver"]:
            proc = rng.choice(WAIVER_PROCEDURES[p.dd["waiver"]])
            claims.append(visit(p.dd["waiver_provider"], PT_WAIVER, proc, dd, rng.randint(1, 2)))
    if p.hh:
        lines = []
        month = date(k.as_of.year, k.as_of.month, 1)
        for _ in range(3):
            month = (month - timedelta(days=1)).replace(day=1)
            last = (month + timedelta(days=32)).replace(day=1) - timedelta(days=1)
            if month >= p.hh.start and (p.hh.end is None or last <= p.hh.end):
                lines.append((month, last, p.hh.provider, PT_CLINIC if p.hh.program == "PCHH" else PT_BEHAVIORAL,
                              "S0281", dx_all[:2]))
        if lines:
            claims.append(lines)
    return claims


# ------------------------------------------------------------------ writing the files

def people(members: int, seed: int = 1945, knobs: Knobs = Knobs()) -> Iterator[Person]:
    """The first `members` people of the population of this seed and mix."""
    if not 0 <= members <= MAX_MEMBERS:
        raise ValueError(f"members must be between 0 and {MAX_MEMBERS}")
    rng = random.Random(seed)
    return (make_person(i, rng, knobs) for i in range(members))


def write_extracts(members: int, out_dir: Path, seed: int = 1945,
                   knobs: Knobs = Knobs()) -> tuple[Path, Path]:
    """Write out_dir/cimor.xml and out_dir/cyberaccess.xml for the same `members` people."""
    if knobs.state != "MO":
        raise ValueError("CIMOR and CyberAccess are Missouri's systems: extracts need state MO")
    population = people(members, seed, knobs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cimor_path, ca_path = out_dir / "cimor.xml", out_dir / "cyberaccess.xml"
    claims_rng = random.Random(seed + 1)  # claims draw separately: people stay the same if claims change
    generated = f"{knobs.as_of.isoformat()}T02:00:00"
    with etree.xmlfile(str(cimor_path), encoding="utf-8") as cx, \
            etree.xmlfile(str(ca_path), encoding="utf-8") as ax:
        cx.write_declaration()
        ax.write_declaration()
        with cx.element(f"{{{CIMOR_NS}}}CimorExtract", generated=generated, nsmap={None: CIMOR_NS}), \
                ax.element(f"{{{CA_NS}}}CyberAccessExtract", generated=generated, nsmap={None: CA_NS}):
            for i, person in enumerate(population):
                _write(cx, cimor_consumer(person))
                _write(ax, cyberaccess_participant(person, i, claims_rng, knobs))
            cx.write("\n")
            ax.write("\n")
    return cimor_path, ca_path


def _write(xf, record: etree._Element) -> None:
    """One record per block of lines, indented under the root (line numbers stay meaningful)."""
    etree.indent(record, space="  ", level=1)
    xf.write("\n  ")
    xf.write(record)


# ------------------------------------------------------------------ bad records for quarantine tests

def inject_bad_records(path: Path, out_path: Path, every_nth: int) -> list[str]:
    """Copy an extract, making every n-th record XSD-invalid; return the ids of those records.

    Odd-numbered damages give the DCN a letter, even-numbered ones set BirthDate to
    2023-02-30 (not a date). Works on either system's extract (the root tells which).
    """
    from fhir_gateway.adapters.cimor.parser import FORMAT as CIMOR
    from fhir_gateway.adapters.cyberaccess.parser import FORMAT as CA

    if every_nth < 1:
        raise ValueError("every_nth must be at least 1")
    damaged: list[str] = []
    context = etree.iterparse(str(path), events=("start", "end"), huge_tree=True, resolve_entities=False,
                              no_network=True)
    with etree.xmlfile(str(out_path), encoding="utf-8") as xf:
        xf.write_declaration()
        _, root = next(context)
        fmt = next((f for f in (CIMOR, CA) if root.tag == f.tag(f.root)), None)
        if fmt is None:
            raise ValueError(f"{path}: not a CIMOR or CyberAccess extract (root {root.tag})")
        count = 0
        with xf.element(root.tag, dict(root.attrib), nsmap={None: fmt.namespace}):
            for event, el in context:
                if event != "end" or el.getparent() is not root:
                    continue
                count += 1
                if count % every_nth == 0:
                    damaged.append(el.findtext(fmt.tag(fmt.id_element)) or "")
                    target, value = (("DCN", "1234567X") if len(damaged) % 2 else ("BirthDate", "2023-02-30"))
                    el.find(fmt.tag(target)).text = value
                    if fmt.id_element == target:
                        damaged[-1] = value
                el.tail = None
                xf.write("\n  ")
                xf.write(el)
                el.clear()
                while el.getprevious() is not None:
                    del root[0]
            xf.write("\n")
    return damaged


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1945)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--samples", action="store_true", help="rewrite adapters/*/sample.xml")
    args = ap.parse_args()
    if args.samples:
        write_samples()
        return
    for written in write_extracts(args.members, args.out, args.seed):
        print(written)


SAMPLE_SEED, SAMPLE_MEMBERS = 17, 10  # first seed whose 10 people use every element, DD 15 and 85, both
# programs, every HH status and two disagreements (found by trying seeds)
SAMPLE_KNOBS = Knobs(child_rate=0.3, dd_rate=0.5, waiver_rate=0.7, bh_rate=0.5, disagree_rate=0.3)


def write_samples() -> None:
    """adapters/<system>/sample.xml: a handful of people exercising every element."""
    import tempfile

    here = Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        cimor, ca = write_extracts(SAMPLE_MEMBERS, Path(tmp), SAMPLE_SEED, SAMPLE_KNOBS)
        note = (f"<!-- Synthetic people, generated by fhir_gateway.adapters.synth.write_samples() (seed "
                f"{SAMPLE_SEED}, {SAMPLE_MEMBERS} members); the two sample files describe the same "
                f"people. -->\n")
        for src, system in ((cimor, "cimor"), (ca, "cyberaccess")):
            declaration, rest = src.read_text(encoding="utf-8").split("\n", 1)
            (here / system / "sample.xml").write_text(f"{declaration}\n{note}{rest}", encoding="utf-8")


if __name__ == "__main__":
    _main()
