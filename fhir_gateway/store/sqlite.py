"""The embedded store: one SQLite file, every version kept, searchable by the R4 parameters.

Why SQLite: zero setup for demos, development and small deployments; WAL lets readers go
on while one writer commits. Writers are serialised (a process lock plus BEGIN IMMEDIATE
across processes), which is what makes conditional creates race-free: the match and the
insert happen inside one write transaction.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import orjson

from fhir_gateway.exchange.changefeed import OutboxWriter
from fhir_gateway.formats import fhirjson
from fhir_gateway.outcome import FhirError, gone, invalid, missing_target, not_found
from fhir_gateway.search import values
from fhir_gateway.search.dates import now_instant, parse_range
from fhir_gateway.search.fhirpath import element_names
from fhir_gateway.search.query import SearchQuery, parse_query
from fhir_gateway.search.registry import SearchParam, indexed_params, resource_types
from fhir_gateway.store.base import (HistoryEntry, HistoryResult, SearchResult, StoreURLError,
                                      Written, one_match, version_number)
from fhir_gateway.store.resolve import commit as resolve_and_commit
from fhir_gateway.store.sqlsearch import (INDEX, INDEX_TABLES, matches_row, matching_ids,
                                           run_query)
from fhir_gateway.store.units import BundleOperations, Entries
from fhir_gateway.validation.structure import check_update_id

#: `PRAGMA user_version` of a store file whose tables and index match this code. Raise it
#: when the tables or the index rules (what `_index` writes) change: older files are then
#: refused until `fhir-gateway reindex` rebuilds their index. Files made before versioning
#: read 0. Version 2: the IG's SearchParameters are indexed too (Task `due`).
SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS resource(
  rid INTEGER PRIMARY KEY, type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
  updated REAL NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, body BLOB,
  UNIQUE(type, id));
CREATE INDEX IF NOT EXISTS resource_type_updated ON resource(type, updated);
CREATE TABLE IF NOT EXISTS version(
  rid INTEGER NOT NULL, version INTEGER NOT NULL, updated REAL NOT NULL,
  last_updated TEXT NOT NULL, method TEXT NOT NULL, body BLOB,
  PRIMARY KEY(rid, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS version_updated ON version(updated);
CREATE TABLE IF NOT EXISTS param(pid INTEGER PRIMARY KEY, type TEXT NOT NULL,
  code TEXT NOT NULL, UNIQUE(type, code));
CREATE TABLE IF NOT EXISTS idx_token(pid INTEGER, system TEXT, code TEXT, text TEXT, rid INTEGER);
CREATE INDEX IF NOT EXISTS idx_token_code ON idx_token(pid, code, system, rid);
CREATE INDEX IF NOT EXISTS idx_token_rid ON idx_token(rid, pid);
CREATE TABLE IF NOT EXISTS idx_string(pid INTEGER, norm TEXT, exact TEXT, rid INTEGER);
CREATE INDEX IF NOT EXISTS idx_string_norm ON idx_string(pid, norm);
CREATE INDEX IF NOT EXISTS idx_string_rid ON idx_string(rid, pid);
CREATE TABLE IF NOT EXISTS idx_ref(pid INTEGER, ref TEXT, ttype TEXT, tid TEXT, rid INTEGER);
CREATE INDEX IF NOT EXISTS idx_ref_target ON idx_ref(pid, tid, ttype, rid);
CREATE INDEX IF NOT EXISTS idx_ref_ref ON idx_ref(pid, ref);
CREATE INDEX IF NOT EXISTS idx_ref_rid ON idx_ref(rid, pid);
CREATE TABLE IF NOT EXISTS idx_date(pid INTEGER, low REAL, high REAL, rid INTEGER);
CREATE INDEX IF NOT EXISTS idx_date_low ON idx_date(pid, low);
CREATE INDEX IF NOT EXISTS idx_date_rid ON idx_date(rid, pid);
CREATE TABLE IF NOT EXISTS idx_quantity(pid INTEGER, value REAL, system TEXT, code TEXT,
  unit TEXT, rid INTEGER);
CREATE INDEX IF NOT EXISTS idx_quantity_value ON idx_quantity(pid, value);
CREATE INDEX IF NOT EXISTS idx_quantity_rid ON idx_quantity(rid, pid);
CREATE TABLE IF NOT EXISTS idx_number(pid INTEGER, value REAL, rid INTEGER);
CREATE INDEX IF NOT EXISTS idx_number_value ON idx_number(pid, value);
CREATE INDEX IF NOT EXISTS idx_number_rid ON idx_number(rid, pid);
"""

