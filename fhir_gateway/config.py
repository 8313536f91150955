"""Settings from the environment (FHIR_GATEWAY_*) or CLI flags, typed by pydantic-settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from platformdirs import user_data_dir
from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_store() -> str:
    return f"sqlite:///{Path(user_data_dir('fhir-gateway')) / 'gateway.db'}"


def default_data_dir() -> str:
    return user_data_dir("fhir-gateway")


def _shipped(installed: str, checkout: str) -> str:
    """A data folder the gateway ships: `fhir_gateway/data/<installed>` in an installed
    package (pyproject.toml puts it there), else `<checkout>` beside the package, where the
    repository keeps it (an editable install, or the source tree itself)."""
    package = Path(__file__).resolve().parent
    folder = package / "data" / installed
    return str(folder if folder.is_dir() else package.parent / checkout)


#: the Health Home IG package (profiles/package/ of the repository)
DEFAULT_PROFILES = _shipped("ig", "profiles/package")
#: the declarative CIMOR/CyberAccess mappings and their ConceptMaps (mappings/ of the repository)
DEFAULT_MAPPINGS = _shipped("mappings", "mappings")
_HEALTH_HOME = Path(__file__).resolve().parent / "healthhome"
#: the Health Home eligibility rules (facts.yaml and one file per state)
DEFAULT_HH_RULES = str(_HEALTH_HOME / "rules")
#: what differs by state when enrolling and disenrolling
DEFAULT_HH_ENROLLMENT = str(_HEALTH_HOME / "enrollment.yaml")


def _folder(value: str) -> str:
    if not Path(value).is_dir():
        raise ValueError(f"'{value}' is not a folder")
    return value


def _file(value: str) -> str:
    if not Path(value).is_file():
        raise ValueError(f"'{value}' is not a file")
    return value


#: a folder or file the gateway reads rules from: checked at start, not at first use
Folder = Annotated[str, AfterValidator(_folder)]
File = Annotated[str, AfterValidator(_file)]


class Settings(BaseSettings):
    """Every option of the gateway, read once where a command or the app starts (the CLI's
    callback, `create_app`) and passed on from there: no module reads the environment."""

    model_config = SettingsConfigDict(env_prefix="FHIR_GATEWAY_")

    #: sqlite:///path/to/file.db (embedded) or http(s)://host/fhir (a FHIR server)
    store: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    #: the public base URL (e.g. behind a proxy); default: derived from each request
    base_url: str = ""
    #: load the synthetic Health Home population when the store is empty
    demo: bool = True
    log_level: str = "info"
    #: the IG package (folder with package.json) whose profiles writes are validated against
    profiles: Folder = DEFAULT_PROFILES
    #: hold every resource of a profiled type to its type's profiles, claimed or not
    validate_all: bool = False
    #: the folder of the declarative source -> FHIR mappings (`<system>.yaml`)
    mappings: Folder = DEFAULT_MAPPINGS
    #: live lookup services (`$hh-status`): CIMOR and CyberAccess, or their simulators
    cimor_url: str = ""
    cyberaccess_url: str = ""
    #: seconds a live lookup may take in all (retries included; about twice that when the
    #: source stalls inside a read)
    lookup_timeout: float = 2.0
    #: the largest lookup answer taken, in bytes (one member's records are a few KB)
    lookup_max_bytes: int = 1_000_000
    #: `$hh-status` calls running at once; more wait their turn without holding a worker
    #: thread, so slow sources cannot starve reads and writes
    lookup_concurrency: int = 8
    #: how long a Health Home client's member list may be reused (seconds; 0: read for
    #: every request). Enrollments written through this gateway take effect at once;
    #: this bounds how late one written to the store some other way is seen.
    members_cache_seconds: float = Field(30.0, ge=0)
    #: the largest request body taken, in bytes (413 beyond); a 100-entry transaction is a
    #: few hundred KB
    max_body: int = 32 * 1024 * 1024
    #: the folder of the Health Home eligibility rules
    hh_rules: Folder = DEFAULT_HH_RULES
    #: the Health Home enrollment policy file
    hh_enrollment: File = DEFAULT_HH_ENROLLMENT
    #: Bulk Data export: the folder of the jobs' state (jobs.db) and files (default:
    #: `exports/` in the gateway's data folder), exports running at once, resources a page
    export_dir: str = ""
    export_workers: int = Field(2, ge=1)
    export_page_size: int = Field(500, ge=1, le=1000)

    def export_folder(self) -> str:
        return self.export_dir or str(Path(user_data_dir("fhir-gateway")) / "exports")

    # -- Subscriptions out (fhir_gateway/exchange/engine.py) ------------------------------
    #: the outbox and change-feed cursor file when the store is HAPI (the embedded store
    #: keeps its outbox in its own file); default: exchange.db under the user data dir
    exchange_db: str = ""
    #: seconds between delivery passes when nothing woke the worker
    deliver_interval: float = 1.0
    #: failed attempts of a notification before its Subscription goes `error`
    deliver_attempts: int = 5
    #: seconds before the first retry, doubled for each one after, up to deliver_max_backoff
    deliver_backoff: float = 2.0
    deliver_max_backoff: float = 600.0
    #: seconds a partner has to take one notification (the whole call)
    deliver_timeout: float = 10.0
    #: seconds HAPI's history is read back past the cursor (commits that land out of
    #: timestamp order are still seen)
    feed_lag: float = 5.0

    #: require a SMART Backend Services bearer token on /fhir; `off` is allowed only when
    #: listening on a loopback address (the gateway refuses to start otherwise)
    auth: bool = True
    #: where the gateway keeps its own files: the registered clients (clients.db), its
    #: token signing key, the demo client's key
    data_dir: str = Field(default_factory=default_data_dir)
    #: a PEM private key (EC P-384 or RSA) to sign access tokens with; default: one
    #: generated into the data dir on first start (share one between replicas)
    signing_key: str = ""
    #: seconds an access token is valid
    token_lifetime: int = 300
    #: an external OIDC authorization server whose access tokens are accepted too: its
    #: `iss`, its JWKS URL, and the `aud` its tokens must carry (optional)
    external_issuer: str = ""
    external_jwks_url: str = ""
    external_audience: str = ""
    #: 42 CFR Part 2 data (`fhir_gateway/privacy/`) for clients registered without an
    #: organization (the state, MCOs, HIEs): `withhold` (default) or `disclose`. The seeds
    #: are silent; a client with an organization sees it when that organization recorded it
    #: or the patient's Consent permits it
    part2_unaffiliated: Literal["withhold", "disclose"] = "withhold"

    #: write an AuditEvent for every /fhir request (issue 15 item 4); `off` is allowed only
    #: when listening on a loopback address, as FHIR_GATEWAY_AUTH=off is (benchmarks)
    audit: bool = True
    #: the audit trail's file (default: audit.db in the data dir)
    audit_db: str = ""

    def audit_db_path(self) -> str:
        return self.audit_db or str(Path(self.data_dir) / "audit.db")

    def store_url(self) -> str:
        return self.store or default_store()

    def exchange_db_path(self) -> str:
        return self.exchange_db or str(Path(user_data_dir("fhir-gateway")) / "exchange.db")
