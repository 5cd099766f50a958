"""The gateway's book of account balances (WATT in Wh, EEA in base units).

The chain is where balances are settled; this book is the gateway's own record of
every change it has decided, written in the same SQLite transaction as the decision
and as the ledger outbox intent that carries it to the chain. Authorization (OCPP),
the market's executability checks and `egs-gw ledger reconcile` read it, so they
never wait on a JSON-RPC round trip. Amounts are integers, always.

Assets: "WATT" (1 unit = 1 Wh) and "EEA" (base units, 18 decimals on chain).

EEA base units outgrow SQLite's 64-bit integers (9.2 EEA), so every entry also
keeps its exact amount as decimal text (`amount`, schema version 2) and balances
are summed in Python from it; `delta` holds the same value when it fits in 64
bits (0 otherwise) and must not be summed in SQL for EEA.
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


INT64 = 2**63


class BalanceError(ValueError):
    pass


def init(conn):
    ensure_schema(conn, "accounts", 2, SCHEMA)
    with transaction(conn):
        have = {r[1] for r in conn.execute("PRAGMA table_info(balance_entries)")}
        if "amount" not in have:
            conn.execute("ALTER TABLE balance_entries ADD COLUMN amount TEXT")


def _exact(row_amount, row_delta):
    return int(row_amount) if row_amount is not None else int(row_delta)


_HEX = frozenset("0123456789abcdefABCDEF")


def normalize_address(address):
    """EVM addresses are stored lower-case hex with 0x; anything else is refused."""
    a = str(address).strip()
    # Every digit checked: int(..., 16) would also take "_", a sign or blanks.
    if not (len(a) == 42 and a[:2].lower() == "0x" and all(c in _HEX for c in a[2:])):
        raise BalanceError(f"not an EVM address (0x + 40 hex digits): {address!r}")
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
    return sum(_exact(a, d) for a, d in conn.execute(
        "SELECT amount, delta FROM balance_entries WHERE address=? AND asset=?",
        (normalize_address(address), asset)))


def balances(conn, asset=None, address=None, reason=None):
    """Exact sums {(address, asset): amount} over all entries, optionally filtered."""
    sql, args, where = "SELECT address, asset, amount, delta FROM balance_entries", [], []
    for column, value in (("asset", asset), ("address", address and normalize_address(address)),
                          ("reason", reason)):
        if value is not None:
            where.append(f"{column}=?")
            args.append(value)
    if where:
        sql += " WHERE " + " AND ".join(where)
    out = {}
    for addr, a, amount, delta in conn.execute(sql, args):
        out[(addr, a)] = out.get((addr, a), 0) + _exact(amount, delta)
    return out


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
            "INSERT INTO balance_entries(address, asset, delta, reason, ref, amount) VALUES(?, ?, ?, ?, ?, ?)",
            (address, asset, delta if -INT64 <= delta < INT64 else 0, reason, ref, str(delta)),
        )
    return True


def credit(conn, address, asset, amount, reason="credit", ref=""):
    """Convenience for one positive entry in its own transaction."""
    with transaction(conn):
        return post(conn, [(address, asset, int(amount))], reason, ref)
