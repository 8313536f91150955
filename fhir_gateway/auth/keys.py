"""Keys: the gateway's own signing key for the access tokens it issues, and the public keys
of others (clients' and an external issuer's JWKS) fetched over HTTP and cached.

The signing key is the PEM file the settings name (`FHIR_GATEWAY_SIGNING_KEY`), else one
generated on first start into the data dir (`gateway-signing-key.pem`, mode 0600): an EC
P-384 key, so tokens are ES384. Several gateway processes behind one balancer must share
one key: configure it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_gateway import http_client

GENERATED = "gateway-signing-key.pem"


@dataclass(frozen=True)
class SigningKey:
    private: object
    algorithm: str
    kid: str

    @property
    def public(self):
        return self.private.public_key()


def signing_key(data_dir: str | Path, configured: str = "") -> SigningKey:
    """The configured key, else the data dir's (made on first use)."""
    path = Path(configured) if configured else Path(data_dir) / GENERATED
    if not configured and not path.is_file():
        write_private_key(path, ec.generate_private_key(ec.SECP384R1()))
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        algorithm = "ES384"
    elif isinstance(private, rsa.RSAPrivateKey):
        algorithm = "RS384"
    else:
        raise ValueError(f"{path}: the signing key must be an EC (P-384) or RSA key")
    return SigningKey(private, algorithm, thumbprint(private.public_key(), algorithm))


def write_private_key(path: Path, key) -> None:
    """A PEM private key, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def public_jwk(public_key, algorithm: str, kid: str | None = None) -> dict:
    """A public key as a JWK, with its `alg` and `kid` (the thumbprint unless given)."""
    algo = jwt.get_algorithm_by_name(algorithm)
    jwk = orjson.loads(algo.to_jwk(public_key))
    return {**jwk, "alg": algorithm, "use": "sig",
            "kid": kid or thumbprint(public_key, algorithm)}


def thumbprint(public_key, algorithm: str) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public key."""
    import base64
    import hashlib

    jwk = orjson.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(public_key))
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = orjson.dumps({m: jwk[m] for m in members}, option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


class KeyNotFound(Exception):
    """No key of the JWKS fits (or the JWKS could not be had): the message says which."""


class JwksCache:
    """JWKS documents by URL, fetched with the gateway's bounded HTTP client and kept for
    `ttl` seconds; a `kid` not in the cached set fetches again, at most once per `retry`
    seconds per URL (a stream of made-up kids must not become a stream of fetches)."""

    def __init__(self, ttl: float = 300.0, retry: float = 30.0, timeout: float = 5.0,
                 max_bytes: int = 1_000_000):
        self.ttl, self.retry, self.timeout, self.max_bytes = ttl, retry, timeout, max_bytes
        self._sets: dict[str, tuple[float, jwt.PyJWKSet]] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str | None, algorithm: str):
        """The public key (a cryptography object) for a token's header."""
        fetched_at, keys = self._sets.get(url, (0.0, None))
        now = time.monotonic()
        if keys is None or now - fetched_at > self.ttl or (
                _pick(keys, kid, algorithm) is None and now - fetched_at > self.retry):
            keys = self._fetch(url)
        found = _pick(keys, kid, algorithm)
        if found is None:
            raise KeyNotFound(f"no key {kid or ''} for {algorithm} in the JWKS at {url}")
        return found

    def _fetch(self, url: str) -> jwt.PyJWKSet:
        parts = urlsplit(url)
        path = parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
        client = http_client.Client(f"{parts.scheme}://{parts.netloc}", timeout=self.timeout,
                                    retries=1, backoff=0.1, pool_size=2)
        try:
            answer = client.request("GET", path, bounded=True, max_bytes=self.max_bytes,
                                    headers={"Accept": "application/json"})
        except http_client.Unreachable as err:
            raise KeyNotFound(f"the JWKS at {url} could not be fetched: {err}") from None
        finally:
            client.close()
        if answer.status_code != 200:
            raise KeyNotFound(f"the JWKS at {url} answered HTTP {answer.status_code}")
        try:
            keys = jwt.PyJWKSet.from_dict(answer.json())
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as err:
            raise KeyNotFound(f"the JWKS at {url} cannot be read: {err}") from None
        with self._lock:
            self._sets[url] = (time.monotonic(), keys)
        return keys


def key_from_jwks(jwks: dict, kid: str | None, algorithm: str):
    """The public key of an inline JWKS (a registered client's) for a token's header."""
    try:
        keys = jwt.PyJWKSet.from_dict(jwks)
    except jwt.PyJWTError as err:
        raise KeyNotFound(f"the registered JWKS cannot be read: {err}") from None
    found = _pick(keys, kid, algorithm)
    if found is None:
        raise KeyNotFound(f"no registered key {kid or ''} fits {algorithm}")
    return found


def _pick(keys: jwt.PyJWKSet, kid: str | None, algorithm: str):
    """The key with that `kid` (any, when the token names none) of the algorithm's type."""
    kty = "EC" if algorithm.startswith("ES") else "RSA"
    for key in keys.keys:
        if (kid is None or key.key_id == kid) and key.key_type == kty \
                and getattr(key, "_jwk_data", {}).get("alg") in (None, algorithm):
            return key.key
    return None