_INSERT = {t: f"INSERT INTO {table}(pid, {', '.join(cols)}, rid) VALUES (?{', ?' * len(cols)}, ?)"
           for t, (table, cols, _, _) in INDEX.items()}


@lru_cache(maxsize=1024)
def _index_plan(resource_type: str, keys: tuple[str, ...]
                ) -> tuple[tuple[SearchParam, str, Callable], ...]:
    """The parameters that can find values in a resource with these top-level keys, each
    with its INSERT and its row function.

    Most of a type's parameters start from elements a given resource lacks (see
    `fhirpath.Compiled.roots`); resources written together come in a few shapes, so the
    choice is made once per shape rather than once per resource and parameter.
    """
    names = element_names(keys)
    return tuple((p, _INSERT[p.type], INDEX[p.type].rows) for p in indexed_params(resource_type)
                 if p.type in INDEX and (p.roots is None or not p.roots.isdisjoint(names)))


class _PendingIndex:
    """The index rows of the open write transaction, inserted in bulk when something reads.

    Why: inserted as each resource was written, they took one executemany per table per
    resource, and SQLite spent 2-3x longer per row than in one executemany per table per
    transaction. A flush comes before anything reads the index tables (a search or
    conditional match, clearing a resource queued here, the integrity check at commit), so
    every read still sees every write before it.
    """

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple]] = {sql: [] for sql in set(_INSERT.values())}
        self.rids: set[int] = set()  # resources with rows not yet flushed

    def add(self, insert: str, rows: list[tuple], rid: int) -> None:
        self.rows[insert].extend(rows)
        self.rids.add(rid)

    def flush(self, conn: sqlite3.Connection) -> None:
        for insert, rows in self.rows.items():
            if rows:
                conn.executemany(insert, rows)
                rows.clear()
        self.rids.clear()


def _rows_in(conn: sqlite3.Connection, sql: str, args: list, values: list) -> Iterator[tuple]:
    """The rows of `sql ... IN (values)`, asked 500 values at a time (SQLite's parameter
    limit)."""
    for start in range(0, len(values), 500):
        chunk = values[start:start + 500]
        yield from conn.execute(f"{sql} ({', '.join('?' * len(chunk))})", [*args, *chunk])


def _dumps(resource: dict) -> bytes:
    return fhirjson.dumps(resource)


def _content(resource: dict) -> bytes:
    """The resource without the server-maintained meta, to detect no-op updates: as text,
    where `0.10` is not `0.1` (a dict compares them as equal numbers)."""
    meta = {k: v for k, v in resource.get("meta", {}).items()
            if k not in ("versionId", "lastUpdated")}
    stripped = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        stripped["meta"] = meta
    return fhirjson.dumps(stripped, orjson.OPT_SORT_KEYS)


@lru_cache(maxsize=256)
def _criteria(resource_type: str, params: tuple[tuple[str, str], ...]) -> SearchQuery:
    """A Subscription's criteria, parsed once (read only)."""
    return parse_query(resource_type, list(params), strict=True)


def parse_etag(value: str) -> int:
    tag = value.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    if not (tag.isascii() and tag.isdigit() and len(tag) <= 18):
        raise invalid(f"Invalid If-Match value '{value}': expected W/\"<versionId>\"", "If-Match")
    return int(tag)


