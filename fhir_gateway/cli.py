"""`fhir-gateway`: serve the FHIR API; load, import and validate files; synthesise extracts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from platformdirs import user_data_dir
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from fhir_gateway.auth.setup import AuthConfigError, check_auth
from fhir_gateway.config import Settings
from fhir_gateway.outcome import FhirError
from fhir_gateway.store import StoreURLError, open_store, sqlite_path

app = typer.Typer(help="Health Home FHIR Gateway", no_args_is_help=True)
console = Console(stderr=True)

DEMO_EXTRACT_MEMBERS = 40

StoreOption = Annotated[str, typer.Option(
    "--store", envvar="FHIR_GATEWAY_STORE",
    help="sqlite:///path/to/file.db (embedded) or http(s)://host/fhir; default: a file "
         "under the user data dir")]


@app.callback()
def main(ctx: typer.Context) -> None:
    """Read the settings once, for whichever command runs (`_settings` hands them on)."""
    try:
        ctx.obj = Settings()
    except ValidationError as err:
        for problem in err.errors():
            message = problem["msg"].removeprefix("Value error, ")
            console.print(f"[red]error:[/red] FHIR_GATEWAY_{str(problem['loc'][0]).upper()}: "
                          f"{escape(message)}", soft_wrap=True)
        raise typer.Exit(2) from None


def _settings(ctx: typer.Context, **flags) -> Settings:
    """The settings read by `main`, with the command's flags (which read the environment
    themselves, so a flag not given keeps the environment's value)."""
    return ctx.obj.model_copy(update=flags)


def _open(settings: Settings):
    """Open the store and check that it answers, or exit 2 with a clear message."""
    url = settings.store_url()
    try:
        store = open_store(url, settings.profiles, settings.validate_all)
        store.is_empty()
        return store
    except StoreURLError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
    except FhirError as exc:
        console.print(f"[red]error:[/red] store {escape(url)}: {escape(str(exc))}")
    raise typer.Exit(2)


