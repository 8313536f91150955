"""Shared fixtures: an embedded store, an in-process HTTP client, and a live `serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from fhir_gateway.api.app import create_app
from fhir_gateway.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
FHIR_JSON = "application/fhir+json"


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture
def client(store):
    with TestClient(create_app(store), base_url="http://gateway.test") as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`fhir-gateway serve` in a subprocess, as a user would run it."""

    def __init__(self, db: Path, demo: bool = False, env: dict | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.db = db
        args = [sys.executable, "-m", "fhir_gateway.cli", "serve", "--port", str(self.port),
                "--store", f"sqlite:///{db}", "--demo" if demo else "--no-demo"]
        self.log = db.with_suffix(".log")
        self.proc = subprocess.Popen(args, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=ROOT)
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
