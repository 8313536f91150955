#!/usr/bin/env python3
"""Build the Health Home implementation guide (a FHIR NPM package) and check its examples.

    .venv/bin/python scripts/build_ig.py            # build profiles/package/ from profiles/src/
    .venv/bin/python scripts/build_ig.py --check    # build, then $validate every example with HAPI
    .venv/bin/python scripts/build_ig.py --check --no-build   # only the check
    .venv/bin/python scripts/build_ig.py --hapi-url http://127.0.0.1:8080/fhir --check

Sources and output (see profiles/README.md):
- ``profiles/src/`` holds what people edit: ``package.json`` and one conformance resource per
  file (``<Type>-<id>.json``), StructureDefinitions with a ``differential`` only.
- ``profiles/package/`` is generated, all of it: the sources, each StructureDefinition with
  the ``snapshot`` HAPI generates, the ImplementationGuide resource and ``.index.json``.
  Stale files there are removed, so never edit the package by hand.
- ``profiles/examples/`` holds example instances and ``manifest.json`` (expected verdicts).

Snapshots come from HAPI's ``POST StructureDefinition/$snapshot`` (Parameters ``definition``).
Extensions go first and each finished StructureDefinition is PUT to the server, so a profile
that uses an extension gets the extension's own definition in its snapshot.

Without ``--hapi-url`` the script starts docker/hapi-local itself (a free port, run and data
directories in a temp dir) and stops it at the end; ``--check`` then restarts it with the built
package installed (HAPI_IG_DIR=profiles), as a server started for real would have it. With
``--hapi-url`` nothing is started or stopped, and that server is written to: the build PUTs
the StructureDefinitions it generates, the check PUTs every package resource (except the
ImplementationGuide, whose example references HAPI's referential integrity refuses) first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
SRC = PROFILES / "src"
PACKAGE = PROFILES / "package"
EXAMPLES = PROFILES / "examples"
HAPI_RUN = ROOT / "docker" / "hapi-local" / "run"

FHIR_JSON = "application/fhir+json"
IG_ID = "health-home-gateway-ig"
CORE_SD = "http://hl7.org/fhir/StructureDefinition/"
ERROR_SEVERITIES = ("error", "fatal")


# --------------------------------------------------------------------------- files


def read_json(path: Path) -> dict | list:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: dict | list) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def file_name(resource: dict) -> str:
    return f"{resource['resourceType']}-{resource['id']}.json"


def load_sources() -> tuple[dict, list[dict]]:
    """package.json and the conformance resources of profiles/src/, checked for naming."""
    package = read_json(SRC / "package.json")
    resources = []
    for path in sorted(SRC.glob("*.json")):
        if path.name == "package.json":
            continue
        resource = read_json(path)
        if path.name != file_name(resource):
            sys.exit(f"{path}: file name should be {file_name(resource)}")
        expected_url = f"{package['canonical']}/{resource['resourceType']}/{resource['id']}"
        if resource.get("url") != expected_url:
            sys.exit(f"{path}: url should be {expected_url}")
        if resource.get("version") != package["version"]:
            sys.exit(f"{path}: version should be the package version {package['version']}")
        resources.append(resource)
    return package, resources


def is_extension(resource: dict) -> bool:
    return resource["resourceType"] == "StructureDefinition" and resource["type"] == "Extension"


def load_manifest() -> list[dict]:
    manifest = read_json(EXAMPLES / "manifest.json")
    listed = {entry["file"] for entry in manifest}
    on_disk = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.glob("*/*.json")}
    if listed != on_disk:
        sys.exit(f"examples/manifest.json and the example files differ: "
                 f"not listed {sorted(on_disk - listed)}, missing {sorted(listed - on_disk)}")
    return manifest


# --------------------------------------------------------------------------- HAPI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedHapi:
    """docker/hapi-local on a free port, pid/log/data in a temp dir; always stopped on exit."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.env = {**os.environ, "HAPI_PORT": str(self.port),
                    "HAPI_RUN_DIR": str(workdir / "run")}
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        self.running = False

    def start(self, ig_dir: Path, data_dir: Path) -> None:
        env = {**self.env, "HAPI_IG_DIR": str(ig_dir), "HAPI_DATA_DIR": str(data_dir)}
        print(f"Starting HAPI on port {self.port} (IG dir {ig_dir}) ...", flush=True)
        self.running = True
        done = subprocess.run([str(HAPI_RUN), "start"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit("HAPI did not start")
        print(done.stdout.strip().splitlines()[-1], flush=True)

    def stop(self) -> None:
        if self.running:
            subprocess.run([str(HAPI_RUN), "stop"], env=self.env, capture_output=True, text=True)
            self.running = False

    def log_excerpt(self, lines: int = 15) -> str:
        """What HAPI said about installing the package, then the last lines of its log."""
        log = self.workdir / "run" / "hapi.log"
        if not log.exists():
            return ""
        text = log.read_text(errors="replace").splitlines()
        install = [line for line in text if "PackageInstaller" in line or "PackageLoader" in line]
        return "\n".join(install[-60:] + ["..."] + text[-lines:])


def client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url.rstrip("/"), timeout=600,
                        headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})


