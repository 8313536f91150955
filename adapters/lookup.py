"""Lookups in the source systems: a stand-in lookup service (simulator) and its client.

Neither system offers a lookup service the gateway could call; the simulators stand in for
one (an extract indexed in memory behind HTTP) so that the clients, their timeouts and
their failure modes can be exercised for real. Answers are extracts with the matching
records, so the clients parse them with the very parser used for files.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fhir_gateway import http_client
from fhir_gateway.adapters.byte_ranges import parse_file
from fhir_gateway.adapters.common import (ExtractFormat, MalformedExtract, SourceRecord,
                                          SourceUnavailable, parse_bytes)


class LookupSimulator:
    """Serve GET /{route}/{key} from an extract, on 127.0.0.1 and a free port.

    The index holds every record's XML in memory (about the size of the file): meant for
    test and demo extracts, not for a million members. `delay` seconds are slept before each
    answer, to play a slow source; `fault` plays a broken one: "drop" closes every connection
    without an answer, "busy" answers 503 with a Retry-After.
    """

    def __init__(self, fmt: ExtractFormat, extract_path: str | Path, route: str,
                 keys: dict[str, re.Pattern], delay: float = 0.0, fault: str | None = None):
        self.fmt, self.route, self.keys, self.delay = fmt, route, keys, delay
        self.fault = fault
        self.index: dict[str, list[bytes]] = {}
        for record in parse_file(fmt, extract_path):
            for element in keys:
                value = record.data.get(element)
                if isinstance(value, str):
                    self.index.setdefault(value, []).append(record.raw)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0  # received, for tests of the clients' retries

    def answer(self, key: str) -> tuple[int, bytes]:
        """(status, body) for a lookup key: 200 with the records, 404 unknown, 400 malformed."""
        if not any(pattern.fullmatch(key) for pattern in self.keys.values()):
            return 400, f"not a {' or '.join(self.keys)}: {key!r}\n".encode()
        records = self.index.get(key)
        if not records:
            return 404, f"no {self.fmt.record} with id {key}\n".encode()
        generated = datetime.now(UTC).isoformat(timespec="seconds")
        head = (f'<?xml version="1.0" encoding="UTF-8"?>\n<{self.fmt.root} '
                f'xmlns="{self.fmt.namespace}" generated="{generated}">\n').encode()
        return 200, head + b"\n".join(records) + f"\n</{self.fmt.root}>\n".encode()

    def start(self) -> str:
        """Start serving in a daemon thread; return the base URL (http://127.0.0.1:port)."""
        simulator = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                simulator.requests += 1
                path = self.path.split("?", 1)[0].rstrip("/")
                prefix = f"/{simulator.route}/"
                if simulator.delay:
                    time.sleep(simulator.delay)
                if simulator.fault == "drop":
                    self.close_connection = True
                    return
                if simulator.fault == "busy":
                    status, body = 503, b"busy\n"
                elif path.startswith(prefix) and "/" not in path[len(prefix):]:
                    status, body = simulator.answer(path[len(prefix):])
                else:
                    status, body = 404, b"unknown path\n"
                kind = "application/xml" if status == 200 else "text/plain"
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # tests and demos want quiet servers
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"{self.fmt.system}-simulator", daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that gave up (timed out) before a slow answer is not a server error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LookupClient:
    """Look records up in a source's lookup service over HTTP (`fhir_gateway.http_client`:
    pooled, a failed or dropped connection tried `retries` more times, a slow answer not).

    Every failure becomes `SourceUnavailable`, so callers handle one exception.
    """

    def __init__(self, fmt: ExtractFormat, route: str, base_url: str, timeout: float = 2.0,
                 retries: int = 2, max_bytes: int = 1_000_000):
        self.fmt, self.route, self.max_bytes = fmt, route, max_bytes
        self.http = http_client.Client(base_url, timeout=timeout, retries=retries, backoff=0.05,
                                       headers={"Accept": "application/xml"})

    def fetch(self, key: str, element: str) -> list[SourceRecord]:
        """Every record whose `element` equals `key` ([] if the source does not know it).

        The whole call, retries included, takes at most about the timeout (`bounded`), and
        an answer beyond `max_bytes` is refused as it arrives. Problems name the source, not
        the URL: it carries the key (a DCN), and the message reaches API answers."""
        try:
            response = self.http.request("GET", f"{self.route}/{key}", bounded=True,
                                         max_bytes=self.max_bytes)
        except http_client.Unreachable as err:
            raise SourceUnavailable(self.fmt.system, f"lookup service: {err}") from None
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise SourceUnavailable(self.fmt.system,
                                    f"lookup service answered HTTP {response.status_code}")
        try:
            records = list(parse_bytes(self.fmt, response.content, "the answer"))
        except MalformedExtract as err:
            raise SourceUnavailable(self.fmt.system, f"malformed lookup answer: {err}") from None
        return [r for r in records if r.data.get(element) == key]

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
