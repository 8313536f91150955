"""FHIR dates as ranges.

`2020` means all of 2020, so every date is indexed and searched as a half-open range
[low, high) in epoch seconds; the spec's prefixes are then comparisons of ranges.
Times without a zone are taken as UTC (the spec leaves them to the server).
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)

MIN = -1e15
MAX = 1e15


def parse_range(value: str) -> tuple[float, float] | None:
    """Return [low, high) in epoch seconds for a FHIR date/dateTime/instant, or None."""
    match = _DATE.match(value.strip())
    if not match:
        return None
    g = match.groupdict()
    year = int(g["y"])
    try:
        if g["m"] is None:
            start = datetime(year, 1, 1, tzinfo=timezone.utc)
            end = datetime(year + 1, 1, 1, tzinfo=timezone.utc)
        elif g["d"] is None:
            month = int(g["m"])
            start = datetime(year, month, 1, tzinfo=timezone.utc)
            end = start + timedelta(days=calendar.monthrange(year, month)[1])
        elif g["H"] is None:
            start = datetime(year, int(g["m"]), int(g["d"]), tzinfo=timezone.utc)
            end = start + timedelta(days=1)
        else:
            tz = timezone.utc
            if g["tz"] and g["tz"] != "Z":
                sign = 1 if g["tz"][0] == "+" else -1
                hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
                tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
            fraction = g["f"] or ""
            micro = int((fraction + "000000")[:6]) if fraction else 0
            start = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]),
                             int(g["S"] or 0), micro, tzinfo=tz)
            if g["S"] is None:
                step = timedelta(minutes=1)
            elif fraction:
                step = timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
            else:
                step = timedelta(seconds=1)
            end = start + step
    except ValueError:
        return None
    return start.timestamp(), end.timestamp()


def now_instant() -> tuple[str, float]:
    """The current time as a FHIR instant (millisecond precision) and epoch seconds."""
    now = datetime.now(timezone.utc)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), now.timestamp()


def http_date(epoch: float) -> str:
    """RFC 7231 date for the Last-Modified header."""
    from email.utils import formatdate

    return formatdate(epoch, usegmt=True)
