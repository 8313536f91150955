"""The registered Backend Services clients: a small SQLite file in the data dir
(`clients.db`), written by `fhir-gateway clients add/remove` and read by the token endpoint
on each request, so a client registered while the gateway runs can ask for a token at once.

A client is its id, a name, its public keys (a JWKS given inline, or the URL where the
client publishes it), the scopes it may be granted and, optionally, the Organization it
acts for (per-Health-Home access builds on it).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jwt

FILE = "clients.db"
_SCHEMA = """CREATE TABLE IF NOT EXISTS client (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, jwks TEXT, jwks_url TEXT,
    scope TEXT NOT NULL, organization TEXT, created TEXT NOT NULL)"""
#: key types a client may register: what RS384 and ES384 verify with
KEY_TYPES = {"RSA", "EC"}


class ClientError(ValueError):
    """A registration that cannot be made as given (the message says why)."""


@dataclass(frozen=True)
class Client:
    id: str
    name: str
    scope: str
    jwks: dict | None = None
    jwks_url: str | None = None
    organization: str | None = None
    created: str = ""


class Registry:
    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / FILE

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10)
        db.execute(_SCHEMA)
        return db

    def add(self, name: str, scope: str, jwks: dict | None = None, jwks_url: str | None = None,
            organization: str | None = None, client_id: str | None = None) -> Client:
        if jwks is not None:
            check_jwks(jwks)
        if organization and not (organization.startswith("Organization/")
                                 and len(organization) > len("Organization/")):
            raise ClientError(f"--organization must be Organization/ID, not '{organization}'")
        client = Client(client_id or str(uuid.uuid4()), name, " ".join(scope.split()), jwks,
                        jwks_url, organization, datetime.now(UTC).isoformat(timespec="seconds"))
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO client VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (client.id, client.name, json.dumps(jwks) if jwks else None, jwks_url,
                        client.scope, organization, client.created))
        db.close()
        return client

    def get(self, client_id: str) -> Client | None:
        if not self.path.is_file():
            return None
        db = self._connect()
        row = db.execute("SELECT * FROM client WHERE id = ?", (client_id,)).fetchone()
        db.close()
        return _client(row) if row else None

    def all(self) -> list[Client]:
        if not self.path.is_file():
            return []
        db = self._connect()
        rows = db.execute("SELECT * FROM client ORDER BY created, name").fetchall()
        db.close()
        return [_client(r) for r in rows]

    def remove(self, client_id: str) -> bool:
        if not self.path.is_file():
            return False
        with self._connect() as db:
            removed = db.execute("DELETE FROM client WHERE id = ?", (client_id,)).rowcount
        db.close()
        return bool(removed)


def _client(row: tuple) -> Client:
    cid, name, jwks, jwks_url, scope, organization, created = row
    return Client(cid, name, scope, json.loads(jwks) if jwks else None, jwks_url,
                  organization, created)


def check_jwks(jwks: object) -> None:
    """A JWKS with at least one RSA or EC public key that PyJWT reads; no private parts."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ClientError("the JWKS must be a JSON object with a non-empty 'keys' array")
    for key in jwks["keys"]:
        if not isinstance(key, dict) or key.get("kty") not in KEY_TYPES:
            raise ClientError("each key must be an RSA or EC key (kty RSA or EC), for RS384 "
                              "or ES384")
        if "d" in key:
            raise ClientError("the JWKS holds a private key: register the public key only")
        try:
            jwt.PyJWK(key)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as err:
            raise ClientError(f"a key of the JWKS cannot be read: {err}") from None
