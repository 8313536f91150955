"""The two engines the potential-enrollee SQL runs on: DuckDB (embedded, the default) and
Apache Spark (pyspark; `local[*]` on one machine, a cluster where one machine is not enough).

Both offer the same five things: read a CSV or Parquet file as a view, make a small table
from Python rows, name a query's result (a view, or a materialised table for what is read
twice), fetch a small result, and stream a large one. The SQL itself is the same text on
both (`sql/README.md` says which functions it may use); only reading files differs.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENGINES = ("duckdb", "spark")


def columnar_format(path: Path) -> str:
    """`parquet` or `csv`, by the file name's ending (a directory is a Parquet dataset)."""
    name = path.name.lower()
    if path.is_dir() or name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    raise ValueError(f"{path}: expected a .csv or .parquet file")


class DuckDBEngine:
    """DuckDB in this process. Memory is capped (`memory_limit`, default half the machine's,
    DuckDB's own default is 80%) and what does not fit spills to a temporary directory."""

    name = "duckdb"

    def __init__(self, threads: int | None = None, memory_limit: str | None = None):
        import duckdb

        self._spill = tempfile.TemporaryDirectory(prefix="fhir-gateway-duckdb-")
        config = {"temp_directory": self._spill.name, "preserve_insertion_order": "false"}
        if threads:
            config["threads"] = str(threads)
        if memory_limit:
            config["memory_limit"] = memory_limit
        self.con = duckdb.connect(":memory:", config=config)
        self.con.execute("SET enable_progress_bar = false")

    def read(self, view: str, path: Path) -> list[str]:
        """The file as a view; its column names (lower case)."""
        quoted = "'" + str(path).replace("'", "''") + "'"
        if columnar_format(path) == "parquet":
            glob = quoted if not path.is_dir() else "'" + str(path / "*.parquet").replace("'", "''") + "'"
            source = f"read_parquet({glob})"
        else:  # the header row names the columns; every value is text (no guessing)
            columns = ", ".join("'" + name.replace("'", "''") + "': 'VARCHAR'"
                                for name in csv_header(path))
            source = (f"read_csv({quoted}, header = true, auto_detect = false, delim = ',', "
                      f"quote = '\"', escape = '\"', columns = {{{columns}}})")
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {source}")
        return [row[0].lower() for row in self.con.execute(f"DESCRIBE {view}").fetchall()]

    def table(self, name: str, schema: str, rows: list[tuple]) -> None:
        """A small table from Python rows (`schema`: `col TYPE, ...`)."""
        # through a CSV file: DuckDB's executemany costs milliseconds a row
        path = Path(self._spill.name) / f"{name}.csv"
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows(rows)
        columns = ", ".join(f"'{n}': '{t}'" for n, t in (c.split() for c in schema.split(",")))
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM read_csv("
                         f"'{path}', header = false, auto_detect = false, delim = ',', quote = '\"', "
                         f"columns = {{{columns}}})")  # nothing to sniff: an empty table is one

    def view(self, name: str, sql: str, materialise: bool = False) -> None:
        kind = "TABLE" if materialise else "VIEW"
        self.con.execute(f"CREATE OR REPLACE TEMP {kind} {name} AS {sql}")

    def fetch(self, sql: str) -> list[tuple]:
        return self.con.execute(sql).fetchall()

    def stream(self, sql: str, batch: int = 10_000) -> Iterator[tuple]:
        cursor = self.con.execute(sql)
        while rows := cursor.fetchmany(batch):
            yield from rows

    def close(self) -> None:
        self.con.close()
        self._spill.cleanup()