def outcome_errors(body: dict) -> list[str]:
    if body.get("resourceType") != "OperationOutcome":
        return []
    return [i.get("diagnostics", "") for i in body.get("issue", [])
            if i.get("severity") in ERROR_SEVERITIES]


def put(http: httpx.Client, resource: dict) -> None:
    response = http.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
    if response.status_code >= 300:
        raise SystemExit(f"PUT {resource['resourceType']}/{resource['id']} failed: "
                         f"{response.status_code} {response.text[:2000]}")


def snapshot(http: httpx.Client, definition: dict) -> dict:
    """POST StructureDefinition/$snapshot; the definition with HAPI's snapshot and mappings."""
    params = {"resourceType": "Parameters",
              "parameter": [{"name": "definition", "resource": definition}]}
    response = http.post("/StructureDefinition/$snapshot", json=params)
    body = response.json()
    if response.status_code >= 300 or body.get("resourceType") != "StructureDefinition":
        raise SystemExit(f"$snapshot {definition['id']} failed: {response.status_code} "
                         f"{outcome_errors(body) or response.text[:2000]}")
    snap = body.get("snapshot", {}).get("element", [])
    ids = {e["id"] for e in snap}
    missing = [e["id"] for e in definition["differential"]["element"] if e["id"] not in ids]
    if missing:
        raise SystemExit(f"$snapshot {definition['id']}: differential elements missing from "
                         f"the snapshot (wrong id or path?): {missing}")
    built = dict(definition)
    if body.get("mapping"):  # the snapshot's element mappings refer to these identities
        built["mapping"] = body["mapping"]
    built["snapshot"] = body["snapshot"]
    # keep the key order of a StructureDefinition: snapshot before differential
    differential = built.pop("differential")
    built["differential"] = differential
    return built


def build_snapshots(http: httpx.Client, resources: list[dict]) -> list[dict]:
    """Extensions first, each one stored on the server before the profiles that use it."""
    ordered = sorted(resources, key=lambda r: (r["resourceType"] != "StructureDefinition",
                                               not is_extension(r), r["id"]))
    built = {}
    for resource in ordered:
        if resource["resourceType"] != "StructureDefinition":
            built[resource["id"], resource["resourceType"]] = resource
            continue
        with_snapshot = snapshot(http, resource)
        put(http, with_snapshot)
        print(f"  snapshot {resource['id']}: {len(with_snapshot['snapshot']['element'])} elements",
              flush=True)
        built[resource["id"], resource["resourceType"]] = with_snapshot
    return [built[r["id"], r["resourceType"]] for r in resources]


# --------------------------------------------------------------------------- package


