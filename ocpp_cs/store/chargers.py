"""Chargers: registration, Pending ones, boots, connector states, announced meter keys.

A charger is registered by the operator (password hash, owner, fee, meter key);
an unknown one may wait as `pending` until then, bound to the remote host it first
came from (`admit_pending`). What a charger says about itself
(BootNotification, StatusNotification, a meter key in DataTransfer) is recorded,
and a key it announces is kept but never trusted.
"""
import json
import re

from gateway.accounts import normalize_address
from ocpp_cs.store.base import StoreError, event, now, parse_time
from ocpp_cs.store.command_queue import expire_command

CHARGER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-+*@]{0,47}$")

def check_charger_id(charger_id):
    if not isinstance(charger_id, str) or not CHARGER_ID.match(charger_id):
        raise StoreError(
            f"invalid charger id {charger_id!r}: 1..48 characters A-Z a-z 0-9 . _ - + * @")
    return charger_id


def _check_power(max_power_w):
    if max_power_w is not None and (isinstance(max_power_w, bool)
                                    or not isinstance(max_power_w, int)
                                    or not 0 < max_power_w <= 10**7):
        raise StoreError(f"max_power_w must be 1..10000000 W, got {max_power_w!r}")
    return max_power_w


def add_charger(conn, charger_id, password_hash, owner=None, fee_per_kwh=0, meter_key=None,
                max_power_w=None):
    """Register a charger, or complete the registration of one waiting as Pending.

    `max_power_w` is its rated power (None: `[ocpp] max_power_w`): a session that
    claims more energy than it delivers in the session's duration is held for review.
    """
    check_charger_id(charger_id)
    _check_power(max_power_w)
    owner = normalize_address(owner) if owner else None
    row = get_charger(conn, charger_id)
    if row is not None and row["status"] == "registered":
        raise StoreError(f"charger {charger_id} already exists (use `charger set`)")
    if row is None:
        conn.execute(
            "INSERT INTO ocpp_chargers(id, password_hash, owner, fee_per_kwh, meter_key, "
            "max_power_w) VALUES(?, ?, ?, ?, ?, ?)",
            (charger_id, password_hash, owner, str(int(fee_per_kwh)), meter_key, max_power_w))
    else:
        conn.execute(
            "UPDATE ocpp_chargers SET password_hash=?, owner=?, fee_per_kwh=?, meter_key=?, "
            "max_power_w=?, status='registered', pending_remote=NULL WHERE id=?",
            (password_hash, owner, str(int(fee_per_kwh)), meter_key, max_power_w, charger_id))
    event(conn, charger_id, "charger_added", owner=owner, fee_per_kwh=int(fee_per_kwh),
          meter_key=bool(meter_key))


def update_charger(conn, charger_id, **fields):
    """Change password_hash / owner / fee_per_kwh / meter_key / max_power_w of a charger."""
    if get_charger(conn, charger_id) is None:
        raise StoreError(f"unknown charger {charger_id}")
    allowed = {"password_hash", "owner", "fee_per_kwh", "meter_key", "max_power_w"}
    for key, value in fields.items():
        if key not in allowed:
            raise StoreError(f"cannot set {key}")
        if key == "owner" and value:
            value = normalize_address(value)
        if key == "fee_per_kwh":
            value = str(int(value))
        if key == "max_power_w":
            _check_power(value)
        conn.execute(f"UPDATE ocpp_chargers SET {key}=? WHERE id=?", (value, charger_id))
    event(conn, charger_id, "charger_updated", fields=sorted(fields))


def remove_charger(conn, charger_id, force=False):
    """Remove a charger: it can no longer connect. Refused while it has active sessions
    unless `force` (they stay active, for review). Its sessions, meter values and events
    are kept; queued commands expire. Returns the number of active sessions left."""
    if get_charger(conn, charger_id) is None:
        raise StoreError(f"unknown charger {charger_id}")
    active = conn.execute("SELECT COUNT(*) FROM ocpp_transactions WHERE charger_id=? AND "
                          "state='active'", (charger_id,)).fetchone()[0]
    if active and not force:
        raise StoreError(f"charger {charger_id} has {active} active session(s); stop them first "
                         "or give --force")
    queued = conn.execute("SELECT id FROM ocpp_commands WHERE charger_id=? AND state='queued'",
                          (charger_id,)).fetchall()
    for (command_id,) in queued:          # expired the redacting way: no secret stays behind
        expire_command(conn, command_id)
        conn.execute("UPDATE ocpp_commands SET error='charger removed' WHERE id=?", (command_id,))
    conn.execute("DELETE FROM ocpp_auth_grants WHERE charger_id=?", (charger_id,))
    conn.execute("DELETE FROM ocpp_connectors WHERE charger_id=?", (charger_id,))
    conn.execute("DELETE FROM ocpp_chargers WHERE id=?", (charger_id,))
    event(conn, charger_id, "charger_removed", active_sessions=active, forced=bool(force))
    return active


