"""HTTP-date (RFC 9110 §5.6.7): parsing its three forms strictly, and stating a moment."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime

from .model import OWS

__all__ = ["http_date", "parse_http_date", "whole_seconds"]

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_MONTH = "(" + "|".join(_MONTH_NAMES) + ")"
_TIME = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(
    rf"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT"
)
_ASCTIME_DATE = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")


def whole_seconds(moment: datetime) -> datetime:
    """A timestamp as Last-Modified states it: UTC (a naive one is taken as UTC), whole
    seconds (HTTP-date has no fraction)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def http_date(moment: datetime) -> bytes:
    """``moment`` (aware, UTC) as an IMF-fixdate header value, the one form a sender uses."""
    return format_datetime(moment, usegmt=True).encode("ascii")


def parse_http_date(value: str, reference_year: int) -> datetime | None:
    """Parse an HTTP-date in any of its three forms; None for anything else.

    HTTP-date is case-sensitive and exact (§5.6.7), so this is a strict match,
    not ``email.utils``' lenient one, and it never raises. A two-digit
    rfc850 year more than 50 years after ``reference_year`` (the file's
    Last-Modified year: this package has no clock) means the previous century.
    A leap second (:60) reads as :59.
    """
    value = value.strip(OWS)
    try:
        if match := _IMF_FIXDATE.fullmatch(value):
            day, month, year, hour, minute, second = match.groups()
            full_year = int(year)
        elif match := _RFC850_DATE.fullmatch(value):
            day, month, year, hour, minute, second = match.groups()
            full_year = reference_year - reference_year % 100 + int(year)
            if full_year > reference_year + 50:
                full_year -= 100
        elif match := _ASCTIME_DATE.fullmatch(value):
            month, day, hour, minute, second, year = match.groups()
            full_year = int(year)
        else:
            return None
        return datetime(full_year, _MONTHS[month], int(day), int(hour), int(minute), min(int(second), 59), tzinfo=UTC)
    except (ValueError, OverflowError):
        return None  # 31 Feb, hour 25, year 0000 ...
