"""SMART Backend Services over HTTP, authorization ON, on both stores: discovery, the token
flow with RS384 and ES384 client keys, every token endpoint error, 401 and 403 on /fhir,
v1 and v2 scopes, `_include` filtering, transactions, external issuer tokens, the clients
CLI, and AUTH=off refused off loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import ROOT, LiveServer, free_port, patient
from fhir_gateway.api.app import create_app
from fhir_gateway.auth.clients import Registry
from fhir_gateway.auth.keys import public_jwk, signing_key
from fhir_gateway.auth.setup import AuthConfigError
from fhir_gateway.auth.tokens import ASSERTION_TYPE
from fhir_gateway.config import Settings

FHIR_JSON = "application/fhir+json"


class Keys:
    """A client key pair of one algorithm, and its public JWKS."""

    def __init__(self, algorithm: str):
        self.algorithm = algorithm
        self.private = ec.generate_private_key(ec.SECP384R1()) if algorithm.startswith("ES") \
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"k-{algorithm}"
        self.jwks = {"keys": [public_jwk(self.private.public_key(), algorithm, self.kid)]}


RS = Keys("RS384")
ES = Keys("ES384")
OTHER_ES = Keys("ES384")


class Gateway:
    def __init__(self, base: str, data_dir, http: httpx.Client):
        self.base, self.data_dir, self.http = base, data_dir, http
        self.origin = base.removesuffix("/fhir")
        self.token_url = f"{self.origin}/auth/token"
        self.registry = Registry(data_dir)

    def client(self, scope: str, keys: Keys = ES, **extra) -> str:
        return self.registry.add("test client", scope, jwks=keys.jwks, **extra).id

    def ask(self, client_id: str, scope: str, keys: Keys = ES, **claims):
        """POST a token request with an assertion; `claims` override the assertion's."""
        now = int(time.time())
        body = {"iss": client_id, "sub": client_id, "aud": self.token_url, "iat": now,
                "exp": now + 240, "jti": str(uuid.uuid4()), **claims}
        signed = jwt.encode(body, keys.private, algorithm=keys.algorithm,
                            headers={"kid": keys.kid})
        return self.post_form({"grant_type": "client_credentials",
                               "client_assertion_type": ASSERTION_TYPE,
                               "client_assertion": signed, "scope": scope})

    def post_form(self, form: dict):
        return self.http.post(self.token_url, data=form)

    def token(self, scope: str, keys: Keys = ES) -> str:
        answer = self.ask(self.client(scope, keys), scope, keys)
        assert answer.status_code == 200, answer.text
        return answer.json()["access_token"]


