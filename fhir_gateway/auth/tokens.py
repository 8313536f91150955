"""SMART Backend Services tokens: the token endpoint's work (a client's signed assertion in,
an access token out) and the check of each access token a request carries.

Issuing (`TokenService.issue`), as SMART App Launch 2.x "client-confidential-asymmetric"
and RFC 7523 say: `grant_type=client_credentials`, `client_assertion_type=urn:ietf:params:
oauth:client-assertion-type:jwt-bearer`, a `client_assertion` JWT signed RS384 or ES384 by
a key of the client's registered JWKS, with `iss` = `sub` = the client id, `aud` = the token
endpoint's URL, `exp` at most 5 minutes ahead and a `jti` not seen before (kept until its
`exp`). The errors are OAuth2's: who the client is cannot be established (unknown, no
fitting key, bad signature, an algorithm not offered) is `invalid_client`; an assertion
that is signed right but not acceptable (audience, times, replayed jti, iss/sub) is
`invalid_grant`; scopes outside the client's registration `invalid_scope`.

Verifying (`TokenService.verify`): the gateway's own tokens (ES384 by its signing key) and,
when configured, those of an external OIDC issuer (its JWKS URL; the scopes in `scope`).
Verified tokens are remembered until they expire, so a client's next request costs a
dictionary look-up, not a signature check.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import jwt

from fhir_gateway.auth import scopes
from fhir_gateway.auth.access import Access
from fhir_gateway.auth.clients import Registry
from fhir_gateway.auth.keys import JwksCache, KeyNotFound, SigningKey, key_from_jwks
from fhir_gateway.auth.scopes import Grant

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_ALGORITHMS = ["RS384", "ES384"]
#: what an external issuer may sign with
EXTERNAL_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
                       "PS384", "PS512"]
#: `iss` and `aud` of the gateway's own access tokens
ISSUER = "fhir-gateway"
MAX_ASSERTION_LIFETIME = 300
LEEWAY = 30  # seconds of clock difference tolerated


class OAuthError(Exception):
    """An OAuth2 error answer: `{"error": code, "error_description": ...}`."""

    def __init__(self, code: str, description: str, status: int = 400):
        super().__init__(description)
        self.code, self.description, self.status = code, description, status

    def body(self) -> dict:
        return {"error": self.code, "error_description": self.description}


class InvalidToken(Exception):
    """An access token that is missing, malformed, badly signed, expired or not ours."""


@dataclass(frozen=True)
class External:
    """An OIDC authorization server whose access tokens are accepted."""

    issuer: str
    jwks_url: str
    audience: str = ""


class SeenIds:
    """The `jti`s of accepted assertions, each kept until its assertion expires."""

    def __init__(self):
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def first_time(self, client_id: str, jti: str, exp: float) -> bool:
        now = time.time()
        with self._lock:
            if len(self._seen) > 1000:
                self._seen = {k: v for k, v in self._seen.items() if v + LEEWAY > now}
            if (client_id, jti) in self._seen:
                return False
            self._seen[(client_id, jti)] = exp
            return True


class TokenService:
    def __init__(self, key: SigningKey, registry: Registry, lifetime: int = 300,
                 external: External | None = None, jwks: JwksCache | None = None):
        self.key, self.registry, self.lifetime = key, registry, lifetime
        self.external = external
        self.jwks = jwks or JwksCache()
        self.seen = SeenIds()
        self._verified: dict[str, tuple[Access, float]] = {}

    # -- the token endpoint -----------------------------------------------------------------

    def issue(self, form: dict[str, str], token_url: str) -> dict:
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise OAuthError("unsupported_grant_type",
                             f"grant_type {grant_type} is not supported: use client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion")
        if not assertion:
            raise OAuthError("invalid_request", "client_assertion is required")
        if not form.get("scope", "").strip():
            raise OAuthError("invalid_request", "scope is required")
        client, claims = self._client_of(assertion, token_url)
        granted = scopes.narrowed(form["scope"], client.scope)
        if not granted:
            raise OAuthError("invalid_scope", f"none of the requested scopes ({form['scope']}) "
                                              "is allowed for this client")
        now = int(time.time())
        token_claims = {"iss": ISSUER, "aud": ISSUER, "sub": client.id, "client_id": client.id,
                        "scope": granted, "iat": now, "exp": now + self.lifetime,
                        "jti": str(uuid.uuid4())}
        if client.organization:
            token_claims["organization"] = client.organization
        token = jwt.encode(token_claims, self.key.private, algorithm=self.key.algorithm,
                           headers={"kid": self.key.kid})
        return {"access_token": token, "token_type": "bearer", "expires_in": self.lifetime,
                "scope": granted}

    def _client_of(self, assertion: str, token_url: str):
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as err:
            raise OAuthError("invalid_request", f"client_assertion is not a JWT: {err}") from None
        algorithm = header.get("alg")
        if algorithm not in CLIENT_ALGORITHMS:
            raise OAuthError("invalid_client", f"the assertion is signed {algorithm}; this "
                                               "server takes RS384 or ES384", 401)
        client_id = unverified.get("iss")
        client = self.registry.get(client_id) if isinstance(client_id, str) else None
        if client is None:
            raise OAuthError("invalid_client", "the assertion's iss is no registered client", 401)
        try:
            public = (key_from_jwks(client.jwks, header.get("kid"), algorithm) if client.jwks
                      else self.jwks.key(client.jwks_url, header.get("kid"), algorithm))
        except KeyNotFound as err:
            raise OAuthError("invalid_client", str(err), 401) from None
        try:
            claims = jwt.decode(assertion, public, algorithms=[algorithm], leeway=LEEWAY,
                                options={"verify_aud": False,
                                         "require": ["iss", "sub", "aud", "exp", "jti"]})
        except jwt.InvalidSignatureError:
            raise OAuthError("invalid_client", "the assertion's signature does not verify "
                                               "with the client's registered keys", 401) from None
        except jwt.PyJWTError as err:
            raise OAuthError("invalid_grant", f"the assertion is not acceptable: {err}") from None
        audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if token_url not in audience:
            raise OAuthError("invalid_grant", f"the assertion's aud must be the token "
                                              f"endpoint, {token_url}")
        if claims["sub"] != claims["iss"]:
            raise OAuthError("invalid_grant", "the assertion's sub must equal its iss (the "
                                              "client id)")
        if not isinstance(claims["exp"], (int, float)) or \
                claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME + LEEWAY:
            raise OAuthError("invalid_grant", "the assertion's exp is more than 5 minutes ahead")
        if not self.seen.first_time(client.id, str(claims["jti"]), claims["exp"]):
            raise OAuthError("invalid_grant", "the assertion's jti was used before")
        return client, claims

    # -- access tokens --------------------------------------------------------------------

    def cached(self, token: str) -> Access | None:
        """The Access of a token verified before and not expired since (no I/O, no crypto)."""
        known = self._verified.get(token)
        return known[0] if known is not None and known[1] > time.time() else None

    def verify(self, token: str) -> Access:
        """The Access a bearer token gives, or InvalidToken saying why not (may fetch an
        external issuer's JWKS: call it from a worker thread)."""
        known = self.cached(token)
        if known is not None:
            return known
        access, exp = self._verify(token)
        if len(self._verified) > 4096:
            self._verified = {}
        self._verified[token] = (access, exp)
        return access

    def _verify(self, token: str) -> tuple[Access, float]:
        try:
            header = jwt.get_unverified_header(token)
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise InvalidToken("the access token is not a JWT") from None
        if issuer == ISSUER:
            key, algorithms, audience = self.key.public, [self.key.algorithm], ISSUER
        elif self.external and issuer == self.external.issuer:
            algorithm = header.get("alg")
            if algorithm not in EXTERNAL_ALGORITHMS:
                raise InvalidToken(f"the access token is signed {algorithm}")
            try:
                key = self.jwks.key(self.external.jwks_url, header.get("kid"), algorithm)
            except KeyNotFound as err:
                raise InvalidToken(str(err)) from None
            algorithms, audience = [algorithm], self.external.audience or None
        else:
            raise InvalidToken("the access token is from an issuer this server does not trust")
        try:
            claims = jwt.decode(token, key, algorithms=algorithms, audience=audience,
                                issuer=issuer, leeway=5,
                                options={"require": ["exp"], "verify_aud": audience is not None})
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the access token has expired") from None
        except jwt.PyJWTError as err:
            raise InvalidToken(f"the access token is not valid: {err}") from None
        granted = claims.get("scope", claims.get("scp", ""))
        granted = " ".join(granted) if isinstance(granted, list) else str(granted)
        client = claims.get("client_id") or claims.get("azp") or claims.get("sub") or "unknown"
        organization = claims.get("organization")
        return Access(str(client), Grant.of(granted), granted,
                      organization if isinstance(organization, str) else None), claims["exp"]
