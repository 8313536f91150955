"""Cut an extract file into byte ranges that parse on their own, for several processes at once.

Why: parsing and mapping a record is pure CPU work, one core's worth per process; a big
extract goes through faster with each core when each process takes byte ranges of the file.
Parsed alone, a range also keeps its line numbers right (see MAX_LINES).

A byte range is a run of whole lines that starts on a line whose first tag opens a record. To be
parsed alone it is preceded by the file's head (the prolog and the root start tag, up to the
first record's line) and, unless it is the file's last, followed by the root end tag. Line
numbers stay those of the file (`line_offset`), and so does every column, since byte ranges start
at line starts.

Cutting looks at bytes, not at XML, so a cut can fall where the parser would not be between
records (inside a comment or CDATA that holds a record's start tag on a line of its own, or
inside a record that is not well-formed). Such a range does not parse alone -- its end
leaves something open before the root end tag -- so `parse_range` raises `MalformedExtract`
for it, and the caller parses the file from that range's start on in one go (`rest`), which
is exactly what a parse of the whole file would do from there. A range that does parse
alone ends with every element, comment and section closed, so the next one starts where
the whole-file parse would be too: between records, directly inside the root element.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from lxml import etree

from fhir_gateway.adapters.common import ExtractFormat, MalformedExtract, SourceRecord, iter_records

RANGE_BYTES = 1 << 20  # about 400 CyberAccess or 1,000 CIMOR records
#: libxml2 keeps an element's line in 16 bits: past line 65,535 lxml reports a nearby line
#: instead. A range is parsed alone and its lines shifted, so byte ranges stay below that.
MAX_LINES = 50_000
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ByteRange:
    path: str
    start: int               # byte offset in the file (a line start)
    end: int | None          # byte offset; None: to the end of the file
    line_offset: int         # file line = line in the parsed text + line_offset
    head: bytes              # prolog and root start tag; b"" for the file's first range
    tail: bytes              # the root end tag; b"" for the file's last range

    @property
    def last(self) -> bool:
        return self.end is None

    def rest(self) -> ByteRange:
        """From this range's start to the end of the file, in one piece."""
        return replace(self, end=None, tail=b"")


def split(fmt: ExtractFormat, path: str | Path, size: int | None = None) -> Iterator[ByteRange]:
    """The file's byte ranges, in order, each about `size` bytes (RANGE_BYTES); the file is
    read once."""
    path, size = str(path), size or RANGE_BYTES
    pattern = re.compile(rb"\n[ \t]*<(?:[A-Za-z_][\w.-]*:)?" + re.escape(fmt.record.encode())
                         + rb"[\s>/]")
    with open(path, "rb") as fh:
        head, tail = _head(fh, pattern)
        if head is None:  # no record on a line of its own after a plain head: one range
            yield ByteRange(path, 0, None, 0, b"", b"")
            return
        shift = head.count(b"\n")  # lines the head puts before a later range's own

        def cut(start: int, end: int | None, lines_before: int) -> ByteRange:
            if start == 0:
                return ByteRange(path, 0, end, 0, b"", tail if end is not None else b"")
            return ByteRange(path, start, end, lines_before - shift, head,
                         tail if end is not None else b"")

        fh.seek(0)
        start = lines_before = 0  # the open range: its offset, the newlines before it
        buf, buf_start, buf_lines = b"", 0, 0  # unscanned bytes, their offset, newlines before
        while block := fh.read(_BLOCK):
            buf += block
            while (at := _target(buf, buf_start, buf_lines,
                                 start + max(size, len(head) + 1 if start == 0 else 0),
                                 lines_before + MAX_LINES)) is not None:  # a range has a record
                match = pattern.search(buf, at)
                if match is None:
                    break
                end = match.start() + 1
                lines = buf_lines + buf.count(b"\n", 0, end)
                yield cut(start, buf_start + end, lines_before)
                start, lines_before = buf_start + end, lines
                buf, buf_start, buf_lines = buf[end:], start, lines
            keep = max(0, len(buf) - _OVERLAP)  # a record line the block boundary cut in two
            buf_lines += buf.count(b"\n", 0, keep)
            buf, buf_start = buf[keep:], buf_start + keep
        yield cut(start, None, lines_before)


