"""Extract files cut into byte ranges (`adapters/byte_ranges.py`): the same records as one parse of
the whole file, with the file's own line numbers, however the cuts fall."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fhir_gateway.adapters import byte_ranges, synth
from fhir_gateway.adapters.common import MalformedExtract, iter_records
from fhir_gateway.adapters.cimor import parser as cimor
from fhir_gateway.adapters.cyberaccess import parser as cyberaccess
from fhir_gateway.importer import prepare


def whole(fmt, path: Path) -> list[tuple]:
    """One parse of the whole file, as the parser did before byte ranges."""
    return [(r.record_id, r.raw, r.data, r.errors) for r in iter_records(fmt, str(path), "f")]


def start_lines(fmt, path: Path) -> list[int]:
    """The line of each record's start tag, counted in the file itself."""
    data = path.read_bytes()
    tag = re.compile(rb"<(?:\w+:)?" + fmt.record.encode() + rb"[\s>]")
    return [data.count(b"\n", 0, m.start()) + 1 for m in tag.finditer(data)]


def in_ranges(fmt, path: Path, size: int, monkeypatch) -> tuple[list[tuple], list[int]]:
    monkeypatch.setattr(byte_ranges, "RANGE_BYTES", size)
    records = list(byte_ranges.parse_file(fmt, path))
    return [(r.record_id, r.raw, r.data, r.errors) for r in records], [r.line for r in records]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, Path]:
    """Extracts long enough that the CyberAccess one runs past line 65,535."""
    return synth.write_extracts(900, tmp_path_factory.mktemp("big"))


@pytest.mark.parametrize("size", [1, 3_000, 200_000, 1 << 30])
def test_ranges_give_the_whole_files_records_with_its_line_numbers(big, size, monkeypatch):
    for fmt, path in ((cimor.FORMAT, big[0]), (cyberaccess.FORMAT, big[1])):
        records, lines = in_ranges(fmt, path, size, monkeypatch)
        assert records == whole(fmt, path)
        assert lines == start_lines(fmt, path)
    assert max(lines) > 65_535  # where libxml2 alone reports a neighbouring line


def test_a_big_file_is_cut_in_several_ranges_of_few_enough_lines(big):
    parts = list(byte_ranges.split(cyberaccess.FORMAT, big[1], 200_000))
    assert len(parts) > 5 and parts[-1].last and not any(p.last for p in parts[:-1])
    assert [p.start for p in parts[1:]] == [p.end for p in parts[:-1]]
    text = big[1].read_bytes()
    for part in parts[1:]:
        assert text[part.start:].lstrip().startswith(b"<Participant")
        assert text.count(b"\n", part.start, part.end) < byte_ranges.MAX_LINES


def test_a_cut_inside_a_comment_changes_nothing(tmp_path, monkeypatch):
    """A record line inside a comment looks like a place to cut: the range that ends there
    does not parse alone, and the file is parsed on from that range's start in one go."""
    path = synth.write_extracts(6, tmp_path)[0]
    text = path.read_text()
    starts = [m.start() for m in re.finditer(r"\n\s*<Consumer[\s>]", text)]
    # records 2 and 3 commented out, each start tag on a line of its own
    text = (text[:starts[1]] + "\n<!--" + text[starts[1]:starts[3]] + "\n-->"
            + text[starts[3]:])
    path.write_text(text)
    records, lines = in_ranges(cimor.FORMAT, path, 1, monkeypatch)
    assert records == whole(cimor.FORMAT, path) and len(records) == 4
    assert lines == [n for n in start_lines(cimor.FORMAT, path) if n not in _commented(text)]


def _commented(text: str) -> set[int]:
    inside, out = False, set()
    for number, line in enumerate(text.splitlines(), 1):
        if "<!--" in line:
            inside = True
        if inside:
            out.add(number)
        if "-->" in line:
            inside = False
    return out


def test_a_record_line_in_a_comment_before_the_first_record_is_no_head(tmp_path,
                                                                        monkeypatch):
    path = synth.write_extracts(4, tmp_path)[0]
    text = path.read_text()
    first = re.search(r"\n\s*<Consumer[\s>]", text).start()
    text = text[:first] + "\n<!-- an old record:\n  <Consumer>\n-->" + text[first:]
    path.write_text(text)
    records, lines = in_ranges(cimor.FORMAT, path, 1, monkeypatch)
    assert records == whole(cimor.FORMAT, path) and len(records) == 4
    assert lines == [n for n in start_lines(cimor.FORMAT, path) if n not in _commented(text)]


def test_prefixed_names_are_cut_and_closed_as_the_file_spells_them(tmp_path, monkeypatch):
    path = synth.write_extracts(5, tmp_path)[1]
    text = path.read_text()
    text = re.sub(r"<(/?)([A-Z]\w*)", r"<\1ca:\2", text)
    text = text.replace('xmlns="', 'xmlns:ca="')
    path.write_text(text)
    assert len(list(byte_ranges.split(cyberaccess.FORMAT, path, 1))) == 5
    records, lines = in_ranges(cyberaccess.FORMAT, path, 1, monkeypatch)
    assert records == whole(cyberaccess.FORMAT, path) and len(records) == 5
    assert lines == start_lines(cyberaccess.FORMAT, path)


def test_a_file_broken_in_a_middle_range_fails_as_the_whole_file_does(tmp_path, monkeypatch):
    path = synth.write_extracts(8, tmp_path)[1]
    text = path.read_text()
    cut = [m.start() for m in re.finditer(r"<Participant", text)][4]
    path.write_text(text[:cut] + "<Participant><DCN>1</DC\n" + text[cut:])
    with pytest.raises(MalformedExtract) as expected:
        list(iter_records(cyberaccess.FORMAT, str(path), str(path)))
    monkeypatch.setattr(byte_ranges, "RANGE_BYTES", 1)
    got = []
    with pytest.raises(MalformedExtract) as raised:
        for record in byte_ranges.parse_file(cyberaccess.FORMAT, path):
            got.append(record.record_id)
    assert len(got) == 4
    assert (raised.value.line, raised.value.column, raised.value.message) == (
        expected.value.line, expected.value.column, expected.value.message)


def test_prepared_records_name_their_lines_past_65535(big):
    lines = [p.line for group in prepare("cyberaccess", big[1], None) for p in group.records]
    assert lines == start_lines(cyberaccess.FORMAT, big[1])