def serve(app):
    server = uvicorn.Server(uvicorn.Config(app, port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    return server, thread


@pytest.fixture
def gateway(store, tmp_path):
    settings = Settings(auth=True, data_dir=str(tmp_path / "data"), external_issuer="",
                        external_jwks_url="")
    yield from _gateway(store, settings)


def _gateway(store, settings):
    server, thread = serve(create_app(store, settings))
    base = f"http://127.0.0.1:{server.config.port}/fhir"
    with httpx.Client(timeout=120) as http:
        yield Gateway(base, settings.data_dir, http)
    server.should_exit = True
    thread.join()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


# -- discovery --------------------------------------------------------------------------

def test_smart_configuration_and_metadata_need_no_token(gateway):
    config = gateway.http.get(f"{gateway.base}/.well-known/smart-configuration")
    assert config.status_code == 200
    body = config.json()
    assert body["token_endpoint"] == gateway.token_url
    assert body["grant_types_supported"] == ["client_credentials"]
    assert body["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert set(body["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert "client-confidential-asymmetric" in body["capabilities"]
    statement = gateway.http.get(f"{gateway.base}/metadata").json()
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = security["extension"][0]
    assert uris["url"].endswith("/oauth-uris")
    assert uris["extension"] == [{"url": "token", "valueUri": gateway.token_url}]


def test_health_needs_no_token_and_tells_nothing(gateway):
    answer = gateway.http.get(f"{gateway.origin}/health")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


# -- the token flow -----------------------------------------------------------------------

@pytest.mark.parametrize("keys", [RS, ES], ids=["RS384", "ES384"])
def test_a_signed_assertion_gets_a_token_that_opens_the_api(gateway, keys):
    client_id = gateway.client("system/*.cruds", keys)
    answer = gateway.ask(client_id, "system/Patient.cruds system/Observation.rs", keys)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer" and 0 < body["expires_in"] <= 300
    assert body["scope"] == "system/Patient.cruds system/Observation.rs"
    assert answer.headers["cache-control"] == "no-store"
    token = body["access_token"]
    created = gateway.http.post(f"{gateway.base}/Patient", json=patient(), headers=bearer(token))
    assert created.status_code == 201, created.text
    found = gateway.http.get(f"{gateway.base}/Patient?family=Testperson", headers=bearer(token))
    assert found.status_code == 200 and found.json()["total"] == 1


def test_scopes_are_narrowed_to_the_registration(gateway):
    client_id = gateway.client("system/Patient.rs")
    answer = gateway.ask(client_id, "system/Patient.rs system/Condition.rs")
    assert answer.status_code == 200
    assert answer.json()["scope"] == "system/Patient.rs"


def _error(answer, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == code, answer.text
    return answer.json()["error_description"]


def test_token_endpoint_errors(gateway):
    client_id = gateway.client("system/Patient.rs")
    # signed by a key the client did not register
    _error(gateway.ask(client_id, "system/Patient.rs", OTHER_ES), 401, "invalid_client")
    # an unknown client
    _error(gateway.ask("no-such-client", "system/Patient.rs"), 401, "invalid_client")
    # the assertion is for another audience
    said = _error(gateway.ask(client_id, "system/Patient.rs", aud="https://elsewhere/token"),
                  400, "invalid_grant")
    assert gateway.token_url in said
    # exp more than 5 minutes ahead; and expired
    said = _error(gateway.ask(client_id, "system/Patient.rs", exp=int(time.time()) + 600),
                  400, "invalid_grant")
    assert "5 minutes" in said
    _error(gateway.ask(client_id, "system/Patient.rs", exp=int(time.time()) - 120),
           400, "invalid_grant")
    # sub other than iss
    _error(gateway.ask(client_id, "system/Patient.rs", sub="someone-else"), 400, "invalid_grant")
    # a jti used twice
    jti = str(uuid.uuid4())
    assert gateway.ask(client_id, "system/Patient.rs", jti=jti).status_code == 200
    assert "used before" in _error(gateway.ask(client_id, "system/Patient.rs", jti=jti),
                                   400, "invalid_grant")
    # scopes the client may not have
    _error(gateway.ask(client_id, "system/Condition.rs system/*.cruds"), 400, "invalid_scope")
    # the request itself
    _error(gateway.post_form({"grant_type": "password"}), 400, "unsupported_grant_type")
    _error(gateway.post_form({"grant_type": "client_credentials", "scope": "system/*.rs"}),
           400, "invalid_request")
    _error(gateway.post_form({"grant_type": "client_credentials",
                              "client_assertion_type": ASSERTION_TYPE,
                              "client_assertion": "not-a-jwt", "scope": "system/*.rs"}),
           400, "invalid_request")
    # HS256 (a shared secret) is not a registered key's algorithm
    forged = jwt.encode({"iss": client_id, "sub": client_id, "aud": gateway.token_url,
                         "exp": int(time.time()) + 60, "jti": "x"}, "s" * 32, "HS256")
    _error(gateway.post_form({"grant_type": "client_credentials",
                              "client_assertion_type": ASSERTION_TYPE,
                              "client_assertion": forged, "scope": "system/Patient.rs"}),
           401, "invalid_client")


# -- 401 and 403 on /fhir -----------------------------------------------------------------

def test_no_or_bad_token_is_401_with_an_operation_outcome(gateway, tmp_path):
    missing = gateway.http.get(f"{gateway.base}/Patient")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "error=" not in missing.headers["www-authenticate"]
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert missing.json()["issue"][0]["code"] == "login"
    bad = gateway.http.get(f"{gateway.base}/Patient/1", headers=bearer("garbage"))
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    xml = gateway.http.get(f"{gateway.base}/Patient?_format=xml", headers=bearer("garbage"))
    assert xml.status_code == 401 and xml.headers["content-type"].startswith(
        "application/fhir+xml") and b"<OperationOutcome" in xml.content
    # expired, and signed by a key that is not the gateway's
    own = signing_key(gateway.data_dir)
    stale = jwt.encode({"iss": "fhir-gateway", "aud": "fhir-gateway", "sub": "x",
                        "scope": "system/*.cruds", "exp": int(time.time()) - 60},
                       own.private, algorithm=own.algorithm)
    expired = gateway.http.get(f"{gateway.base}/Patient", headers=bearer(stale))
    assert expired.status_code == 401 and "expired" in expired.json()["issue"][0]["diagnostics"]
    forged = jwt.encode({"iss": "fhir-gateway", "aud": "fhir-gateway", "sub": "x",
                         "scope": "system/*.cruds", "exp": int(time.time()) + 60},
                        OTHER_ES.private, algorithm="ES384")
    assert gateway.http.get(f"{gateway.base}/Patient", headers=bearer(forged)).status_code == 401
    # every /fhir path, a route that does not exist included
    assert gateway.http.get(f"{gateway.base}/_history").status_code == 401
    assert gateway.http.post(f"{gateway.base}/$generate-claims", json={}).status_code == 401
    assert gateway.http.get(f"{gateway.base}/$some-future-route").status_code == 401


@pytest.mark.parametrize("scope", ["system/Patient.read", "system/Patient.rs"], ids=["v1", "v2"])
def test_read_scopes_read_but_do_not_write(gateway, scope):
    writer = gateway.token("system/*.*")
    made = gateway.http.post(f"{gateway.base}/Patient", json=patient(), headers=bearer(writer))
    pid = made.json()["id"]
    token = gateway.token(scope)
    assert gateway.http.get(f"{gateway.base}/Patient/{pid}", headers=bearer(token)).status_code == 200
    assert gateway.http.get(f"{gateway.base}/Patient", headers=bearer(token)).status_code == 200
    refused = gateway.http.post(f"{gateway.base}/Patient", json=patient("87654321"),
                                headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["code"] == "forbidden"
    assert "system/Patient.c" in refused.json()["issue"][0]["diagnostics"]
    assert gateway.http.delete(f"{gateway.base}/Patient/{pid}", headers=bearer(token)).status_code == 403
    other = gateway.http.get(f"{gateway.base}/Condition", headers=bearer(token))
    assert other.status_code == 403


@pytest.mark.parametrize("scope", ["system/*.write", "system/*.cud"], ids=["v1", "v2"])
def test_write_scopes_write_but_do_not_read(gateway, scope):
    token = gateway.token(scope)
    made = gateway.http.post(f"{gateway.base}/Patient", json=patient(), headers=bearer(token))
    assert made.status_code == 201
    pid = made.json()["id"]
    assert gateway.http.get(f"{gateway.base}/Patient/{pid}", headers=bearer(token)).status_code == 403
    assert gateway.http.get(f"{gateway.base}/Patient", headers=bearer(token)).status_code == 403


def test_v2_letters_each_allow_their_interaction(gateway):
    writer = gateway.token("system/*.cruds")
    pid = gateway.http.post(f"{gateway.base}/Patient", json=patient(),
                            headers=bearer(writer)).json()["id"]
    search_only = gateway.token("system/Patient.s")
    assert gateway.http.get(f"{gateway.base}/Patient", headers=bearer(search_only)).status_code == 200
    assert gateway.http.get(f"{gateway.base}/Patient/{pid}",
                            headers=bearer(search_only)).status_code == 403
    read_only = gateway.token("system/Patient.r")
    assert gateway.http.get(f"{gateway.base}/Patient/{pid}",
                            headers=bearer(read_only)).status_code == 200
    assert gateway.http.get(f"{gateway.base}/Patient/{pid}/_history",
                            headers=bearer(read_only)).status_code == 200
    assert gateway.http.get(f"{gateway.base}/Patient", headers=bearer(read_only)).status_code == 403


def test_include_never_returns_types_outside_the_scopes(gateway):
    writer = gateway.token("system/*.cruds")
    pid = gateway.http.post(f"{gateway.base}/Patient", json=patient(),
                            headers=bearer(writer)).json()["id"]
    condition = {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                 "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                      "code": "E11.9"}]}}
    assert gateway.http.post(f"{gateway.base}/Condition", json=condition,
                             headers=bearer(writer)).status_code == 201
    url = f"{gateway.base}/Condition?_include=Condition:subject"
    narrow = gateway.http.get(url, headers=bearer(gateway.token("system/Condition.rs")))
    assert narrow.status_code == 200
    assert [e["resource"]["resourceType"] for e in narrow.json()["entry"]] == ["Condition"]
    wide = gateway.http.get(url, headers=bearer(gateway.token("system/Condition.rs "
                                                             "system/Patient.rs")))
    assert sorted(e["resource"]["resourceType"] for e in wide.json()["entry"]) == \
        ["Condition", "Patient"]
    rev = gateway.http.get(f"{gateway.base}/Patient?_revinclude=Condition:subject",
                           headers=bearer(gateway.token("system/Patient.rs")))
    assert [e["resource"]["resourceType"] for e in rev.json()["entry"]] == ["Patient"]
    star = gateway.http.get(f"{gateway.base}/Condition?_include=*",
                            headers=bearer(gateway.token("system/Condition.read")))
    assert [e["resource"]["resourceType"] for e in star.json()["entry"]] == ["Condition"]


def test_chained_searches_need_the_scopes_of_the_types_they_go_through(gateway):
    writer = gateway.token("system/*.cruds")
    pid = gateway.http.post(f"{gateway.base}/Patient", json=patient(),
                            headers=bearer(writer)).json()["id"]
    condition = {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"}}
    gateway.http.post(f"{gateway.base}/Condition", json=condition, headers=bearer(writer))
    conditions_only = bearer(gateway.token("system/Condition.rs"))
    for key in ("subject:Patient.family", "subject.family", "patient.family"):
        refused = gateway.http.get(f"{gateway.base}/Condition?{key}=Testperson",
                                   headers=conditions_only)
        assert refused.status_code == 403, key
        assert refused.json()["issue"][0]["expression"] == [key]
    both = bearer(gateway.token("system/Condition.rs system/Patient.s"))
    found = gateway.http.get(f"{gateway.base}/Condition?subject:Patient.family=Testperson",
                             headers=both)
    assert found.status_code == 200 and found.json()["total"] == 1
    posted = gateway.http.post(f"{gateway.base}/Condition/_search", data={
        "subject:Patient.family": "Testperson"}, headers={
        "Authorization": conditions_only["Authorization"]})
    assert posted.status_code == 403


def test_a_transaction_with_an_entry_outside_the_scopes_is_refused_whole_a_batch_entry_alone(
        gateway):
    token = gateway.token("system/Patient.cruds")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "resource": patient(),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Condition",
                      "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},
         "request": {"method": "POST", "url": "Condition"}}]}
    refused = gateway.http.post(gateway.base, json=bundle, headers=bearer(token))
    assert refused.status_code == 403, refused.text
    assert refused.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    reader = bearer(gateway.token("system/*.rs"))
    assert gateway.http.get(f"{gateway.base}/Patient", headers=reader).json()["total"] == 0
    # in a batch, the entry outside the scopes is refused alone; the Patient is stored
    batch = {**bundle, "type": "batch", "entry": [bundle["entry"][0], {
        "resource": {"resourceType": "Condition", "subject": {"reference": "Patient/x"}},
        "request": {"method": "POST", "url": "Condition"}}]}
    answer = gateway.http.post(gateway.base, json=batch, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    [stored, refused] = answer.json()["entry"]
    assert stored["response"]["status"].startswith("201")
    assert refused["response"]["status"].startswith("403")
    assert refused["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert gateway.http.get(f"{gateway.base}/Patient", headers=reader).json()["total"] == 1
    bundle["entry"] = bundle["entry"][:1]
    assert gateway.http.post(gateway.base, json=bundle, headers=bearer(token)).status_code == 200
    include = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?_revinclude=Condition:subject"}}]}
    refused = gateway.http.post(gateway.base, json=include, headers=bearer(token))
    assert refused.status_code == 200
    outcome = refused.json()["entry"][0]["response"]["outcome"]
    assert "_include" in outcome["issue"][0]["diagnostics"]


def test_operations_need_the_scopes_of_what_they_read_and_write(gateway):
    writer = gateway.token("system/*.cruds")
    pid = gateway.http.post(f"{gateway.base}/Patient", json=patient(),
                            headers=bearer(writer)).json()["id"]
    patient_only = bearer(gateway.token("system/Patient.rs"))
    status = gateway.http.get(f"{gateway.base}/Patient/{pid}/$hh-status", headers=patient_only)
    assert status.status_code == 403
    assert "EpisodeOfCare" in status.json()["issue"][0]["diagnostics"]
    enough = bearer(gateway.token("system/Patient.rs system/EpisodeOfCare.rs "
                                  "system/Organization.rs"))
    assert gateway.http.get(f"{gateway.base}/Patient/{pid}/$hh-status",
                            headers=enough).status_code == 200
    claims = gateway.http.post(f"{gateway.base}/$generate-claims", headers=enough,
                               json={"resourceType": "Parameters", "parameter": [
                                   {"name": "month", "valueDate": "2026-01"}]})
    assert claims.status_code == 403 and "Procedure" in claims.json()["issue"][0]["diagnostics"]
    billing = bearer(gateway.token("system/EpisodeOfCare.s system/Procedure.s system/Coverage.s "
                                   "system/Patient.r system/Organization.r system/Claim.crs"))
    assert gateway.http.post(f"{gateway.base}/$generate-claims", headers=billing,
                             json={"resourceType": "Parameters", "parameter": [
                                 {"name": "month", "valueDate": "2026-01"}]}).status_code == 200
    system_search = gateway.http.get(f"{gateway.base}/_history", headers=patient_only)
    assert system_search.status_code == 403


def test_a_bulk_export_is_kicked_off_polled_and_read_with_a_token(gateway):
    writer = bearer(gateway.token("system/*.cruds"))
    gateway.http.post(f"{gateway.base}/Patient", json=patient(), headers=writer)
    reader = {"Authorization": bearer(gateway.token("system/*.rs"))["Authorization"],
              "Prefer": "respond-async", "Accept": FHIR_JSON}
    assert gateway.http.get(f"{gateway.base}/$export?_type=Patient").status_code == 401
    patient_only = {**reader, "Authorization": bearer(gateway.token(
        "system/Patient.rs"))["Authorization"]}
    assert gateway.http.get(f"{gateway.base}/$export?_type=Patient",
                            headers=patient_only).status_code == 403
    kicked = gateway.http.get(f"{gateway.base}/$export?_type=Patient", headers=reader)
    assert kicked.status_code == 202, kicked.text
    status_url = kicked.headers["content-location"]
    assert gateway.http.get(status_url).status_code == 401
    deadline = time.time() + 60
    while (status := gateway.http.get(status_url, headers=reader)).status_code == 202:
        assert time.time() < deadline
        time.sleep(0.2)
    assert status.status_code == 200, status.text
    assert status.json()["requiresAccessToken"] is True
    file_url = status.json()["output"][0]["url"]
    assert gateway.http.get(file_url).status_code == 401
    got = gateway.http.get(file_url, headers=reader)
    assert got.status_code == 200 and '"resourceType":"Patient"' in got.text.replace(" ", "")


# -- an external issuer -------------------------------------------------------------------

class JwksServer:
    """A JWKS document on a local HTTP server, as an OIDC issuer publishes it."""

    def __init__(self, jwks: dict):
        body = json.dumps(jwks).encode()
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/hh/certs"

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def external(store, tmp_path):
    issuer = Keys("RS384")
    issuer.jwks["keys"][0]["alg"] = "RS256"
    jwks = JwksServer(issuer.jwks)
    settings = Settings(auth=True, data_dir=str(tmp_path / "data"),
                        external_issuer="https://idp.example/realms/hh",
                        external_jwks_url=jwks.url, external_audience="fhir-gateway-api")
    for gateway in _gateway(store, settings):
        yield gateway, issuer, jwks
    jwks.stop()


def test_tokens_of_a_configured_external_issuer_are_accepted(external):
    gateway, issuer, jwks = external

    def token(key=issuer.private, **claims):
        body = {"iss": "https://idp.example/realms/hh", "aud": "fhir-gateway-api",
                "azp": "keycloak-client", "scope": "openid system/Patient.cruds",
                "exp": int(time.time()) + 120, **claims}
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": issuer.kid})

    made = gateway.http.post(f"{gateway.base}/Patient", json=patient(), headers=bearer(token()))
    assert made.status_code == 201, made.text
    assert gateway.http.get(f"{gateway.base}/Patient", headers=bearer(token())).status_code == 200
    assert gateway.http.get(f"{gateway.base}/Condition", headers=bearer(token())).status_code == 403
    assert jwks.hits == 1  # fetched once, then cached
    other = Keys("RS384").private
    assert gateway.http.get(f"{gateway.base}/Patient",
                            headers=bearer(token(other))).status_code == 401
    assert gateway.http.get(f"{gateway.base}/Patient",
                            headers=bearer(token(aud="another-api"))).status_code == 401
    assert gateway.http.get(f"{gateway.base}/Patient", headers=bearer(
        token(iss="https://other.example"))).status_code == 401


def test_a_client_registered_by_jwks_url_signs_with_a_key_published_there(gateway):
    published = JwksServer(RS.jwks)
    try:
        client_id = gateway.registry.add("by url", "system/Patient.rs",
                                         jwks_url=published.url).id
        assert gateway.ask(client_id, "system/Patient.rs", RS).status_code == 200
        _error(gateway.ask(client_id, "system/Patient.rs", OTHER_ES), 401, "invalid_client")
    finally:
        published.stop()


# -- the CLI and the settings ---------------------------------------------------------------

def cli(*args: str, data_dir, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fhir_gateway.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "FHIR_GATEWAY_DATA_DIR": str(data_dir), **env})


def test_clients_add_list_remove(tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(RS.jwks))
    added = cli("clients", "add", "--name", "Health Home A", "--jwks", str(jwks), "--scope",
                "system/Patient.rs system/Condition.rs", "--organization", "Organization/hh-a",
                data_dir=tmp_path)
    assert added.returncode == 0, added.stderr
    client_id = added.stdout.strip()
    assert added.stdout == f"{client_id}\n" and len(client_id) == 36
    by_url = cli("clients", "add", "--name", "MCO", "--jwks", "https://mco.example/jwks.json",
                 "--scope", "system/*.rs", data_dir=tmp_path)
    assert by_url.returncode == 0, by_url.stderr
    listed = cli("clients", "list", data_dir=tmp_path).stdout
    assert client_id in listed and "Health Home A" in listed and "Organization/hh-a" in listed
    assert "https://mco.example/jwks.json" in listed
    stored = Registry(tmp_path).get(client_id)
    assert stored.scope == "system/Patient.rs system/Condition.rs" and stored.jwks == RS.jwks
    removed = cli("clients", "remove", client_id, data_dir=tmp_path)
    assert removed.returncode == 0 and client_id not in cli("clients", "list",
                                                           data_dir=tmp_path).stdout
    assert cli("clients", "remove", client_id, data_dir=tmp_path).returncode == 1
    private = {"keys": [{**RS.jwks["keys"][0], "d": "AQAB"}]}
    jwks.write_text(json.dumps(private))
    refused = cli("clients", "add", "--name", "x", "--jwks", str(jwks), "--scope", "system/*.rs",
                  data_dir=tmp_path)
    assert refused.returncode == 2 and "private key" in refused.stderr


def test_the_token_command_gets_a_token_for_the_demo_client(store, tmp_path):
    from fhir_gateway.auth.demo import ensure_demo_client

    data = tmp_path / "data"
    settings = Settings(auth=True, data_dir=str(data))
    for gateway in _gateway(store, settings):
        client_id = ensure_demo_client(data)
        assert ensure_demo_client(data) == client_id  # registered once
        got = cli("token", "--url", gateway.token_url, data_dir=data)
        assert got.returncode == 0, got.stderr
        token = got.stdout.strip()
        assert got.stdout == f"{token}\n"
        answer = gateway.http.get(f"{gateway.base}/Patient", headers=bearer(token))
        assert answer.status_code == 200


def test_a_client_registered_from_the_cli_gets_a_token_from_the_cli(gateway, tmp_path):
    """The README's path for a deployment: keygen, clients add, token."""
    made = cli("clients", "keygen", str(tmp_path / "hh-a"), "--algorithm", "RS384",
               data_dir=gateway.data_dir)
    assert made.returncode == 0, made.stderr
    added = cli("clients", "add", "--name", "Health Home A", "--jwks",
                str(tmp_path / "hh-a.jwks.json"), "--scope", "system/Patient.rs",
                data_dir=gateway.data_dir)
    client_id = added.stdout.strip()
    got = cli("token", "--url", gateway.token_url, "--client-id", client_id, "--key",
              str(tmp_path / "hh-a.pem"), "--scope", "system/Patient.rs",
              data_dir=gateway.data_dir)
    assert got.returncode == 0, got.stderr
    token = got.stdout.strip()
    assert gateway.http.get(f"{gateway.base}/Patient", headers=bearer(token)).status_code == 200
    assert gateway.http.post(f"{gateway.base}/Patient", json=patient(),
                             headers=bearer(token)).status_code == 403
    refused = cli("token", "--url", gateway.token_url, "--client-id", client_id, "--key",
                  str(tmp_path / "hh-a.pem"), "--scope", "system/*.cruds",
                  data_dir=gateway.data_dir)
    assert refused.returncode == 2 and "invalid_scope" in refused.stderr


def test_make_run_registers_the_demo_client_whose_token_the_readme_uses(tmp_path):
    """`serve --demo` with authorization on (as `make run`), then the README's
    `TOKEN=$(.venv/bin/fhir-gateway token)` and a search with it."""
    data = tmp_path / "data"
    server = LiveServer(tmp_path / "demo.db", demo=True,
                        env={"FHIR_GATEWAY_AUTH": "on", "FHIR_GATEWAY_DATA_DIR": str(data)})
    try:
        assert httpx.get(f"{server.base}/Patient").status_code == 401
        got = cli("token", "--url", f"{server.base.removesuffix('/fhir')}/auth/token",
                  data_dir=data)
        assert got.returncode == 0, got.stderr
        answer = httpx.get(f"{server.base}/Patient?_summary=count",
                           headers={"Authorization": f"Bearer {got.stdout.strip()}"})
        assert answer.status_code == 200 and answer.json()["total"] > 0
    finally:
        server.stop()


def test_auth_off_is_refused_unless_on_loopback(store, tmp_path):
    with pytest.raises(AuthConfigError, match="loopback"):
        create_app(store, Settings(auth=False, host="0.0.0.0", data_dir=str(tmp_path)))
    create_app(store, Settings(auth=False, host="::1", data_dir=str(tmp_path)))
    done = cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--no-demo", "--store",
               f"sqlite:///{tmp_path / 'x.db'}", data_dir=tmp_path, FHIR_GATEWAY_AUTH="off")
    assert done.returncode == 2
    assert "FHIR_GATEWAY_AUTH=off is allowed only when listening on a loopback address" \
        in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr


def test_auth_off_on_loopback_serves_without_a_token_and_warns(store, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="fhir_gateway.auth"):
        app = create_app(store, Settings(auth=False, data_dir=str(tmp_path)))
    assert "Authorization is OFF" in caplog.text
    server, thread = serve(app)
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.config.port}/fhir/Patient")
        assert answer.status_code == 200
    finally:
        server.should_exit = True
        thread.join()