class SparkEngine:
    """Spark SQL through pyspark. `session`: an existing SparkSession (tests share one);
    otherwise one is started on `master` (`local[*]` by default, or FHIR_GATEWAY_SPARK_MASTER)
    and stopped by `close`."""

    name = "spark"

    def __init__(self, session=None, master: str | None = None):
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise ValueError("the Spark engine needs pyspark: pip install 'fhir-gateway[spark]'") \
                from None
        self._own = session is None
        self.spark = session or (SparkSession.builder
                                 .master(master or os.environ.get("FHIR_GATEWAY_SPARK_MASTER",
                                                                  "local[*]"))
                                 .appName("fhir-gateway potential-enrollees")
                                 .config("spark.ui.enabled", "false")
                                 .config("spark.ui.showConsoleProgress", "false")
                                 # local: a few partitions per core, not the cluster's 200
                                 .config("spark.sql.shuffle.partitions",
                                         os.environ.get("FHIR_GATEWAY_SPARK_PARTITIONS",
                                                        str(2 * (os.cpu_count() or 2))))
                                 .config("spark.sql.session.timeZone", "UTC")
                                 .getOrCreate())
        if self._own:
            self.spark.sparkContext.setLogLevel("ERROR")
        self._cached: list = []

    def read(self, view: str, path: Path) -> list[str]:
        reader = self.spark.read
        frame = (reader.parquet(str(path)) if columnar_format(path) == "parquet"
                 else reader.option("header", True).csv(str(path)))
        frame.createOrReplaceTempView(view)
        return [name.lower() for name in frame.columns]

    def table(self, name: str, schema: str, rows: list[tuple]) -> None:
        self.spark.createDataFrame(rows, schema).createOrReplaceTempView(name)

    def view(self, name: str, sql: str, materialise: bool = False) -> None:
        frame = self.spark.sql(sql)
        if materialise:
            frame = frame.cache()
            frame.count()  # computed now, once
            self._cached.append(frame)
        frame.createOrReplaceTempView(name)

    def fetch(self, sql: str) -> list[tuple]:
        return [tuple(row) for row in self.spark.sql(sql).collect()]

    def stream(self, sql: str, batch: int = 10_000) -> Iterator[tuple]:
        for row in self.spark.sql(sql).toLocalIterator():
            yield tuple(row)

    def close(self) -> None:
        for frame in self._cached:
            frame.unpersist()
        for name in [t.name for t in self.spark.catalog.listTables() if t.isTemporary]:
            self.spark.catalog.dropTempView(name)
        if self._own:
            self.spark.stop()


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file's header row."""
    with path.open(newline="") as fh:
        header = next(csv.reader(fh), [])
    if not header or not all(name.strip() for name in header):
        raise ValueError(f"{path} line 1: a header row naming the columns is needed")
    return [name.strip() for name in header]


def engine_errors() -> tuple[type[BaseException], ...]:
    """The exception types an engine raises for input it cannot read (not our bugs)."""
    import duckdb

    found: list[type[BaseException]] = [duckdb.Error]
    try:
        from pyspark.errors import PySparkException
        found.append(PySparkException)
    except ImportError:
        pass
    return tuple(found)


def open_engine(name: str, spark_session=None, memory_limit: str | None = None):
    if name == "duckdb":
        return DuckDBEngine(memory_limit=memory_limit)
    if name == "spark":
        return SparkEngine(spark_session)
    raise ValueError(f"unknown engine {name!r}: {' or '.join(ENGINES)}")


def first_bad_row(path: Path, field: str, bad) -> tuple[int, str] | None:
    """(line or row number, value) of the first row of a CSV or Parquet file whose `field`
    `bad(value)` says is unusable: what an error message names. Only run once a check has
    found such a row, so the cost of reading the file again is paid on the error path."""
    if columnar_format(path) == "csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                value = {k.lower(): v for k, v in row.items() if k}.get(field)
                if bad(value):
                    return reader.line_num, value or ""
        return None
    import duckdb

    glob = str(path / "*.parquet") if path.is_dir() else str(path)
    # `field` is one of the format's column names (never user input)
    cursor = duckdb.connect().execute(
        f'SELECT file_row_number, CAST("{field}" AS VARCHAR) FROM read_parquet(?, '
        "file_row_number = true) ORDER BY file_row_number", [glob])
    while rows := cursor.fetchmany(10_000):
        for number, value in rows:
            if bad(value):
                return number + 1, value or ""
    return None
