"""What every part of the central system's store shares.

The one error type (a request the store refuses, with a one-line reason), the
clock (the gateway's, so a simulated day moves it too), OCPP dateTime and
64-bit integer checks, and the event log (`ocpp_events`) every decision writes to.
"""
import json
from datetime import UTC, datetime

from gateway import clock

# SQLite INTEGER: a JSON integer outside it cannot be stored (OverflowError) and is refused
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

class StoreError(ValueError):
    """A request the store refuses (unknown charger, bad value): a clear one-line reason."""


def now():
    return clock.now()


def iso(epoch):
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text):
    """OCPP dateTime (RFC 3339) → epoch seconds; a value without zone is taken as UTC."""
    if not isinstance(text, str):
        raise StoreError(f"timestamp must be a string, got {text!r}")
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise StoreError(f"not an RFC 3339 timestamp: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def in_int64(value):
    return isinstance(value, int) and INT64_MIN <= value <= INT64_MAX


def event(conn, charger_id, kind, **detail):
    conn.execute("INSERT INTO ocpp_events(charger_id, kind, detail) VALUES(?, ?, ?)",
                 (charger_id, kind, json.dumps(detail, sort_keys=True, default=str)))
