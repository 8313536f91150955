"""$hh-status: each source reduced to one summary, and the disagreements named."""

from fhir_gateway.healthhome import status as hh
from fhir_gateway.identifiers import HH_PROGRAM

CIMOR = {"ConsumerId": "1234567", "DCN": "12345678",
         "HealthHome": {"Indicator": "Y", "Program": "CMHC", "Provider": {"Name": "Prairie CMHC"},
                        "EffectiveDate": "2025-01-01"},
         "Episodes": {"Episode": [
             {"EpisodeId": "E1", "Division": "DD", "ProviderType": "15", "AdmissionDate": "2020-01-01"},
             {"EpisodeId": "E2", "Division": "DD", "ProviderType": "85", "AdmissionDate": "2019-01-01",
              "DischargeDate": "2021-01-01"},
             {"EpisodeId": "E3", "Division": "BH", "AdmissionDate": "2022-01-01"}]},
         "ConsumerResources": {"SupportCoordinator": {"Name": "Pat Coordinator"}}}
CYBERACCESS = {"DCN": "12345678",
               "HealthHome": {"Status": "Enrolled", "Program": "PCHH", "StartDate": "2025-02-01"},
               "Claims": {"Claim": [{"ClaimId": "C1", "ServiceLines": {"Line": [
                   {"ProviderType": "15"}, {"ProviderType": "20"}, {"ProviderType": "85"}]}}]}}


def parts(parameters: dict, system: str) -> dict:
    source = next(p for p in parameters["parameter"] if p["name"] == "source"
                  and p["part"][0]["valueCode"] == system)
    out: dict = {}
    for part in source["part"]:
        value = next(v for k, v in part.items() if k.startswith("value") or k == "resource")
        out.setdefault(part["name"], []).append(value)
    return out


def test_cimor_summary_counts_only_open_dd_episodes():
    s = hh.from_cimor(CIMOR)
    assert (s.hh_enrolled, s.program, s.provider) == (True, "mo-cmhc", "Prairie CMHC")
    assert s.dd_episode_open and s.dd_provider_types == ["15"]
    assert s.support_coordinator == "Pat Coordinator"
    assert hh.from_cimor(None).hh_enrolled is False


def test_cyberaccess_dd_comes_from_claim_provider_types():
    s = hh.from_cyberaccess(CYBERACCESS)
    assert (s.hh_enrolled, s.program) == (True, "mo-pchh")
    assert s.dd_provider_types == ["15", "85"] and s.dd_episode_open is None


def test_store_summary_from_episodes():
    episodes = [
        {"resourceType": "EpisodeOfCare", "status": "active",
         "type": [{"coding": [{"system": HH_PROGRAM, "code": "mo-cmhc"}]}],
         "managingOrganization": {"reference": "Organization/o1"}, "period": {"start": "2025-01-01"}},
        {"resourceType": "EpisodeOfCare", "status": "active",
         "type": [{"coding": [{"system": "http://x/CodeSystem/mo-provider-type", "code": "85"}]}],
         "careManager": {"display": "Pat Coordinator"}},
        {"resourceType": "EpisodeOfCare", "status": "finished",
         "type": [{"coding": [{"system": HH_PROGRAM, "code": "mo-pchh"}]}]}]
    s = hh.from_store(episodes, {"Organization/o1": "Prairie CMHC"})
    assert (s.hh_enrolled, s.program, s.provider) == (True, "mo-cmhc", "Prairie CMHC")
    assert s.dd_episode_open and s.dd_provider_types == ["85"]


def test_parameters_name_every_disagreement_and_unreachable_sources():
    statuses = [hh.from_cimor(CIMOR), hh.from_cyberaccess(CYBERACCESS),
                hh.SourceStatus("store", reachable=False, problem="timed out")]
    answer = hh.to_parameters(statuses)
    assert [p["valueString"] for p in answer["parameter"] if p["name"] == "discrepancy"] == [
        "program: cimor=mo-cmhc, cyberaccess=mo-pchh"]
    cimor = parts(answer, "cimor")
    assert cimor["program"] == [{"system": HH_PROGRAM, "code": "mo-cmhc"}]
    assert cimor["ddProviderType"] == ["15"] and cimor["ddEpisodeOpen"] == [True]
    down = parts(answer, "store")
    assert down["reachable"] == [False]
    assert down["outcome"][0]["issue"][0]["severity"] == "warning"
    agree = hh.to_parameters([hh.from_cimor(CIMOR), hh.from_cimor(CIMOR)])
    assert not [p for p in agree["parameter"] if p["name"] == "discrepancy"]
