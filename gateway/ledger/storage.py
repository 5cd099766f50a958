"""Gateway decisions that are not interval settlement: storage capacity, withdrawals.

Each lands in the book / mirror table and the outbox in one SQLite transaction,
like every other decision, and reaches the chain in outbox order; so the storage
owners the commission split uses at any settlement are the same on both sides.
"""
from gateway import accounts
from gateway.db import transaction
from gateway.ledger import intents, outbox, tables

WITHDRAW_REASON = "withdraw"
MAX_CAPACITY_WH = 2**63 - 1  # what SQLite's INTEGER holds (≈ 9.2 PWh, far beyond any storage)


class StorageError(ValueError):
    pass


def set_capacity(conn, community, owner, capacity_wh):
    owner = _payee(owner, "storage owner")
    if not isinstance(capacity_wh, int) or isinstance(capacity_wh, bool) or capacity_wh < 0:
        raise StorageError("capacity must be a non-negative integer (Wh)")
    if capacity_wh > MAX_CAPACITY_WH:
        raise StorageError(f"capacity must be at most {MAX_CAPACITY_WH} Wh")
    with transaction(conn):
        row = conn.execute("SELECT capacity_wh, changes FROM ledger_storage WHERE owner=?", (owner,)).fetchone()
        if (row is None or row[0] == 0) and capacity_wh > 0 and len(tables.storage_owners(conn)) >= intents.MAX_OWNERS:
            raise StorageError(f"at most {intents.MAX_OWNERS} storage owners")
        changes = (row[1] if row else 0) + 1
        sid = outbox.settlement_id(community, "storage", owner, changes)
        conn.execute(
            "INSERT INTO ledger_storage(owner, capacity_wh, changes, settlement_id) VALUES(?, ?, ?, ?) "
            "ON CONFLICT(owner) DO UPDATE SET capacity_wh=excluded.capacity_wh, changes=excluded.changes, "
            "settlement_id=excluded.settlement_id", (owner, capacity_wh, changes, sid))
        outbox.enqueue(conn, "storage", sid, {"owner": owner, "capacity_wh": capacity_wh})
    return sid


def withdraw(conn, community, account, amount):
    """Pay escrowed EEA back to its owner; refused if the book balance is too low."""
    account = _payee(account, "withdrawal account")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise StorageError("amount must be a positive integer (EEA base units)")
    with transaction(conn):
        n = (tables.get_state(conn, "withdrawals", 0)) + 1
        tables.put_state(conn, "withdrawals", n)
        sid = outbox.settlement_id(community, "withdraw", account, n)
        accounts.post(conn, [(account, "EEA", -amount)], WITHDRAW_REASON, sid)
        outbox.enqueue(conn, "withdraw", sid, {"account": account, "amount": amount})
    return sid


def _payee(address, what):
    """The contract reverts setStorage/withdraw for the zero address; a reverting intent
    would be retried forever and hold up every settlement queued after it."""
    address = accounts.normalize_address(address)
    if address == intents.ZERO:
        raise StorageError(f"{what} cannot be the zero address")
    return address
