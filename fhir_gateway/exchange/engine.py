"""The delivery engine: claims due outbox rows, sends them, settles them; keeps Subscription status.

`fhir-gateway serve` runs one in a thread (`--no-deliver` to leave it to another process);
`fhir-gateway exchange run` runs one pass (cron, tests). At least once: a row is marked
done only after the partner answered 2xx, and a claimed row is only leased (its `next_at`
pushed past the delivery deadline), so a gateway killed mid-delivery sends it again after
restart, with the same notification id.

Failures are retried with exponential backoff (`deliver_backoff`, doubled each attempt, up
to `deliver_max_backoff`). After `deliver_attempts` failures of a row its Subscription goes
`error` with `Subscription.error` saying why; its notifications (those queued meanwhile
too) wait, none lost, until `fhir-gateway exchange retry` sets it `active` again.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fhir_gateway.auth.audience import Audience
from fhir_gateway.config import Settings
from fhir_gateway.exchange.changefeed import HapiFeed, parse_subscriptions
from fhir_gateway.exchange.delivery import Failed, Sender
from fhir_gateway.exchange.outbox import Outbox, Row
from fhir_gateway.exchange.subscriptions import QUEUEING, Subscription
from fhir_gateway.outcome import FhirError
from fhir_gateway.store.hapi import HapiStore
from fhir_gateway.store.sqlite import SQLiteStore

log = logging.getLogger("fhir_gateway.exchange")
#: rows claimed per pass
BATCH = 50
#: Subscriptions delivered to at once (each one's rows in order, in one thread)
PARTNERS_AT_ONCE = 8


@dataclass
class Pass:
    """What one pass did."""

    queued: int = 0  # rows the HAPI feed queued
    delivered: int = 0
    failed: int = 0
    cancelled: int = 0


class Engine:
    """Delivery for the store the gateway serves (`store`: as opened, wrappers and all)."""

    def __init__(self, store, settings: Settings):
        self.store, self.settings = store, settings
        base = _base(store)
        self.feed: HapiFeed | None = None
        self.wake = threading.Event()
        if isinstance(base, SQLiteStore):
            self.outbox = Outbox(base.path)
            self.wake = base.outbox.wake
        elif isinstance(base, HapiStore):
            path = settings.exchange_db_path()
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.outbox = Outbox(path)
            self.feed = HapiFeed(base, self.outbox, lag=settings.feed_lag)
            self.feed.start()
        else:
            raise TypeError(f"No change feed for {type(base).__name__}")
        self.sender = Sender(settings.deliver_timeout)
        self._pool = ThreadPoolExecutor(PARTNERS_AT_ONCE, thread_name_prefix="exchange-partner")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass --------------------------------------------------------------------
    def subscriptions(self) -> dict[str, Subscription]:
        found = self.store.search("Subscription", [("_count", "1000")]).matches
        return {s.id: s for s in parse_subscriptions(found)}

    def run_once(self) -> Pass:
        done = Pass()
        subscriptions = self.subscriptions()
        if self.feed is not None:
            done.queued = self.feed.poll(list(subscriptions.values()))
        held = {s.id for s in subscriptions.values() if s.status == "error"}
        lease = self.settings.deliver_timeout * 2 + 1  # past any delivery's end
        partners: dict[str, list[Row]] = {}
        for row in self.outbox.claim(BATCH, lease, held):
            subscription = subscriptions.get(row.subscription)
            if subscription is None or subscription.status not in QUEUEING:
                self.outbox.cancel(row, "the Subscription is gone or off")
                done.cancelled += 1
            else:
                partners.setdefault(row.subscription, []).append(row)
        for each in self._pool.map(lambda item: self._deliver_all(subscriptions[item[0]], item[1]),
                                   partners.items()):
            done.delivered += each.delivered
            done.failed += each.failed
            done.cancelled += each.cancelled
        return done

    def _deliver_all(self, subscription: Subscription, rows: list[Row]) -> Pass:
        """One Subscription's rows, in order, in a worker thread of their own: a partner that
        is down or slow holds up only its own notifications. After a failure the rest wait
        as long as the failed one (their attempts not counted: they were not tried)."""
        done = Pass()
        audience = Audience(self.store, subscription.organization,
                            part2=self.settings.part2_unaffiliated)
        for index, row in enumerate(rows):
            until = self._deliver(subscription, row, done, audience)
            if until is not None:
                self.outbox.postpone([r.id for r in rows[index + 1:]], until)
                break
        return done

    def _deliver(self, subscription: Subscription, row: Row, done: Pass, audience: Audience
                 ) -> float | None:
        """Send one row and settle it; None, or after a failure when the row is due again
        (now, for a row given up on: the Subscription, now `error`, holds its rows). A
        Health Home's Subscription is sent only what its client may see, any Subscription
        only what 42 CFR Part 2 lets its creator see: another row is cancelled unsent."""
        resource = None
        if subscription.full or audience.restricted or audience.part2_restricted:
            try:
                resource = self.store.vread(row.type, row.rid, str(row.version))
            except FhirError as err:
                if err.status not in (404, 410):
                    raise  # the store is unreachable: the row stays leased, due again later
                self.outbox.cancel(row, f"{row.type}/{row.rid} version {row.version} is gone")
                done.cancelled += 1
                return None
            if not audience.sees(resource):
                self.outbox.cancel(row, "not the subscriber's to see")
                done.cancelled += 1
                return None
            if not subscription.full:
                resource = None
        try:
            self.sender.send(subscription, row, resource)
        except Failed as err:
            attempts = row.attempts + 1
            settings = self.settings
            done.failed += 1
            log.info("notification %s for Subscription/%s failed (attempt %d): %s", row.id,
                     subscription.id, attempts, err)
            if attempts >= settings.deliver_attempts:
                self.outbox.failed(row, str(err), None)
                self._set_status(subscription.id, "error",
                                 f"{attempts} attempts failed; the last: {err}")
                return time.time()
            wait = min(settings.deliver_max_backoff, settings.deliver_backoff * 2 ** (attempts - 1))
            self.outbox.failed(row, str(err), wait)
            return time.time() + wait
        self.outbox.done(row)
        done.delivered += 1
        return None

    def _set_status(self, subscription_id: str, status: str, error: str | None) -> bool:
        """Set a Subscription's status and error through the store; whether it changed."""
        try:
            resource = self.store.read("Subscription", subscription_id)
        except FhirError:
            return False
        if resource.get("status") == status and resource.get("error") == error:
            return False
        resource = {k: v for k, v in resource.items() if k not in ("error", "meta")}
        resource["status"] = status
        if error:
            resource["error"] = error
        self.store.update("Subscription", subscription_id, resource)
        return True

    # -- what the CLI drives ---------------------------------------------------------------
    def retry(self, subscription_id: str | None = None) -> tuple[int, list[str]]:
        """Failed and waiting rows due now; Subscriptions in error (that one, or all) back to
        `active`. The rows and the Subscriptions reactivated."""
        rows = self.outbox.retry(subscription_id)
        revived = [s.id for s in self.subscriptions().values()
                   if s.status == "error" and subscription_id in (None, s.id)
                   and self._set_status(s.id, "active", None)]
        return rows, revived

    def status(self) -> tuple[dict[str, dict], list[tuple[str, str, int, str | None]]]:
        """The stored Subscriptions (status, error, criteria, endpoint) and the outbox counts."""
        found = self.store.search("Subscription", [("_count", "1000")]).matches
        return ({s["id"]: {"status": s.get("status"), "error": s.get("error"),
                           "criteria": s.get("criteria"),
                           "endpoint": (s.get("channel") or {}).get("endpoint")}
                 for s in found}, self.outbox.counts())

    # -- the worker thread -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="exchange-delivery", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once().delivered > 0
            except FhirError as err:  # the store is down: said once a pass, tried again
                log.warning("a delivery pass stopped: %s", err)
                busy = False
            except Exception:  # noqa: BLE001 - the worker must outlive a bad pass
                log.exception("a delivery pass failed")
                busy = False
            if not busy:
                self.wake.wait(self.settings.deliver_interval)
                self.wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(self.settings.deliver_timeout + 5)
        self._pool.shutdown()
        self.sender.close()
        self.outbox.close()


def _base(store):
    """The store under the wrappers (validation, ...) that open_store puts around it."""
    while not isinstance(store, (SQLiteStore, HapiStore)) and "inner" in vars(store):
        store = store.inner
    return store