class SQLiteStore(BundleOperations):
    """FhirStore over one SQLite file."""

    def __init__(self, path: str | Path, reindexing: bool = False):
        """Open (or create) the store file; an older schema only when `reindexing` it."""
        self.path = str(path)
        if self.path == ":memory:":
            raise ValueError("The embedded store needs a file: its connections are per thread")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pids: dict[tuple[str, str], int] = {}
        self._connections: list[sqlite3.Connection] = []
        conn = self.connection()
        self._check_version(conn, reindexing)
        conn.executescript(SCHEMA)
        self._load_pids(conn)
        #: queues Subscription notifications in each write transaction (exchange/changefeed.py)
        self.outbox = OutboxWriter(conn, self._finds)

    def _check_version(self, conn: sqlite3.Connection, reindexing: bool) -> None:
        """Mark a new file with the schema version; refuse a file of another version."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        file = "/" + str(Path(self.path).resolve()).lstrip("/")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'resource'").fetchone() is None:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version > SCHEMA_VERSION:
            raise StoreURLError(f"The store {file} has schema version {version}, written by a "
                                f"newer fhir-gateway; this one reads version {SCHEMA_VERSION}")
        elif version < SCHEMA_VERSION and not reindexing:
            raise StoreURLError(
                f"The store {file} has schema version {version}; this fhir-gateway needs "
                f"version {SCHEMA_VERSION}. Rebuild its search index with: "
                f"fhir-gateway reindex --store sqlite://{file}")

    # -- connections and transactions -------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA cache_size=-16384")  # 16 MB page cache per connection
            # Checkpoint the WAL every ~40 MB, not every 4 MB: a page written again and again
            # by bulk writes (index pages) is copied back once, and fewer checkpoints sync
            # the file (an import's commits took about half as long).
            conn.execute("PRAGMA wal_autocheckpoint=10000")
            self._local.conn = conn
            self._local.pending = None  # a _PendingIndex while a write transaction is open
            self._local.heads = {}
            self._connections.append(conn)
        return conn

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, all or nothing; nested use joins the open one (a Bundle's
        entries, a conditional match and its write), so no error inside is half-undone."""
        conn = self.connection()
        if self._local.pending is not None:
            yield conn
            return
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            self._local.references, self._local.deleted = {}, set()
            self._local.pending = _PendingIndex()
            self._local.changes = {}  # (type, id) -> version written, for the outbox
            try:
                yield conn
                self._flush_index()
                queued = self.outbox.before_commit(conn, self._local.changes)
                self._check_integrity(conn)
                conn.execute("COMMIT")
                self.outbox.after_commit(queued)
            except BaseException:
                conn.execute("ROLLBACK")
                self._load_pids(conn)  # parameters registered in the rolled-back work are gone
                raise
            finally:
                self._local.pending = None
                self._local.heads.clear()

    def _flush_index(self) -> None:
        """Insert the queued index rows of this thread's write transaction, if any."""
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.flush(self._local.conn)

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """Referential integrity on write, as HAPI enforces it, checked once per transaction.

        Checking at commit (not per write) lets a transaction create a Condition before the
        Patient it points at, in any entry order.
        """
        references = self._local.references
        wanted: dict[str, list[str]] = {}
        for ttype, tid in references:
            wanted.setdefault(ttype, []).append(tid)
        live = {(ttype, tid) for ttype, ids in wanted.items()  # a query per type, not per id
                for (tid,) in _rows_in(conn, "SELECT id FROM resource WHERE type=? AND "
                                             "deleted=0 AND id IN", [ttype], ids)}
        for (ttype, tid), source in references.items():
            if (ttype, tid) not in live:
                path = values.reference_path(source, ttype, tid)
                err = missing_target(f"{ttype}/{tid}", path)
                err.source = (source["resourceType"], source["id"])
                raise err
        for rtype, rid in self._local.deleted:
            row = conn.execute(
                "SELECT s.type, s.id FROM idx_ref x JOIN resource s ON s.rid = x.rid "
                "WHERE x.tid = ? AND x.ttype = ? AND s.deleted = 0 LIMIT 1", (rid, rtype)).fetchone()
            if row:
                raise FhirError(409, f"Unable to delete {rtype}/{rid}: {row[0]}/{row[1]} refers "
                                     "to it", "conflict")

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        self._local = threading.local()

    def _load_pids(self, conn: sqlite3.Connection) -> None:
        self._pids = {(t, c): pid for pid, t, c in conn.execute("SELECT pid, type, code FROM param")}

    def pid(self, resource_type: str, code: str, create: bool = False) -> int:
        """The row id of a search parameter, -1 for one nothing was ever indexed under.

        Another process (an import into the file a gateway serves) may have registered it
        since this one started: a miss asks the file before it is taken as unknown, and a
        new registration cannot collide (the write transaction holds the file's lock)."""
        key = (resource_type, code)
        pid = self._pids.get(key)
        if pid is None:
            conn = self.connection()
            row = conn.execute("SELECT pid FROM param WHERE type=? AND code=?", key).fetchone()
            if row is None and not create:
                return -1
            pid = row[0] if row else conn.execute(
                "INSERT INTO param(type, code) VALUES (?, ?)", key).lastrowid
            self._pids[key] = pid
        return pid

    # -- reads --------------------------------------------------------------------------
    def read(self, resource_type: str, resource_id: str) -> dict:
        row = self.connection().execute(
            "SELECT body, deleted, version FROM resource WHERE type=? AND id=?",
            (resource_type, resource_id)).fetchone()
        if row is None:
            raise not_found(resource_type, resource_id)
        if row[1]:
            raise gone(resource_type, resource_id, row[2])
        return fhirjson.loads(row[0])

    def head(self, resource_type: str, resource_id: str) -> dict:
        """A live resource's type, id and version meta, without reading its body (nor the
        database, when this transaction's identifier matching found it)."""
        conn = self.connection()
        row = self._local.heads.get((resource_type, resource_id)) or conn.execute(
            "SELECT v.version, v.last_updated FROM resource r JOIN version v ON v.rid = r.rid "
            "AND v.version = r.version WHERE r.type=? AND r.id=? AND r.deleted = 0",
            (resource_type, resource_id)).fetchone()
        if row is None:
            raise not_found(resource_type, resource_id)
        return {"resourceType": resource_type, "id": resource_id,
                "meta": {"versionId": str(row[0]), "lastUpdated": row[1]}}

    def vread(self, resource_type: str, resource_id: str, version: str) -> dict:
        row = self.connection().execute(
            "SELECT v.body, v.method FROM version v JOIN resource r ON r.rid = v.rid "
            "WHERE r.type=? AND r.id=? AND v.version=?",
            (resource_type, resource_id, version_number(resource_type, resource_id, version))
        ).fetchone()
        if row is None:
            raise FhirError(404, f"Version {version} of {resource_type}/{resource_id} is not "
                                 "known", "not-found")
        if row[1] == "DELETE":
            raise gone(resource_type, resource_id, int(version))
        return fhirjson.loads(row[0])

    def is_empty(self) -> bool:
        return self.connection().execute("SELECT 1 FROM resource LIMIT 1").fetchone() is None

    # -- writes -------------------------------------------------------------------------
    @staticmethod
    def assign_id() -> str:
        """A new server-assigned id: a UUID that starts with the time (RFC 9562 version 7).

        Why not a random (version 4) UUID: ids that grow with time make the (type, id) index
        and the reference index (keyed by target id) grow at their ends, so a transaction
        rewrites a few of their pages instead of about one per row. 74 random bits keep ids unguessable.
        """
        rand = secrets.randbits(74)
        millis = time.time_ns() // 1_000_000
        return str(uuid.UUID(int=millis << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62
                             | rand & (1 << 62) - 1))

    def create(self, resource: dict, if_none_exist: str | None = None,
               new_id: str | None = None) -> Written:
        if if_none_exist:
            return self.conditional_create(resource, if_none_exist)
        with self.atomic():
            return self._write(resource["resourceType"], new_id or self.assign_id(), resource,
                               None, "POST")

    def update(self, resource_type: str, resource_id: str, resource: dict,
               if_match: str | None = None) -> Written:
        check_update_id(resource, resource_id)
        with self.atomic() as conn:
            row = conn.execute("SELECT rid, version, deleted, body FROM resource "
                               "WHERE type=? AND id=?", (resource_type, resource_id)).fetchone()
            if if_match is not None:
                wanted = parse_etag(if_match)
                if row is None or row[2] or row[1] != wanted:
                    current = "none" if row is None or row[2] else f'W/"{row[1]}"'
                    raise FhirError(412, f"If-Match {if_match} does not match the current "
                                         f"version of {resource_type}/{resource_id} ({current})",
                                    "conflict")
            if row is not None and not row[2]:
                current = fhirjson.loads(row[3])
                if _content(current) == _content(resource):
                    return Written(current, 200)
            return self._write(resource_type, resource_id, resource, row, "PUT")

    def delete(self, resource_type: str, resource_id: str) -> None:
        with self.atomic() as conn:
            row = conn.execute("SELECT rid, version, deleted FROM resource WHERE type=? AND id=?",
                               (resource_type, resource_id)).fetchone()
            if row is None or row[2]:
                return  # deleting what is not there changes nothing (200, as HAPI answers)
            rid, version = row[0], row[1] + 1
            instant, epoch = now_instant()
            self._local.deleted.add((resource_type, resource_id))
            self._local.changes.pop((resource_type, resource_id), None)
            self._local.heads.pop((resource_type, resource_id), None)
            self._clear_index(rid)
            conn.execute("UPDATE resource SET version=?, updated=?, deleted=1, body=NULL "
                         "WHERE rid=?", (version, epoch, rid))
            conn.execute("INSERT INTO version VALUES (?, ?, ?, ?, 'DELETE', NULL)",
                         (rid, version, epoch, instant))

    def _write(self, resource_type: str, resource_id: str, resource: dict, row, method: str
               ) -> Written:
        conn = self.connection()
        self._local.heads.pop((resource_type, resource_id), None)
        instant, epoch = now_instant()
        version = 1 if row is None else row[1] + 1
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = instant
        stored = {"resourceType": resource_type, "id": resource_id,
                  **{k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")},
                  "meta": meta}
        body = _dumps(stored)
        if row is None:
            rid = conn.execute("INSERT INTO resource(type, id, version, updated, body) "
                               "VALUES (?, ?, ?, ?, ?)",
                               (resource_type, resource_id, version, epoch, body)).lastrowid
        else:
            rid = row[0]
            self._clear_index(rid)
            conn.execute("UPDATE resource SET version=?, updated=?, deleted=0, body=? WHERE rid=?",
                         (version, epoch, body, rid))
        conn.execute("INSERT INTO version VALUES (?, ?, ?, ?, ?, ?)",
                     (rid, version, epoch, instant, method, body))
        self._index(rid, stored)
        self._local.changes[(resource_type, resource_id)] = version
        return Written(stored, 201 if row is None or row[2] else 200)

    def _index(self, rid: int, resource: dict) -> None:
        """Queue the resource's index rows (see `_PendingIndex`) and note its references."""
        resource_type = resource["resourceType"]
        pending = self._local.pending
        for param, insert, to_rows in _index_plan(resource_type, tuple(resource)):
            found = to_rows(param.extract(resource))
            if found:
                pid = self.pid(resource_type, param.code, create=True)
                pending.add(insert, [(pid, *r, rid) for r in found], rid)
                if param.type == "reference":
                    for _, ttype, tid in found:
                        if ttype and (ttype, tid) != (resource_type, resource["id"]):
                            self._local.references.setdefault((ttype, tid), resource)

    def reindex(self, progress: Callable[[int, int], None] | None = None,
                chunk: int = 1000) -> int:
        """Rebuild every index table from the stored resources, for when the index rules
        change, and mark the file with this schema version; the number of resources indexed.

        One write transaction (readers see the old index until it commits); `progress` is
        told (done, total) after each chunk of resources.
        """
        with self.atomic() as conn:
            for table in INDEX_TABLES:
                conn.execute(f"DELETE FROM {table}")
            total = conn.execute("SELECT COUNT(*) FROM resource WHERE deleted = 0").fetchone()[0]
            done, last = 0, 0
            while rows := conn.execute("SELECT rid, body FROM resource WHERE deleted = 0 AND "
                                       "rid > ? ORDER BY rid LIMIT ?", (last, chunk)).fetchall():
                for rid, body in rows:
                    self._index(rid, fhirjson.loads(body))
                self._flush_index()
                self._local.references.clear()  # checked when they were written
                done, last = done + len(rows), rows[-1][0]
                if progress:
                    progress(done, total)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return done

    def _clear_index(self, rid: int) -> None:
        conn = self.connection()
        if rid in self._local.pending.rids:
            self._flush_index()  # rows queued for it earlier in this transaction go too
        for table in INDEX_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE rid=?", (rid,))

    # -- search -------------------------------------------------------------------------
    def match(self, resource_type: str, criteria: list[tuple[str, str]], what: str) -> str | None:
        """The id of the one resource matching `criteria`; 412 if several match."""
        if not criteria:
            raise invalid(f"The {what} has no search criteria", what)
        query = parse_query(resource_type, criteria, strict=True)
        self._flush_index()
        return one_match(matching_ids(self, query, limit=2), resource_type, what)

    def match_identifiers(self, resource_type: str, pairs: set[tuple[str, str]]
                          ) -> dict[tuple[str, str], list[str]]:
        """The ids of the live resources of a type that have each `identifier=system|value`:
        what `match` finds for each pair, in one query (an import matches hundreds).

        Their version meta is kept for `head` until they are written or the transaction
        ends: a conditional create that finds its resource answers with it.
        """
        conn = self.connection()
        self._flush_index()
        pid = self.pid(resource_type, "identifier")
        found: dict[tuple[str, str], list[str]] = {pair: [] for pair in pairs}
        heads = self._local.heads
        rows = _rows_in(conn, "SELECT DISTINCT t.system, t.code, r.id, r.version, "
                              "v.last_updated FROM idx_token t JOIN resource r ON r.rid = t.rid "
                              "JOIN version v ON v.rid = r.rid AND v.version = r.version "
                              "WHERE t.pid = ? AND r.type = ? AND r.deleted = 0 AND t.code IN",
                        [pid, resource_type], sorted({value for _, value in pairs}))
        for system, value, rid, version, last_updated in rows:
            if (system, value) in found:
                found[system, value].append(rid)
                heads[resource_type, rid] = (version, last_updated)
        return found

    def _finds(self, resource_type: str, resource_id: str, params: tuple[tuple[str, str], ...]
               ) -> bool:
        """Whether the search `params` finds the resource (as the open transaction has it)."""
        row = self.connection().execute("SELECT rid FROM resource WHERE type=? AND id=?",
                                        (resource_type, resource_id)).fetchone()
        self._flush_index()
        return row is not None and matches_row(self, _criteria(resource_type, params), row[0])

    def search(self, resource_type: str, params: list[tuple[str, str]],
               strict: bool = False) -> SearchResult:
        if resource_type not in resource_types():
            raise FhirError(404, f"Unknown resource type '{resource_type}'", "not-supported")
        query = parse_query(resource_type, params, strict)
        return self.run(query)

    def run(self, query: SearchQuery) -> SearchResult:
        self._flush_index()
        return run_query(self, query)

    # -- history ------------------------------------------------------------------------
    def history(self, resource_type: str | None = None, resource_id: str | None = None,
                since: str | None = None, count: int = 20, offset: int = 0) -> HistoryResult:
        where, args = [], []
        if resource_type:
            if resource_type not in resource_types():
                raise FhirError(404, f"Unknown resource type '{resource_type}'", "not-supported")
            where.append("r.type=?")
            args.append(resource_type)
        if resource_id:
            where.append("r.id=?")
            args.append(resource_id)
        if since:
            rng = parse_range(since)
            if rng is None:
                raise invalid(f"Invalid _since '{since}'", "_since")
            where.append("v.updated >= ?")
            args.append(rng[0])
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        conn = self.connection()
        sql = f"FROM version v JOIN resource r ON r.rid = v.rid {clause}"
        total = conn.execute(f"SELECT COUNT(*) {sql}", args).fetchone()[0]
        if resource_id and total == 0:
            raise not_found(resource_type or "", resource_id)
        rows = conn.execute(
            f"SELECT r.type, r.id, v.version, v.last_updated, v.method, v.body {sql} "
            "ORDER BY v.updated DESC, v.version DESC LIMIT ? OFFSET ?", [*args, count, offset])
        entries = [HistoryEntry(t, i, v, lu, m, fhirjson.loads(b) if b else None)
                   for t, i, v, lu, m, b in rows]
        return HistoryResult(entries, total, count, offset)

    def commit(self, entries: Entries, representation: bool = False) -> list[dict]:
        return resolve_and_commit(self, entries, representation)
