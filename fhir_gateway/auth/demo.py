"""The demo client: what `serve --demo` registers (when authorization is on) so that
`fhir-gateway token` can get an access token with no setup, for the README's examples.

Its private key and id stay in the data dir (`demo-client-key.pem`, `demo-client.json`);
`token` signs a client assertion with that key (ES384) and asks the token endpoint, as any
Backend Services client does.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fhir_gateway import http_client
from fhir_gateway.auth.clients import Registry
from fhir_gateway.auth.keys import public_jwk, write_private_key
from fhir_gateway.auth.tokens import ASSERTION_TYPE

KEY, RECORD = "demo-client-key.pem", "demo-client.json"
NAME = "demo"
SCOPE = "system/*.cruds"


def ensure_demo_client(data_dir: str | Path) -> str:
    """The demo client's id, registering it (and making its key) the first time."""
    data_dir = Path(data_dir)
    record, key_path = data_dir / RECORD, data_dir / KEY
    registry = Registry(data_dir)
    if record.is_file() and key_path.is_file():
        client_id = json.loads(record.read_text())["client_id"]
        if registry.get(client_id):
            return client_id
    if not key_path.is_file():
        write_private_key(key_path, ec.generate_private_key(ec.SECP384R1()))
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    jwks = {"keys": [public_jwk(private.public_key(), "ES384")]}
    client = registry.add(NAME, SCOPE, jwks=jwks)
    record.write_text(json.dumps({"client_id": client.id, "key": KEY}))
    return client.id


def assertion(client_id: str, private_key, token_url: str, algorithm: str = "ES384",
              kid: str | None = None, lifetime: int = 240) -> str:
    """A client assertion (RFC 7523) as SMART Backend Services asks for it."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "iat": now,
              "exp": now + lifetime, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, private_key, algorithm=algorithm,
                      headers={"kid": kid} if kid else None)


def demo_client(data_dir: str | Path) -> tuple[str, Path]:
    """(client id, private key file) of the demo client registered in the data dir."""
    record = Path(data_dir) / RECORD
    if not record.is_file():
        raise FileNotFoundError(f"no demo client in {data_dir}: start the gateway with "
                                "`fhir-gateway serve --demo` (make run) first")
    return json.loads(record.read_text())["client_id"], Path(data_dir) / KEY


def load_key(path: Path):
    """A PEM private key and the algorithm it signs with (ES384 for EC, RS384 for RSA)."""
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return private, "ES384" if isinstance(private, ec.EllipticCurvePrivateKey) else "RS384"


def request_token(token_url: str, client_id: str, key_file: Path, scope: str = SCOPE) -> dict:
    """Ask the token endpoint for a token as a client whose private key is `key_file`; the
    token endpoint's JSON answer (PermissionError with its error otherwise)."""
    private, algorithm = load_key(key_file)
    kid = public_jwk(private.public_key(), algorithm)["kid"]
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(client_id, private, token_url, algorithm, kid),
            "scope": scope}
    parts = urlsplit(token_url)
    client = http_client.Client(f"{parts.scheme}://{parts.netloc}", timeout=10, retries=1,
                                backoff=0.1)
    try:
        answer = client.request("POST", parts.path.lstrip("/"), body=urlencode(form).encode(),
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    finally:
        client.close()
    body = answer.json()
    if answer.status_code != 200:
        raise PermissionError(f"{body.get('error')}: {body.get('error_description')}")
    return body