def implementation_guide(package: dict, resources: list[dict], manifest: list[dict]) -> dict:
    groups = [
        ("profiles", "Profiles", "Constraints on FHIR R4 core resources for Health Homes."),
        ("extensions", "Extensions", "Extension definitions used by the profiles."),
        ("terminology", "Terminology", "Code systems, value sets and the ICD-10-CM concept map."),
        ("examples", "Examples", "Valid example instances (profiles/examples/valid/)."),
        ("invalid-examples", "Invalid examples (negative tests)",
         "Instances that are invalid BY DESIGN, each for one reason listed in "
         "profiles/examples/manifest.json; validators must reject them."),
    ]
    entries = []
    for r in resources:
        group = ("extensions" if is_extension(r) else
                 "profiles" if r["resourceType"] == "StructureDefinition" else "terminology")
        entries.append({"reference": {"reference": f"{r['resourceType']}/{r['id']}"},
                        "name": r.get("title") or r["name"],
                        "description": r["description"],
                        "exampleBoolean": False, "groupingId": group})
    for entry in manifest:
        example = read_json(EXAMPLES / entry["file"])
        entries.append({
            "reference": {"reference": f"{example['resourceType']}/{example['id']}"},
            "name": entry["file"],
            "description": entry.get("description", ""),
            "exampleCanonical": entry["profile"],
            "groupingId": "examples" if entry["valid"] else "invalid-examples"})
    return {
        "resourceType": "ImplementationGuide",
        "id": IG_ID,
        "url": f"{package['canonical']}/ImplementationGuide/{IG_ID}",
        "version": package["version"],
        "name": "HealthHomeGatewayIG",
        "title": package["title"],
        "status": "active",
        "experimental": False,
        "publisher": package.get("author", ""),
        "description": package["description"],
        "jurisdiction": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": "US"}]}],
        "packageId": package["name"],
        "license": package.get("license", "CC0-1.0"),
        "fhirVersion": package["fhirVersions"],
        "definition": {
            "grouping": [{"id": gid, "name": name, "description": desc}
                         for gid, name, desc in groups],
            "resource": entries,
        },
    }


def index_entry(resource: dict) -> dict:
    entry = {"filename": file_name(resource), "resourceType": resource["resourceType"],
             "id": resource["id"]}
    for key in ("url", "version", "kind", "type"):
        if key in resource:
            entry[key] = resource[key]
    return entry


def write_package(package: dict, resources: list[dict]) -> None:
    PACKAGE.mkdir(parents=True, exist_ok=True)
    keep = {"package.json", ".index.json"} | {file_name(r) for r in resources}
    for stale in PACKAGE.iterdir():
        if stale.name not in keep:
            stale.unlink() if stale.is_file() else shutil.rmtree(stale)
    write_json(PACKAGE / "package.json", package)
    for resource in resources:
        write_json(PACKAGE / file_name(resource), resource)
    write_json(PACKAGE / ".index.json",
               {"index-version": 1, "files": [index_entry(r) for r in resources]})


def build(http: httpx.Client) -> None:
    package, sources = load_sources()
    manifest = load_manifest()
    print(f"Generating {sum(r['resourceType'] == 'StructureDefinition' for r in sources)} "
          f"snapshots with HAPI ...", flush=True)
    resources = build_snapshots(http, sources)
    resources.append(implementation_guide(package, resources, manifest))
    write_package(package, resources)
    print(f"Wrote {len(resources)} resources + package.json + .index.json to "
          f"{PACKAGE.relative_to(ROOT)}/", flush=True)


# --------------------------------------------------------------------------- check


def issue_path(issue: dict) -> list[str]:
    return list(issue.get("expression", [])) + [loc for loc in issue.get("location", [])
                                                 if not loc.startswith("Line")]


def message_id(issue: dict) -> str:
    """HAPI's message id (details.coding, system java-core-messageId): stable across wording."""
    codings = issue.get("details", {}).get("coding", [])
    return codings[0].get("code", "") if codings else ""


def matches(issue: dict, expected: dict) -> bool:
    return (expected["path"] in issue_path(issue)
            and expected["message"].lower() in issue.get("diagnostics", "").lower())


def validate(http: httpx.Client, example: dict, profile: str) -> list[dict]:
    response = http.post(f"/{example['resourceType']}/$validate", params={"profile": profile},
                         json=example)
    body = response.json()
    if body.get("resourceType") != "OperationOutcome":
        raise SystemExit(f"$validate returned {response.status_code}: {response.text[:1000]}")
    return body.get("issue", [])


def check_installed(http: httpx.Client, resources: list[dict]) -> None:
    """Every package resource must be on the server (by canonical URL) before validating."""
    missing = []
    for r in resources:
        if r["resourceType"] == "ImplementationGuide":
            continue
        bundle = http.get(f"/{r['resourceType']}", params={"url": r["url"], "_summary": "count"})
        if bundle.json().get("total", 0) < 1:
            missing.append(r["url"])
    if missing:
        raise SystemExit(f"HAPI does not have these package resources: {missing}")


