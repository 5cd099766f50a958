"""The gateway's book of account balances (WATT in Wh, EEA in base units).

The chain is where balances are settled; this book is the gateway's own record of
every change it has decided, written in the same SQLite transaction as the decision
and as the ledger outbox intent that carries it to the chain. Authorization (OCPP),
the market's executability checks and `egs-gw ledger reconcile` read it, so they
never wait on a JSON-RPC round trip. Amounts are integers, always.

Assets: "WATT" (1 unit = 1 Wh) and "EEA" (base units, 18 decimals on chain).
"""
from gateway.db import ensure_schema, transaction

ASSETS = ("WATT", "EEA")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS accounts (
        address TEXT PRIMARY KEY,
        label TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    )""",
    """CREATE TABLE IF NOT EXISTS balance_entries (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL REFERENCES accounts(address),
        asset TEXT NOT NULL CHECK (asset IN ('WATT', 'EEA')),
        delta INTEGER NOT NULL,
        reason TEXT NOT NULL,
        ref TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    )""",
    "CREATE INDEX IF NOT EXISTS balance_entries_addr ON balance_entries(address, asset)",
    "CREATE INDEX IF NOT EXISTS balance_entries_ref ON balance_entries(reason, ref)",
]


class BalanceError(ValueError):
    pass


def init(conn):
    ensure_schema(conn, "accounts", 1, SCHEMA)


def normalize_address(address):
    """EVM addresses are stored lower-case hex with 0x; anything else is refused."""
    a = str(address).strip()
    if not (len(a) == 42 and a[:2].lower() == "0x"):
        raise BalanceError(f"not an EVM address (0x + 40 hex digits): {address!r}")
    try:
        int(a[2:], 16)
    except ValueError:
        raise BalanceError(f"not an EVM address (0x + 40 hex digits): {address!r}") from None
    return "0x" + a[2:].lower()


def ensure_account(conn, address, label=""):
    address = normalize_address(address)
    conn.execute(
        "INSERT INTO accounts(address, label) VALUES(?, ?) ON CONFLICT(address) DO NOTHING",
        (address, label),
    )
    return address


def balance(conn, address, asset):
    if asset not in ASSETS:
        raise BalanceError(f"unknown asset {asset!r}")
    row = conn.execute(
        "SELECT COALESCE(SUM(delta), 0) FROM balance_entries WHERE address=? AND asset=?",
        (normalize_address(address), asset),
    ).fetchone()
    return int(row[0])


def post(conn, entries, reason, ref=""):
    """Apply balance changes [(address, asset, delta), …] atomically.

    Call inside the caller's `transaction` so the change lands with the decision
    that caused it. With a non-empty `ref` the same (reason, ref) never applies
    twice: returns False and changes nothing when it already did. A change that
    would make a balance negative raises BalanceError.
    """
    if ref and conn.execute(
        "SELECT 1 FROM balance_entries WHERE reason=? AND ref=? LIMIT 1", (reason, ref)
    ).fetchone():
        return False
    for address, asset, delta in entries:
        if asset not in ASSETS:
            raise BalanceError(f"unknown asset {asset!r}")
        if not isinstance(delta, int):
            raise BalanceError(f"amounts are integers, got {delta!r}")
        address = ensure_account(conn, address)
        if delta < 0 and balance(conn, address, asset) + delta < 0:
            raise BalanceError(f"{address} has not enough {asset} for {-delta}")
        conn.execute(
            "INSERT INTO balance_entries(address, asset, delta, reason, ref) VALUES(?, ?, ?, ?, ?)",
            (address, asset, delta, reason, ref),
        )
    return True


def credit(conn, address, asset, amount, reason="credit", ref=""):
    """Convenience for one positive entry in its own transaction."""
    with transaction(conn):
        return post(conn, [(address, asset, int(amount))], reason, ref)