@app.command()
def serve(
    ctx: typer.Context,
    store: StoreOption = "",
    host: Annotated[str, typer.Option(envvar="FHIR_GATEWAY_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="FHIR_GATEWAY_PORT")] = 8000,
    demo: Annotated[bool, typer.Option("--demo/--no-demo", envvar="FHIR_GATEWAY_DEMO",
                                       help="load the synthetic population into an empty store")] = True,
    log_level: Annotated[str, typer.Option(envvar="FHIR_GATEWAY_LOG_LEVEL")] = "info",
    deliver: Annotated[bool, typer.Option("--deliver/--no-deliver",
                                          help="deliver Subscription notifications from "
                                               "this process")] = True,
) -> None:
    """Run the FHIR R4 API at http://HOST:PORT/fhir."""
    import uvicorn

    from fhir_gateway.api.app import create_app
    from fhir_gateway.api.limits import FhirHttp

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings(ctx, store=store, host=host, port=port, demo=demo)
    try:
        check_auth(settings)
    except AuthConfigError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    fhir_store = _open(settings)
    if demo and settings.auth:
        from fhir_gateway.auth.demo import ensure_demo_client

        ensure_demo_client(settings.data_dir)
        console.print("Demo client registered: TOKEN=$(.venv/bin/fhir-gateway token) gets a "
                      "token for it", soft_wrap=True)
    simulators = []
    if demo:
        extracts = _demo_extracts_dir(settings.store_url())
        if fhir_store.is_empty():
            _load_demo(fhir_store, extracts, settings.mappings)
        simulators = _demo_lookups(settings, extracts)
    console.print(f"FHIR base: [bold]http://{host}:{port}/fhir[/bold]  store: {settings.store_url()}")
    engine = _engine(fhir_store, settings) if deliver else None
    if engine:
        engine.start()
    try:
        uvicorn.run(create_app(fhir_store, settings), host=host, port=port, access_log=False,
                    log_level=log_level, http=FhirHttp)
    finally:
        if engine:
            engine.stop()
        for simulator in simulators:
            simulator.stop()


def _load_demo(fhir_store, extracts: Path, mappings: str) -> None:
    """The synthetic population (one generator, adapters/synth.py): Missouri members as CIMOR
    and CyberAccess extracts imported through the adapters, Kansas members as FHIR."""
    from fhir_gateway.adapters.synth import write_extracts
    from fhir_gateway.demo import demo_population
    from fhir_gateway.importer import import_extract

    bundles = demo_population()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("Loading demo population", total=len(bundles))
        for bundle in bundles:
            fhir_store.transaction(bundle)
            progress.advance(task)
    cimor, cyberaccess = write_extracts(DEMO_EXTRACT_MEMBERS, extracts)
    imported = [import_extract(fhir_store, "cimor", cimor, mappings=mappings),
                import_extract(fhir_store, "cyberaccess", cyberaccess, mappings=mappings)]
    console.print(f"Loaded the demo population: Kansas members ({len(bundles)} bundles), and "
                  f"{sum(s.records for s in imported)} CIMOR/CyberAccess records of Missouri members")


def _demo_extracts_dir(store_url: str) -> Path:
    """Beside the SQLite file (so each demo store has its own), else in the user data dir."""
    if store_url.startswith("sqlite://"):
        db = Path(store_url.removeprefix("sqlite://"))
        return db.with_name(f"{db.stem}-demo-extracts")
    return Path(user_data_dir("fhir-gateway")) / "demo-extracts"


def _demo_lookups(settings: Settings, extracts: Path) -> list:
    """Serve the demo extracts as the CIMOR/CyberAccess lookups, unless real ones are set."""
    from fhir_gateway.adapters.cimor.simulator import Simulator as CimorSimulator
    from fhir_gateway.adapters.cyberaccess.simulator import Simulator as CyberAccessSimulator

    started = []
    for field, name, simulator in (("cimor_url", "cimor", CimorSimulator),
                                   ("cyberaccess_url", "cyberaccess", CyberAccessSimulator)):
        extract = extracts / f"{name}.xml"
        if not getattr(settings, field) and extract.is_file():
            started.append(simulator(extract))
            setattr(settings, field, started[-1].start())
            console.print(f"{name} lookups: simulated from {escape(str(extract))}")
    return started


@app.command()
def load(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="Bundle JSON, resource JSON or NDJSON")],
    store: StoreOption = "",
    quarantine: Annotated[Path | None, typer.Option(help="write failed records here (NDJSON)")] = None,
) -> None:
    """Load FHIR files (a Bulk Data export's NDJSON, Bundles, resources) into the store.

    References among the files resolve whatever their order; bad records are reported with
    their file and line (and quarantined), the rest stored."""
    from fhir_gateway.loader import load_paths, scan_size

    fhir_store = _open(_settings(ctx, store=store))
    with Progress(*Progress.get_default_columns()[:-1], BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("Scanning", total=scan_size(paths))

        def advance(phase: str, n: int) -> None:
            progress.update(task, advance=n, description="Scanning" if phase == "scan"
                            else "Loading")
        try:
            summary = load_paths(fhir_store, paths, advance, quarantine)
        except FhirError as exc:  # the store itself failed (unreachable, ...), not a record
            progress.stop()
            console.print(f"[red]error:[/red] {escape(str(exc))}; records stored before it "
                          "stay stored; loading again resumes (records with ids are updated "
                          "in place)")
            raise typer.Exit(2) from None
    for problem in summary.problems[:50]:
        console.print(f"[red]{escape(problem.file)}[/red] {problem.record}: {escape(problem.reason)}",
                      soft_wrap=True)
    if summary.failed > 50:
        console.print(f"... and {summary.failed - 50} more")
    if quarantine and summary.failed:
        console.print(f"Quarantined {summary.failed} record(s) in {quarantine}")
    console.print(f"{summary.files} file(s), {summary.records} records: {summary.created} "
                  f"created, {summary.updated} updated/unchanged, {summary.failed} failed")
    fhir_store.close()
    if summary.failed:
        raise typer.Exit(1)


@app.command("import")
def import_(
    ctx: typer.Context,
    system: Annotated[str, typer.Argument(help="cimor or cyberaccess")],
    paths: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="extract XML files")],
    store: StoreOption = "",
    quarantine: Annotated[Path | None, typer.Option(
        help="write rejected records here (NDJSON); default: <file>.quarantine.ndjson")] = None,
) -> None:
    """Import CIMOR or CyberAccess extracts; re-importing the same file changes nothing."""
    from fhir_gateway.importer import SYSTEMS, import_extract
    from fhir_gateway.quarantine import write_quarantine

    if system not in SYSTEMS:
        console.print(f"[red]error:[/red] unknown system '{escape(system)}': expected "
                      f"{' or '.join(SYSTEMS)}")
        raise typer.Exit(2)
    settings = _settings(ctx, store=store)
    fhir_store = _open(settings)
    failed = False
    for path in paths:
        with Progress(*Progress.get_default_columns()[:-1], console=console,
                      transient=True) as progress:
            task = progress.add_task(f"Importing {path.name}", total=None)
            summary = import_extract(fhir_store, system, path,
                                     lambda n: progress.advance(task, n),
                                     mappings=settings.mappings)
        console.print(f"{escape(str(path))}: {summary.records} records, {summary.created} created, "
                      f"{summary.updated} updated, {summary.unchanged} unchanged, "
                      f"{summary.quarantined} quarantined", soft_wrap=True)
        if summary.quarantine:
            target = quarantine or path.with_suffix(".quarantine.ndjson")
            write_quarantine(target, summary.quarantine)
            for row in summary.quarantine[:20]:
                console.print(f"  [yellow]quarantined[/yellow] line {row['line']} record "
                              f"{escape(row['record_id'])}: {escape(row['reason'])}", soft_wrap=True)
            console.print(f"  quarantine: {escape(str(target))}", soft_wrap=True)
        if summary.malformed:
            console.print(f"[red]error:[/red] {escape(str(path))} is not well-formed XML at "
                          f"{escape(summary.malformed)}; the records before it were imported",
                          soft_wrap=True)
            failed = True
    fhir_store.close()
    if failed:
        raise typer.Exit(1)