def check(http: httpx.Client) -> bool:
    manifest = load_manifest()
    package = read_json(PACKAGE / "package.json")
    resources = [read_json(PACKAGE / f["filename"])
                 for f in read_json(PACKAGE / ".index.json")["files"]]
    check_installed(http, resources)
    profiles = {r["url"] for r in resources
                if r["resourceType"] == "StructureDefinition" and not is_extension(r)}
    rows, disagreements = [], 0
    for entry in manifest:
        example = read_json(EXAMPLES / entry["file"])
        problems = []
        if entry["profile"] not in profiles:
            problems.append(f"unknown profile {entry['profile']}")
        if entry["profile"] not in example.get("meta", {}).get("profile", []):
            problems.append("meta.profile does not name the manifest's profile")
        if entry["valid"] == bool(entry.get("errors")):
            problems.append("manifest: valid examples list no errors, invalid ones at least one")
        issues = validate(http, example, entry["profile"])
        errors = [i for i in issues if i.get("severity") in ERROR_SEVERITIES]
        hapi_valid = not errors
        if hapi_valid != entry["valid"]:
            problems.append("verdict differs")
        for expected in entry.get("errors", []):
            if not any(matches(i, expected) for i in errors):
                problems.append(f"expected error not reported: {expected['path']} "
                                f"~ '{expected['message']}'")
        for issue in errors:  # one clear reason: every HAPI error is an expected one
            if not any(matches(issue, e) for e in entry.get("errors", [])):
                problems.append(f"unexpected error: {issue_path(issue)[:1]} "
                                f"{issue.get('diagnostics', '')[:160]}")
        warnings = sum(i.get("severity") == "warning" for i in issues)
        disagreements += bool(problems)
        rows.append((entry["file"], "valid" if entry["valid"] else "invalid",
                     "valid" if hapi_valid else "invalid", "ok" if not problems else "DISAGREE",
                     [f"{i['severity']}: {issue_path(i)[:1]} [{message_id(i)}] "
                      f"{i.get('diagnostics', '')}" for i in errors], warnings, problems))
    print_table(rows)
    print(f"\n{len(rows)} examples, {len(rows) - disagreements} agree with the manifest, "
          f"{disagreements} disagree ({package['name']}#{package['version']})")
    return disagreements == 0


def print_table(rows: list[tuple]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'file':<{width}}  expected  HAPI     result    issues")
    print("-" * (width + 40))
    for file, expected, verdict, result, errors, warnings, problems in rows:
        note = f"{len(errors)} error(s), {warnings} warning(s)"
        print(f"{file:<{width}}  {expected:<8}  {verdict:<7}  {result:<8}  {note}")
        for text in errors:
            print(f"{'':<{width}}    {text[:220]}")
        for text in problems:
            print(f"{'':<{width}}    !! {text}")


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hapi-url", help="use this running HAPI server (e.g. "
                        "http://127.0.0.1:8080/fhir) instead of starting docker/hapi-local")
    parser.add_argument("--check", action="store_true",
                        help="validate every example with HAPI $validate against the manifest")
    parser.add_argument("--no-build", action="store_true",
                        help="skip the build (use the package as it is)")
    args = parser.parse_args()

    if args.hapi_url:
        with client(args.hapi_url) as http:
            if not args.no_build:
                build(http)
            if args.check:
                # not the ImplementationGuide: it references the examples, which are not
                # stored, and HAPI refuses references to missing resources on write
                for f in read_json(PACKAGE / ".index.json")["files"]:
                    if f["resourceType"] != "ImplementationGuide":
                        put(http, read_json(PACKAGE / f["filename"]))
                return 0 if check(http) else 1
        return 0

    with tempfile.TemporaryDirectory(prefix="build-ig-") as tmp:
        hapi = ManagedHapi(Path(tmp))
        try:
            if not args.no_build:
                empty = Path(tmp) / "no-package"
                empty.mkdir()
                hapi.start(empty, Path(tmp) / "data-build")
                with client(hapi.url) as http:
                    build(http)
                hapi.stop()
            if args.check:
                hapi.start(PROFILES, Path(tmp) / "data-check")
                with client(hapi.url) as http:
                    return 0 if check(http) else 1
        except BaseException:
            if hapi.running and (excerpt := hapi.log_excerpt()):
                print(f"---- HAPI log (package installation, last lines) ----\n{excerpt}",
                      file=sys.stderr)
            raise
        finally:
            with contextlib.suppress(Exception):
                hapi.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