def note_pending(conn, charger_id):
    """An unknown charger connected while allow_unknown_pending: keep it visible to the operator."""
    conn.execute("INSERT INTO ocpp_chargers(id, status) VALUES(?, 'pending') "
                 "ON CONFLICT(id) DO NOTHING", (charger_id,))


def admit_pending(conn, charger_id, host, max_pending):
    """An unknown charger connects under allow_unknown_pending. → "new" (now pending),
    "same" (pending, from the host it first came from), "other_host" (pending for
    another host: refused) or "full" (max_pending already wait: refused).

    The count and the insert are one operation in one transaction, so concurrent
    newcomers cannot all see room under the cap."""
    row = get_charger(conn, charger_id)
    if row is None:
        if count_pending(conn) >= max_pending:
            return "full"
        conn.execute("INSERT INTO ocpp_chargers(id, status, pending_remote) "
                     "VALUES(?, 'pending', ?)", (charger_id, host))
        event(conn, charger_id, "charger_pending", remote=host)
        return "new"
    if row["status"] != "pending":
        return "registered"
    if row["pending_remote"] is None:      # a pending row from before the binding existed
        conn.execute("UPDATE ocpp_chargers SET pending_remote=? WHERE id=?", (host, charger_id))
        return "same"
    return "same" if row["pending_remote"] == host else "other_host"


def count_pending(conn):
    return conn.execute("SELECT COUNT(*) FROM ocpp_chargers WHERE status='pending'").fetchone()[0]


def get_charger(conn, charger_id):
    return conn.execute("SELECT * FROM ocpp_chargers WHERE id=?", (charger_id,)).fetchone()


def list_chargers(conn):
    return conn.execute("SELECT * FROM ocpp_chargers ORDER BY id").fetchall()


def connectors(conn, charger_id):
    return conn.execute("SELECT * FROM ocpp_connectors WHERE charger_id=? ORDER BY connector_id",
                        (charger_id,)).fetchall()


def record_boot(conn, charger_id, vendor, model, serial, firmware):
    conn.execute(
        "UPDATE ocpp_chargers SET vendor=?, model=?, serial=?, firmware=?, last_boot=?, "
        "last_seen=? WHERE id=?", (vendor, model, serial, firmware, now(), now(), charger_id))


def touch(conn, seen):
    """Flush last-seen times kept in memory ({charger_id: epoch})."""
    conn.executemany("UPDATE ocpp_chargers SET last_seen=? WHERE id=?",
                     [(t, cid) for cid, t in seen.items()])


def record_status(conn, charger_id, connector_id, status, error_code, info=None,
                  vendor_error_code=None, timestamp=None):
    if connector_id < 0:
        raise StoreError(f"connectorId must be >= 0, got {connector_id}")
    if timestamp is not None:
        parse_time(timestamp)
    conn.execute(
        "INSERT INTO ocpp_connectors(charger_id, connector_id, status, error_code, info, "
        "vendor_error_code, ts, updated_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(charger_id, connector_id) DO UPDATE SET status=excluded.status, "
        "error_code=excluded.error_code, info=excluded.info, "
        "vendor_error_code=excluded.vendor_error_code, ts=excluded.ts, "
        "updated_at=excluded.updated_at",
        (charger_id, connector_id, status, error_code, info, vendor_error_code, timestamp, now()))


def record_announced_keys(conn, charger_id, keys):
    """Meter keys a charger announces itself (DataTransfer) are kept, never trusted."""
    row = get_charger(conn, charger_id)
    known = json.loads(row["announced_keys"]) if row else {}
    known.update({str(k): v for k, v in keys.items()})
    conn.execute("UPDATE ocpp_chargers SET announced_keys=? WHERE id=?",
                 (json.dumps(known, sort_keys=True), charger_id))
    registered = row["meter_key"] if row else None
    for connector, key in keys.items():
        if registered and key.lower() != registered.lower():
            event(conn, charger_id, "security", what="announced meter key differs from registered",
                  connector=connector, announced=key)