_OVERLAP = 256


def _target(buf: bytes, buf_start: int, buf_lines: int, size_end: int, line_end: int
            ) -> int | None:
    """Where in `buf` to look for the next cut: the newline before byte `size_end`, or
    newline number `line_end` of the file if that comes first; None: not in `buf` yet."""
    at = max(0, size_end - 1 - buf_start)
    missing = line_end - buf_lines  # newlines to pass before the line limit
    if buf.count(b"\n", 0, min(at, len(buf))) >= missing:  # the line limit comes first
        at = _newline(buf, missing)
    return at if at < len(buf) else None


def _newline(buf: bytes, n: int) -> int:
    """The offset of the n-th newline of `buf` (0 if n < 1), counted a block at a time."""
    if n < 1:
        return 0
    start = 0
    while (found := buf.count(b"\n", start, start + 65536)) < n:
        n, start = n - found, start + 65536
    position = start - 1
    for _ in range(n):
        position = buf.index(b"\n", position + 1)
    return position


def _head(fh, pattern: re.Pattern) -> tuple[bytes | None, bytes]:
    """(the file up to its first record line, the root end tag), or (None, b"") when the
    file does not start with a head that holds the root start tag and no record."""
    data = b""
    while chunk := fh.read(64 * 1024):
        data += chunk
        match = pattern.search(data)
        if match:
            head = data[:match.start() + 1]
            root = _root_name(head) if head.count(b"\n") < 1000 else None
            return (head, f"</{root}>\n".encode()) if root else (None, b"")
        if len(data) > _BLOCK:
            break
    return None, b""


def _root_name(head: bytes) -> str | None:
    """The root element's name as the head spells it (prefix:local or local); None unless
    the head is a prolog and a root start tag that the root end tag alone closes (no other
    element, nothing left open: a comment holding a record line ends no head)."""
    parser = etree.XMLPullParser(events=("start",), resolve_entities=False, no_network=True)
    try:
        parser.feed(head)
        started = [element for _, element in parser.read_events()]
        if len(started) != 1:
            return None
        root = started[0]
        local = etree.QName(root).localname
        name = f"{root.prefix}:{local}" if root.prefix else local
        parser.feed(f"</{name}>".encode())
        parser.close()
    except etree.XMLSyntaxError:
        return None
    return name


class _RangeReader:
    """head + the range's bytes + tail, as the file-like object iterparse reads from."""

    def __init__(self, part: ByteRange):
        self.fh = open(part.path, "rb")
        self.fh.seek(part.start)
        self.left = part.end - part.start if part.end is not None else None
        self.before, self.after = part.head, part.tail

    def read(self, size: int = _BLOCK) -> bytes:
        if self.before:
            data, self.before = self.before, b""
            return data
        want = size if size > 0 else _BLOCK
        if self.left is not None:
            want = min(want, self.left)
        data = self.fh.read(want) if want else b""
        if self.left is not None:
            self.left -= len(data)
        if not data and self.after:
            data, self.after = self.after, b""
        return data

    def close(self) -> None:
        self.fh.close()


def parse_range(fmt: ExtractFormat, part: ByteRange) -> Iterator[SourceRecord]:
    """The records of one range, with the file's line numbers.

    Raises `MalformedExtract` (after the range's complete records) when the range does not
    parse alone; for a range that is not the last, the caller then parses `part.rest()`.
    """
    reader = _RangeReader(part)
    try:
        yield from iter_records(fmt, reader, part.path, part.line_offset)
    finally:
        reader.close()


def parse_file(fmt: ExtractFormat, path: str | Path) -> Iterator[SourceRecord]:
    """Every record of the file, range after range: what one parse of the whole file gives,
    with line numbers right past 65,535.

    When a range that is not the last does not parse alone, the file is parsed from that
    range's start to its end in one go, and the records of the range already handed on are
    skipped (the same bytes, parsed from the same state, give the same records).
    """
    for part in split(fmt, path):
        done = 0
        try:
            for record in parse_range(fmt, part):
                yield record
                done += 1
        except MalformedExtract:
            if part.last:
                raise
            for record in parse_range(fmt, part.rest()):
                if done:
                    done -= 1
                else:
                    yield record
            return
