"""Client of the CyberAccess lookup service (the simulator, or a real one speaking the same format)."""

from __future__ import annotations

from fhir_gateway.adapters.common import SourceRecord
from fhir_gateway.adapters.lookup import LookupClient
from fhir_gateway.adapters.cyberaccess.parser import FORMAT
from fhir_gateway.adapters.cyberaccess.simulator import KEYS, ROUTE


class Client(LookupClient):
    """`lookup(dcn)` -> the participant's SourceRecord or None; SourceUnavailable when unreachable."""

    def __init__(self, base_url: str, timeout: float = 2.0, retries: int = 2,
                 max_bytes: int = 1_000_000):
        super().__init__(FORMAT, ROUTE, base_url, timeout, retries, max_bytes)

    def lookup(self, dcn: str) -> SourceRecord | None:
        """The participant with this DCN, or None."""
        if not KEYS["DCN"].fullmatch(dcn):
            raise ValueError(f"a DCN is 8 digits, got {dcn!r}")
        records = self.fetch(dcn, "DCN")
        return records[0] if records else None
