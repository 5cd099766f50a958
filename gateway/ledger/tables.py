"""The ledger component's own tables (besides the outbox in outbox.py).

ledger_batches / ledger_batch_accounts: what each interval settlement decided,
per account — the figures `reconcile` checks against the intervals and the book,
and the grid import (import not covered by WATT) that billing reads.
ledger_storage: the storage owners and capacities, mirrored from the intents
that register them on chain; the commission split uses it.
ledger_state: small key/value facts (next commission interval, deposit scan block).
ledger_review: device intervals held for review because their amounts are out of
bounds (gateway/ledger/settlement.py); they stay unsettled until an operator acts.
"""
import json

from gateway.db import ensure_schema

VERSION = 2

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ledger_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS ledger_batches (
        settlement_id TEXT PRIMARY KEY,
        community TEXT NOT NULL,
        start INTEGER NOT NULL,
        batch INTEGER NOT NULL,
        records_hash TEXT NOT NULL,
        records TEXT NOT NULL,
        commission TEXT NOT NULL,
        onchain INTEGER NOT NULL,
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
        UNIQUE (community, start, batch)
    )""",
    """CREATE TABLE IF NOT EXISTS ledger_batch_accounts (
        settlement_id TEXT NOT NULL REFERENCES ledger_batches(settlement_id),
        account TEXT NOT NULL,
        export_wh INTEGER NOT NULL,
        import_wh INTEGER NOT NULL,
        minted_wh INTEGER NOT NULL,
        burned_wh INTEGER NOT NULL,
        grid_import_wh INTEGER NOT NULL,
        stored_wh INTEGER NOT NULL,
        commission_due TEXT NOT NULL,
        commission_eea TEXT NOT NULL,
        PRIMARY KEY (settlement_id, account)
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_batch_accounts_acct ON ledger_batch_accounts(account)",
    """CREATE TABLE IF NOT EXISTS ledger_storage (
        owner TEXT PRIMARY KEY,
        capacity_wh INTEGER NOT NULL,
        changes INTEGER NOT NULL DEFAULT 0,
        settlement_id TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS ledger_review (
        interval_id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        account TEXT NOT NULL,
        start INTEGER NOT NULL,
        reason TEXT NOT NULL,
        held_at REAL NOT NULL
    )""",
]


def init(conn):
    from gateway import accounts
    from gateway.ingest import store
    from gateway.ledger import outbox

    store.init(conn)
    accounts.init(conn)
    outbox.init(conn)
    ensure_schema(conn, "ledger", VERSION, SCHEMA)


def get_state(conn, key, default=None):
    row = conn.execute("SELECT value FROM ledger_state WHERE key=?", (key,)).fetchone()
    return json.loads(row[0]) if row else default


def put_state(conn, key, value):
    conn.execute(
        "INSERT INTO ledger_state(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (key, json.dumps(value)))


def storage_owners(conn):
    """[(owner, capacity_wh)] with capacity > 0, by owner."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT owner, capacity_wh FROM ledger_storage WHERE capacity_wh > 0 ORDER BY owner")]
