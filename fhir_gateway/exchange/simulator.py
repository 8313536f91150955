"""A subscriber simulator: a partner's rest-hook endpoint that records what it receives.

For tests and demos (`fhir-gateway exchange simulator --port 9000`). Any path takes a
notification (POST or PUT) and answers 200, unless told otherwise through its control
endpoints (JSON answers):

- `POST /_control/fail?times=N` fails the next N notifications with 503 (no `times`: every
  one until reset); `?status=500` another status;
- `POST /_control/delay?seconds=S` answers each notification S seconds late (it is
  recorded when it arrives: a sender killed meanwhile has still sent it);
- `POST /_control/reset` forgets what it received and clears fail/delay;
- `GET /_control/received` lists the notifications: method, path, headers, body (parsed
  JSON or null), the status it was answered with, and when it arrived (`at`, epoch s).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.received: list[dict] = []
        self.fail_left: float = 0  # notifications still to fail (inf: all)
        self.fail_status = 503
        self.delay = 0.0


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: tests read /_control/received
        pass

    def _answer(self, status: int, body: object = None) -> None:
        data = orjson.dumps(body) if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/_control/received":
            with self.state.lock:
                return self._answer(200, self.state.received)
        self._answer(404)

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/_control/"):
            self._body()
            return self._control(parts.path.removeprefix("/_control/"), parse_qs(parts.query))
        self._take()

    def do_PUT(self) -> None:
        self._take()

    def _control(self, command: str, query: dict) -> None:
        state = self.state
        with state.lock:
            if command == "reset":
                state.reset()
            elif command == "fail":
                state.fail_left = int(query["times"][0]) if "times" in query else float("inf")
                state.fail_status = int(query.get("status", ["503"])[0])
            elif command == "delay":
                state.delay = float(query.get("seconds", ["0"])[0])
            else:
                return self._answer(404)
        self._answer(200, {"ok": command})

    def _take(self) -> None:
        body = self._body()
        state = self.state
        with state.lock:
            status = 200
            if state.fail_left > 0:
                state.fail_left -= 1
                status = state.fail_status
            try:
                parsed = orjson.loads(body) if body else None
            except orjson.JSONDecodeError:
                parsed = body.decode("utf-8", "replace")
            state.received.append({"method": self.command, "path": self.path,
                                   "headers": dict(self.headers.items()), "body": parsed,
                                   "status": status, "at": time.time()})
            delay = state.delay
        if delay:
            time.sleep(delay)
        self._answer(status, {"received": status < 300})


class Simulator:
    """The simulator on `port` (0: any free one), served from a thread."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1"):
        handler = type("Handler", (_Handler,), {"state": _State()})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
