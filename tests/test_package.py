"""The gateway as `pip install .` and docker/Dockerfile make it: a wheel built from what the
Dockerfile copies, installed into a fresh virtual environment outside the checkout, and run
from there with no FHIR_GATEWAY_* settings: `serve` on both stores with `$hh-eligibility`
and `$enroll` over HTTP, `import` of the CIMOR/CyberAccess samples, `load` of NDJSON.

Also what the wheel cannot show by running: that it holds every module and data file, that
its dependencies are exactly what the code imports, and that importing reads nothing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, LiveServer, expunge
from test_eligibility_http import AS_OF, condition, coverage, member, verdicts
from test_enrollment_http import enroll_params

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: source folder -> where the wheel installs it (pyproject.toml's package-dir, and the package)
INSTALLED_AS = {"fhir_gateway": "fhir_gateway",
                **{folder: name.replace(".", "/") for name, folder in
                   PYPROJECT["tool"]["setuptools"]["package-dir"].items()}}
#: the files the gateway reads at run time (modules, rules, IG, mappings, XSDs, samples)
RUNTIME_FILES = (".py", ".json", ".yaml", ".xsd", ".xml", ".sql")


def dockerfile_sources() -> list[str]:
    """What docker/Dockerfile copies to build the wheel (`COPY <src>... <dest>`)."""
    sources = []
    for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--"):
            *found, dest = words[1:]
            assert dest == "./" or dest == f"./{found[0]}", line  # the repository's layout
            sources += found
    return sources


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory) -> Path:
    """A copy of what the Dockerfile builds from: no stale build/ of the checkout gets in."""
    tree = tmp_path_factory.mktemp("source")
    for source in dockerfile_sources():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, tree / source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / source, tree / source)
    return tree


@pytest.fixture(scope="session")
def wheel(source_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(source_tree)], check=True, capture_output=True, cwd=out)
    (built,) = out.glob("fhir_gateway-*.whl")
    return built


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory) -> Path:
    """The bin/ of a fresh virtual environment holding the wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                          capture_output=True, text=True, env=outside_environ(), cwd=venv)
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def outside_environ() -> dict:
    """This environment without the gateway's settings and anything pointing at the checkout."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")
            and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def test_the_wheel_holds_every_module_and_data_file_under_fhir_gateway(wheel, source_tree):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{INSTALLED_AS[folder]}/{path.relative_to(source_tree / folder).as_posix()}"
                for folder in INSTALLED_AS for path in (source_tree / folder).rglob("*")
                if path.suffix in RUNTIME_FILES}
    assert "fhir_gateway/healthhome/rules/facts.yaml" in expected
    assert "fhir_gateway/data/ig/package.json" in expected
    assert sorted(expected - names) == []
    assert {name.split("/")[0] for name in names} == {
        "fhir_gateway", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}


def test_the_installed_gateway_runs_outside_the_checkout(installed, tmp_path, hapi_url):
    """Both stores: imports, a load, and eligibility and enrollment over HTTP."""
    work = tmp_path / "outside"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)
    members = write_member(work / "member.ndjson")
    expunge(hapi_url)
    for store in (f"sqlite:///{work / 'gateway.db'}", hapi_url):
        for system in ("cimor", "cyberaccess"):
            done = run(installed, work, "import", system,
                       str(ROOT / "adapters" / system / "sample.xml"), "--store", store)
            assert re.search(r": 10 records, .* 0 quarantined", done), done
        done = run(installed, work, "load", str(members), "--store", store)
        assert re.search(r"1 file\(s\), 4 records: 4 created, 0 updated/unchanged, 0 failed",
                         done), done
        # authorization on, as installed: a client registered and its token from the CLI
        data = {"FHIR_GATEWAY_DATA_DIR": str(work / "data")}
        run(installed, work, "clients", "keygen", str(work / "client"), env=data)
        client_id = run(installed, work, "clients", "add", "--name", "test", "--jwks",
                        str(work / "client.jwks.json"), "--scope", "system/*.cruds", env=data)
        server = LiveServer(work / "serve.db", store=store, command=[str(installed / "fhir-gateway")],
                            cwd=work, environ={**outside_environ(), **data})
        try:
            token = run(installed, work, "token", "--url",
                        f"{server.base.removesuffix('/fhir')}/auth/token", "--client-id",
                        client_id, "--key", str(work / "client.pem"), env=data)
            check_eligibility_and_enrollment(server.base, {"Authorization": f"Bearer {token}"})
        finally:
            server.stop()


def write_member(path: Path) -> Path:
    """An MO member with schizophrenia on Medicaid, and a Health Home to enroll them in."""
    resources = [member("MO"), {**condition("F20.9"), "id": "m1-smi"},
                 {**coverage(), "id": "m1-medicaid"},
                 {"resourceType": "Organization", "id": "hh1", "name": "Demo Health Home"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


def check_eligibility_and_enrollment(base: str, headers: dict) -> None:
    assert httpx.get(f"{base}/Patient/m1/$hh-eligibility", timeout=30).status_code == 401
    r = httpx.get(f"{base}/Patient/m1/$hh-eligibility", params={"asOf": AS_OF}, timeout=30,
                  headers=headers)
    assert r.status_code == 200, r.text
    assert verdicts(r.json())["mo-cmhc"] is True
    r = httpx.post(f"{base}/Patient/m1/$enroll", json=enroll_params("mo-cmhc"), timeout=30,
                   headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["period"]["start"] == "2026-06-01"


def run(bin_dir: Path, cwd: Path, *args: str, env: dict | None = None) -> str:
    """`fhir-gateway ARGS` of the installation; its output with whitespace collapsed."""
    done = subprocess.run([str(bin_dir / "fhir-gateway"), *args], cwd=cwd,
                          env={**outside_environ(), **(env or {})},
                          capture_output=True, text=True, timeout=300)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, out
    return out


def distribution(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def imported_distributions() -> dict[str, set[str]]:
    """Distribution -> the modules of fhir_gateway/ and adapters/ that import from it."""
    providers = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for folder in ("fhir_gateway", "adapters"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top == "fhir_gateway":
                        continue
                    for dist in providers.get(top, [f"<nothing provides {top}>"]):
                        found.setdefault(distribution(dist), set()).add(
                            str(path.relative_to(ROOT)))
    return found


def test_the_dependencies_are_what_the_code_imports():
    """A module imported at run time is a dependency (httpx was a dev one); a dependency
    is imported somewhere (urllib3 was not)."""
    declared = {distribution(r) for r in PYPROJECT["project"]["dependencies"]}
    # an extra's package is imported only where that extra is used (pyspark: --engine spark)
    extras = {distribution(r) for name, reqs in PYPROJECT["project"]["optional-dependencies"]
              .items() if name != "dev" for r in reqs}
    imported = imported_distributions()
    assert {d: sorted(where) for d, where in imported.items()
            if d not in declared | extras} == {}
    # a namespace (`fhir`) can be provided by more than one distribution: one is enough
    assert sorted(declared - set(imported)) == []


def test_importing_the_gateway_reads_no_settings_and_no_file_of_its_own():
    """Settings are read when a command runs, once: a module that read them on import would
    fail here on the bad port; none reads its data files on import either."""
    probe = """
import importlib, pkgutil, sys
read = []
sys.addaudithook(lambda event, args: read.append(args[0]) if event == "open"
                 and isinstance(args[0], str) and not args[0].endswith((".py", ".pyc")) else None)
import fhir_gateway, fhir_gateway.adapters
for package in (fhir_gateway, fhir_gateway.adapters):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
print("\\n".join(read))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT.parent, env={**os.environ, "FHIR_GATEWAY_PORT": "not-a-port"})
    assert done.returncode == 0, done.stderr
    ours = [path for path in done.stdout.splitlines()
            if any(Path(path).resolve().is_relative_to(ROOT / folder) for folder in INSTALLED_AS)]
    assert ours == []


def test_the_canonical_base_is_the_ig_packages():
    from fhir_gateway.config import DEFAULT_PROFILES
    from fhir_gateway.identifiers import CANONICAL_BASE

    for package in (Path(DEFAULT_PROFILES), ROOT / "profiles" / "src"):
        assert json.loads((package / "package.json").read_text())["canonical"] == CANONICAL_BASE
