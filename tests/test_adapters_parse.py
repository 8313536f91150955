"""CIMOR and CyberAccess adapters: formats, streaming parsers, synthetic extracts, lookups.

Speed and memory figures come from bench/adapter_parse_bench.py, not from here; the memory
test below only checks, structurally, that processed records leave the tree.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `adapters` is not part of the installed package
    sys.path.insert(0, str(ROOT))

from fhir_gateway.adapters import synth
from fhir_gateway.adapters.cimor import parser as cimor
from fhir_gateway.adapters.cimor.client import Client as CimorClient
from fhir_gateway.adapters.cimor.simulator import Simulator as CimorSimulator
from fhir_gateway.adapters.common import MalformedExtract, SourceUnavailable, iter_records
from fhir_gateway.adapters.cyberaccess import parser as cyberaccess
from fhir_gateway.adapters.cyberaccess.client import Client as CyberAccessClient
from fhir_gateway.adapters.cyberaccess.simulator import Simulator as CyberAccessSimulator

XS = "{http://www.w3.org/2001/XMLSchema}"
SYSTEMS = {"cimor": cimor, "cyberaccess": cyberaccess}
SAMPLES = {name: ROOT / "adapters" / name / "sample.xml" for name in SYSTEMS}


def schema(system: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SYSTEMS[system].FORMAT.xsd)))


def xsd_children(system: str) -> dict[str, bool]:
    """{"Parent/Child" or "Parent/@attr": repeats?} for everything the XSD declares."""
    doc = etree.parse(str(SYSTEMS[system].FORMAT.xsd))
    users: dict[str, list[str]] = {}
    for el in doc.iter(XS + "element"):
        if el.get("type"):
            users.setdefault(el.get("type").split(":")[-1], []).append(el.get("name"))
    declared = {}
    for decl in list(doc.iter(XS + "element")) + list(doc.iter(XS + "attribute")):
        owner = decl.getparent()
        while owner is not None and owner.tag != XS + "complexType":
            owner = owner.getparent()
        if owner is None:
            continue
        parents = users.get(owner.get("name"), []) if owner.get("name") else [owner.getparent().get("name")]
        name = decl.get("name") or decl.get("ref")
        if decl.tag == XS + "attribute":
            name = "@" + name
        most = decl.get("maxOccurs", "1")
        for parent in parents:
            declared[f"{parent}/{name}"] = most == "unbounded" or int(most) > 1
    return declared


def document_children(path: Path) -> set[str]:
    seen = set()
    for el in etree.parse(str(path)).iter():
        if not isinstance(el.tag, str):
            continue
        name = etree.QName(el).localname
        if el.getparent() is not None:
            seen.add(f"{etree.QName(el.getparent()).localname}/{name}")
        seen.update(f"{name}/@{attr}" for attr in el.attrib)
    return seen


# ------------------------------------------------------------------ formats

@pytest.mark.parametrize("system", SYSTEMS)
def test_sample_is_valid_and_covers_every_declared_element(system):
    xsd = schema(system)
    assert xsd.validate(etree.parse(str(SAMPLES[system]))), xsd.error_log
    missing = set(xsd_children(system)) - document_children(SAMPLES[system])
    assert not missing, f"sample.xml never uses {sorted(missing)}"
    assert 5 <= sum(1 for _ in SYSTEMS[system].parse(SAMPLES[system])) <= 10


@pytest.mark.parametrize("system", SYSTEMS)
def test_parser_repeating_elements_are_the_schema_ones(system):
    fmt = SYSTEMS[system].FORMAT
    repeats = {pair for pair, many in xsd_children(system).items() if many}
    assert repeats - {f"{fmt.root}/{fmt.record}"} == set(fmt.repeating)


@pytest.mark.parametrize("system", SYSTEMS)
def test_schema_has_no_mixed_content_so_text_marks_a_leaf(system):
    """The parsers read a valid record without attributes on this assumption
    (`common.to_data(plain=True)`): no element has both text and children."""
    xsd = etree.parse(str(SYSTEMS[system].FORMAT.xsd))
    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}
    assert not xsd.xpath("//*[@mixed='true'] | //xs:any | //*[@type='xs:anyType']", namespaces=ns)
    untyped = xsd.xpath("//xs:element[not(@type) and not(@ref) and not(xs:complexType)"
                        " and not(xs:simpleType)]", namespaces=ns)
    assert not untyped  # an element without a type is anyType: text and children


@pytest.mark.parametrize("system,pattern,bad", [
    ("cimor", "DCNType", ["1234567", "123456789", "1234567a"]),
    ("cimor", "ConsumerIdType", ["123456", "12345678"]),
    ("cimor", "NPIType", ["123456789", "12345678901"]),
    ("cimor", "ICD10CMType", ["U07.1", "F2", "F20.12345", "f20.9"]),
    ("cyberaccess", "ProcedureCodeType", ["S028", "W0281", "0281"]),
    ("cyberaccess", "ProviderTypeCodeType", ["5", "150"]),
    ("cyberaccess", "DateType", ["2024-02-30", "2024-01-01Z", "20240101"]),
])
def test_simple_types_refuse_bad_values(system, pattern, bad):
    fmt = SYSTEMS[system].FORMAT
    doc = etree.parse(str(fmt.xsd))
    # a throw-away schema whose only element has the type under test
    root = doc.getroot()
    for child in list(root):
        if child.tag == XS + "element":
            root.remove(child)
    etree.SubElement(root, XS + "element", name="Probe", type=pattern)
    probe = etree.XMLSchema(doc)

    def ok(value):
        el = etree.Element(fmt.tag("Probe"))
        el.text = value
        return probe.validate(el)

    good = {"DCNType": "12345678", "ConsumerIdType": "1234567", "NPIType": "1234567893",
            "ICD10CMType": "F20.9", "ProcedureCodeType": "S0281", "ProviderTypeCodeType": "85",
            "DateType": "2024-02-29"}[pattern]
    assert ok(good)
    assert not any(ok(value) for value in bad)


# ------------------------------------------------------------------ parsing: the dict shapes

CIMOR_ONE = b"""<?xml version="1.0" encoding="UTF-8"?>
<CimorExtract xmlns="urn:mo-dmh:cimor:extract:1" generated="2025-01-31T02:00:00">
  <Consumer>
    <ConsumerId>1000003</ConsumerId><DCN>10000024</DCN>
    <Name><Last>Dunmore</Last><First>Vera</First></Name>
    <BirthDate>2008-06-19</BirthDate><Sex>F</Sex>
    <Address><Line1>7190 Bluebird Ln</Line1><City>Kirksville</City><State>MO</State><Zip>63501</Zip></Address>
    <County>Adair</County>
    <HealthHome><Indicator>N</Indicator></HealthHome>
    <Episodes>
      <Episode>
        <EpisodeId>100000301</EpisodeId><AdmissionDate>2015-03-02</AdmissionDate>
        <AdmissionReason>DD Intake and Evaluation</AdmissionReason><Division>DD</Division>
        <ProviderType>85</ProviderType><WaiverProgram>lopez</WaiverProgram>
        <Programs><Program code="DD-WAIVER">HCBS Waiver Services</Program></Programs>
        <Diagnoses><Diagnosis code="G80.9" primary="true">Cerebral palsy, unspecified</Diagnosis></Diagnoses>
      </Episode>
    </Episodes>
    <ConsumerResources><SupportCoordinator><Name>Opal Vance</Name><Agency>Big Muddy Support Coordination</Agency><Phone>660-555-0142</Phone></SupportCoordinator></ConsumerResources>
  </Consumer>
