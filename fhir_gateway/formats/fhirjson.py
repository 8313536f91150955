"""FHIR JSON with exact decimals: `0.10` stays `0.10`, `100.000` stays `100.000`.

FHIR R4 datatypes: "the precision of the decimal value has significance", and HAPI keeps
it; a JSON parser that makes numbers doubles does not (`0.10` -> 0.1, 30 digits -> 17,
`1E-400` -> 0.0). orjson is that parser, and 10x faster than the standard library's, so:
every body is parsed by orjson; when writing the result back does not give the same bytes
(it does for what this module wrote, the stores' usual read), a regex lists the numbers with
a fraction, an exponent or many digits, and only when one of them would not be written back
as it was sent is the body parsed again, by the standard library, making such a number an
`ExactDecimal`: a float (arithmetic, comparisons, validation and search indexing see its
value) that keeps its text, which `dumps` writes as it came (an `orjson.Fragment`). A read
costs one orjson write more than before; a client's body, one regex search more.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson


class ExactDecimal(float):
    """A decimal whose text says more than its double: written back as `text`."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> "ExactDecimal":
        value = super().__new__(cls, text)
        value.text = text
        return value

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__

    def __reduce__(self):  # pickled by text (the importer's worker processes)
        return ExactDecimal, (self.text,)


#: a number token (after `:`, `,` or `[`) with a fraction, an exponent or 16+ digits: what a
#: double may not give back as written. In a string such text costs a second parse, no more.
_SUSPECT = re.compile(rb"[:,\[]\s*(-?(?:\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d{16,}))")


def decimal(text: str) -> float | int:
    """The value of a JSON number's text: a plain float (or int) when that is written back
    the same, else an `ExactDecimal`."""
    if "." not in text and "e" not in text and "E" not in text and len(text) < 19:
        return int(text)
    value = float(text)
    return value if orjson.dumps(value) == text.encode() else ExactDecimal(text)


def _exact(text: str) -> float | int:
    value = decimal(text)
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        raise ValueError(f"number is infinity when parsed as double: {text[:40]}")
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:
    """JSON as Python data, decimals exact. Errors are `orjson.JSONDecodeError`s."""
    parsed = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else data
    if _written_back(parsed) == raw:  # what this module wrote: the usual read from a store
        return parsed
    if any(map(_changes, _SUSPECT.findall(raw))):
        return json.loads(raw, parse_float=_exact, parse_int=_exact,
                          parse_constant=_refuse_constant)
    return parsed


def _written_back(parsed: Any) -> bytes | None:
    try:
        return orjson.dumps(parsed)
    except TypeError:  # deeper than orjson writes (255 levels)
        return None


def _changes(number: bytes) -> bool:
    """Whether orjson's reading of a number token would be written back otherwise."""
    if number.lstrip(b"-").isdigit():
        return not -2**63 <= int(number) < 2**64  # beyond 64 bits orjson makes it a double
    return orjson.dumps(float(number)) != number


def _fragment(value: object) -> orjson.Fragment:
    if isinstance(value, ExactDecimal):
        return orjson.Fragment(value.text.encode())
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any, option: int = 0) -> bytes:
    """Python data as JSON bytes, `ExactDecimal`s as the text they were read with."""
    return orjson.dumps(value, default=_fragment, option=option)
