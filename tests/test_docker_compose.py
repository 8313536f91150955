"""docker/docker-compose.yml cannot run here (no Docker engine); check what can be checked:
it parses, and what it wires together is consistent."""

import tomllib
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_services_and_pinned_images():
    services = compose()["services"]
    assert set(services) == {"gateway", "hapi", "postgres"}
    for name in ("hapi", "postgres"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image must be pinned"
    assert services["hapi"]["image"].startswith("hapiproject/hapi:v8.")


def test_dependencies_and_health_checks():
    doc = compose()
    services = doc["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency]
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["gateway"]
    for volume in services["postgres"]["volumes"]:
        assert volume.split(":")[0] in doc["volumes"]


def test_gateway_points_at_hapi_and_is_built_from_our_dockerfile():
    gateway = compose()["services"]["gateway"]
    assert gateway["environment"]["FHIR_GATEWAY_STORE"] == "http://hapi:8080/fhir"
    # the Subscription outbox lives on a volume (a restart loses no notification)
    exchange_dir = gateway["environment"]["FHIR_GATEWAY_EXCHANGE_DB"].rsplit("/", 1)[0]
    assert f"exchange:{exchange_dir}" in gateway["volumes"]
    assert "exchange" in compose()["volumes"]
    dockerfile = (DOCKER / "docker-compose.yml").parent / gateway["build"]["context"] / \
        gateway["build"]["dockerfile"]
    text = dockerfile.read_text()
    assert "fhir-gateway" in text
    # the wheel is built from the package and every folder pyproject.toml maps into it
    # (tests/test_package.py runs such a wheel; the image needs no settings to find its data)
    setuptools = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in ["fhir_gateway", *setuptools["package-dir"].values()]:
        assert f"COPY {folder} " in text


def test_hapi_configuration_is_r4_on_the_compose_postgres():
    hapi = compose()["services"]["hapi"]
    source, target = hapi["volumes"][0].split(":")[:2]
    assert target == "/app/config/application.yaml"
    config = yaml.safe_load((DOCKER / source).read_text())
    assert config["hapi"]["fhir"]["fhir_version"] == "R4"
    assert config["hapi"]["fhir"]["validation"]["requests_enabled"] is True
    assert config["spring"]["datasource"]["url"] == "jdbc:postgresql://postgres:5432/hapi"
    assert config["spring"]["datasource"]["username"] == \
        compose()["services"]["postgres"]["environment"]["POSTGRES_USER"]
