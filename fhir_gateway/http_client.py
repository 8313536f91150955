"""The one HTTP client of the gateway's outbound calls (the HAPI store, the CIMOR and
CyberAccess lookups): urllib3's pooled connections with its `Retry` in the transport.

Why in the transport: only there is "nothing was sent" told apart from "sent, then the
connection dropped", and that decides whether asking again is safe. The rules:

- a connection that could not be made (refused, connect timeout) is tried again, whatever
  the request: the server never saw it;
- a connection that dropped once the request was out (reset, closed without an answer) is
  tried again only for a request safe to repeat: a method of `REPEATABLE`, or one the
  caller vouches for (`repeatable=True`: a POST guarded by If-None-Exist);
- a read timeout is never tried again: the server has the question and is slow, and asking
  again would double the caller's wait;
- an answer is never tried again, whatever its status: a 503 or 429 goes back to the caller
  at once, Retry-After or not (waiting it out could overrun the caller's own deadline).

Between tries urllib3 waits `backoff` seconds, doubled each time (the first try again is
immediate). Why urllib3 itself rather than requests or httpx on top of it: a retry policy
per request, and the least CPU per request of the three (bench/gateway_overhead.py).
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import orjson
import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

#: methods that mean the same when sent twice (RFC 9110 9.2.2)
REPEATABLE = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class Unreachable(Exception):
    """No answer: the connection failed or dropped (after the tries), or the server was slow."""


class TooLarge(Unreachable):
    """The answer is larger than the caller takes (`max_bytes`)."""


@dataclass(frozen=True)
class Response:
    status_code: int
    content: bytes
    headers: urllib3.HTTPHeaderDict

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return orjson.loads(self.content)


class _Retry(Retry):
    """urllib3's Retry, except that a read timeout ends the request at once."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                  _stacktrace=None):
        if isinstance(error, ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


class Client:
    """Requests to one server (`base_url`), over at most `pool_size` connections (callers past
    that wait for one), each given `timeout` seconds to connect and as much to answer."""

    def __init__(self, base_url: str, *, timeout: float, retries: int, backoff: float,
                 pool_size: int = 10, headers: dict[str, str] | None = None):
        self.base, self.timeout = base_url.rstrip("/"), timeout
        self.retry = _Retry(total=retries, allowed_methods=REPEATABLE, backoff_factor=backoff,
                            status=0, other=0, redirect=0, raise_on_status=False,
                            respect_retry_after_header=False)
        self.retry_any = self.retry.new(allowed_methods=None)  # None: every method
        self.headers = {**urllib3.make_headers(accept_encoding=True), **(headers or {})}
        self.pool = _pool(self.base, maxsize=pool_size, block=True)

    def request(self, method: str, path: str, *, params=None, body: bytes | None = None,
                headers: dict[str, str] | None = None, repeatable: bool = False,
                bounded: bool = False, max_bytes: int | None = None) -> Response:
        """`path` under the base URL; `params` pairs or a dict for the query string. Redirects
        are not followed (a server that redirects is misconfigured, not to be chased).

        `bounded`: `timeout` is the whole call's deadline, not each socket read's (a server
        sending one byte a second never lets a read time out); `max_bytes`: a larger answer
        is refused (`TooLarge`) as soon as that much has come, before it is all read."""
        url = f"{self.base}/{path}" + (f"?{urlencode(params)}" if params else "")
        until = time.monotonic() + self.timeout
        try:
            answer = self.pool.request(method, url, body=body,
                                       headers={**self.headers, **(headers or {})},
                                       timeout=self.timeout, redirect=False,
                                       retries=self.retry_any if repeatable else self.retry,
                                       preload_content=not (bounded or max_bytes))
            if bounded or max_bytes:
                return Response(answer.status, _read(answer, until if bounded else None,
                                                     max_bytes, self.timeout), answer.headers)
        except ReadTimeoutError:
            raise Unreachable(f"no answer within {self.timeout}s") from None
        except MaxRetryError as err:
            raise Unreachable(f"{type(err.reason).__name__}: {err.reason}") from None
        except HTTPError as err:
            raise Unreachable(f"{type(err).__name__}: {err}") from None
        return Response(answer.status, answer.data, answer.headers)

    def close(self) -> None:
        self.pool.clear()


def _read(answer: urllib3.BaseHTTPResponse, until: float | None, max_bytes: int | None,
          timeout: float) -> bytes:
    """The body, chunk by chunk as it arrives, checking the deadline and the size between
    chunks; an answer given up on closes its connection (never returned to the pool)."""
    chunks, size = [], 0
    try:
        while True:
            if until is not None and time.monotonic() > until:
                raise Unreachable(f"no complete answer within {timeout}s")
            chunk = answer.read1(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise TooLarge(f"the answer is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except Unreachable:
        answer.close()
        raise
    finally:
        answer.release_conn()


def _pool(base_url: str, **options) -> urllib3.PoolManager:
    """A proxy from the environment (HTTP_PROXY, NO_PROXY, ...) is honoured, read once here."""
    parts = urlsplit(base_url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, **options)
    return urllib3.PoolManager(**options)