</CimorExtract>
"""


def test_cimor_record_shape():
    (record,) = cimor.parse_bytes(CIMOR_ONE)
    assert (record.system, record.record_id, record.line, record.errors) == ("cimor", "1000003", 3, [])
    assert record.data == {
        "ConsumerId": "1000003", "DCN": "10000024",
        "Name": {"Last": "Dunmore", "First": "Vera"},
        "BirthDate": "2008-06-19", "Sex": "F",
        "Address": {"Line1": "7190 Bluebird Ln", "City": "Kirksville", "State": "MO", "Zip": "63501"},
        "County": "Adair",
        "HealthHome": {"Indicator": "N"},
        "Episodes": {"Episode": [{  # one episode, one program, one diagnosis: still lists
            "EpisodeId": "100000301", "AdmissionDate": "2015-03-02",
            "AdmissionReason": "DD Intake and Evaluation", "Division": "DD",
            "ProviderType": "85", "WaiverProgram": "lopez",
            "Programs": {"Program": [{"@code": "DD-WAIVER", "#text": "HCBS Waiver Services"}]},
            "Diagnoses": {"Diagnosis": [{"@code": "G80.9", "@primary": "true",
                                         "#text": "Cerebral palsy, unspecified"}]},
        }]},
        "ConsumerResources": {"SupportCoordinator": {
            "Name": "Opal Vance", "Agency": "Big Muddy Support Coordination", "Phone": "660-555-0142"}},
    }
    assert etree.fromstring(record.raw).findtext("{urn:mo-dmh:cimor:extract:1}DCN") == "10000024"


def test_cyberaccess_record_shape():
    one = b"""<CyberAccessExtract xmlns="urn:mo-healthnet:cyberaccess:extract:1" generated="2025-01-31T02:00:00">
