"""Gateway decisions that are not interval settlement: storage capacity, withdrawals.

Each lands in the book / mirror table and the outbox in one SQLite transaction,
like every other decision, and reaches the chain in outbox order; so the storage
owners the commission split uses at any settlement are the same on both sides.

A withdrawal pays out only chain-backed EEA: never the book-only goodwill credit
(`egs-gw account credit`, no tokens behind it) and never more than the escrow on
chain holds for the account beyond what queued settlements already take from it.
"""
from gateway import accounts
from gateway.db import transaction
from gateway.ledger import intents, outbox, tables
from gateway.units import format_eea

WITHDRAW_REASON = "withdraw"
# book-only EEA: a goodwill credit and its reversal; no tokens move on chain for them
GOODWILL_REASON = "ocpp_prepaid"
GOODWILL_REVERSAL = "goodwill_reversal"
BOOK_ONLY_REASONS = (GOODWILL_REASON, GOODWILL_REVERSAL)
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


def book_only(conn, address=None):
    """{address: outstanding book-only goodwill EEA} (credits minus reversals)."""
    out = {}
    for a, amount, delta in conn.execute(
            "SELECT address, amount, delta FROM balance_entries WHERE asset='EEA' AND reason IN (?, ?)"
            + (" AND address=?" if address else ""), (*BOOK_ONLY_REASONS, *([address] if address else []))):
        out[a] = out.get(a, 0) + (int(amount) if amount is not None else int(delta))
    return {a: v for a, v in out.items() if v}


def queued_out(conn, address):
    """EEA that intents not yet confirmed on chain take from `address`'s escrow."""
    total = 0
    for amount, delta in conn.execute(
            "SELECT e.amount, e.delta FROM balance_entries e JOIN ledger_outbox o ON o.settlement_id=e.ref "
            "WHERE e.address=? AND e.asset='EEA' AND o.state IN ('queued', 'signed')", (address,)):
        value = int(amount) if amount is not None else int(delta)
        if value < 0:
            total -= value
    return total


def withdraw(conn, community, account, amount, chain_escrow=None):
    """Pay escrowed EEA back to its owner; refused if the book balance is too low, for the
    book-only goodwill part, and (given `chain_escrow`, the account's escrow on chain) for
    more than the chain holds beyond what queued intents already take from it."""
    account = _payee(account, "withdrawal account")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise StorageError("amount must be a positive integer (EEA base units)")
    with transaction(conn):
        goodwill = book_only(conn, account).get(account, 0)
        have = accounts.balance(conn, account, "EEA")
        if goodwill > 0 and have - goodwill < amount <= have:
            raise StorageError(
                f"{account}: only {format_eea(max(have - goodwill, 0))} of its {format_eea(have)} can be "
                f"withdrawn; {format_eea(goodwill)} is a book-only goodwill credit (no tokens on chain)")
        if chain_escrow is not None:
            leaving = queued_out(conn, account)
            if amount > chain_escrow - leaving:
                raise StorageError(
                    f"not enough EEA on chain for {account}: the escrow holds {format_eea(chain_escrow)}"
                    + (f", {format_eea(leaving)} of it queued to leave" if leaving else "")
                    + f"; at most {format_eea(max(chain_escrow - leaving, 0))} can be withdrawn")
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
