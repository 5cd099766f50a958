"""Trades settle on the ledger per interval, in batches, exactly once.

When an interval has ended (plus `settle_delay_s`), its unsettled trades are taken
in trade order, in batches of `settle_batch`. For each batch, in ONE SQLite
transaction: the balance book entries (WATT seller→buyer, EEA buyer→seller), one
"trades" outbox intent under settlement_id(community, "trades", interval_start,
batch), the settlement row, and the trades marked with that id. A crash before the
commit leaves nothing; after it, the trades are marked and never taken again; and
the id makes the outbox and the contract refuse a second application anyway.
The balance book and the outbox are written in the same order the chain applies
them, so the chain's balances follow the book's. A trade whose energy or EEA is gone
by then settles for what can still be delivered and paid (`settle_trades`).
"""
import json

from eth_utils import keccak

from gateway import accounts
from gateway.ledger import outbox
from gateway.market.book import affordable, cost

REASON = "market_trades"


def records_hash(rows):
    """keccak256 over the settled trades' facts, so a transfer can be traced to its trades."""
    facts = [[r["id"], r["buy_order"], r["sell_order"], r["seller"], r["buyer"], r["price"],
              r["wh"], r["eea"], r["settled_wh"], r["settled_eea"]] for r in rows]
    return "0x" + keccak(json.dumps(facts, separators=(",", ":")).encode()).hex()


def settle_trades(conn, community, trade_ids, sid, kind, now, interval_start=None, batch=None,
                  ref=""):
    """Settle the given unsettled trades under `sid` (caller's transaction). → summary dict.

    A sale promised energy that may be gone by now: the seller's WATT can be burned for
    his own consumption between the trade and its settlement (the ledger burns up to the
    balance), or a buyer's EEA spent on charging. Then the trade settles for what can still
    be delivered and paid — never a negative balance — and the shortfall is recorded on
    the trade (`settled_wh` < `wh`) and in the settlement row, for the operator to see.
    """
    marks = ",".join("?" * len(trade_ids))
    rows = [dict(r) for r in conn.execute(
        f"SELECT * FROM market_trades WHERE id IN ({marks}) AND settlement_id IS NULL ORDER BY id",
        tuple(trade_ids))]
    watt, eea = {}, {}

    def bal(book, asset, owner):
        if owner not in book:
            book[owner] = accounts.balance(conn, owner, asset) if conn.execute(
                "SELECT 1 FROM accounts WHERE address=?", (owner,)).fetchone() else 0
        return book[owner]

    entries, payload, shortfall = [], [], 0
    for r in rows:
        price, wh = int(r["price"]), r["wh"]
        seller, buyer = r["seller"], r["buyer"]
        wh = max(0, min(wh, bal(watt, "WATT", seller)))
        wh = max(0, min(wh, affordable(bal(eea, "EEA", buyer), price)))
        paid = cost(wh, price)
        shortfall += r["wh"] - wh
        r["settled_wh"], r["settled_eea"] = wh, str(paid)
        if wh:
            watt[seller] -= wh
            watt[buyer] = bal(watt, "WATT", buyer) + wh
            eea[buyer] -= paid
            eea[seller] = bal(eea, "EEA", seller) + paid
            entries += [(seller, "WATT", -wh), (buyer, "WATT", wh)]
            if paid:
                entries += [(buyer, "EEA", -paid), (seller, "EEA", paid)]
            payload.append({"seller": seller, "buyer": buyer, "wh": wh, "eea": paid})
    if entries:
        accounts.post(conn, entries, REASON, sid)
    enqueued = False
    if payload:
        enqueued = outbox.enqueue(conn, "trades", sid,
                                  {"trades": payload, "records_hash": records_hash(rows)})
    for r in rows:
        conn.execute("UPDATE market_trades SET settlement_id=?, settled_wh=?, settled_eea=? "
                     "WHERE id=?", (sid, r["settled_wh"], r["settled_eea"], r["id"]))
    total_wh = sum(p["wh"] for p in payload)
    total_eea = sum(p["eea"] for p in payload)
    conn.execute(
        "INSERT INTO market_settlements(settlement_id, community, kind, interval_start, batch, "
        "ref, trades, wh, eea, shortfall_wh, enqueued, created_at) "
        "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sid, community, kind, interval_start, batch, ref, len(rows), total_wh, str(total_eea),
         shortfall, int(enqueued), now))
    return {"settlement_id": sid, "kind": kind, "interval_start": interval_start, "batch": batch,
            "trades": len(rows), "wh": total_wh, "eea": total_eea, "shortfall_wh": shortfall,
            "enqueued": enqueued}


def settle_closed(conn, community, now, settings):
    """Settle every interval that has closed; call inside a transaction. → [summary]."""
    step, delay = settings["interval_s"], settings["settle_delay_s"]
    size = settings["settle_batch"]
    done = []
    starts = [r[0] for r in conn.execute(
        "SELECT DISTINCT interval_start FROM market_trades WHERE community=? "
        "AND settlement_id IS NULL AND interval_start + ? + ? <= ? ORDER BY interval_start",
        (community, step, delay, now))]
    for start in starts:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM market_trades WHERE community=? AND settlement_id IS NULL "
            "AND interval_start=? ORDER BY id", (community, start))]
        batch = conn.execute(
            "SELECT COUNT(*) FROM market_settlements WHERE community=? AND kind='interval' "
            "AND interval_start=?", (community, start)).fetchone()[0]
        for i in range(0, len(ids), size):
            sid = outbox.settlement_id(community, "trades", start, batch)
            done.append(settle_trades(conn, community, ids[i:i + size], sid, "interval", now,
                                      interval_start=start, batch=batch))
            batch += 1
    return done