@app.command()
def eligibility(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="MO or KS; default: derived per member")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="evaluation date, YYYY-MM-DD")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", exists=True, dir_okay=False,
                                                    help="members as NDJSON, or a Bundle (.json); default: the store")] = None,
    out: Annotated[Path, typer.Option(help="report: .csv or .ndjson")] = Path("eligibility.csv"),
    store: StoreOption = "",
) -> None:
    """Evaluate Health Home eligibility for every member; write a CSV or NDJSON report."""
    import csv
    from datetime import date
    from functools import partial

    from fhir_gateway.formats import fhirjson
    from fhir_gateway.healthhome import batch
    from fhir_gateway.healthhome.eligibility import RuleFiles
    from fhir_gateway.healthhome.services import stored_members

    try:
        when = date.fromisoformat(as_of) if as_of else None
    except ValueError:
        console.print(f"[red]error:[/red] --as-of must be YYYY-MM-DD, not {escape(as_of)}")
        raise typer.Exit(2) from None

    def report(rows) -> int:
        count = 0
        with out.open("w", newline="") as fh, Progress(console=console, transient=True) as bar:
            task = bar.add_task("Evaluating members", total=None)
            writer = csv.DictWriter(fh, batch.COLUMNS) if out.suffix == ".csv" else None
            if writer:
                writer.writeheader()
            last = None
            for row in rows:
                if row["patient"] != last:
                    count, last = count + 1, row["patient"]
                    bar.advance(task)
                if writer:
                    writer.writerow(row)
                else:
                    fh.write(fhirjson.dumps(row).decode() + "\n")
        return count

    settings = _settings(ctx, store=store)
    files = RuleFiles.of(settings)
    rows_of = partial(batch.rows, state=state, as_of=when, files=files)
    if input_file is None:
        count = report(rows_of(stored_members(_open(settings), files)))
    elif input_file.suffix == ".json":
        try:
            count = report(rows_of(batch.members_from_bundle(input_file)))
        except ValueError as err:
            console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(2) from None
    else:
        try:
            count = report(batch.rows_from_ndjson(input_file, state, when, files=files))
        except batch.MembersInterleaved as err:
            console.print(f"{escape(str(input_file))} {escape(str(err))}: members' resources "
                          "are not together, so the file is grouped in memory")
            count = report(rows_of(batch.members_from_ndjson(input_file)))
    console.print(f"{count} member(s) evaluated; report: {escape(str(out))}")


