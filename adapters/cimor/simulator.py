"""A stand-in CIMOR lookup service: GET /consumers/{dcn or consumer id} from an extract.

CIMOR offers no API; this serves an extract's records over HTTP so the client (and whatever
calls it) can be tested against real sockets, timeouts and outages.

    sim = Simulator("adapters/cimor/sample.xml")
    base_url = sim.start()     # http://127.0.0.1:<free port>
    ...                        # GET {base_url}/consumers/12345678 -> <CimorExtract> with the record
    sim.stop()
"""

from __future__ import annotations

import re
from pathlib import Path

from fhir_gateway.adapters.cimor.parser import FORMAT
from fhir_gateway.adapters.lookup import LookupSimulator

ROUTE = "consumers"
KEYS = {"DCN": re.compile(r"[0-9]{8}"), "ConsumerId": re.compile(r"[0-9]{7}")}


class Simulator(LookupSimulator):
    """Answers 200 (the consumer's records wrapped in <CimorExtract>), 404 unknown, 400 malformed id."""

    def __init__(self, extract_path: str | Path, delay: float = 0.0, fault: str | None = None):
        super().__init__(FORMAT, extract_path, ROUTE, KEYS, delay, fault)
