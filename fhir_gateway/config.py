"""Settings from the environment (FHIR_GATEWAY_*) or CLI flags, typed by pydantic-settings."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_data_dir
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_store() -> str:
    return f"sqlite:///{Path(user_data_dir('fhir-gateway')) / 'gateway.db'}"


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


class Settings(BaseSettings):
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
    profiles: str = DEFAULT_PROFILES
    #: hold every resource of a profiled type to its type's profiles, claimed or not
    validate_all: bool = False
    #: the folder of the declarative source -> FHIR mappings (`<system>.yaml`)
    mappings: str = DEFAULT_MAPPINGS
    #: live lookup services (`$hh-status`): CIMOR and CyberAccess, or their simulators
    cimor_url: str = ""
    cyberaccess_url: str = ""
    lookup_timeout: float = 2.0

    def store_url(self) -> str:
        return self.store or default_store()
