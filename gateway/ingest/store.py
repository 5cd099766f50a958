"""The gateway's own tables: devices, meters, readings, quarantine, security events,
sequence gaps, 15-minute intervals and the service's status.

A reading row keeps the raw OCMF string exactly as received next to the fields
parsed from it: the raw string is the legal evidence (anyone can re-verify it
with the device's public key), the parsed columns are for queries. Rejected
messages go to `quarantine`, each with a security event; both are bounded (`Limits`),
because a device's credential (or its key) can be in hostile hands.

A device's meter history is a list of "meter epochs": epoch 0 is the meter
registered with the device, each `replace-meter` adds the next. A reading
belongs to the epoch whose serial it carries; registers may only fall across an
epoch change. Everything that changes the device registry bumps
`registry_version`, so the running ingest notices a revocation made from the CLI.
"""
import hashlib
import json
import sqlite3

from gateway import clock
from gateway.db import ensure_schema, transaction

SCHEMA_VERSION = 2

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY,
        pubkey TEXT NOT NULL,
        meter_serial TEXT NOT NULL,
        account TEXT,
        revoked INTEGER NOT NULL DEFAULT 0,
        revoked_at REAL,
        revoked_reason TEXT NOT NULL DEFAULT '',
        first_seq INTEGER,
        last_seq INTEGER,
        acked_seq INTEGER,
        last_seen REAL,
        status TEXT,
        status_at REAL,
        dirty_since INTEGER,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS meters (
        device_id TEXT NOT NULL REFERENCES devices(id),
        epoch INTEGER NOT NULL,
        meter_serial TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        registered_at REAL NOT NULL,
        PRIMARY KEY (device_id, epoch),
        UNIQUE (device_id, meter_serial)
    )""",
    """CREATE TABLE IF NOT EXISTS readings (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices(id),
        seq INTEGER NOT NULL,
        meter_epoch INTEGER NOT NULL,
        meter_serial TEXT NOT NULL,
        import_wh INTEGER NOT NULL,
        export_wh INTEGER NOT NULL,
        time_epoch INTEGER NOT NULL,
        time_status TEXT NOT NULL,
        time_trusted INTEGER NOT NULL,
        raw TEXT NOT NULL,
        received_at REAL NOT NULL,
        UNIQUE (device_id, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS readings_time ON readings(device_id, time_epoch)",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY,
        device_id TEXT,
        topic TEXT NOT NULL,
        seq INTEGER,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        raw BLOB NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        count INTEGER NOT NULL DEFAULT 1,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        length INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS quarantine_device ON quarantine(device_id, reason)",
    "CREATE INDEX IF NOT EXISTS quarantine_seen ON quarantine(device_id, last_at)",
    "CREATE INDEX IF NOT EXISTS quarantine_last ON quarantine(last_at)",
    """CREATE TABLE IF NOT EXISTS security_events (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        device_id TEXT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        quarantine_id INTEGER REFERENCES quarantine(id),
        count INTEGER NOT NULL DEFAULT 1,
        last_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS security_events_device ON security_events(device_id, kind)",
    """CREATE TABLE IF NOT EXISTS sequence_gaps (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices(id),
        from_seq INTEGER NOT NULL,
        to_seq INTEGER NOT NULL,
        detected_at REAL NOT NULL,
        filled_at REAL,
        lost INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS sequence_gaps_open ON sequence_gaps(device_id, filled_at)",
    """CREATE TABLE IF NOT EXISTS intervals (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices(id),
        start INTEGER NOT NULL,
        end INTEGER NOT NULL,
        import_wh INTEGER NOT NULL,
        export_wh INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'settled')),
        settlement_id TEXT,
        settled_at REAL,
        computed_at REAL NOT NULL,
        UNIQUE (device_id, start)
    )""",
    "CREATE INDEX IF NOT EXISTS intervals_state ON intervals(state, end)",
    """CREATE TABLE IF NOT EXISTS interval_adjustments (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices(id),
        source_start INTEGER NOT NULL,
        target_start INTEGER,
        import_wh INTEGER NOT NULL,
        export_wh INTEGER NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS interval_adj_src ON interval_adjustments(device_id, source_start)",
    "CREATE INDEX IF NOT EXISTS interval_adj_dst ON interval_adjustments(device_id, target_start)",
    """CREATE TABLE IF NOT EXISTS gateway_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    )""",
]


class StoreError(ValueError):
    """A store operation refused for a reason the user can act on."""


# Columns added after schema version 1: (table, column, declaration).
_ADDED = [
    ("quarantine", "length", "INTEGER"),
    ("security_events", "count", "INTEGER NOT NULL DEFAULT 1"),
    ("security_events", "last_at", "REAL"),
]


def init(conn):
    with transaction(conn):    # a store of schema version 1: its tables get the new columns first
        for table, column, decl in _ADDED:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if have and column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    ensure_schema(conn, "gateway", SCHEMA_VERSION, SCHEMA)


def init_if_needed(conn):
    """`init` only when the schema is missing or older, so a command that only reads never
    takes the write lock; returns `conn`."""
    try:
        row = conn.execute("SELECT version FROM schema_versions WHERE component='gateway'").fetchone()
    except sqlite3.OperationalError:
        row = None
    if row is None or row[0] < SCHEMA_VERSION:
        init(conn)
    return conn


def _now():
    return clock.now()


def _bump_registry(conn):
    conn.execute(
        "INSERT INTO gateway_state(key, value, updated_at) VALUES('registry_version', '1', ?) "
        "ON CONFLICT(key) DO UPDATE SET value=CAST(value AS INTEGER) + 1, updated_at=excluded.updated_at",
        (_now(),),
    )


def registry_version(conn):
    row = conn.execute("SELECT value FROM gateway_state WHERE key='registry_version'").fetchone()
    return int(row[0]) if row else 0


def _check_id(device_id):
    from protocol.topics import check_id
    return check_id(device_id, "device id")


# ---- the broker's own users ------------------------------------------------------
# A device id is its MQTT user name, so no device may be called like the gateway or the
# updater: it would log in with their rights (and their password, when provisioned).
# These are the names `egs-gw broker config` gives them by default; the names it actually
# wrote are recorded with `reserve_user_names`.

BROKER_USERS = ("egs-gateway", "egs-updater")


def reserve_user_names(conn, names):
    """Record MQTT user names that are not devices (the broker configuration's own)."""
    put_state(conn, "broker_users", sorted(reserved_user_names(conn) | set(names)))


def reserved_user_names(conn):
    value, _ = get_state(conn, "broker_users")
    return set(BROKER_USERS) | set(value or ())


def check_user_name(conn, device_id, reserved=()):
    """Refuse a device id that is one of the broker's own MQTT users."""
    if device_id in reserved_user_names(conn) | set(reserved):
        raise StoreError(f"device id {device_id!r} is the broker's own MQTT user; choose another id")


def check_meter_free(conn, meter_serial, device_id=None):
    """Refuse a meter serial another active (non-revoked) device is registered with."""
    other = conn.execute("SELECT id FROM devices WHERE meter_serial=? AND revoked=0 AND id IS NOT ?",
                         (str(meter_serial).strip(), device_id)).fetchone()
    if other:
        raise StoreError(f"meter {str(meter_serial).strip()} is already registered for device {other[0]}")


# ---- devices -----------------------------------------------------------------

def add_device(conn, device_id, pubkey65, meter_serial, account=None, first_seq=None, reserved=()):
    """Register a device. `pubkey65` is the 65-byte SEC1 point (see protocol.ocmf.load_public_key).

    `reserved`: MQTT user names no device may take beyond the broker's recorded ones
    (the gateway's configured `mqtt.user`, say).
    """
    device_id = _check_id(device_id)
    check_user_name(conn, device_id, reserved)
    if not isinstance(pubkey65, (bytes, bytearray)) or len(pubkey65) != 65 or pubkey65[0] != 4:
        raise StoreError("public key must be a 65-byte uncompressed P-256 point")
    meter_serial = str(meter_serial).strip()
    if not meter_serial:
        raise StoreError("meter serial must not be empty")
    if account is not None:
        from gateway.accounts import normalize_address
        account = normalize_address(account)
    if first_seq is not None and (not isinstance(first_seq, int) or first_seq < 0):
        raise StoreError("first sequence must be a non-negative integer")
    with transaction(conn):
        if conn.execute("SELECT 1 FROM devices WHERE id=?", (device_id,)).fetchone():
            raise StoreError(f"device {device_id} is already registered")
        other = conn.execute("SELECT id FROM devices WHERE pubkey=?", (pubkey65.hex(),)).fetchone()
        if other:
            raise StoreError(f"this public key is already registered for device {other[0]}")
        check_meter_free(conn, meter_serial)
        now = _now()
        first = 1 if first_seq is None else first_seq
        conn.execute(
            "INSERT INTO devices(id, pubkey, meter_serial, account, first_seq, acked_seq, created_at) "
            "VALUES(?, ?, ?, ?, ?, ?, ?)",
            (device_id, pubkey65.hex(), meter_serial, account, first, first - 1, now),
        )
        conn.execute(
            "INSERT INTO meters(device_id, epoch, meter_serial, note, registered_at) VALUES(?, 0, ?, 'registered', ?)",
            (device_id, meter_serial, now),
        )
        _bump_registry(conn)
    return get_device(conn, device_id)


def _device_dict(row):
    d = dict(row)
    d["revoked"] = bool(d["revoked"])
    d["status"] = json.loads(d["status"]) if d.get("status") else None
    return d


def get_device(conn, device_id):
    row = conn.execute("SELECT * FROM devices WHERE id=?", (device_id,)).fetchone()
    return _device_dict(row) if row else None


def require_device(conn, device_id):
    d = get_device(conn, device_id)
    if d is None:
        raise StoreError(f"no device {device_id!r} (see `egs-gw device list`)")
    return d


def list_devices(conn):
    return [_device_dict(r) for r in conn.execute("SELECT * FROM devices ORDER BY id")]


def meters(conn, device_id):
    return [dict(r) for r in conn.execute(
        "SELECT epoch, meter_serial, note, registered_at FROM meters WHERE device_id=? ORDER BY epoch",
        (device_id,))]


def revoke_device(conn, device_id, reason=""):
    with transaction(conn):
        d = require_device(conn, device_id)
        if d["revoked"]:
            raise StoreError(f"device {device_id} is already revoked")
        conn.execute("UPDATE devices SET revoked=1, revoked_at=?, revoked_reason=? WHERE id=?",
                     (_now(), reason, device_id))
        add_event(conn, device_id, "device_revoked", reason or "revoked by technician")
        _bump_registry(conn)
    return get_device(conn, device_id)


def restore_device(conn, device_id, note=""):
    """Undo a revocation: the device's readings count again from now on (the revocation
    stays in the security events, and so do the readings refused meanwhile)."""
    with transaction(conn):
        d = require_device(conn, device_id)
        if not d["revoked"]:
            raise StoreError(f"device {device_id} is not revoked")
        check_meter_free(conn, d["meter_serial"], device_id)
        conn.execute("UPDATE devices SET revoked=0, revoked_at=NULL, revoked_reason='' WHERE id=?",
                     (device_id,))
        add_event(conn, device_id, "device_restored", note or "restored by technician")
        _bump_registry(conn)
    return get_device(conn, device_id)


def replace_meter(conn, device_id, new_serial, note=""):
    """Register a new meter behind a device: its readings start a new baseline."""
    new_serial = str(new_serial).strip()
    if not new_serial:
        raise StoreError("meter serial must not be empty")
    with transaction(conn):
        d = require_device(conn, device_id)
        if d["revoked"]:
            raise StoreError(f"device {device_id} is revoked")
        if conn.execute("SELECT 1 FROM meters WHERE device_id=? AND meter_serial=?",
                        (device_id, new_serial)).fetchone():
            raise StoreError(f"meter {new_serial} was already installed at device {device_id}; "
                             "a replacement needs a meter serial not used before")
        check_meter_free(conn, new_serial, device_id)
        epoch = conn.execute("SELECT MAX(epoch) + 1 FROM meters WHERE device_id=?",
                             (device_id,)).fetchone()[0]
        conn.execute(
            "INSERT INTO meters(device_id, epoch, meter_serial, note, registered_at) VALUES(?, ?, ?, ?, ?)",
            (device_id, epoch, new_serial, note or "replacement", _now()),
        )
        conn.execute("UPDATE devices SET meter_serial=? WHERE id=?", (new_serial, device_id))
        add_event(conn, device_id, "meter_replaced",
                  f"meter {d['meter_serial']} replaced by {new_serial} (epoch {epoch})")
        _bump_registry(conn)
    return epoch


def set_account(conn, device_id, account):
    """Change (or, with None, clear) the account a device's energy is settled to.

    Intervals already settled stay with the account they went to; open ones settle to the
    new one. Recorded as the technician's event `account_changed`. Returns the device.
    """
    if account is not None:
        from gateway.accounts import normalize_address
        account = normalize_address(account)
    with transaction(conn):
        d = require_device(conn, device_id)
        if d["account"] != account:
            conn.execute("UPDATE devices SET account=? WHERE id=?", (account, device_id))
            add_event(conn, device_id, "account_changed",
                      f"account {d['account'] or 'none'} -> {account or 'none'}")
            _bump_registry(conn)
    return get_device(conn, device_id)


def set_status(conn, device_id, status, at=None):
    conn.execute("UPDATE devices SET status=?, status_at=? WHERE id=?",
                 (json.dumps(status, sort_keys=True), at or _now(), device_id))


# ---- readings ----------------------------------------------------------------

def readings(conn, device_id=None, since=None, limit=100):
    """Newest first. `since` filters on the reading's own time (epoch seconds)."""
    sql = "SELECT * FROM readings WHERE 1=1"
    args = []
    if device_id is not None:
        sql += " AND device_id=?"
        args.append(device_id)
    if since is not None:
        sql += " AND time_epoch >= ?"
        args.append(int(since))
    sql += " ORDER BY time_epoch DESC, id DESC LIMIT ?"
    args.append(int(limit))
    return [dict(r) for r in conn.execute(sql, args)]


def reading(conn, device_id, seq):
    row = conn.execute("SELECT * FROM readings WHERE device_id=? AND seq=?", (device_id, seq)).fetchone()
    return dict(row) if row else None


def count_readings(conn, device_id=None):
    if device_id is None:
        return conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    return conn.execute("SELECT COUNT(*) FROM readings WHERE device_id=?", (device_id,)).fetchone()[0]


# ---- quarantine and events ---------------------------------------------------

class Limits:
    """How much the store keeps of what devices get rejected for (the ingest.* caps).

    A quarantine row keeps the first `keep` bytes of a message (its length and the hash of
    the whole are kept too); the oldest rows are deleted beyond quarantine_per_device rows
    of one device and quarantine_total in all (counted in the coalesced event
    `quarantine_rotated`). A device at events_per_device events has further events of a
    kind it already has counted on its latest row of that kind (`count`, `last_at`) instead
    of new rows; beyond the caps the oldest rows go, except OPERATOR_EVENTS.
    """

    FIELDS = ("quarantine_per_device", "quarantine_total", "events_per_device", "events_total")

    def __init__(self, quarantine_per_device=100, quarantine_total=10000, events_per_device=1000,
                 events_total=100000):
        self.quarantine_per_device = quarantine_per_device
        self.quarantine_total = quarantine_total
        self.events_per_device = events_per_device
        self.events_total = events_total

    @classmethod
    def from_config(cls, cfg):
        return cls(**{k: cfg[k] for k in cls.FIELDS if k in cfg})


LIMITS = Limits()
# The technician's own actions: never rotated out by what a device sends.
OPERATOR_EVENTS = ("device_revoked", "device_restored", "meter_replaced", "account_changed")


def quarantine(conn, topic, raw, reason, detail, device_id=None, seq=None, at=None, keep=None,
               limits=LIMITS):
    """Keep a rejected message once (by the SHA-256 of all of it): its first `keep` bytes
    (None: all), its length and the hash; a repeat is counted on its row. Returns its id
    and whether it is new. The oldest rows go beyond `limits` (see Limits)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    raw = bytes(raw)
    digest = hashlib.sha256(raw).hexdigest()
    at = at or _now()
    row = conn.execute("SELECT id FROM quarantine WHERE sha256=?", (digest,)).fetchone()
    if row:
        conn.execute("UPDATE quarantine SET count=count+1, last_at=? WHERE id=?", (at, row[0]))
        return row[0], False
    cur = conn.execute(
        "INSERT INTO quarantine(device_id, topic, seq, reason, detail, raw, sha256, first_at, last_at, length) "
        "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (device_id, topic, seq, reason, detail, raw if keep is None else raw[:keep], digest, at, at,
         len(raw)),
    )
    _rotate_quarantine(conn, device_id, cur.lastrowid, at, limits)
    return cur.lastrowid, True


def _oldest(conn, table, where, args, order, keep_ids, n):
    """Ids (and device ids) of the `n` first rows by `order` matching `where`, not in keep_ids."""
    rows = conn.execute(f"SELECT id, device_id FROM {table} WHERE {where} ORDER BY {order} LIMIT ?",
                        (*args, n + len(keep_ids))).fetchall()
    return [(r[0], r[1]) for r in rows if r[0] not in keep_ids][:n]


def _over_total(conn, table, cap, doomed):
    """How many rows `table` holds beyond `cap` once `doomed` are gone (cheap when under)."""
    lo, hi = conn.execute(f"SELECT MIN(id), MAX(id) FROM {table}").fetchone()
    if lo is None or hi - lo + 1 - doomed <= cap:
        return 0
    return max(0, conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] - doomed - cap)


def _rotate_quarantine(conn, device_id, new_id, at, limits):
    doomed = []
    n = conn.execute("SELECT COUNT(*) FROM quarantine WHERE device_id IS ?", (device_id,)).fetchone()[0]
    if n > limits.quarantine_per_device:
        doomed = _oldest(conn, "quarantine", "device_id IS ?", (device_id,), "last_at, id", {new_id},
                         n - limits.quarantine_per_device)
    extra = _over_total(conn, "quarantine", limits.quarantine_total, len(doomed))
    if extra:
        doomed += _oldest(conn, "quarantine", "1=1", (), "last_at, id", {new_id} | {d[0] for d in doomed},
                          extra)
    if not doomed:
        return
    ids = [d[0] for d in doomed]
    marks = ",".join("?" * len(ids))
    conn.execute(f"UPDATE security_events SET quarantine_id=NULL WHERE quarantine_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM quarantine WHERE id IN ({marks})", ids)
    per_device = {}
    for _, dev in doomed:
        per_device[dev] = per_device.get(dev, 0) + 1
    for dev, k in per_device.items():
        add_event(conn, dev, "quarantine_rotated",
                  "older rejected messages deleted beyond ingest.quarantine_per_device or "
                  "ingest.quarantine_total (count: how many)", at=at, limits=limits, coalesce=True, n=k)


def add_event(conn, device_id, kind, detail, quarantine_id=None, at=None, limits=LIMITS, coalesce=False,
              n=1):
    """Record a security event; returns its row id.

    With `coalesce`, or once the device holds `limits.events_per_device` events, an event
    of a kind the device already has is counted (`n`) on its latest row of that kind, which
    takes the newer detail; otherwise a new row, the oldest rotated out beyond the caps.
    """
    at = at or _now()
    if not coalesce and kind not in OPERATOR_EVENTS:
        have = conn.execute("SELECT COUNT(*) FROM security_events WHERE device_id IS ?",
                            (device_id,)).fetchone()[0]
        coalesce = have >= limits.events_per_device
    if coalesce:
        row = conn.execute("SELECT id FROM security_events WHERE device_id IS ? AND kind=? "
                           "ORDER BY id DESC LIMIT 1", (device_id, kind)).fetchone()
        if row:
            conn.execute("UPDATE security_events SET count=count+?, last_at=?, detail=?, "
                         "quarantine_id=COALESCE(?, quarantine_id) WHERE id=?",
                         (n, at, detail, quarantine_id, row[0]))
            return row[0]
    cur = conn.execute(
        "INSERT INTO security_events(at, device_id, kind, detail, quarantine_id, count, last_at) "
        "VALUES(?, ?, ?, ?, ?, ?, ?)",
        (at, device_id, kind, detail, quarantine_id, n, at),
    )
    _rotate_events(conn, device_id, cur.lastrowid, limits)
    return cur.lastrowid


def _rotate_events(conn, device_id, new_id, limits):
    spare = ",".join(f"'{k}'" for k in OPERATOR_EVENTS)
    rotatable = f"kind NOT IN ({spare})"
    order = "COALESCE(last_at, at), id"
    doomed = []
    n = conn.execute(f"SELECT COUNT(*) FROM security_events WHERE device_id IS ? AND {rotatable}",
                     (device_id,)).fetchone()[0]
    if n > limits.events_per_device:
        doomed = _oldest(conn, "security_events", f"device_id IS ? AND {rotatable}", (device_id,), order,
                         {new_id}, n - limits.events_per_device)
    extra = _over_total(conn, "security_events", limits.events_total, len(doomed))
    if extra:
        doomed += _oldest(conn, "security_events", rotatable, (), order, {new_id} | {d[0] for d in doomed},
                          extra)
    if doomed:
        ids = [d[0] for d in doomed]
        conn.execute(f"DELETE FROM security_events WHERE id IN ({','.join('?' * len(ids))})", ids)


def events(conn, device_id=None, limit=100):
    sql = "SELECT * FROM security_events"
    args = []
    if device_id is not None:
        sql += " WHERE device_id=?"
        args.append(device_id)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(int(limit))
    return [dict(r) for r in conn.execute(sql, args)]


def quarantined(conn, device_id=None, limit=100):
    sql = ("SELECT id, device_id, topic, seq, reason, detail, raw, sha256, count, first_at, last_at, "
           "length FROM quarantine")
    args = []
    if device_id is not None:
        sql += " WHERE device_id=?"
        args.append(device_id)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(int(limit))
    out = []
    for r in conn.execute(sql, args):
        d = dict(r)
        raw = bytes(d.pop("raw"))
        if d["length"] is None:           # kept before lengths were recorded: always whole
            d["length"] = len(raw)
        d["truncated"] = d["length"] > len(raw)
        d["raw"], d["raw_encoding"] = _text(raw, d["truncated"]), "utf-8"
        if d["raw"] is None:
            d["raw"], d["raw_encoding"] = raw.hex(), "hex"
        out.append(d)
    return out


def _text(raw, truncated):
    """utf-8 text of a kept message, or None; a prefix may end inside a character."""
    for cut in range(4 if truncated else 1):
        try:
            return raw[:len(raw) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def gaps(conn, device_id=None, open_only=False):
    sql = "SELECT * FROM sequence_gaps WHERE 1=1"
    args = []
    if device_id is not None:
        sql += " AND device_id=?"
        args.append(device_id)
    if open_only:
        sql += " AND filled_at IS NULL"
    return [dict(r) for r in conn.execute(sql + " ORDER BY id", args)]


# ---- service state (for `egs-gw status`) -------------------------------------

def put_state(conn, key, value):
    conn.execute(
        "INSERT INTO gateway_state(key, value, updated_at) VALUES(?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
        (key, json.dumps(value, sort_keys=True), _now()),
    )


def get_state(conn, key):
    row = conn.execute("SELECT value, updated_at FROM gateway_state WHERE key=?", (key,)).fetchone()
    if not row:
        return None, None
    return json.loads(row[0]), row[1]
