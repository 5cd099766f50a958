"""Compare the chain with the gateway's store; every difference is reported.

What must agree (at one block):
- settlement ids: every intent the outbox calls confirmed is applied on chain,
  and every id applied on chain is one this gateway queued;
- balances: per account in the book, WATT and escrowed EEA on chain equal the
  book entries of applied settlements plus the deposits scanned from the chain
  (entries of intents still in flight are pending, not differences);
- totals: WATT total supply and the escrow total equal the book's sums; EEA's
  supply is the fixed 700,000,000 and the escrow is backed by EEA held by WATT;
- metered energy: per account, the WATT the book minted minus burned for
  intervals equals the settled intervals' export minus (import - grid import),
  and each settled interval's figures are the ones its batch settled;
- no Shortfall happened on chain (a burn or charge that found less than decided).

Book-only goodwill credits (`egs-gw account credit`, and their reversals) have no
tokens behind them by design: they are left out of the comparison and reported on
their own (`book_only`), never as a difference.
"""
from collections import defaultdict

from gateway import accounts
from gateway.ingest import intervals
from gateway.ledger import outbox, settlement, tables
from gateway.ledger.storage import BOOK_ONLY_REASONS
from gateway.ledger.worker import DEPOSIT_REASON
from gateway.units import EEA_SUPPLY

SID_EVENTS = ("Settled", "StorageSet", "Withdrawn")


class Difference(str):
    """One difference: its sentence (what people read, and what `==`/`in` compare) plus
    the fields a script reads (`as_dict`): kind, account, settlement, store, chain and
    difference = chain - store (None where a side is not a number)."""

    def __new__(cls, text, kind, account=None, store=None, chain=None, settlement=None):
        d = super().__new__(cls, text)
        d.kind, d.account, d.settlement, d.store, d.chain = kind, account, settlement, store, chain
        d.difference = chain - store if isinstance(store, int) and isinstance(chain, int) else None
        return d

    def as_dict(self):
        return {"kind": self.kind, "account": self.account, "settlement": self.settlement,
                "store": self.store, "chain": self.chain, "difference": self.difference,
                "detail": str(self)}


def reconcile(conn, chain):
    chain.check()
    block = chain.block_number()
    first = int(chain.deployment.get("block", 0))
    diffs = []
    applied = set()
    for name in SID_EVENTS:
        for ev in chain.events(chain.watt, name, first, block):
            applied.add("0x" + bytes(ev["args"]["sid"]).hex())
    for ev in chain.events(chain.watt, "Shortfall", first, block):
        a = ev["args"]
        sid = "0x" + bytes(a["sid"]).hex()
        diffs.append(Difference(
            f"shortfall on chain in settlement {sid}: {a['account'].lower()} "
            f"lacked {a['missing']} {'WATT' if a['asset'] == 0 else 'EEA'}", "shortfall",
            account=a["account"].lower(), settlement=sid))

    rows = {r["settlement_id"]: r for r in conn.execute("SELECT * FROM ledger_outbox")}
    pending = set()
    for sid, r in rows.items():
        if sid in applied:
            continue
        if r["state"] == "confirmed":
            diffs.append(Difference(f"settlement {sid} ({r['kind']}) is confirmed in the outbox but not "
                                    "applied on chain", "not_applied", settlement=sid,
                                    store="confirmed", chain="not applied"))
        elif r["state"] == "rejected":
            diffs.append(Difference(f"settlement {sid} ({r['kind']}) was rejected: {r['last_error']}",
                                    "rejected", settlement=sid, store="rejected", chain="not applied"))
        else:
            pending.add(sid)
    for sid in sorted(applied - set(rows)):
        diffs.append(Difference(f"settlement {sid} is applied on chain but unknown to this gateway",
                                "unknown_settlement", settlement=sid, store="unknown", chain="applied"))

    # Deposits on chain the worker has not posted yet are pending too.
    scan_next = tables.get_state(conn, "deposit_scan_next", first)
    late_deposits = defaultdict(int)
    if scan_next <= block:
        for ev in chain.events(chain.watt, "Deposited", scan_next, block):
            late_deposits[ev["args"]["account"].lower()] += int(ev["args"]["amount"])

    expected = defaultdict(int)
    in_flight = defaultdict(int)
    unbacked = defaultdict(int)
    book_only = defaultdict(int)
    for address, asset, reason, ref, amount, delta in conn.execute(
            "SELECT address, asset, reason, ref, amount, delta FROM balance_entries"):
        key = (address, asset)
        value = int(amount) if amount is not None else int(delta)
        if asset == "EEA" and reason in BOOK_ONLY_REASONS:
            book_only[address] += value
        elif ref in applied or reason == DEPOSIT_REASON:
            expected[key] += value
        elif ref in pending:
            in_flight[key] += value
        else:
            unbacked[(address, asset, reason)] += value
    for (address, asset, reason), total in sorted(unbacked.items()):
        if total:
            diffs.append(Difference(f"{address}: {total} {asset} in the book ({reason}) with no settlement "
                                    "on chain", f"unbacked_{asset.lower()}", account=address,
                                    store=total, chain=0))

    book_accounts = sorted({a for a, _ in expected} | {a for a, _ in in_flight} | set(late_deposits))
    chain_bal = chain.balances(book_accounts, block) if book_accounts else {}
    for a in book_accounts:
        w, e = chain_bal[a]
        if w != expected[(a, "WATT")]:
            diffs.append(Difference(f"{a}: WATT on chain {w}, book {expected[(a, 'WATT')]}", "watt_balance",
                                    account=a, store=expected[(a, "WATT")], chain=w))
        if e != expected[(a, "EEA")] + late_deposits[a]:
            diffs.append(Difference(
                f"{a}: escrowed EEA on chain {e}, book {expected[(a, 'EEA')]}"
                + (f" + {late_deposits[a]} deposited, not yet posted" if late_deposits[a] else ""),
                "eea_balance", account=a, store=expected[(a, "EEA")] + late_deposits[a], chain=e))

    call = lambda f: chain.call(f.call, block_identifier=block)
    supply = call(chain.watt.functions.totalSupply())
    book_watt = sum(v for (a, asset), v in expected.items() if asset == "WATT")
    if supply != book_watt:
        diffs.append(Difference(f"WATT total supply on chain {supply}, book {book_watt}", "watt_supply",
                                store=book_watt, chain=supply))
    escrow_total = call(chain.watt.functions.escrowTotal())
    book_eea = sum(v for (a, asset), v in expected.items() if asset == "EEA") + sum(late_deposits.values())
    if escrow_total != book_eea:
        diffs.append(Difference(f"escrowed EEA total on chain {escrow_total}, book {book_eea}",
                                "escrow_total", store=book_eea, chain=escrow_total))
    eea_supply = call(chain.eea.functions.totalSupply())
    if eea_supply != EEA_SUPPLY:
        diffs.append(Difference(f"EEA total supply is {eea_supply}, not {EEA_SUPPLY}", "eea_supply",
                                store=EEA_SUPPLY, chain=eea_supply))
    held = call(chain.eea.functions.balanceOf(chain.watt.address))
    if held < escrow_total:
        diffs.append(Difference(f"WATT holds {held} EEA, less than the escrow total {escrow_total}",
                                "escrow_backing", store=escrow_total, chain=held))

    energy = _energy(conn, diffs)
    return {"block": block, "differences": diffs, "applied": len(applied), "pending": len(pending),
            "accounts": len(book_accounts), "watt_supply": supply, "escrow_total": escrow_total,
            "in_flight": {f"{a} {asset}": v for (a, asset), v in sorted(in_flight.items()) if v},
            "book_only": {a: v for a, v in sorted(book_only.items()) if v},
            **energy}


