"""The durable ledger outbox: settlement intents waiting to reach the chain.

Producers (interval settlement, OCPP sessions, market trades) call `enqueue`
inside the same SQLite transaction in which they record their decision, so a
decision and its intent land together or not at all. A settlement id is the
idempotency key end to end: enqueueing an id twice is a no-op here, and the
contract refuses to apply an id twice on chain (the call reverts).

The ledger worker (gateway/ledger/worker.py) signs intents in `id` order; each raw
transaction is stored with its nonce in `ledger_txs` before it is broadcast, and after a
crash it is re-broadcast, never re-signed with a new nonce (docs/ledger.md, "Outbox and
worker"). The states and payload shapes are noted beside KINDS.
"""
import json
import time

from eth_utils import keccak

from gateway.db import ensure_schema, transaction

# Payload shapes, by kind (all amounts integers: Wh, EEA base units with 18 decimals;
# gateway/ledger/intents.py maps each to its contract call):
#   "interval": {"community", "start": int, "batch": int, "records_hash": "0x…",
#                "entries": [[account, mint_wh, burn_wh, commission_eea], …]}
#                (written by gateway/ledger/settlement.py)
#   "session":  {"payer", "pool", "station_owner": address, "energy_wh": int,
#                "energy_eea": int, "fee_eea": int, "records_hash": "0x…"}
#   "trades":   {"trades": [{"seller", "buyer": address, "wh": int, "eea": int}, …],
#                "records_hash": "0x…"}
#   "storage":  {"owner": address, "capacity_wh": int}
#   "withdraw": {"account": address, "amount": int}
# Intent states: queued -> signed -> confirmed; `rejected` for a payload that can never
# become a valid call (kept for the operator, skipped by the worker). Transaction states
# (ledger_txs): signed -> sent -> mined -> confirmed, or reverted / dropped (its nonce was
# taken by another transaction) / replaced (re-priced: a new row with the same nonce).
KINDS = ("interval", "session", "trades", "storage", "withdraw")
VERSION = 3  # 3: transactions may be 'replaced' (re-priced with the same nonce)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ledger_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        settlement_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_outbox_state ON ledger_outbox(state, id)",
    # Version 2: the signed transactions carrying intents, one row per signature.
    """CREATE TABLE IF NOT EXISTS ledger_txs (
        id INTEGER PRIMARY KEY,
        outbox_id INTEGER NOT NULL REFERENCES ledger_outbox(id),
        sender TEXT NOT NULL,
        nonce INTEGER NOT NULL,
        tx_hash TEXT NOT NULL UNIQUE,
        raw_tx TEXT NOT NULL,
        gas_limit INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'signed',
        block_number INTEGER,
        block_hash TEXT,
        gas_used INTEGER,
        error TEXT NOT NULL DEFAULT '',
        signed_at REAL NOT NULL,
        sent_at REAL,
        confirmed_at REAL
    )""",
    # Never two live transactions with the same nonce from one sender (a re-priced
    # transaction is 'replaced' by one with its nonce; version 1 stores had ledger_txs_nonce
    # without 'replaced', dropped in init).
    """CREATE UNIQUE INDEX IF NOT EXISTS ledger_txs_live_nonce ON ledger_txs(sender, nonce)
        WHERE state NOT IN ('dropped', 'reverted', 'replaced')""",
    "CREATE INDEX IF NOT EXISTS ledger_txs_outbox ON ledger_txs(outbox_id)",
    "CREATE INDEX IF NOT EXISTS ledger_txs_state ON ledger_txs(state, nonce)",
]

# Version 2 columns added to ledger_outbox (ALTER TABLE is not idempotent: see init).
_V2_COLUMNS = {
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "last_error": "TEXT NOT NULL DEFAULT ''",
    "not_before": "REAL NOT NULL DEFAULT 0",
    "confirmed_at": "REAL",
}

LIVE_TX = ("signed", "sent", "mined")


class OutboxError(ValueError):
    pass


def init(conn):
    ensure_schema(conn, "ledger_outbox", VERSION, SCHEMA)
    with transaction(conn):
        have = {r[1] for r in conn.execute("PRAGMA table_info(ledger_outbox)")}
        for name, decl in _V2_COLUMNS.items():
            if name not in have:
                conn.execute(f"ALTER TABLE ledger_outbox ADD COLUMN {name} {decl}")
        conn.execute("DROP INDEX IF EXISTS ledger_txs_nonce")   # version 2's, without 'replaced'


def settlement_id(*parts):
    """keccak256 over the parts joined with '|', as 0x-hex (a bytes32 on chain)."""
    text = "|".join(str(p) for p in parts)
    return "0x" + keccak(text.encode()).hex()