@app.command("potential-enrollees")
def potential_enrollees(
    ctx: typer.Context,
    month: Annotated[str, typer.Option(help="the month of the lists, YYYY-MM")],
    claims: Annotated[Path, typer.Option(exists=True, readable=True,
                                         help="claims extract: .csv, .parquet, or FHIR .ndjson "
                                              "(Claim, ExplanationOfBenefit)")],
    members: Annotated[Path, typer.Option(exists=True, readable=True,
                                          help="member file: .csv, .parquet, or FHIR .ndjson "
                                               "(Patient, Coverage, EpisodeOfCare)")],
    out: Annotated[Path, typer.Option(file_okay=False, help="directory for the lists")],
    provider: Annotated[str | None, typer.Option(help="only this provider's list")] = None,
    engine: Annotated[str, typer.Option(help="duckdb (embedded) or spark (pyspark)")] = "duckdb",
    policy: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="attribution policy YAML; default: "
                                          "fhir_gateway/healthhome/potential_enrollees.yaml")] = None,
) -> None:
    """Monthly lists of potential Health Home enrollees from claims: per provider a CSV and
    a Group of the members who meet a program's rules, are not enrolled and are attributed
    to that provider."""
    from fhir_gateway.healthhome import potential_enrollees as pe
    from fhir_gateway.healthhome.eligibility import RuleFiles
    from fhir_gateway.healthhome.monthly_claims import month as parse_month
    from fhir_gateway.healthhome.sql_engines import ENGINES

    try:
        within = parse_month(month, "--month")
    except FhirError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    if engine not in ENGINES:
        console.print(f"[red]error:[/red] --engine must be {' or '.join(ENGINES)}, not "
                      f"{escape(engine)}")
        raise typer.Exit(2)
    settings = _settings(ctx)
    try:
        rules_policy = pe.Policy.load(policy or pe.POLICY)
        lists = pe.compute(claims, members, within, RuleFiles.of(settings), engine=engine,
                           policy=rules_policy, provider=provider)
    except ValueError as err:  # InputError, a bad policy, pyspark missing
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    written = pe.write(lists, out)
    counts = lists.counts
    console.print(f"{within.text}: {counts['claim_lines']} claim lines, {counts['members']} "
                  f"members, {counts['attributed']} attributed to a provider, "
                  f"{counts['enrolled']} of them already enrolled; "
                  f"{counts['potential_enrollees']} potential enrollees on "
                  f"{len(lists.providers)} provider list(s) in {escape(str(out))} "
                  f"({len(written)} files)", soft_wrap=True)
    for name, rows in lists.providers.items():
        console.print(f"  {escape(name)}: {len({r.member_id for r in rows})} member(s)",
                      soft_wrap=True)


@app.command()
def synth(
    members: Annotated[int, typer.Option(help="how many synthetic people")] = 100,
    out: Annotated[Path, typer.Option(file_okay=False, help="directory for the two extracts")] = Path("."),
    seed: Annotated[int, typer.Option()] = 1945,
) -> None:
    """Write consistent synthetic CIMOR and CyberAccess extracts for the same people."""
    from fhir_gateway.adapters.synth import write_extracts

    cimor, cyberaccess = write_extracts(members, out, seed)
    console.print(f"Wrote {escape(str(cimor))} and {escape(str(cyberaccess))} ({members} people)")


