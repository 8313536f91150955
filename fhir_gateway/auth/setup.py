"""Authorization settings into what the app runs with: the token service, or None when
authorization is off, which the settings allow only on a loopback address."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

log = logging.getLogger("fhir_gateway.auth")


class AuthConfigError(ValueError):
    """Settings that would expose the API without authorization (the message says why)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_auth(settings) -> None:
    """AuthConfigError for authorization off on an address other than loopback."""
    if not settings.auth and not is_loopback(settings.host):
        raise AuthConfigError(
            f"FHIR_GATEWAY_AUTH=off is allowed only when listening on a loopback address "
            f"(127.0.0.1, ::1, localhost), not on {settings.host}: anyone who reaches "
            "the port would read and write every member's record")
    if not settings.audit and not is_loopback(settings.host):
        raise AuthConfigError(
            f"FHIR_GATEWAY_AUDIT=off is allowed only when listening on a loopback address "
            f"(127.0.0.1, ::1, localhost), not on {settings.host}: who read and wrote "
            "members' records would go unrecorded")


def setup(settings):
    """The TokenService for the settings, or None when FHIR_GATEWAY_AUTH=off (refused
    unless the server listens on a loopback address)."""
    check_auth(settings)
    if not settings.auth:
        log.warning("Authorization is OFF (FHIR_GATEWAY_AUTH=off): every request to %s is "
                    "served without a token", settings.host)
        return None
    from fhir_gateway.auth.clients import Registry
    from fhir_gateway.auth.keys import signing_key
    from fhir_gateway.auth.tokens import External, TokenService

    external = None
    if settings.external_issuer or settings.external_jwks_url:
        if not (settings.external_issuer and settings.external_jwks_url):
            raise AuthConfigError("An external issuer needs both FHIR_GATEWAY_EXTERNAL_ISSUER "
                                  "and FHIR_GATEWAY_EXTERNAL_JWKS_URL")
        external = External(settings.external_issuer, settings.external_jwks_url,
                            settings.external_audience)
    data_dir = Path(settings.data_dir)
    return TokenService(signing_key(data_dir, settings.signing_key), Registry(data_dir),
                        settings.token_lifetime, external)