def enqueue(conn, kind, sid, payload):
    """Queue an intent; call inside the caller's transaction. False if `sid` is already queued."""
    if kind not in KINDS:
        raise OutboxError(f"unknown settlement kind {kind!r}")
    if not (isinstance(sid, str) and sid.startswith("0x") and len(sid) == 66):
        raise OutboxError(f"settlement id must be 0x + 64 hex digits, got {sid!r}")
    cur = conn.execute(
        "INSERT INTO ledger_outbox(settlement_id, kind, payload) VALUES(?, ?, ?) "
        "ON CONFLICT(settlement_id) DO NOTHING",
        (sid, kind, json.dumps(payload, sort_keys=True)),
    )
    return cur.rowcount == 1


def pending(conn, limit=100):
    """Intents not yet confirmed on chain (rejected ones excluded), oldest first."""
    return conn.execute(
        "SELECT * FROM ledger_outbox WHERE state NOT IN ('confirmed', 'rejected') ORDER BY id LIMIT ?",
        (limit,),
    ).fetchall()


# ---- used by the worker ---------------------------------------------------------

def get(conn, outbox_id):
    return conn.execute("SELECT * FROM ledger_outbox WHERE id=?", (outbox_id,)).fetchone()


def by_sid(conn, sid):
    return conn.execute("SELECT * FROM ledger_outbox WHERE settlement_id=?", (sid,)).fetchone()


def next_queued(conn):
    """The oldest intent still waiting to be signed (rejected and confirmed ones skipped)."""
    return conn.execute(
        "SELECT * FROM ledger_outbox WHERE state='queued' ORDER BY id LIMIT 1").fetchone()


def live_txs(conn, sender):
    """Transactions broadcast or about to be, lowest nonce first."""
    marks = ",".join("?" * len(LIVE_TX))
    return conn.execute(
        f"SELECT t.*, o.settlement_id, o.kind FROM ledger_txs t JOIN ledger_outbox o ON o.id=t.outbox_id "
        f"WHERE t.sender=? AND t.state IN ({marks}) ORDER BY t.nonce", (sender, *LIVE_TX)).fetchall()


def ever_signed(conn, outbox_id):
    """Whether this store ever signed a transaction for the intent."""
    return conn.execute("SELECT 1 FROM ledger_txs WHERE outbox_id=? LIMIT 1",
                        (outbox_id,)).fetchone() is not None


def max_nonce(conn, sender):
    """Highest nonce this sender has a live or confirmed transaction for, or None."""
    row = conn.execute(
        "SELECT MAX(nonce) FROM ledger_txs WHERE sender=? AND state NOT IN ('dropped', 'reverted')",
        (sender,)).fetchone()
    return row[0]


def record_signed(conn, outbox_id, sender, nonce, tx_hash, raw_tx, gas_limit):
    """Store a signed transaction and move its intent to `signed`; caller's transaction."""
    conn.execute(
        "INSERT INTO ledger_txs(outbox_id, sender, nonce, tx_hash, raw_tx, gas_limit, signed_at) "
        "VALUES(?, ?, ?, ?, ?, ?, ?)",
        (outbox_id, sender, nonce, tx_hash, raw_tx, gas_limit, time.time()))
    conn.execute("UPDATE ledger_outbox SET state='signed', attempts=attempts+1 WHERE id=?", (outbox_id,))


def tx_state(conn, tx_id, state, **fields):
    sets = ["state=?"] + [f"{k}=?" for k in fields]
    conn.execute(f"UPDATE ledger_txs SET {', '.join(sets)} WHERE id=?", (state, *fields.values(), tx_id))


def confirm(conn, outbox_id, note=""):
    conn.execute(
        "UPDATE ledger_outbox SET state='confirmed', confirmed_at=?, last_error=? WHERE id=?",
        (time.time(), note, outbox_id))


def requeue(conn, outbox_id, error, delay_s=0.0):
    """Back to `queued` to be signed again with a new nonce (its old one is gone)."""
    conn.execute(
        "UPDATE ledger_outbox SET state='queued', last_error=?, not_before=? WHERE id=?",
        (str(error)[:500], time.time() + delay_s, outbox_id))


def reject(conn, outbox_id, error):
    conn.execute("UPDATE ledger_outbox SET state='rejected', last_error=? WHERE id=?",
                 (str(error)[:500], outbox_id))


def note_error(conn, outbox_id, error):
    conn.execute("UPDATE ledger_outbox SET last_error=? WHERE id=?", (str(error)[:500], outbox_id))


def counts(conn):
    """{state: n} over all intents."""
    return {r[0]: r[1] for r in conn.execute(
        "SELECT state, COUNT(*) FROM ledger_outbox GROUP BY state")}