@app.command()
def reindex(ctx: typer.Context, store: StoreOption = "") -> None:
    """Rebuild the embedded store's search index from its resources (after the index rules
    or the schema version change); HAPI keeps its own index."""
    from fhir_gateway.store.sqlite import SQLiteStore

    url = _settings(ctx, store=store).store_url()
    try:
        if not url.startswith("sqlite://"):
            raise StoreURLError(f"reindex rebuilds the embedded store's index (sqlite:///path.db), "
                                f"not {url}'s: HAPI keeps its own ($reindex)")
        db = SQLiteStore(sqlite_path(url), reindexing=True)
    except StoreURLError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    with Progress(*Progress.get_default_columns(), console=console) as progress:
        task = progress.add_task("Reindexing", total=None)
        count = db.reindex(lambda done, total: progress.update(task, completed=done, total=total))
    db.close()
    console.print(f"Reindexed {count} resources in {escape(url)}")


@app.command()
def relabel(ctx: typer.Context, store: StoreOption = "") -> None:
    """Add the 42 CFR Part 2 labels to the substance use disorder resources stored before
    labelling on write (or before `privacy/part2.yaml` listed their codes); both stores."""
    from fhir_gateway.privacy.relabel import count, relabel as relabel_store

    fhir_store = _open(_settings(ctx, store=store))
    try:
        with Progress(*Progress.get_default_columns(), console=console) as progress:
            task = progress.add_task("Relabelling", total=count(fhir_store))
            changed = relabel_store(fhir_store, lambda n: progress.advance(task, n))
    except FhirError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}; resources labelled before it "
                      "stay labelled; running again resumes")
        raise typer.Exit(2) from None
    finally:
        fhir_store.close()
    console.print(f"Labelled {changed} resource(s) as 42 CFR Part 2 data")


@app.command()
def validate(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="FHIR resource JSON files")],
    profile: Annotated[str | None, typer.Option(help="validate against this profile URL")] = None,
) -> None:
    """Validate resources against R4 and the Health Home profiles; exit 1 on any error."""
    import orjson

    from fhir_gateway.formats import fhirjson
    from fhir_gateway.healthhome.checks import health_home_validator
    from fhir_gateway.validation.service import errors

    settings = _settings(ctx)
    validator = health_home_validator(settings.profiles, settings.validate_all)
    failed = 0
    for path in paths:
        try:
            resource = fhirjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            console.print(f"[red]✗ {escape(str(path))}[/red]: malformed JSON: {exc}", soft_wrap=True)
            failed += 1
            continue
        issues = validator.validate(resource, profile) if isinstance(resource, dict) else []
        bad = errors(issues) if isinstance(resource, dict) else ["not a JSON object"]
        failed += bool(bad)
        mark = "[red]✗[/red]" if bad else "[green]✓[/green]"
        console.print(f"{mark} {escape(str(path))}", soft_wrap=True)
        for issue in issues:
            where = ", ".join(issue.expression)
            console.print(f"    {issue.severity:<7} {escape(where)}: {escape(issue.diagnostics)}",
                          soft_wrap=True)
    console.print(f"{len(paths)} file(s), {failed} with errors")
    if failed:
        raise typer.Exit(1)


exchange = typer.Typer(help="Subscriptions out: the outbox of rest-hook notifications",
                       no_args_is_help=True)
app.add_typer(exchange, name="exchange")


