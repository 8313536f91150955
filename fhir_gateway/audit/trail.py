"""Where the AuditEvents are kept: an embedded store of their own (`<data_dir>/audit.db`,
setting FHIR_GATEWAY_AUDIT_DB), whichever store the gateway serves (embedded or HAPI), so
the trail is searched the same way everywhere and no client can reach it through the
gateway's store.

Why a writer thread: writing an event in the request (one SQLite transaction, index rows
included) cost about as much as the read it records. The request hands its event to a
queue (microseconds) and returns; the writer commits what has queued in one transaction,
so under load the events of many requests share one commit. What a crash can lose is what
was queued and not yet committed (typically the last few milliseconds of requests); a
clean stop (the app's shutdown, or the process exiting) writes everything first. Searches
of the trail wait until the events queued before them are written, so a client reads its
own trail as it made it.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from pathlib import Path

from fhir_gateway.outcome import not_found
from fhir_gateway.store.base import SearchResult
from fhir_gateway.store.sqlite import SQLiteStore

log = logging.getLogger("fhir_gateway.audit")
FILE = "audit.db"
_STOP = object()


class AuditStore(SQLiteStore):
    """The trail's file: its events refer to resources kept in the gateway's store, not
    here, so references are not checked on write (they would all be missing)."""

    def _check_integrity(self, conn) -> None:
        pass


class Trail:
    """The append-only trail: `record` queues, a thread writes in batches."""

    def __init__(self, path: str | Path, batch: int = 1000, linger: float = 0.2):
        """`linger`: seconds the writer lets events gather after the first of a batch (one
        commit for many: a commit per event cost the writer 3-4x the CPU, taken from the
        requests it shares the interpreter with)."""
        self.path, self.batch, self.linger = Path(path), batch, linger
        self._store: AuditStore | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)
        self._queued = self._done = 0
        self._thread: threading.Thread | None = None
        self._at_exit = False
        #: set to cut the writer's wait short (a flush, a stop)
        self._lingering = threading.Event()

    @property
    def store(self) -> AuditStore:
        """The trail's file, opened at first use (an app that serves nothing opens none)."""
        with self._lock:
            if self._store is None:
                self._store = AuditStore(self.path)
            return self._store

    def record(self, event: dict) -> None:
        """Queue an event for writing; never blocks on the file."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer",
                                                daemon=True)
                self._thread.start()
                if not self._at_exit:
                    atexit.register(self.close)
                    self._at_exit = True
            self._queued += 1
        self._queue.put(event)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every event queued before this call is written."""
        self._lingering.set()
        with self._lock:
            target = self._queued
            self._written.wait_for(lambda: self._done >= target or self._thread is None,
                                timeout)

    def close(self) -> None:
        """Write what is queued, stop the writer, close the file (idempotent; a later
        `record` starts them again)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            self._lingering.set()
            thread.join(30)
        with self._lock:
            self._thread = None
            self._written.notify_all()
            if self._store is not None:
                self._store.close()
                self._store = None

    def _run(self) -> None:
        store = self.store
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            if batch[0] is not _STOP:
                self._lingering.wait(self.linger)
            while len(batch) < self.batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [e for e in batch if e is not _STOP]
                while True:  # what was queued after the stop was asked for goes in too
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            self._lingering.clear()
            if batch:
                self._write(store, batch)
            with self._lock:
                self._done += len(batch)
                self._written.notify_all()

    def _write(self, store: AuditStore, batch: list[dict]) -> None:
        """One transaction for the batch; retried a few times (a busy file), then given up
        with an error in the log (the count only: events carry PHI)."""
        for attempt in range(5):
            try:
                with store.atomic():
                    for event in batch:
                        store.create(event, new_id=event["id"])
                return
            except Exception as err:  # noqa: BLE001 - the writer must outlive any one batch
                failure = err
                time.sleep(0.1 * 2 ** attempt)
        log.error("%d audit events could not be written to %s: %s", len(batch), self.path,
                  type(failure).__name__)

    # -- reading ------------------------------------------------------------------------
    def search(self, params: list[tuple[str, str]], organization: str | None = None,
               strict: bool = False) -> SearchResult:
        """A search of the trail; for a client of an organization, only its events (the
        total included), and only its events among the included ones."""
        self.flush()
        if organization:
            params = [*params, ("agent", organization)]
        result = self.store.search("AuditEvent", params, strict)
        if organization:
            result.included = [r for r in result.included if _of(r, organization)]
        return result

    def read(self, event_id: str, organization: str | None = None,
             version: str | None = None) -> dict:
        """One event (404 as unknown when it is another organization's)."""
        self.flush()
        event = self.store.vread("AuditEvent", event_id, version) if version else \
            self.store.read("AuditEvent", event_id)
        if organization and not _of(event, organization):
            raise not_found("AuditEvent", event_id)
        return event


def _of(event: dict, organization: str) -> bool:
    return any(isinstance(a, dict) and (a.get("who") or {}).get("reference") == organization
               for a in event.get("agent") or [])
