"""The central system's tables, created (or checked) by `init`.

One list of statements under one schema version (`gateway.db.ensure_schema`), and
the tables of the components the store writes into inside the same transaction:
the balance book (`gateway.accounts`) and the ledger outbox.
"""
from gateway import accounts
from gateway.db import ensure_schema, transaction
from gateway.ledger import outbox

SCHEMA_VERSION = 2
# columns added after version 1: (table, column, declaration), added to an older store first
_ADDED = [
    ("ocpp_chargers", "pending_remote", "TEXT"),   # the host a pending charger id belongs to
    ("ocpp_chargers", "max_power_w", "INTEGER"),   # rated power; NULL: [ocpp] max_power_w
]
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
        pending_remote TEXT,
        max_power_w INTEGER,
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
    # idTags a charger may start a session for: an Authorize Accepted for it, a RemoteStart
    """CREATE TABLE IF NOT EXISTS ocpp_auth_grants (
        charger_id TEXT NOT NULL,
        id_tag TEXT NOT NULL COLLATE NOCASE,
        source TEXT NOT NULL,
        granted_at REAL NOT NULL,
        used_at REAL,
        PRIMARY KEY (charger_id, id_tag)
    )""",
]


def init(conn):
    accounts.init(conn)
    outbox.init(conn)
    with transaction(conn):
        for table, column, decl in _ADDED:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if have and column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    ensure_schema(conn, "ocpp", SCHEMA_VERSION, SCHEMA)