def _engine(fhir_store, settings: Settings):
    """The delivery engine of the store, or exit 2 saying why it cannot start."""
    import sqlite3

    from fhir_gateway.exchange.engine import Engine

    try:
        engine = Engine(fhir_store, settings)
    except FhirError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except sqlite3.Error as exc:  # the outbox file is not one this gateway can use
        console.print(f"[red]error:[/red] Subscription outbox "
                      f"({escape(settings.exchange_db_path())} or the store file): {exc}")
        raise typer.Exit(2) from None
    if settings.audit:  # each notification sent is PHI leaving: on the audit trail
        from fhir_gateway.audit.deliveries import audit_deliveries
        from fhir_gateway.audit.trail import Trail

        audit_deliveries(engine, Trail(settings.audit_db_path()))
    return engine


@exchange.command("status")
def exchange_status(ctx: typer.Context, store: StoreOption = "") -> None:
    """Subscriptions, their status and last error; outbox rows per subscription and state."""
    settings = _settings(ctx, store=store)
    engine = _engine(_open(settings), settings)
    subscriptions, counts = engine.status()
    out = Console(soft_wrap=True)
    for sid, sub in sorted(subscriptions.items()):
        out.print(f"Subscription/{escape(sid)} {sub['status']}  {escape(str(sub['criteria']))} "
                  f"-> {escape(str(sub['endpoint']))}")
        if sub["error"]:
            out.print(f"  error: {escape(sub['error'])}")
    if not subscriptions:
        out.print("no Subscriptions")
    for sid, state, rows, error in counts:
        out.print(f"outbox Subscription/{escape(sid)} {state}: {rows}" +
                  (f"  last error: {escape(error)}" if error and state != "done" else ""))
    engine.stop()


@exchange.command("retry")
def exchange_retry(
    ctx: typer.Context,
    subscription: Annotated[str | None, typer.Option(help="only this Subscription's id")] = None,
    store: StoreOption = "",
) -> None:
    """Failed and waiting notifications due now; Subscriptions in error back to active."""
    settings = _settings(ctx, store=store)
    engine = _engine(_open(settings), settings)
    rows, revived = engine.retry(subscription)
    engine.stop()
    console.print(f"{rows} notification(s) due now; "
                  f"{len(revived)} Subscription(s) active again"
                  + (f": {', '.join(revived)}" if revived else ""))


@exchange.command("run")
def exchange_run(ctx: typer.Context, store: StoreOption = "") -> None:
    """One delivery pass (for cron, or when `serve --no-deliver` runs the API)."""
    settings = _settings(ctx, store=store)
    engine = _engine(_open(settings), settings)
    done = engine.run_once()
    engine.stop()
    console.print(f"{done.delivered} delivered, {done.failed} failed, {done.cancelled} "
                  f"cancelled" + (f", {done.queued} queued from the store's history"
                                  if engine.feed else ""))
    if done.failed:
        raise typer.Exit(1)


@exchange.command("simulator")
def exchange_simulator(
    port: Annotated[int, typer.Option(help="port to listen on")] = 9000,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
) -> None:
    """A partner endpoint that records notifications and can be told to fail (tests, demos)."""
    from fhir_gateway.exchange.simulator import Simulator

    simulator = Simulator(port, host)
    console.print(f"Subscriber simulator at {simulator.url} (control: {simulator.url}/_control/)")
    try:
        simulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
# -- SMART Backend Services clients -------------------------------------------------------

clients_app = typer.Typer(help="Register the Backend Services clients that may ask for "
                               "tokens (kept in the data dir, FHIR_GATEWAY_DATA_DIR)",
                          no_args_is_help=True)
app.add_typer(clients_app, name="clients")


