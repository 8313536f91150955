"""A stand-in CyberAccess lookup service: GET /participants/{dcn} from an extract.

CyberAccess offers no API; this serves an extract's records over HTTP so the client (and
whatever calls it) can be tested against real sockets, timeouts and outages.

    sim = Simulator("adapters/cyberaccess/sample.xml")
    base_url = sim.start()     # http://127.0.0.1:<free port>
    ...                        # GET {base_url}/participants/12345678 -> <CyberAccessExtract>
    sim.stop()
"""

from __future__ import annotations

import re
from pathlib import Path

from fhir_gateway.adapters.lookup import LookupSimulator
from fhir_gateway.adapters.cyberaccess.parser import FORMAT

ROUTE = "participants"
KEYS = {"DCN": re.compile(r"[0-9]{8}")}


class Simulator(LookupSimulator):
    """Answers 200 (the participant wrapped in <CyberAccessExtract>), 404 unknown, 400 malformed DCN."""

    def __init__(self, extract_path: str | Path, delay: float = 0.0, fault: str | None = None):
        super().__init__(FORMAT, extract_path, ROUTE, KEYS, delay, fault)