def _energy(conn, diffs):
    """Metered energy against the WATT the book minted and burned for intervals."""
    settled = defaultdict(lambda: [0, 0])
    unassigned = [0, 0]
    for r in intervals.list_intervals(conn, limit=10**12):
        sid = r["settlement_id"]
        if r["state"] != "settled":
            continue
        if sid.startswith("none:"):
            unassigned[0] += r["export_wh"]
            unassigned[1] += r["import_wh"]
            continue
        settled[(sid, r["account"])][0] += r["export_wh"]
        settled[(sid, r["account"])][1] += r["import_wh"]
    batches = {}
    per_account = defaultdict(lambda: [0, 0, 0])
    for r in conn.execute("SELECT * FROM ledger_batch_accounts"):
        batches[(r["settlement_id"], r["account"])] = (r["export_wh"], r["import_wh"])
        acc = per_account[r["account"]]
        acc[0] += r["export_wh"]
        acc[1] += r["import_wh"]
        acc[2] += r["grid_import_wh"]
    for key, (ex, im) in sorted(settled.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        got = batches.get(key)
        if got is None:
            diffs.append(Difference(f"interval energy settled under {key[0]} for {key[1]} has no batch record",
                                    "batch_missing", account=key[1], settlement=key[0]))
        elif got != (ex, im):
            diffs.append(Difference(f"{key[1]}: settlement {key[0]} settled export/import {got}, intervals "
                                    f"now say {(ex, im)}", "batch_energy", account=key[1], settlement=key[0],
                                    store=f"{ex}/{im}", chain=f"{got[0]}/{got[1]}"))
    book = {a: v for (a, _), v in accounts.balances(conn, "WATT", reason=settlement.REASON).items()}
    for a in sorted(set(per_account) | set(book)):
        ex, im, grid = per_account.get(a, (0, 0, 0))
        if book.get(a, 0) != ex - (im - grid):
            diffs.append(Difference(f"{a}: WATT for intervals in the book {book.get(a, 0)}, metered export "
                                    f"{ex} - settled import {im - grid}", "interval_watt", account=a,
                                    store=book.get(a, 0), chain=ex - (im - grid)))
    batch_sids = [r[0] for r in conn.execute("SELECT settlement_id FROM ledger_batches WHERE onchain=1")]
    known = {r[0] for r in conn.execute("SELECT settlement_id FROM ledger_outbox WHERE kind='interval'")}
    for sid in batch_sids:
        if sid not in known:
            diffs.append(Difference(f"interval batch {sid} has no outbox intent", "batch_without_intent",
                                    settlement=sid))
    return {"unassigned_export_wh": unassigned[0], "unassigned_import_wh": unassigned[1],
            "grid_import_wh": sum(v[2] for v in per_account.values())}


__all__ = ["Difference", "outbox", "reconcile"]
