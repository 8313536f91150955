"""One rest-hook notification, sent: the request R4 describes, through the gateway's HTTP client.

- id-only (no `channel.payload`): an empty POST to the endpoint;
- full resource (`application/fhir+json`): the resource version PUT to
  `[endpoint]/[type]/[id]`, as R4 and HAPI JPA's rest-hook deliver it.

Every request carries the Subscription's `channel.header` lines and `X-Notification-Id`
(the outbox row's id: the same notification sent again has the same id, so a receiver can
drop what it has seen), `X-Subscription-Id` and `X-Resource` (`Type/id/_history/version`).
The whole call has a deadline (`bounded`): a partner sending one byte a second cannot hold
the worker. Only a 2xx answer counts as delivered.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import orjson

from fhir_gateway import http_client
from fhir_gateway.exchange.outbox import Row
from fhir_gateway.exchange.subscriptions import FHIR_JSON, Subscription


class Failed(Exception):
    """The partner did not take the notification (the message says why, for Subscription.error)."""


class Sender:
    """Sends notifications, one pooled client per partner origin."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._clients: dict[str, http_client.Client] = {}
        self._lock = threading.Lock()  # partners are sent to from several threads

    def send(self, subscription: Subscription, row: Row, resource: dict | None) -> int:
        """Deliver; the partner's status. `Failed` when it was not a 2xx."""
        parts = urlsplit(subscription.endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        path = parts.path.lstrip("/")
        headers = {name: value for name, value in subscription.headers}
        headers.update({"X-Notification-Id": row.id, "X-Subscription-Id": subscription.id,
                        "X-Resource": f"{row.type}/{row.rid}/_history/{row.version}"})
        if subscription.full:
            method, body = "PUT", orjson.dumps(resource)
            path = "/".join(p for p in (path.rstrip("/"), row.type, row.rid) if p)
            headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
        else:
            method, body = "POST", b""
        if parts.query:
            path += f"?{parts.query}"
        client = self._client(origin)
        try:
            answer = client.request(method, path, body=body, headers=headers, bounded=True,
                                    max_bytes=65536)
        except http_client.Unreachable as err:
            raise Failed(f"{subscription.endpoint} did not answer: {err}") from None
        if not 200 <= answer.status_code < 300:
            raise Failed(f"{subscription.endpoint} answered HTTP {answer.status_code}")
        return answer.status_code

    def _client(self, origin: str) -> http_client.Client:
        with self._lock:
            return self._clients.get(origin) or self._new_client(origin)

    def _new_client(self, origin: str) -> http_client.Client:
        # a request that reached the partner is not sent again here: the outbox retries it
        # later, with the same notification id
        self._clients[origin] = http_client.Client(origin, timeout=self.timeout, retries=1,
                                                   backoff=0.0, pool_size=4)
        return self._clients[origin]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
