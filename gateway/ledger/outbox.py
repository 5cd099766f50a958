"""The durable ledger outbox: settlement intents waiting to reach the chain.

Producers (interval settlement, OCPP sessions, market trades) call `enqueue`
inside the same SQLite transaction in which they record their decision, so a
decision and its intent land together or not at all. A settlement id is the
idempotency key end to end: enqueueing an id twice is a no-op here, and the
contracts refuse to apply an id twice on chain.

The ledger worker (gateway/ledger) takes intents in `id` order, signs each into a
raw transaction stored with its nonce before broadcast, and marks it confirmed.

Payload shapes, by kind (all amounts integers: Wh, EEA base units with 18 decimals):
  "interval": see gateway/ledger/settlement.py
  "session":  {"payer", "pool", "station_owner": address, "energy_wh": int,
               "energy_eea": int, "fee_eea": int, "records_hash": "0x…"}
  "trades":   {"trades": [{"seller", "buyer": address, "wh": int, "eea": int}, …],
               "records_hash": "0x…"}
"""
import json

from eth_utils import keccak

from gateway.db import ensure_schema

KINDS = ("interval", "session", "trades")

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
]


class OutboxError(ValueError):
    pass


def init(conn):
    ensure_schema(conn, "ledger_outbox", 1, SCHEMA)


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
    return conn.execute(
        "SELECT * FROM ledger_outbox WHERE state != 'confirmed' ORDER BY id LIMIT ?", (limit,)
    ).fetchall()
