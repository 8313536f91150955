"""Export jobs: their state in a small SQLite file, their work on a few background threads.

The state lives beside the files (`<export dir>/jobs.db`, one folder per job), so a job
outlives the gateway process: when the gateway starts, a job that was accepted or running
when the last one stopped (or died) is run again from the start, with its original
transaction time, so it covers the same resources; one interrupted `MAX_ATTEMPTS` times is
failed with an OperationOutcome saying so. No job is left waiting forever.

Jobs run on `workers` daemon threads (bounded concurrency; more wait in a queue). Stopping
the gateway stops them between pages; their state says they must be run again.
"""

from __future__ import annotations

import logging
import queue
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from fhir_gateway.export import writer
from fhir_gateway.export.request import ExportRequest
from fhir_gateway.export.scope import job_scope
from fhir_gateway.search.dates import now_instant

log = logging.getLogger("fhir_gateway.export")
MAX_ATTEMPTS = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS job (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,          -- accepted, in-progress, completed, failed
    request_url TEXT NOT NULL,     -- the kick-off URL, for the manifest's `request`
    request TEXT NOT NULL,         -- ExportRequest as JSON
    transaction_time TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,                  -- the Written outputs/errors (JSON), or why it failed
    created REAL NOT NULL
);
"""


@dataclass
class Job:
    id: str
    status: str
    request_url: str
    request: ExportRequest
    transaction_time: str
    progress: str
    attempts: int
    outcome: dict | None


class JobStore:
    """The jobs table; one connection per thread (the workers and the API's threads)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.folder / "jobs.db", isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def add(self, request_url: str, request: ExportRequest) -> Job:
        job = Job(str(uuid.uuid4()), "accepted", request_url, request, now_instant()[0], "", 0,
                  None)
        self._db().execute(
            "INSERT INTO job (id, status, request_url, request, transaction_time, created) "
            "VALUES (?, ?, ?, ?, ?, ?)", (job.id, job.status, request_url,
                                          orjson.dumps(request.to_json()).decode(),
                                          job.transaction_time, time.time()))
        return job

    def get(self, job_id: str) -> Job | None:
        row = self._db().execute(
            "SELECT id, status, request_url, request, transaction_time, progress, attempts, "
            "outcome FROM job WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        return Job(row[0], row[1], row[2], ExportRequest.from_json(orjson.loads(row[3])),
                   row[4], row[5], row[6], orjson.loads(row[7]) if row[7] else None)

    def unfinished(self) -> list[str]:
        return [r[0] for r in self._db().execute(
            "SELECT id FROM job WHERE status IN ('accepted', 'in-progress') ORDER BY created")]

    def start(self, job_id: str) -> int | None:
        """Mark a job running; its attempt number, None when it is gone or done."""
        db = self._db()
        updated = db.execute("UPDATE job SET status = 'in-progress', attempts = attempts + 1, "
                             "progress = 'started' WHERE id = ? AND status IN "
                             "('accepted', 'in-progress')", (job_id,)).rowcount
        if not updated:
            return None
        return db.execute("SELECT attempts FROM job WHERE id = ?", (job_id,)).fetchone()[0]

    def progress(self, job_id: str, text: str) -> None:
        self._db().execute("UPDATE job SET progress = ? WHERE id = ?", (text, job_id))

    def finish(self, job_id: str, status: str, outcome: dict) -> bool:
        return bool(self._db().execute(
            "UPDATE job SET status = ?, outcome = ?, progress = '' WHERE id = ? "
            "AND status = 'in-progress'", (status, orjson.dumps(outcome).decode(),
                                           job_id)).rowcount)

    def remove(self, job_id: str) -> bool:
        return bool(self._db().execute("DELETE FROM job WHERE id = ?", (job_id,)).rowcount)

    def files(self, job_id: str) -> Path:
        return self.folder / job_id


class Exporter:
    """Runs the jobs of a `JobStore` against a store, `workers` at a time."""

    def __init__(self, store, folder: Path, workers: int = 2, page_size: int = 500):
        self.store = store
        self.jobs = JobStore(folder)
        self.page_size = page_size
        self._queue: queue.Queue[str] = queue.Queue()
        self._cancelled: set[str] = set()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"export-{n}", daemon=True)
                         for n in range(max(1, workers))]
        for job_id in self.jobs.unfinished():  # left by a gateway that stopped or died
            self._queue.put(job_id)
        for thread in self._threads:
            thread.start()

    def submit(self, request_url: str, request: ExportRequest) -> Job:
        job = self.jobs.add(request_url, request)
        self._queue.put(job.id)
        return job

    def cancel(self, job_id: str) -> bool:
        """Forget a job and delete its files; a running one stops at its next page."""
        self._cancelled.add(job_id)
        removed = self.jobs.remove(job_id)
        shutil.rmtree(self.jobs.files(job_id), ignore_errors=True)
        return removed

    def close(self) -> None:
        """Stop the workers between pages; their jobs run again at the next start."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put("")
        for thread in self._threads:
            thread.join(timeout=30)

    def _work(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id and not self._stopping.is_set():
                self._run(job_id)

    def _run(self, job_id: str) -> None:
        attempt = self.jobs.start(job_id)
        job = self.jobs.get(job_id)
        if attempt is None or job is None:
            return
        folder = self.jobs.files(job_id)
        shutil.rmtree(folder, ignore_errors=True)  # what an interrupted attempt left
        if attempt > MAX_ATTEMPTS:
            self._fail(job_id, f"The export was interrupted {MAX_ATTEMPTS} times (the gateway "
                               "stopped while it ran); start a new one")
            return
        stop = lambda: self._stopping.is_set() or job_id in self._cancelled  # noqa: E731
        try:
            written = writer.export(
                self.store, job.request, job.transaction_time, folder,
                keep=job_scope(self.store, job.request), page_size=self.page_size,
                progress=lambda text: self.jobs.progress(job_id, text), stop=stop)
        except writer.Cancelled:
            if job_id in self._cancelled or self.jobs.get(job_id) is None:
                shutil.rmtree(folder, ignore_errors=True)
            return  # stopping: the job stays in progress and runs again at the next start
        except Exception as exc:  # the store failed: the job reports it, never hangs
            log.warning("export %s failed: %s", job_id, type(exc).__name__)
            self._fail(job_id, f"The export failed: {_reason(exc)}")
            return
        if not self.jobs.finish(job_id, "completed",
                                {"output": written.outputs, "error": written.errors}) \
                and self.jobs.get(job_id) is None:
            shutil.rmtree(folder, ignore_errors=True)  # cancelled meanwhile

    def _fail(self, job_id: str, message: str) -> None:
        self.jobs.finish(job_id, "failed", {"message": message})
        shutil.rmtree(self.jobs.files(job_id), ignore_errors=True)


def _reason(exc: Exception) -> str:
    """What the failed export's OperationOutcome says: the store's diagnostics when it
    answered, else the kind of error (no paths or data: the log has the rest)."""
    outcome = getattr(exc, "outcome", None)
    if isinstance(outcome, dict) and outcome.get("issue"):
        return str(outcome["issue"][0].get("diagnostics", type(exc).__name__))
    return type(exc).__name__
