"""The central system's tables and every decision that must be durable.

Chargers, idTags → accounts, connector states, transactions, meter values (raw and
signed), events, and the CLI command queue. Functions take an open connection and
expect the caller's transaction (`gateway.db.transaction`, or the service's group
commit in `ocpp_cs/dbworker.py`), so a decision, its balance-book entries and its
ledger outbox intent always land together.

Transactions: the transactionId is the row id of `ocpp_transactions` (AUTOINCREMENT:
unique, never reused, never derived from time). A StartTransaction retry with the
same (charger, connector, idTag, meterStart, timestamp) returns the same id. A
StopTransaction is answered every time, but a transaction leaves `active` once:
later copies change nothing.

Amounts: EEA columns are TEXT holding decimal integers, because a session can cost
more than SQLite's 2**63 − 1 base units (9.2 EEA). Energy is integer Wh.
"""
import json
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from eth_utils import keccak

from gateway import accounts, clock
from gateway.accounts import BalanceError, normalize_address
from gateway.db import ensure_schema
from gateway.ledger import outbox

SCHEMA_VERSION = 1
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ocpp_chargers (
        id TEXT PRIMARY KEY,
        password_hash TEXT,
        owner TEXT,
        fee_per_kwh TEXT NOT NULL DEFAULT '0',
        meter_key TEXT,
        status TEXT NOT NULL DEFAULT 'registered' CHECK (status IN ('registered', 'pending')),
        vendor TEXT, model TEXT, serial TEXT, firmware TEXT,
        announced_keys TEXT NOT NULL DEFAULT '{}',
        last_boot REAL, last_seen REAL,
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    )""",
    """CREATE TABLE IF NOT EXISTS ocpp_connectors (
        charger_id TEXT NOT NULL REFERENCES ocpp_chargers(id) ON DELETE CASCADE,
        connector_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        error_code TEXT NOT NULL,
        info TEXT, vendor_error_code TEXT, ts TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (charger_id, connector_id)
    )""",
    """CREATE TABLE IF NOT EXISTS ocpp_id_tags (
        id_tag TEXT PRIMARY KEY COLLATE NOCASE,
        address TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
        expires_at REAL,
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    )""",
    """CREATE TABLE IF NOT EXISTS ocpp_transactions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charger_id TEXT NOT NULL,
        connector_id INTEGER NOT NULL,
        id_tag TEXT NOT NULL,
        address TEXT,
        auth_status TEXT NOT NULL,
        auth_reason TEXT NOT NULL DEFAULT '',
        reservation_id INTEGER,
        meter_start INTEGER NOT NULL,
        start_ts TEXT NOT NULL,
        start_epoch REAL NOT NULL,
        offline_start INTEGER NOT NULL DEFAULT 0,
        flags TEXT NOT NULL DEFAULT '[]',
        state TEXT NOT NULL DEFAULT 'active'
            CHECK (state IN ('active', 'settled', 'review', 'void')),
        meter_stop INTEGER, stop_ts TEXT, stop_epoch REAL, stop_reason TEXT, stop_id_tag TEXT,
        energy_wh INTEGER,
        energy_source TEXT,
        price_per_kwh TEXT, energy_eea TEXT, fee_eea TEXT,
        settlement_id TEXT,
        review_reason TEXT NOT NULL DEFAULT '',
        signed_begin_wh INTEGER, signed_end_wh INTEGER,
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
        stopped_at REAL, settled_at REAL,
        UNIQUE (charger_id, connector_id, id_tag, meter_start, start_ts)
    )""",
    "CREATE INDEX IF NOT EXISTS ocpp_tx_state ON ocpp_transactions(state, id)",
    "CREATE INDEX IF NOT EXISTS ocpp_tx_charger ON ocpp_transactions(charger_id, id)",
    """CREATE TABLE IF NOT EXISTS ocpp_meter_values (
        id INTEGER PRIMARY KEY,
        charger_id TEXT NOT NULL,
        connector_id INTEGER NOT NULL,
        transaction_id INTEGER,
        source TEXT NOT NULL,
        ts TEXT NOT NULL,
        context TEXT, format TEXT, measurand TEXT, phase TEXT, location TEXT, unit TEXT,
        value TEXT NOT NULL,
        wh INTEGER,
        verify_state TEXT,
        verify_detail TEXT,
        record_hash TEXT,
        signed_import_wh INTEGER,
        signed_seq INTEGER,
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    )""",
    "CREATE INDEX IF NOT EXISTS ocpp_mv_tx ON ocpp_meter_values(transaction_id)",
    "CREATE INDEX IF NOT EXISTS ocpp_mv_hash ON ocpp_meter_values(record_hash)",
    """CREATE TABLE IF NOT EXISTS ocpp_events (
        id INTEGER PRIMARY KEY,
        charger_id TEXT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    )""",
    """CREATE TABLE IF NOT EXISTS ocpp_commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charger_id TEXT NOT NULL,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'sent', 'done', 'failed', 'expired')),
        result TEXT,
        error TEXT,
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
        updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    )""",
    "CREATE INDEX IF NOT EXISTS ocpp_cmd_state ON ocpp_commands(state, id)",
]

CHARGER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-+*@]{0,47}$")
# SQLite INTEGER: a JSON integer outside it cannot be stored (OverflowError) and is refused
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# a register value with more digits than this is not energy; converting a hostile
# "1e1000000" to int would cost seconds of CPU per value (and hours for 1e10000000)
MAX_REGISTER_DIGITS = 18
SESSION_REASON = "ocpp_session"
# an idTag in an active transaction younger than this is refused elsewhere (ConcurrentTx);
# older ones are taken as lost (charger reset without StopTransaction)
CONCURRENT_WINDOW_S = 12 * 3600
# the CS → charger calls the CLI may queue (Core profile + TriggerMessage)
COMMAND_ACTIONS = ("RemoteStartTransaction", "RemoteStopTransaction", "Reset", "UnlockConnector",
                   "ChangeAvailability", "ChangeConfiguration", "GetConfiguration", "ClearCache",
                   "TriggerMessage")


class StoreError(ValueError):
    """A request the store refuses (unknown charger, bad value): a clear one-line reason."""


def init(conn):
    accounts.init(conn)
    outbox.init(conn)
    ensure_schema(conn, "ocpp", SCHEMA_VERSION, SCHEMA)


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


def event(conn, charger_id, kind, **detail):
    conn.execute("INSERT INTO ocpp_events(charger_id, kind, detail) VALUES(?, ?, ?)",
                 (charger_id, kind, json.dumps(detail, sort_keys=True, default=str)))


def check_charger_id(charger_id):
    if not isinstance(charger_id, str) or not CHARGER_ID.match(charger_id):
        raise StoreError(
            f"invalid charger id {charger_id!r}: 1..48 characters A-Z a-z 0-9 . _ - + * @")
    return charger_id


# ---------------------------------------------------------------- chargers

def add_charger(conn, charger_id, password_hash, owner=None, fee_per_kwh=0, meter_key=None):
    """Register a charger, or complete the registration of one waiting as Pending."""
    check_charger_id(charger_id)
    owner = normalize_address(owner) if owner else None
    row = get_charger(conn, charger_id)
    if row is not None and row["status"] == "registered":
        raise StoreError(f"charger {charger_id} already exists (use `charger set`)")
    if row is None:
        conn.execute(
            "INSERT INTO ocpp_chargers(id, password_hash, owner, fee_per_kwh, meter_key) "
            "VALUES(?, ?, ?, ?, ?)",
            (charger_id, password_hash, owner, str(int(fee_per_kwh)), meter_key))
    else:
        conn.execute(
            "UPDATE ocpp_chargers SET password_hash=?, owner=?, fee_per_kwh=?, meter_key=?, "
            "status='registered' WHERE id=?",
            (password_hash, owner, str(int(fee_per_kwh)), meter_key, charger_id))
    event(conn, charger_id, "charger_added", owner=owner, fee_per_kwh=int(fee_per_kwh),
          meter_key=bool(meter_key))


def update_charger(conn, charger_id, **fields):
    """Change password_hash / owner / fee_per_kwh / meter_key of a registered charger."""
    if get_charger(conn, charger_id) is None:
        raise StoreError(f"unknown charger {charger_id}")
    allowed = {"password_hash", "owner", "fee_per_kwh", "meter_key"}
    for key, value in fields.items():
        if key not in allowed:
            raise StoreError(f"cannot set {key}")
        if key == "owner" and value:
            value = normalize_address(value)
        if key == "fee_per_kwh":
            value = str(int(value))
        conn.execute(f"UPDATE ocpp_chargers SET {key}=? WHERE id=?", (value, charger_id))
    event(conn, charger_id, "charger_updated", fields=sorted(fields))


def note_pending(conn, charger_id):
    """An unknown charger connected while allow_unknown_pending: keep it visible to the operator."""
    conn.execute("INSERT INTO ocpp_chargers(id, status) VALUES(?, 'pending') "
                 "ON CONFLICT(id) DO NOTHING", (charger_id,))


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


# ---------------------------------------------------------------- idTags and accounts

def tag_address(id_tag):
    """The custodial prepaid address of an idTag registered without one (deterministic)."""
    return "0x" + keccak(("egs-ocpp-idtag|" + id_tag.upper()).encode())[-20:].hex()


def add_id_tag(conn, id_tag, address=None, expires_at=None):
    if not isinstance(id_tag, str) or not 1 <= len(id_tag) <= 20 or not id_tag.isprintable():
        raise StoreError("idTag must be 1..20 printable characters (OCPP IdToken)")
    address = normalize_address(address) if address else tag_address(id_tag)
    if get_id_tag(conn, id_tag) is not None:
        raise StoreError(f"idTag {id_tag} already exists")
    accounts.ensure_account(conn, address, label=f"ocpp idTag {id_tag}")
    conn.execute("INSERT INTO ocpp_id_tags(id_tag, address, expires_at) VALUES(?, ?, ?)",
                 (id_tag, address, expires_at))
    return address


def set_id_tag_status(conn, id_tag, status):
    if get_id_tag(conn, id_tag) is None:
        raise StoreError(f"unknown idTag {id_tag}")
    conn.execute("UPDATE ocpp_id_tags SET status=? WHERE id_tag=?", (status, id_tag))


def get_id_tag(conn, id_tag):
    return conn.execute("SELECT * FROM ocpp_id_tags WHERE id_tag=?", (id_tag,)).fetchone()


def list_id_tags(conn):
    return conn.execute("SELECT * FROM ocpp_id_tags ORDER BY id_tag").fetchall()


def strip_suffix(id_tag, suffixes):
    upper = id_tag.upper()
    for suffix in suffixes:
        if upper.endswith(suffix.upper()) and len(id_tag) > len(suffix):
            return id_tag[: -len(suffix)]
    return id_tag


def authorize(conn, id_tag, settings, charger_id=None, at=None):
    """→ (status, address or None, reason). Reasons are logged as events."""
    tag = strip_suffix(id_tag, settings.id_tag_suffixes)
    row = get_id_tag(conn, tag)
    if row is None:
        status, address, reason = "Invalid", None, "unknown idTag"
    elif row["status"] == "blocked":
        status, address, reason = "Blocked", row["address"], "idTag blocked by operator"
    elif row["expires_at"] is not None and row["expires_at"] <= (at or now()):
        status, address, reason = "Expired", row["address"], "idTag expired"
    else:
        address = row["address"]
        balance = accounts.balance(conn, address, "EEA")
        if balance < settings.min_deposit_eea:
            status = "Blocked"
            reason = f"prepaid balance {balance} below the minimum deposit {settings.min_deposit_eea}"
        else:
            status, reason = "Accepted", ""
    if status != "Accepted":
        event(conn, charger_id, "auth_refused", id_tag=id_tag, status=status, reason=reason)
    return status, address, reason


def id_tag_info(status, expiry=None):
    info = {"status": status}
    if expiry is not None:
        info["expiryDate"] = iso(expiry)
    return info


# ---------------------------------------------------------------- transactions

def start_transaction(conn, charger_id, connector_id, id_tag, meter_start, timestamp, settings,
                      reservation_id=None):
    """→ (transaction_id, idTagInfo dict). Idempotent for identical retries."""
    if connector_id < 1:
        raise StoreError(f"connectorId of a transaction must be >= 1, got {connector_id}")
    if meter_start < 0:
        raise StoreError(f"meterStart must not be negative, got {meter_start}")
    if not in_int64(meter_start) or not in_int64(connector_id):
        raise StoreError("meterStart or connectorId is out of range (64-bit integer)")
    start_epoch = parse_time(timestamp)
    row = conn.execute(
        "SELECT id, auth_status FROM ocpp_transactions WHERE charger_id=? AND connector_id=? "
        "AND id_tag=? AND meter_start=? AND start_ts=?",
        (charger_id, connector_id, id_tag, meter_start, timestamp)).fetchone()
    if row is not None:
        return row["id"], id_tag_info(row["auth_status"])
    status, address, reason = authorize(conn, id_tag, settings, charger_id, at=start_epoch)
    offline = start_epoch < now() - settings.offline_after_s
    flags = []
    if offline:
        flags.append("offline_start")
        if address is None:
            # the car was charged on the charger's local decision: keep it, flag it
            flags.append("offline_unknown_id_tag")
            event(conn, charger_id, "offline_unknown_id_tag", id_tag=id_tag,
                  connector=connector_id, start=timestamp)
    if status == "Accepted" and address is not None:
        busy = conn.execute(
            "SELECT id FROM ocpp_transactions WHERE address=? AND state='active' "
            "AND start_epoch > ? LIMIT 1", (address, now() - CONCURRENT_WINDOW_S)).fetchone()
        if busy is not None and not offline:
            status, reason = "ConcurrentTx", f"idTag already in transaction {busy['id']}"
            event(conn, charger_id, "auth_refused", id_tag=id_tag, status=status, reason=reason)
    cur = conn.execute(
        "INSERT INTO ocpp_transactions(charger_id, connector_id, id_tag, address, auth_status, "
        "auth_reason, reservation_id, meter_start, start_ts, start_epoch, offline_start, flags) "
        "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (charger_id, connector_id, id_tag, address, status, reason, reservation_id, meter_start,
         timestamp, start_epoch, int(offline), json.dumps(flags)))
    return cur.lastrowid, id_tag_info(status)


def in_int64(value):
    return isinstance(value, int) and INT64_MIN <= value <= INT64_MAX


def get_transaction(conn, transaction_id):
    if not in_int64(transaction_id):
        return None  # no row can have this id
    return conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (transaction_id,)).fetchone()


def list_transactions(conn, state=None, charger_id=None, limit=100):
    sql, args = "SELECT * FROM ocpp_transactions WHERE 1=1", []
    if state:
        sql += " AND state=?"
        args.append(state)
    if charger_id:
        sql += " AND charger_id=?"
        args.append(charger_id)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    return conn.execute(sql, args).fetchall()


def energy_wh_of(sampled):
    """An energy register sampled value → integer Wh (kWh converted), or None."""
    measurand = sampled.get("measurand", "Energy.Active.Import.Register")
    if measurand != "Energy.Active.Import.Register" or sampled.get("format") == "SignedData":
        return None
    unit = sampled.get("unit", "Wh")
    try:
        value = Decimal(sampled["value"])
    except (InvalidOperation, KeyError, TypeError):
        return None
    if not value.is_finite() or value.adjusted() >= MAX_REGISTER_DIGITS:
        return None
    if unit == "kWh":
        value *= 1000
    elif unit != "Wh":
        return None
    wh = int(value)  # floor toward zero: a register never bills a fraction of a Wh
    return wh if in_int64(wh) else None


def _verify_signed(value, meter_key, ocmf):
    """→ (state, detail, record or None). state: verified | invalid | unverifiable.

    Only the charger's registered meter key counts; a key sent inside the value
    (OCA wrapper) is a claim, and one that differs is noted in the detail.
    """
    try:
        text, claimed = ocmf.decode_ocpp_signed_data_full(value)
    except ValueError as e:
        return "invalid", f"undecodable SignedData: {e}", None
    note = ""
    if claimed is not None and (not meter_key or claimed.hex() != meter_key.lower()):
        note = "; key sent with the value is not the registered one"
    if not meter_key:
        try:
            return "unverifiable", "charger has no registered meter key" + note, ocmf.parse(text)
        except ValueError as e:
            return "invalid", f"{type(e).__name__}: {e}", None
    try:
        record = ocmf.verify(text, bytes.fromhex(meter_key))
    except ValueError as e:
        return "invalid", f"{type(e).__name__}: {e}" + note, None
    return "verified", note.lstrip("; "), record


def record_meter_values(conn, charger_id, connector_id, transaction_id, meter_value, source,
                        lenient=False):
    """Store every sampled value (raw text kept); verify SignedData on arrival.

    Returns the number of values stored. Values for a transaction that is not this
    charger's are stored unlinked and logged as a security event. A timestamp that
    is not RFC 3339 is refused, or with `lenient` stored as sent.
    """
    charger = get_charger(conn, charger_id)
    meter_key = charger["meter_key"] if charger else None
    if transaction_id is not None:
        tx = get_transaction(conn, transaction_id)
        if tx is None or tx["charger_id"] != charger_id:
            event(conn, charger_id, "security", what="meter values for a foreign transaction",
                  transaction_id=transaction_id)
            transaction_id = None
    n = 0
    for mv in meter_value:
        ts = mv["timestamp"]
        if not lenient:
            parse_time(ts)
        for sv in mv["sampledValue"]:
            verify_state = detail = record_hash = None
            signed_wh = signed_seq = None
            if sv.get("format") == "SignedData":
                from protocol import ocmf
                verify_state, detail, record = _verify_signed(sv["value"], meter_key, ocmf)
                record_hash = "0x" + keccak(sv["value"].encode()).hex()
                if record is not None:
                    signed_wh, signed_seq = record.import_wh, record.sequence
                if verify_state == "invalid":
                    event(conn, charger_id, "security", what="signed meter value rejected",
                          transaction_id=transaction_id, detail=detail)
            conn.execute(
                "INSERT INTO ocpp_meter_values(charger_id, connector_id, transaction_id, source, ts, "
                "context, format, measurand, phase, location, unit, value, wh, verify_state, "
                "verify_detail, record_hash, signed_import_wh, signed_seq) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (charger_id, connector_id, transaction_id, source, ts, sv.get("context"),
                 sv.get("format"), sv.get("measurand"), sv.get("phase"), sv.get("location"),
                 sv.get("unit"), sv["value"], energy_wh_of(sv), verify_state, detail,
                 record_hash, signed_wh, signed_seq))
            n += 1
    return n


def meter_values(conn, transaction_id):
    return conn.execute("SELECT * FROM ocpp_meter_values WHERE transaction_id=? ORDER BY id",
                        (transaction_id,)).fetchall()


def assess(tx, values, charger, settings, replayed_from=None):
    """Decide what a stopped transaction bills: → (energy_wh, source, reasons, notes).

    Non-empty `reasons` hold the session for review. The rules:
      * signed values (SignedData) verified against the charger's meter key are
        what is billed: end − begin register of the first and last verified record;
      * a charger with a registered meter key must send them (missing → review),
        and any signed value that fails verification holds the session;
      * unsigned: meterStop − meterStart, refused when negative, above
        max_session_wh (a lifetime register value in one of them), above what
        max_power_w delivers in the session's duration, or when the energy
        registers in MeterValues disagree with meterStart..meterStop (kWh/Wh mix-up).
    """
    reasons, notes = [], []
    meter_start, meter_stop = tx["meter_start"], tx["meter_stop"]
    unsigned = meter_stop - meter_start
    signed = [v for v in values if v["format"] == "SignedData"]
    verified = [v for v in signed if v["verify_state"] == "verified"]
    bad = [v for v in signed if v["verify_state"] != "verified"]
    if bad:
        reasons.append(f"{len(bad)} signed meter value(s) failed verification: "
                       f"{bad[0]['verify_detail']}")
    if replayed_from:
        reasons.append(f"signed record replayed from transaction {replayed_from}")
    energy, source = unsigned, "meter_stop"
    if charger["meter_key"] and not signed:
        reasons.append("signed meter values missing (charger has a registered meter key)")
    if verified and not bad:
        ordered = sorted(verified, key=lambda v: (v["signed_seq"] is None, v["signed_seq"] or 0,
                                                  v["id"]))
        begin, end = ordered[0], ordered[-1]
        if begin["record_hash"] == end["record_hash"]:
            reasons.append("only one signed reading: no verified begin and end")
        elif begin["signed_import_wh"] is None or end["signed_import_wh"] is None:
            reasons.append("signed readings carry no import register")
        else:
            energy, source = end["signed_import_wh"] - begin["signed_import_wh"], "signed"
            if abs(energy - unsigned) > max(10, abs(energy) // 100):
                notes.append(f"meterStop-meterStart {unsigned} Wh differs from signed {energy} Wh")
    if energy < 0:
        reasons.append(f"negative energy {energy} Wh")
    if energy > settings.max_session_wh:
        reasons.append(f"implausible energy {energy} Wh > {settings.max_session_wh} Wh "
                       "(lifetime register value?)")
    duration = (tx["stop_epoch"] or 0) - tx["start_epoch"]
    if energy > 0 and duration <= 0:
        reasons.append("transaction stops before it starts")
    elif energy > settings.max_power_w * duration / 3600 + 10:
        reasons.append(f"{energy} Wh in {duration:.0f} s exceeds {settings.max_power_w} W")
    tol = max(10, abs(unsigned) // 100)
    for v in values:
        wh = v["wh"]
        if wh is None:
            continue
        if meter_start - tol <= wh <= meter_stop + tol:
            continue
        if v["unit"] in (None, "Wh") and meter_start - tol <= wh * 1000 <= meter_stop + tol:
            reasons.append(f"energy register {v['value']} labelled Wh looks like kWh")
        elif v["unit"] == "kWh" and meter_start - tol <= wh // 1000 <= meter_stop + tol:
            reasons.append(f"energy register {v['value']} labelled kWh looks like Wh")
        else:
            reasons.append(f"energy register {wh} Wh outside meterStart..meterStop")
        break
    return energy, source, reasons, notes


def stop_transaction(conn, charger_id, transaction_id, meter_stop, timestamp, settings,
                     price_source, reason=None, id_tag=None, transaction_data=None):
    """Record a stop and settle at most once. → idTagInfo dict or None.

    Always answerable: a stop the charger would otherwise retry and finally drop
    (unreadable timestamp, malformed transactionData) is kept and held for review.
    """
    hold = None
    try:
        stop_epoch = parse_time(timestamp)
    except StoreError as e:
        stop_epoch, hold = now(), f"StopTransaction timestamp unreadable ({e})"
    raw_meter_stop = meter_stop
    if not in_int64(meter_stop):
        # kept out of the INTEGER column (it cannot hold it) but never dropped: held for review
        meter_stop = None
        hold = "; ".join(filter(None, [
            hold, f"meterStop {str(raw_meter_stop)[:40]} is out of range (64-bit integer)"]))
    tx = get_transaction(conn, transaction_id)
    if tx is None or tx["charger_id"] != charger_id:
        event(conn, charger_id, "security" if tx is not None else "unknown_transaction",
              what="StopTransaction for an unknown or foreign transaction",
              transaction_id=transaction_id, meter_stop=meter_stop, timestamp=timestamp)
        return None
    info = None
    if id_tag is not None:
        status = "Accepted" if id_tag.upper() == tx["id_tag"].upper() else \
            authorize(conn, id_tag, settings, charger_id)[0]
        info = id_tag_info(status)
    if tx["state"] != "active":
        if (tx["meter_stop"], tx["stop_ts"]) != (meter_stop, timestamp):
            event(conn, charger_id, "stop_replay_differs", transaction_id=transaction_id,
                  first=[tx["meter_stop"], tx["stop_ts"]],
                  now=[str(raw_meter_stop)[:40] if meter_stop is None else meter_stop, timestamp])
        return info
    if transaction_data:
        conn.execute("SAVEPOINT ocpp_tx_data")
        try:
            record_meter_values(conn, charger_id, tx["connector_id"], transaction_id,
                                transaction_data, "StopTransaction", lenient=True)
        except (StoreError, ArithmeticError) as e:  # ArithmeticError: OverflowError …
            # the stop itself must still be recorded: its values are dropped, the session held
            conn.execute("ROLLBACK TO ocpp_tx_data")
            hold = f"transactionData unreadable ({type(e).__name__}: {str(e)[:200]})"
        conn.execute("RELEASE ocpp_tx_data")
    conn.execute(
        "UPDATE ocpp_transactions SET meter_stop=?, stop_ts=?, stop_epoch=?, stop_reason=?, "
        "stop_id_tag=?, stopped_at=? WHERE id=?",
        (meter_stop, timestamp, stop_epoch, reason, id_tag, now(), transaction_id))
    if meter_stop is None:
        conn.execute("UPDATE ocpp_transactions SET state='review', review_reason=? WHERE id=?",
                     (hold, transaction_id))
        event(conn, charger_id, "session_review", transaction_id=transaction_id, reasons=[hold])
        return info
    settle(conn, transaction_id, settings, price_source, hold=hold)
    return info


def _replayed_from(conn, tx_id, values):
    hashes = [v["record_hash"] for v in values
              if v["record_hash"] and v["verify_state"] == "verified"]
    if not hashes:
        return None
    marks = ",".join("?" * len(hashes))
    row = conn.execute(
        f"SELECT transaction_id FROM ocpp_meter_values WHERE record_hash IN ({marks}) "
        "AND transaction_id IS NOT NULL AND transaction_id != ? LIMIT 1",
        (*hashes, tx_id)).fetchone()
    return row[0] if row else None


def records_hash(tx, values):
    facts = {
        "charger": tx["charger_id"], "transaction": tx["id"], "connector": tx["connector_id"],
        "meter_start": tx["meter_start"], "meter_stop": tx["meter_stop"],
        "start": tx["start_ts"], "stop": tx["stop_ts"],
        "signed": [v["value"] for v in values if v["format"] == "SignedData"],
    }
    return "0x" + keccak(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hex()


def settle(conn, transaction_id, settings, price_source, energy_override=None, note="",
           hold=None):
    """Bill a stopped transaction, or hold it for review. Exactly once per transaction.

    In one transaction: the balance-book entries (EV pays energy + fee; the pool
    receives the energy payment, the station owner the fee; the pool's WATT for
    the energy is burned), the ledger outbox intent under
    settlement_id(chargeBoxId, transactionId), and the session's state.
    `energy_override` is the operator's reviewed figure (`egs-gw session settle`).
    """
    tx = get_transaction(conn, transaction_id)
    if tx is None:
        raise StoreError(f"unknown transaction {transaction_id}")
    if tx["state"] == "settled":
        return "settled"
    if tx["state"] == "void":
        raise StoreError(f"transaction {transaction_id} was voided")
    if tx["stopped_at"] is None:
        raise StoreError(f"transaction {transaction_id} has not stopped")
    if tx["meter_stop"] is None and energy_override is None:
        raise StoreError(f"transaction {transaction_id} has no usable meterStop: "
                         "settle it with the reviewed energy")
    charger = get_charger(conn, tx["charger_id"])
    values = meter_values(conn, transaction_id)
    flags = json.loads(tx["flags"])
    if energy_override is None:
        energy, source, reasons, notes = assess(tx, values, charger, settings,
                                                _replayed_from(conn, transaction_id, values))
        if hold:
            reasons.append(hold)
        if tx["address"] is None:
            reasons.append(f"idTag {tx['id_tag']} has no account")
        elif tx["auth_status"] != "Accepted" and energy > 0:
            reasons.append(f"started with idTag status {tx['auth_status']}")
    else:
        energy, source, reasons, notes = int(energy_override), "operator", [], [note]
        if energy < 0:
            raise StoreError("energy must not be negative")
        if tx["address"] is None:
            raise StoreError(f"idTag {tx['id_tag']} has no account: register it first")
    signed_rows = [v for v in values if v["verify_state"] == "verified"]
    begin = min((v["signed_import_wh"] for v in signed_rows
                 if v["signed_import_wh"] is not None), default=None)
    end = max((v["signed_import_wh"] for v in signed_rows
               if v["signed_import_wh"] is not None), default=None)
    for n in notes:
        if n and n not in flags:
            flags.append(n)
    if reasons:
        conn.execute(
            "UPDATE ocpp_transactions SET state='review', review_reason=?, energy_wh=?, "
            "energy_source=?, flags=?, signed_begin_wh=?, signed_end_wh=? WHERE id=?",
            ("; ".join(reasons), energy, source, json.dumps(flags), begin, end, transaction_id))
        event(conn, tx["charger_id"], "session_review", transaction_id=transaction_id,
              reasons=reasons)
        return "review"
    sid = outbox.settlement_id(tx["charger_id"], transaction_id)
    fee_rate = int(charger["fee_per_kwh"] or 0) if charger["owner"] else 0
    payer, pool = tx["address"], settings.energy_pool
    owner = charger["owner"] or pool
    price = energy_eea = fee_eea = 0
    if energy > 0:
        # the price source (a market buy, issue 7) writes inside the same savepoint
        conn.execute("SAVEPOINT ocpp_settle")
        try:
            price = int(price_source(conn, tx, energy))
            if price < 0:
                raise ValueError(f"price source returned a negative price {price}")
            energy_eea = energy * price // 1000
            fee_eea = energy * fee_rate // 1000
            entries = [(payer, "EEA", -(energy_eea + fee_eea)), (pool, "EEA", energy_eea),
                       (owner, "EEA", fee_eea), (pool, "WATT", -energy)]
            accounts.post(conn, [e for e in entries if e[2] != 0], SESSION_REASON, sid)
            outbox.enqueue(conn, "session", sid, {
                "payer": payer, "pool": pool, "station_owner": owner, "energy_wh": energy,
                "energy_eea": energy_eea, "fee_eea": fee_eea,
                "records_hash": records_hash(tx, values)})
        except Exception as e:  # noqa: BLE001 — a session that cannot be billed is held, never lost
            # BalanceError: not enough EEA/WATT; OverflowError: an amount beyond 64 bits
            # in a component's table; anything else: the price source failed
            conn.execute("ROLLBACK TO ocpp_settle")
            conn.execute("RELEASE ocpp_settle")
            why = f"cannot settle: {e}" if isinstance(e, (BalanceError, OverflowError)) \
                else f"cannot settle: price source failed: {type(e).__name__}: {e}"
            conn.execute(
                "UPDATE ocpp_transactions SET state='review', review_reason=?, energy_wh=?, "
                "energy_source=?, flags=? WHERE id=?",
                (why, energy, source, json.dumps(flags), transaction_id))
            event(conn, tx["charger_id"], "session_review", transaction_id=transaction_id,
                  reasons=[why])
            return "review"
        conn.execute("RELEASE ocpp_settle")
    else:
        sid = None  # nothing delivered, nothing to move
    conn.execute(
        "UPDATE ocpp_transactions SET state='settled', review_reason='', energy_wh=?, "
        "energy_source=?, price_per_kwh=?, energy_eea=?, fee_eea=?, settlement_id=?, flags=?, "
        "signed_begin_wh=?, signed_end_wh=?, settled_at=? WHERE id=?",
        (energy, source, str(price), str(energy_eea), str(fee_eea), sid, json.dumps(flags),
         begin, end, now(), transaction_id))
    event(conn, tx["charger_id"], "session_settled", transaction_id=transaction_id,
          energy_wh=energy, energy_eea=str(energy_eea), fee_eea=str(fee_eea), settlement_id=sid)
    return "settled"


def void(conn, transaction_id, note):
    tx = get_transaction(conn, transaction_id)
    if tx is None:
        raise StoreError(f"unknown transaction {transaction_id}")
    if tx["state"] != "review":
        raise StoreError(f"transaction {transaction_id} is {tx['state']}, not under review")
    conn.execute("UPDATE ocpp_transactions SET state='void', review_reason=? WHERE id=?",
                 (f"voided: {note}", transaction_id))
    event(conn, tx["charger_id"], "session_void", transaction_id=transaction_id, note=note)


def configured_price(price_per_kwh):
    """The price source until the market sets it (issue 7): one configured number.

    A price source is `f(conn, transaction_row, energy_wh) -> EEA base units per kWh`,
    called inside the settlement's transaction, so a market buy can record its
    own trade atomically with the session.
    """
    def price_source(conn, tx, energy_wh):
        return price_per_kwh
    return price_source


# ---------------------------------------------------------------- CLI command queue

def queue_command(conn, charger_id, action, payload):
    if action not in COMMAND_ACTIONS:
        raise StoreError(f"unknown command {action}")
    cur = conn.execute("INSERT INTO ocpp_commands(charger_id, action, payload) VALUES(?, ?, ?)",
                       (charger_id, action, json.dumps(payload)))
    return cur.lastrowid


def claim_commands(conn, limit=50):
    rows = conn.execute("SELECT * FROM ocpp_commands WHERE state='queued' ORDER BY id LIMIT ?",
                        (limit,)).fetchall()
    claimed = []
    for row in rows:
        cur = conn.execute("UPDATE ocpp_commands SET state='sent', updated_at=? "
                           "WHERE id=? AND state='queued'", (now(), row["id"]))
        if cur.rowcount == 1:
            claimed.append(row)
    return claimed


def finish_command(conn, command_id, result=None, error=None):
    conn.execute("UPDATE ocpp_commands SET state=?, result=?, error=?, updated_at=? WHERE id=?",
                 ("failed" if error else "done", json.dumps(result) if result is not None else None,
                  error, now(), command_id))


def abandon_command(conn, command_id, error):
    """A sent command whose answer will never be recorded (the service stops) fails."""
    conn.execute("UPDATE ocpp_commands SET state='failed', error=?, updated_at=? "
                 "WHERE id=? AND state='sent'", (error, now(), command_id))


def expire_command(conn, command_id):
    """The CLI gave up waiting: a still-queued command is never sent later."""
    cur = conn.execute("UPDATE ocpp_commands SET state='expired', updated_at=? "
                       "WHERE id=? AND state='queued'", (now(), command_id))
    return cur.rowcount == 1


def get_command(conn, command_id):
    return conn.execute("SELECT * FROM ocpp_commands WHERE id=?", (command_id,)).fetchone()
