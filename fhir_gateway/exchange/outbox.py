"""The durable outbox: one row per notification owed to a subscriber, in SQLite.

Why a table and not a queue in memory: a notification must outlive a crash. With the
embedded store the rows live in the store's own file and are inserted by the transaction
that made the change (`changefeed.OutboxWriter`), so a change is never committed without
its notifications. With HAPI they live in a small file of their own (`exchange_db`).

A row's id is the notification's id, derived from (subscription, type, id, version): the
same change queued twice is one row, and a receiver can drop a notification it has seen
(delivery is at least once: a row is marked done only after the partner answered 2xx).

States: `pending` (due at `next_at`; a claimed row's `next_at` is pushed past its delivery
deadline, so a worker that dies mid-delivery leaves it due again), `failed` (gave up after
the configured attempts; `retry` makes it pending again), `done`, `cancelled` (its
Subscription or resource version is gone).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscription_outbox(
  id TEXT PRIMARY KEY, subscription TEXT NOT NULL, type TEXT NOT NULL, rid TEXT NOT NULL,
  version INTEGER NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  next_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending', error TEXT, done_at REAL);
CREATE INDEX IF NOT EXISTS subscription_outbox_due ON subscription_outbox(state, next_at);
CREATE INDEX IF NOT EXISTS subscription_outbox_partner ON subscription_outbox(subscription, state);
CREATE TABLE IF NOT EXISTS subscription_feed(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subscription_feed_seen(key TEXT PRIMARY KEY, at REAL NOT NULL);
"""
_NAMESPACE = uuid.UUID("6f1c1d0e-8a3b-5b7e-9f53-2b1f4c5d7e90")
_INSERT = ("INSERT OR IGNORE INTO subscription_outbox(id, subscription, type, rid, version, "
           "created, next_at) VALUES (?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class Row:
    id: str
    subscription: str
    type: str
    rid: str
    version: int
    created: float
    attempts: int


def notification_id(subscription: str, resource_type: str, resource_id: str,
                    version: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{subscription}|{resource_type}/{resource_id}/{version}"))


def enqueue(conn: sqlite3.Connection, notifications: Iterable[tuple[str, str, str, int]],
            now: float | None = None) -> int:
    """Queue (subscription, type, id, version) notifications on `conn`, inside the caller's
    transaction; the number of rows new to the outbox."""
    now = time.time() if now is None else now
    before = conn.total_changes
    conn.executemany(_INSERT, [(notification_id(*n), *n, now, now) for n in notifications])
    return conn.total_changes - before


class Outbox:
    """The outbox of one SQLite file, for the delivery side (claim, settle, report)."""

    def __init__(self, path: str):
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                     timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def claim(self, limit: int, lease: float, held: Iterable[str] = ()) -> list[Row]:
        """Due rows, leased for `lease` seconds (pushed past their deadline): rows of the
        `held` subscriptions (in error) stay where they are."""
        now = time.time()
        held = list(held)
        skip = f" AND subscription NOT IN ({', '.join('?' * len(held))})" if held else ""
        with self.write() as conn:
            rows = conn.execute(
                "SELECT id, subscription, type, rid, version, created, attempts "
                f"FROM subscription_outbox WHERE state = 'pending' AND next_at <= ?{skip} ORDER BY next_at LIMIT ?",
                (now, *held, limit)).fetchall()
            conn.executemany("UPDATE subscription_outbox SET next_at = ? WHERE id = ?",
                             [(now + lease, r[0]) for r in rows])
        return [Row(*r) for r in rows]

    def done(self, row: Row) -> None:
        with self.write() as conn:
            conn.execute("UPDATE subscription_outbox SET state = 'done', done_at = ?, "
                         "error = NULL, attempts = attempts + 1 WHERE id = ?", (time.time(), row.id))

    def failed(self, row: Row, error: str, retry_in: float | None) -> None:
        """One more failed attempt: due again in `retry_in` seconds, or given up (None)."""
        with self.write() as conn:
            conn.execute("UPDATE subscription_outbox SET attempts = attempts + 1, error = ?, "
                         "state = ?, next_at = ? WHERE id = ?",
                         (error, "pending" if retry_in is not None else "failed",
                          time.time() + (retry_in or 0), row.id))

    def postpone(self, ids: list[str], until: float) -> None:
        """Rows claimed but not tried (their partner just failed): due at `until`."""
        with self.write() as conn:
            conn.executemany("UPDATE subscription_outbox SET next_at = ? WHERE id = ?",
                             [(until, i) for i in ids])

    def cancel(self, row: Row, why: str) -> None:
        with self.write() as conn:
            conn.execute("UPDATE subscription_outbox SET state = 'cancelled', error = ? "
                         "WHERE id = ?", (why, row.id))

    def retry(self, subscription: str | None = None) -> int:
        """Failed rows (of one subscription, or all) pending and due now, their attempts
        counted afresh; also pending rows waiting out a backoff. The number of rows."""
        where, args = "state IN ('failed', 'pending')", [time.time()]
        if subscription:
            where += " AND subscription = ?"
            args.append(subscription)
        with self.write() as conn:
            return conn.execute("UPDATE subscription_outbox SET state = 'pending', attempts = 0, "
                                f"next_at = ? WHERE {where}", args).rowcount

    def counts(self) -> list[tuple[str, str, int, str | None]]:
        """(subscription, state, rows, the latest error) for each pair."""
        return self.read(
            "SELECT subscription, state, COUNT(*), (SELECT error FROM subscription_outbox o2 WHERE "
            "o2.subscription = o.subscription AND o2.state = o.state AND o2.error IS NOT NULL "
            "ORDER BY next_at DESC LIMIT 1) FROM subscription_outbox o "
            "GROUP BY subscription, state ORDER BY subscription, state")

    def close(self) -> None:
        self._conn.close()