@clients_app.command("add")
def clients_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="who the client is (shown in `clients list`)")],
    jwks: Annotated[str, typer.Option(help="the client's public keys: a JWKS file, or the "
                                           "https URL where the client publishes it")],
    scope: Annotated[str, typer.Option(help='the scopes it may be granted, e.g. '
                                            '"system/Patient.rs system/Condition.rs"')],
    organization: Annotated[str | None, typer.Option(
        help="Organization/ID: the Health Home, MCO or agency it acts for")] = None,
) -> None:
    """Register a client; print its id (alone on stdout, for scripts)."""
    import json

    from fhir_gateway.auth.clients import ClientError, Registry

    settings = _settings(ctx)
    try:
        if jwks.startswith(("https://", "http://")):
            client = Registry(settings.data_dir).add(name, scope, jwks_url=jwks,
                                                     organization=organization)
        else:
            try:
                document = json.loads(Path(jwks).read_text())
            except (OSError, ValueError) as err:
                raise ClientError(f"--jwks {jwks}: {err}") from None
            client = Registry(settings.data_dir).add(name, scope, jwks=document,
                                                     organization=organization)
    except ClientError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    print(client.id)


@clients_app.command("list")
def clients_list(ctx: typer.Context) -> None:
    """The registered clients: id, name, scopes, organization, keys."""
    from fhir_gateway.auth.clients import Registry

    for c in Registry(_settings(ctx).data_dir).all():
        keys = c.jwks_url or f"{len(c.jwks['keys'])} key(s)"
        print(f"{c.id}\t{c.name}\t{c.scope}\t{c.organization or '-'}\t{keys}\t{c.created}")


@clients_app.command("remove")
def clients_remove(ctx: typer.Context, client_id: Annotated[str, typer.Argument()]) -> None:
    """Remove a client: it gets no new token (tokens it holds expire within their lifetime)."""
    from fhir_gateway.auth.clients import Registry

    if not Registry(_settings(ctx).data_dir).remove(client_id):
        console.print(f"[red]error:[/red] no client {escape(client_id)}")
        raise typer.Exit(1)
    console.print(f"Removed client {escape(client_id)}")


@clients_app.command("keygen")
def clients_keygen(
    out: Annotated[Path, typer.Argument(help="writes OUT.pem (private) and OUT.jwks.json")],
    algorithm: Annotated[str, typer.Option(help="ES384 or RS384")] = "ES384",
) -> None:
    """Make a client key pair: the private key stays with the client, the JWKS is what
    `clients add --jwks` registers."""
    import json

    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from fhir_gateway.auth.keys import public_jwk, write_private_key

    if algorithm not in ("ES384", "RS384"):
        console.print("[red]error:[/red] --algorithm must be ES384 or RS384")
        raise typer.Exit(2)
    private = ec.generate_private_key(ec.SECP384R1()) if algorithm == "ES384" else \
        rsa.generate_private_key(public_exponent=65537, key_size=3072)
    write_private_key(Path(f"{out}.pem"), private)
    Path(f"{out}.jwks.json").write_text(json.dumps(
        {"keys": [public_jwk(private.public_key(), algorithm)]}, indent=2))
    console.print(f"Wrote {escape(str(out))}.pem (private: keep it) and "
                  f"{escape(str(out))}.jwks.json (public: register it)")


@app.command()
def token(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="the token endpoint; default: "
                                                 "http://HOST:PORT/auth/token of the settings")] = None,
    scope: Annotated[str, typer.Option(help="the scopes to ask for")] = "system/*.cruds",
    client_id: Annotated[str | None, typer.Option(help="a registered client's id; default: "
                                                       "the demo client")] = None,
    key: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                             help="that client's private key (PEM)")] = None,
) -> None:
    """Get an access token, as the demo client (`serve --demo` registers it) or as
    --client-id with its --key; print it alone."""
    from fhir_gateway.auth.demo import demo_client, request_token
    from fhir_gateway.http_client import Unreachable

    settings = _settings(ctx)
    target = url or f"http://{settings.host}:{settings.port}/auth/token"
    try:
        if (client_id is None) != (key is None):
            raise FileNotFoundError("--client-id and --key go together")
        if client_id is None:
            client_id, key = demo_client(settings.data_dir)
        answer = request_token(target, client_id, key, scope)
    except (FileNotFoundError, PermissionError, Unreachable, ValueError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    print(answer["access_token"])


if __name__ == "__main__":
    app()
