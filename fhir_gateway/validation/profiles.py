"""The conformance resources of an Implementation Guide, indexed for the profile validator.

An IG ships as a FHIR NPM package: a folder with `package.json` and one JSON file per
resource. The validator needs StructureDefinitions (profiles, extensions), ValueSets and
CodeSystems by canonical URL, and ValueSet expansions as plain sets to test codes against.
Loading reads and indexes the files once (a few ms for a small IG) so it can run at gateway
start; expansions and compiled profiles are computed on first use and cached here, so their
lifetime is the package's.

Expansion is deliberately local: `compose.include` with explicit `concept` lists, whole
CodeSystems of the package that are `content: complete`, other ValueSets, and `exclude`.
Anything that needs a terminology server (filters, external code systems without a list)
makes the set unknown (`None`), and the validator then skips the binding rather than guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

Codes = frozenset[tuple[str, str]]

_INDEXED = ("StructureDefinition", "ValueSet", "CodeSystem")


class Conformance:
    """StructureDefinitions, ValueSets and CodeSystems of one package, by canonical URL."""

    def __init__(self, resources: Iterable[dict], canonical: str | None = None,
                 name: str | None = None, version: str | None = None):
        self.canonical = canonical
        self.name = name
        self.version = version
        self._by_type: dict[str, dict[str, dict]] = {t: {} for t in _INDEXED}
        self.resources: list[dict] = []
        self._expansions: dict[str, Codes | None] = {}
        # Per-package caches owned by other modules (e.g. compiled profiles), so that
        # their lifetime follows the package: a reloaded package starts with fresh caches.
        self.memo: dict[str, dict[Any, Any]] = {}
        for resource in resources:
            self.add(resource)

    @classmethod
    def load(cls, path: str | Path) -> Conformance:
        """Read a package folder (the one holding `package.json`) and every `*.json` in it.

        `package.json`, `.index.json` and other non-resource JSON are ignored; subfolders
        (`example/`, `other/`) are not read: in the NPM package layout they are not the IG's
        conformance resources.
        """
        folder = Path(path)
        if not (folder / "package.json").is_file() and (folder / "package").is_dir():
            folder = folder / "package"  # a package tarball's layout, unpacked
        manifest = orjson.loads((folder / "package.json").read_bytes())
        resources = []
        for file in sorted(folder.glob("*.json")):
            data = orjson.loads(file.read_bytes())
            if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
                resources.append(data)
        return cls(resources, manifest.get("canonical"), manifest.get("name"),
                   manifest.get("version"))

    def add(self, resource: dict) -> None:
        """Index one resource by `url` and `url|version` (later additions win)."""
        self.resources.append(resource)
        index = self._by_type.get(resource.get("resourceType"))
        url = resource.get("url")
        if index is None or not isinstance(url, str):
            return
        index[url] = resource
        if resource.get("version"):
            index[f"{url}|{resource['version']}"] = resource
        self._expansions.clear()
        self.memo.clear()

    # -- look-ups -------------------------------------------------------------------------

    def _get(self, resource_type: str, url: str | None) -> dict | None:
        if not url:
            return None
        index = self._by_type[resource_type]
        return index.get(url) or index.get(url.split("|", 1)[0])

    def structure_definition(self, url: str | None) -> dict | None:
        return self._get("StructureDefinition", url)

    def value_set(self, url: str | None) -> dict | None:
        return self._get("ValueSet", url)

    def code_system(self, url: str | None) -> dict | None:
        return self._get("CodeSystem", url)

    def structure_definitions(self) -> list[dict]:
        return _unique(self._by_type["StructureDefinition"].values())

    def profiles_for_type(self, resource_type: str) -> list[str]:
        """Canonical URLs of the package's constraint profiles on `resource_type`."""
        return [sd["url"] for sd in self.structure_definitions()
                if sd.get("type") == resource_type and sd.get("derivation") == "constraint"
                and sd.get("kind") == "resource" and resource_type != "Extension"]

    def extensions(self) -> list[str]:
        return [sd["url"] for sd in self.structure_definitions() if sd.get("type") == "Extension"
                and sd.get("derivation") == "constraint"]

    # -- terminology ----------------------------------------------------------------------

    def value_set_codes(self, url: str | None) -> Codes | None:
        """The (system, code) pairs of a ValueSet, or None when it cannot be expanded here."""
        if not url:
            return None
        if url not in self._expansions:
            # computed in full before it is stored: a request on another thread never sees
            # a half-done expansion (at worst, two threads compute the same set)
            self._expansions[url] = self._expand(url, frozenset())
        return self._expansions[url]

    def _expand(self, url: str, importing: frozenset[str]) -> Codes | None:
        """Expand one ValueSet; `importing` are the ValueSets whose imports led here."""
        if url in self._expansions:
            return self._expansions[url]
        value_set = self.value_set(url)
        if value_set is None or url in importing:
            return None  # unknown, or a cycle of imports: cannot be expanded
        importing = importing | {url}
        compose = value_set.get("compose")
        if not compose:
            contains = (value_set.get("expansion") or {}).get("contains")
            return frozenset(_contains_codes(contains)) if contains else None
        included: set[tuple[str, str]] = set()
        for part in compose.get("include") or []:
            codes = self._include(part, importing)
            if codes is None:
                return None
            included |= codes
        for part in compose.get("exclude") or []:
            codes = self._include(part, importing)
            if codes is None:
                return None  # cannot tell what is excluded: the set is unknown
            included -= codes
        return frozenset(included)

    def _include(self, part: dict, importing: frozenset[str]) -> set[tuple[str, str]] | None:
        """One include/exclude: the intersection of its system part and its value sets."""
        if part.get("filter"):
            return None
        sets: list[set[tuple[str, str]]] = []
        system = part.get("system")
        if system:
            if part.get("concept"):
                sets.append({(system, c["code"]) for c in part["concept"] if "code" in c})
            else:
                codes = self.code_system_codes(system)
                if codes is None:
                    return None
                sets.append(set(codes))
        for vs_url in part.get("valueSet") or []:
            codes = self._expand(vs_url, importing)
            if codes is None:
                return None
            sets.append(set(codes))
        if not sets:
            return set()
        result = sets[0]
        for other in sets[1:]:
            result &= other
        return result

    def code_system_codes(self, url: str) -> Codes | None:
        """All codes of a package CodeSystem that claims to be complete, else None."""
        cache = self.memo.setdefault("code-systems", {})
        if url not in cache:
            code_system = self.code_system(url)
            if code_system is None or code_system.get("content") != "complete":
                cache[url] = None
            else:
                system = code_system["url"]
                cache[url] = frozenset((system, code)
                                       for code in _concept_codes(code_system.get("concept")))
        return cache[url]


def _concept_codes(concepts: list | None) -> Iterable[str]:
    for concept in concepts or []:
        if "code" in concept:
            yield concept["code"]
        yield from _concept_codes(concept.get("concept"))


def _contains_codes(contains: list | None) -> Iterable[tuple[str, str]]:
    for item in contains or []:
        if "code" in item and "system" in item and not item.get("abstract"):
            yield item["system"], item["code"]
        yield from _contains_codes(item.get("contains"))


def _unique(resources: Iterable[dict]) -> list[dict]:
    seen, out = set(), []
    for resource in resources:
        if id(resource) not in seen:
            seen.add(id(resource))
            out.append(resource)
    return out
