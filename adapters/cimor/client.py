"""Client of the CIMOR lookup service (the simulator, or a real one speaking the same format)."""

from __future__ import annotations

from fhir_gateway.adapters.cimor.parser import FORMAT
from fhir_gateway.adapters.cimor.simulator import KEYS, ROUTE
from fhir_gateway.adapters.common import SourceRecord
from fhir_gateway.adapters.lookup import LookupClient


class Client(LookupClient):
    """`lookup(dcn)` -> the consumer's SourceRecord or None; SourceUnavailable when unreachable."""

    def __init__(self, base_url: str, timeout: float = 2.0, retries: int = 2,
                 max_bytes: int = 1_000_000):
        super().__init__(FORMAT, ROUTE, base_url, timeout, retries, max_bytes)

    def lookup(self, dcn: str) -> SourceRecord | None:
        """The consumer with this DCN (the first, should CIMOR hold two), or None."""
        records = self.lookup_all(dcn)
        return records[0] if records else None

    def lookup_all(self, dcn: str) -> list[SourceRecord]:
        """Every CIMOR consumer carrying this DCN (duplicates happen in real registries)."""
        if not KEYS["DCN"].fullmatch(dcn):
            raise ValueError(f"a DCN is 8 digits, got {dcn!r}")
        return self.fetch(dcn, "DCN")

    def lookup_consumer(self, consumer_id: str) -> SourceRecord | None:
        """The consumer with this CIMOR consumer id, or None."""
        if not KEYS["ConsumerId"].fullmatch(consumer_id):
            raise ValueError(f"a CIMOR consumer id is 7 digits, got {consumer_id!r}")
        records = self.fetch(consumer_id, "ConsumerId")
        return records[0] if records else None