<Participant><DCN>10000024</DCN><Name><Last>Dunmore</Last><First>Vera</First></Name>
<BirthDate>2008-06-19</BirthDate><Sex>F</Sex>
<Address><Line1>7190 Bluebird Ln</Line1><City>Kirksville</City><State>MO</State><Zip>63501</Zip></Address>
<Eligibility><Segment><MECode>71</MECode><Description>MO HealthNet for Kids</Description><StartDate>2017-02-02</StartDate></Segment></Eligibility>
<HealthHome><Status>Not Enrolled</Status></HealthHome>
<Claims><Claim><ClaimId>2000000000001</ClaimId><ServiceLines><Line><FromDate>2024-02-19</FromDate><ToDate>2024-02-19</ToDate>
<ProviderNPI>1500000074</ProviderNPI><ProviderType>15</ProviderType><Procedure>T1016</Procedure>
<Diagnoses><Code>G80.9</Code></Diagnoses></Line></ServiceLines></Claim></Claims>
</Participant></CyberAccessExtract>"""
    (record,) = cyberaccess.parse_bytes(one)
    assert (record.system, record.record_id, record.line, record.errors) == ("cyberaccess", "10000024", 2, [])
    assert record.data["Eligibility"] == {"Segment": [
        {"MECode": "71", "Description": "MO HealthNet for Kids", "StartDate": "2017-02-02"}]}
    assert record.data["HealthHome"] == {"Status": "Not Enrolled"}
    assert record.data["Claims"] == {"Claim": [{"ClaimId": "2000000000001", "ServiceLines": {"Line": [{
        "FromDate": "2024-02-19", "ToDate": "2024-02-19", "ProviderNPI": "1500000074",
        "ProviderType": "15", "Procedure": "T1016", "Diagnoses": {"Code": ["G80.9"]}}]}}]}

    # attributes the schema does not allow are kept (and reported), on the record or inside
    for old, new, path, value in [
            (b"<Participant>", b'<Participant source="x">', "@source", "x"),
            (b"<Sex>F</Sex>", b'<Sex code="2">F</Sex>', "Sex", {"@code": "2", "#text": "F"}),
            (b"<Last>", b"<Last x='a \"=\" b'>", "Name.Last", {"@x": 'a "=" b', "#text": "Dunmore"})]:
        (record,) = cyberaccess.parse_bytes(one.replace(old, new))
        found = record.data
        for step in path.split("."):
            found = found[step]
        assert found == value
        assert record.errors and "not allowed" in record.errors[0]


@pytest.mark.parametrize("system", SYSTEMS)
def test_samples_parse_without_errors_at_their_lines(system):
    module, path = SYSTEMS[system], SAMPLES[system]
    lines = path.read_text().splitlines()
    records = list(module.parse(path))
    assert [r.errors for r in records] == [[]] * len(records)
    for record in records:
        assert lines[record.line - 1].lstrip().startswith(f"<{module.FORMAT.record}")
        assert record.record_id == record.data[module.FORMAT.id_element]
    assert len({r.record_id for r in records}) == len(records)


def test_repeating_paths_are_always_lists_in_samples():
    def at(data, path):
        """Mapping-style path: 'A.B[].C' -> every value found."""
        values = [data]
        for step in path.split("."):
            many = step.endswith("[]")
            key = step.removesuffix("[]")
            nxt = []
            for value in values:
                if isinstance(value, dict) and key in value:
                    item = value[key]
                    if many:
                        assert isinstance(item, list), f"{path}: {key} is not a list"
                        nxt.extend(item)
                    else:
                        nxt.append(item)
            values = nxt
        return values

    consumers = [r.data for r in cimor.parse(SAMPLES["cimor"])]
    participants = [r.data for r in cyberaccess.parse(SAMPLES["cyberaccess"])]
    assert any(len(at(c, "Episodes.Episode[]")) == 1 for c in consumers)
    assert all(at(c, "Episodes.Episode[].Diagnoses.Diagnosis[].@code") for c in consumers if "Episodes" in c)
    assert all(at(c, "Episodes.Episode[].Programs.Program[].#text") for c in consumers if "Episodes" in c)
    assert all(at(p, "Eligibility.Segment[].MECode") for p in participants)
    assert {"15", "85"} <= {t for p in participants
                            for t in at(p, "Claims.Claim[].ServiceLines.Line[].ProviderType")}
    assert any(len(at(p, "Claims.Claim[].ServiceLines.Line[].Diagnoses.Code[]")) >= 1 for p in participants)


# ------------------------------------------------------------------ parsing: bad input

def _cimor_extract(*consumers: bytes) -> bytes:
    return (b'<?xml version="1.0"?>\n<CimorExtract xmlns="urn:mo-dmh:cimor:extract:1" '
            b'generated="2025-01-31T02:00:00">\n' + b"\n".join(consumers) + b"\n</CimorExtract>\n")


def _consumers_from_sample(n: int) -> list[bytes]:
    return [r.raw for r, _ in zip(cimor.parse(SAMPLES["cimor"]), range(n))]


def test_invalid_record_names_the_element_and_the_others_still_parse():
    good = _consumers_from_sample(3)
    bad = good[1].replace(b"<DCN>", b"<DCN>X", 1)
    records = list(cimor.parse_bytes(_cimor_extract(good[0], bad, good[2])))
    assert [bool(r.errors) for r in records] == [False, True, False]
    assert any(e.startswith("DCN: ") and "[0-9]{8}" in e for e in records[1].errors)
    # damage the second episode's date of a consumer with two episodes
    two = next(r.raw for r in cimor.parse(SAMPLES["cimor"])
               if len(r.data.get("Episodes", {}).get("Episode", [])) == 2)
    second = two.index(b"<AdmissionDate>", two.index(b"</Episode>")) + len(b"<AdmissionDate>")
    two = two[:second] + b"2023-02-30" + two[second + 10:]
    (record,) = cimor.parse_bytes(_cimor_extract(two))
    assert len(record.errors) == 1
    assert record.errors[0].startswith("Episodes/Episode[2]/AdmissionDate: '2023-02-30' is not a valid value")
    assert record.data["Episodes"]["Episode"][1]["AdmissionDate"] == "2023-02-30"  # data kept as is


def test_missing_child_is_reported_on_the_record():
    consumer = _consumers_from_sample(1)[0]
    cut = consumer.index(b"<HealthHome>")  # drop HealthHome and everything after it
    (record,) = cimor.parse_bytes(_cimor_extract(consumer[:cut] + b"</Consumer>"))
    assert record.errors == ["Consumer: Missing child element(s). Expected is ( HealthHome )."]
    # an element out of place is reported on itself
    start, end = consumer.index(b"<County>"), consumer.index(b"</County>") + len(b"</County>")
    (record,) = cimor.parse_bytes(_cimor_extract(consumer[:start] + consumer[end:]))
    assert record.errors == ["HealthHome: This element is not expected. Expected is ( County )."]


def test_unexpected_repeat_keeps_both_values():
    consumer = _consumers_from_sample(1)[0].replace(b"</Sex>", b"</Sex><Sex>U</Sex>")
    (record,) = cimor.parse_bytes(_cimor_extract(consumer))
    assert isinstance(record.data["Sex"], list) and len(record.data["Sex"]) == 2
    assert record.errors


def test_truncated_file_yields_complete_records_then_raises(tmp_path):
    text = SAMPLES["cimor"].read_bytes()
    fourth = [i for i in range(len(text)) if text.startswith(b"<Consumer ", i)][3]
    cut = text.index(b"<Episodes>", fourth) + 30
    path = tmp_path / "truncated.xml"
    path.write_bytes(text[:cut])
    seen = []
    with pytest.raises(MalformedExtract) as caught:
        for record in cimor.parse(path):
            seen.append(record.record_id)
    expected = [r.record_id for r, _ in zip(cimor.parse(SAMPLES["cimor"]), range(3))]
    assert seen == expected
    err = caught.value
    assert err.path == str(path)
    assert err.line == text[:cut].count(b"\n") + 1 and err.column > 0
    start_line = text[:fourth].count(b"\n") + 1
    assert f"starting at line {start_line} is incomplete" in err.message


def test_broken_tag_mid_file_raises_at_its_line_after_earlier_records():
    consumers = _consumers_from_sample(4)
    broken = consumers[2].replace(b"</County>", b"</Countie>")
    data = _cimor_extract(consumers[0], consumers[1], broken, consumers[3])
    seen = []
    with pytest.raises(MalformedExtract) as caught:
        for record in cimor.parse_bytes(data):
            seen.append(record.record_id)
    assert len(seen) == 2
    assert caught.value.line == data[:data.index(b"</Countie>")].count(b"\n") + 1
    assert "mismatch" in caught.value.message


def test_the_other_systems_extract_is_refused():
    with pytest.raises(MalformedExtract, match="expected CimorExtract"):
        list(cimor.parse(SAMPLES["cyberaccess"]))
    with pytest.raises(MalformedExtract, match="Participant found under CimorExtract"):
        list(cyberaccess.parse_bytes(SAMPLES["cyberaccess"].read_bytes().replace(
            b"CyberAccessExtract", b"CimorExtract")))


def test_processed_records_leave_the_tree():
    """Structural check of flat memory (figures: bench/adapter_parse_bench.py)."""
    records = iter_records(cimor.FORMAT, str(SAMPLES["cimor"]), "sample")
    for n, _ in enumerate(records):
        element = records.gi_frame.f_locals["element"]
        older = list(element.itersiblings(preceding=True))
        assert len(older) <= 1 and all(len(e) == 0 for e in older), n


# ------------------------------------------------------------------ synthetic extracts

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    cimor_path, ca_path = synth.write_extracts(200, out)
    return cimor_path, ca_path, list(cimor.parse(cimor_path)), list(cyberaccess.parse(ca_path))


def test_synthetic_extracts_validate(synthetic):
    cimor_path, ca_path, consumers, participants = synthetic
    for system, path in (("cimor", cimor_path), ("cyberaccess", ca_path)):
        xsd = schema(system)
        assert xsd.validate(etree.parse(str(path))), xsd.error_log
    assert len(consumers) == len(participants) == 200
    assert not any(r.errors for r in consumers + participants)


def test_synthetic_extracts_describe_the_same_people(synthetic):
    _, _, consumers, participants = synthetic
    assert [c.data["DCN"] for c in consumers] == [p.data["DCN"] for p in participants]
    assert len({c.data["DCN"] for c in consumers}) == 200
    for c, p in zip(consumers, participants):
        assert (c.data["Name"]["Last"], c.data["BirthDate"]) == (p.data["Name"]["Last"], p.data["BirthDate"])
    births = [c.data["BirthDate"] for c in consumers]
    assert sum(b > "2007-01-31" for b in births) > 20 and sum(b <= "2007-01-31" for b in births) > 100


def test_synthetic_dd_members_show_in_both_systems(synthetic):
    _, _, consumers, participants = synthetic
    dd = {}
    for c in consumers:
        for ep in c.data.get("Episodes", {}).get("Episode", []):
            if ep["Division"] == "DD":
                dd[c.data["DCN"]] = ep
                assert c.data["ConsumerResources"]["SupportCoordinator"]["Phone"][4:8] == "555-"
                assert (ep["ProviderType"] == "85") == ("WaiverProgram" in ep)
    assert Counter(ep["ProviderType"] for ep in dd.values()).keys() == {"15", "85"}
    assert len(dd) >= 20
    for p in participants:
        types = {line["ProviderType"] for claim in p.data.get("Claims", {}).get("Claim", [])
                 for line in claim["ServiceLines"]["Line"]}
        ep = dd.get(p.data["DCN"])
        assert ("15" in types) == (ep is not None)
        assert ("85" in types) == (ep is not None and ep["ProviderType"] == "85")


def test_synthetic_health_homes_and_disagreements(synthetic):
    _, _, consumers, participants = synthetic
    status = Counter(p.data.get("HealthHome", {}).get("Status", "absent") for p in participants)
    assert status["Enrolled"] > 50 and status["Disenrolled"] > 3 and status["Not Enrolled"] + status["absent"] > 30
    programs = Counter(c.data["HealthHome"].get("Program") for c in consumers)
    assert programs["CMHC"] > 10 and programs["PCHH"] > 10
    kinds = Counter()
    for c, p in zip(consumers, participants):
        hc, hp = c.data["HealthHome"], p.data.get("HealthHome", {})
        if (hc["Indicator"] == "Y") != (hp.get("Status") == "Enrolled"):
            kinds["status"] += 1
        elif hc["Indicator"] == "Y" and hc["Provider"] != hp["Provider"]:
            kinds["provider"] += 1
        elif hc["Indicator"] == "Y" and hc["EffectiveDate"] != hp["StartDate"]:
            kinds["start-date"] += 1
    enrolled = sum(hc.data["HealthHome"]["Indicator"] == "Y" for hc in consumers)
    assert 2 <= sum(kinds.values()) <= 0.25 * enrolled
    assert len(kinds) >= 2


def test_synthesis_is_deterministic(tmp_path):
    a = synth.write_extracts(30, tmp_path / "a", seed=7)
    b = synth.write_extracts(30, tmp_path / "b", seed=7)
    c = synth.write_extracts(30, tmp_path / "c", seed=8)
    small = synth.write_extracts(10, tmp_path / "d", seed=7)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    first_ten = [r.data for r, _ in zip(cimor.parse(a[0]), range(10))]
    assert first_ten == [r.data for r in cimor.parse(small[0])]


@pytest.mark.parametrize("system", SYSTEMS)
def test_injected_bad_records_are_flagged_and_the_rest_parse(synthetic, tmp_path, system):
    source = synthetic[0] if system == "cimor" else synthetic[1]
    out = tmp_path / "bad.xml"
    damaged = synth.inject_bad_records(source, out, every_nth=7)
    records = list(SYSTEMS[system].parse(out))
    assert len(records) == 200 and len(damaged) == 200 // 7
    flagged = [r for r in records if r.errors]
    assert [r.record_id for r in flagged] == damaged
    assert {e.split(":")[0] for r in flagged for e in r.errors} == {"DCN", "BirthDate"}


# ------------------------------------------------------------------ lookups

@pytest.mark.parametrize("system,simulator,client,route", [
    ("cimor", CimorSimulator, CimorClient, "consumers"),
    ("cyberaccess", CyberAccessSimulator, CyberAccessClient, "participants"),
])
def test_simulator_and_client_round_trip(system, simulator, client, route):
    expected = {r.data["DCN"]: r for r in SYSTEMS[system].parse(SAMPLES[system])}
    sim = simulator(SAMPLES[system])
    base = sim.start()
    try:
        with client(base) as c:
            for dcn, record in expected.items():
                found = c.lookup(dcn)
                assert found.data == record.data and found.errors == [] and found.system == system
            assert c.lookup("99999999") is None
            with pytest.raises(ValueError):
                c.lookup("1234")
        dcn = next(iter(expected))
        answer = httpx.get(f"{base}/{route}/{dcn}", timeout=2)
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/xml")
        assert schema(system).validate(etree.fromstring(answer.content))
        assert httpx.get(f"{base}/{route}/99999999", timeout=2).status_code == 404
        assert httpx.get(f"{base}/{route}/abc", timeout=2).status_code == 400
        assert httpx.get(f"{base}/elsewhere/{dcn}", timeout=2).status_code == 404
    finally:
        sim.stop()


def test_cimor_lookup_by_consumer_id():
    record = next(iter(cimor.parse(SAMPLES["cimor"])))
    with CimorSimulator(SAMPLES["cimor"]) as base, CimorClient(base) as c:
        assert c.lookup_consumer(record.record_id).data == record.data
        assert c.lookup_consumer("0000000") is None


def test_client_against_a_stopped_simulator_fails_fast(monkeypatch):
    """Refused connections are tried again after short backoffs (their sleeps, not the clock)."""
    sim = CyberAccessSimulator(SAMPLES["cyberaccess"])
    base = sim.start()
    sim.stop()
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    with pytest.raises(SourceUnavailable) as caught:
        CyberAccessClient(base, timeout=2.0, retries=2).lookup("10000024")
    assert slept and sum(slept) <= 0.5
    assert caught.value.system == "cyberaccess" and "Connection refused" in caught.value.reason


@pytest.mark.parametrize("fault,reason,asked", [
    ("drop", "ProtocolError", 3),  # a GET is safe to repeat: asked again `retries` times
    ("busy", "HTTP 503", 1),       # an answer: passed on at once, its Retry-After not waited out
])
def test_client_against_a_broken_source(fault, reason, asked):
    sim = CimorSimulator(SAMPLES["cimor"], fault=fault)
    with sim as base, CimorClient(base, retries=2) as c:
        with pytest.raises(SourceUnavailable, match=reason):
            c.lookup("10000024")
        assert sim.requests == asked


def test_client_gives_up_on_a_slow_source_without_retrying():
    """A source that does not answer in time is asked once: it may still be working on it."""
    sim = CimorSimulator(SAMPLES["cimor"], delay=1.0)
    with sim as base:
        with pytest.raises(SourceUnavailable, match="no answer within 0.2s"):
            CimorClient(base, timeout=0.2, retries=2).lookup("10000024")
        assert sim.requests == 1


def test_synthetic_data_follows_the_rules_the_xsds_cannot_express(synthetic):
    """The conventions each README lists under "Rules the XSD cannot express"."""
    _, _, consumers, participants = synthetic
    as_of = synth.Knobs().as_of.isoformat()
    for c in consumers:
        hh = c.data["HealthHome"]
        if hh["Indicator"] == "Y":
            assert {"Program", "Provider", "EffectiveDate"} <= hh.keys() and "EndDate" not in hh
        elif "Program" in hh:
            assert hh["EffectiveDate"] <= hh["EndDate"] < as_of
        for ep in c.data.get("Episodes", {}).get("Episode", []):
            assert ("ProviderType" in ep) == (ep["Division"] == "DD")
            assert ("WaiverProgram" in ep) == (ep.get("ProviderType") == "85")
            assert [d["@primary"] for d in ep["Diagnoses"]["Diagnosis"]].count("true") == 1
            assert ep["AdmissionDate"] <= ep.get("DischargeDate", as_of) <= as_of
    for p in participants:
        hh = p.data.get("HealthHome", {"Status": "Not Enrolled"})
        keys = {"Enrolled": {"Status", "Program", "Provider", "StartDate"},
                "Disenrolled": {"Status", "Program", "Provider", "StartDate", "EndDate"},
                "Not Enrolled": {"Status"}}[hh["Status"]]
        assert hh.keys() == keys
        segments = p.data["Eligibility"]["Segment"]
        for before, after in itertools.pairwise(segments):
            assert before["EndDate"] < after["StartDate"]
        if hh["Status"] != "Not Enrolled":
            assert segments[0]["StartDate"] <= hh["StartDate"] <= hh.get("EndDate", as_of)
        for claim in p.data.get("Claims", {}).get("Claim", []):
            for line in claim["ServiceLines"]["Line"]:
                assert segments[0]["StartDate"] <= line["FromDate"] <= line["ToDate"] < as_of
