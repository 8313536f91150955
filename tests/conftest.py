"""Shared fixtures: an embedded store, an in-process HTTP client, and a live `serve` process."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from fhir_gateway.api.app import create_app
from fhir_gateway.store.hapi import HapiStore
from fhir_gateway.store.sqlite import SQLiteStore
from fhir_gateway.config import DEFAULT_PROFILES
from fhir_gateway.healthhome.checks import health_home_validator
from fhir_gateway.store import backend, guarded

# The test harness serves on loopback without authorization (FHIR_GATEWAY_AUTH=off): every
# Settings() and `serve` process of the tests reads it. tests/test_auth.py turns it on.
os.environ["FHIR_GATEWAY_AUTH"] = "off"
# What the gateway keeps in the user's data directory by default (export jobs, the exchange
# outbox, clients, keys) is this session's own: a job left unfinished by one test session
# must not be resumed by another, nor the machine user's files touched.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="fhir-gateway-tests-")
atexit.register(shutil.rmtree, os.environ["XDG_DATA_HOME"], True)

ROOT = Path(__file__).resolve().parents[1]
HAPI_RUN = ROOT / "docker" / "hapi-local" / "run"
FHIR_JSON = "application/fhir+json"
EXPUNGE = {"resourceType": "Parameters",
           "parameter": [{"name": "expungeEverything", "valueBoolean": True}]}


@pytest.fixture(scope="session")
def hapi_url(tmp_path_factory):
    """A HAPI FHIR JPA server of our own (docker/hapi-local), started once per test session.

    `HAPI_TEST_URL` points the tests at a server that is already running instead; there is
    no skipping: if HAPI cannot start, every HAPI test errors.
    """
    if os.environ.get("HAPI_TEST_URL"):
        yield os.environ["HAPI_TEST_URL"].rstrip("/")
        return
    run_dir = tmp_path_factory.mktemp("hapi")
    port = free_port()
    env = {**os.environ, "HAPI_PORT": str(port), "HAPI_RUN_DIR": str(run_dir),
           "HAPI_DATA_DIR": str(run_dir / "data")}
    started = subprocess.run([str(HAPI_RUN), "start"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"HAPI did not start:\n{started.stdout}\n{started.stderr}")
    yield f"http://127.0.0.1:{port}/fhir"
    subprocess.run([str(HAPI_RUN), "stop"], env=env, capture_output=True)


def expunge(url: str) -> None:
    r = httpx.post(f"{url}/$expunge", json=EXPUNGE, timeout=120,
                   headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 200, r.text


@pytest.fixture(autouse=True)
def own_export_dir(tmp_path, monkeypatch):
    """Each test's apps keep export jobs of their own: an app resumes the unfinished jobs of
    its export directory at start, which must not be another test's (on another store)."""
    monkeypatch.setenv("FHIR_GATEWAY_EXPORT_DIR", str(tmp_path / "exports"))


@pytest.fixture(params=["sqlite", "hapi"])
def store(request, tmp_path):
    """Every contract test runs on both stores, each empty at the start of the test."""
    if request.param == "sqlite":
        inner = SQLiteStore(tmp_path / "store.db")
    else:
        url = request.getfixturevalue("hapi_url")
        expunge(url)
        inner = HapiStore(url)
    s = guarded(inner, health_home_validator(DEFAULT_PROFILES))
    yield s
    s.close()


@pytest.fixture
def on_hapi(store) -> bool:
    return isinstance(backend(store), HapiStore)


@pytest.fixture
def issue_code(on_hapi):
    """The OperationOutcome issue code to expect.

    Deliberate difference: HAPI passes through with `code: processing` on every error (the
    gateway forwards its OperationOutcomes unchanged); the embedded store says which kind
    of problem it was (not-found, deleted, conflict, ...). Status codes are the same.
    """
    return lambda code: "processing" if on_hapi else code


@pytest.fixture
def live(store):
    """The gateway over the test's store, served by uvicorn in a thread: real concurrent
    HTTP requests, each in its own worker thread, as in production."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(store), port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=120) as http:
        yield http
    server.should_exit = True
    thread.join()


@pytest.fixture
def client(store):
    with TestClient(create_app(store), base_url="http://gateway.test") as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`fhir-gateway serve` in a subprocess, as a user would run it.

    `command`, `cwd` and `environ` run another installation of it (tests/test_package.py):
    its command, its working directory, its whole environment (default: this process's).
    """

    def __init__(self, db: Path, demo: bool = False, env: dict | None = None,
                 store: str | None = None, command: list[str] | None = None, cwd: Path = ROOT,
                 environ: dict | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.db = db
        args = [*(command or [sys.executable, "-m", "fhir_gateway.cli"]), "serve",
                "--port", str(self.port), "--store", store or f"sqlite:///{db}",
                "--demo" if demo else "--no-demo"]
        self.log = db.with_suffix(".log")
        self.proc = subprocess.Popen(args, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**(os.environ if environ is None else environ),
                                          **(env or {})}, cwd=cwd)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"serve did not start: {self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("live") / "live.db")
    yield server
    server.stop()


def patient(identifier: str = "12345678", family: str = "Testperson", **extra) -> dict:
    return {"resourceType": "Patient",
            "identifier": [{"system": "http://fhir.health-home-gateway.org/sid/mo-healthnet-dcn",
                            "value": identifier}],
            "name": [{"family": family, "given": ["Alex"]}], "gender": "female",
            "birthDate": "1980-04-02", **extra}


def pytest_configure(config):
    config.addinivalue_line("markers", "hapi: runs against the HAPI FHIR server (a JVM); "
                                       "`pytest -m 'not hapi'` is the fast loop without one")


def pytest_collection_modifyitems(items):
    """Mark every test that reaches HAPI: through `hapi_url`, or a store parameter 'hapi'."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "hapi_url" in item.fixturenames or "hapi" in params.values():
            item.add_marker(pytest.mark.hapi)
