"""Interval settlement: closed 15-minute intervals become balance-book entries and
ledger outbox intents, in one SQLite transaction.

When an interval has ended at least `grace_s` ago (late readings), each account
with devices in it is settled from the sum of its devices' interval energy
(gateway/ingest/intervals.py; corrections of already settled intervals arrive there as
adjustments carried into the device's next open interval):

    net   = export_wh - import_wh
    delta = max(net, -balance)        WATT minted (delta > 0) or burned (delta < 0)
    grid  = delta - net               import the WATT balance could not cover: grid
                                      import, recorded here for billing

so per account, always: minted - burned = metered export - (metered import - grid).
Export and import of the same interval are netted (one mint or one burn).

The storage commission (gateway/ledger/commission.py) is charged once per interval
on every account holding WATT, on the balance it held before the interval's own
mint or burn, in escrowed EEA up to what the account has (the rest is recorded as
commission due but not charged). Intervals are charged from the first one the
ledger sees on; a gateway that was down catches up interval by interval, but an
interval that closed while `commission_rate` was 0 is never charged afterwards.

Accounts are cut into batches (`batch_accounts`, and what fits the transaction gas
limit); each batch is one intent with settlement id
keccak("community|interval start|batch number"). An interval whose device rows
arrive late (a device that was offline) is settled in further batches with the
next numbers. Devices without an account are marked settled under a marker id
("none:…", never on chain) so they are not reconsidered; reconcile reports them.

A batch's records hash is keccak256 over the concatenated keccak256 of each raw
OCMF record (utf-8) the batch's device intervals rest on (gateway/ingest/intervals.py
`interval_readings`), ordered by device id then sequence: anyone holding the
signed records can recompute it and match the Settled event on chain.
"""
import json
from collections import defaultdict

from eth_utils import keccak

from gateway import accounts, clock
from gateway.db import transaction
from gateway.ingest import intervals
from gateway.ledger import commission, faults, intents, outbox, tables

REASON = "interval"
LENGTH_S = intervals.LENGTH_S


def latest_closed_start(now, grace_s):
    """Start of the newest interval whose end is at least `grace_s` before `now`."""
    return intervals.interval_start(int(now) - grace_s) - LENGTH_S


def batch_limit(settings, owners):
    """Accounts per batch: the configured size, cut to what the gas limit allows."""
    room = settings.max_tx_gas - intents.GAS_BASE - intents.GAS_PER_SPLIT_RECIPIENT * (owners + 2)
    return max(1, min(settings.batch_accounts, intents.MAX_ENTRIES, room // intents.GAS_PER_ENTRY))


def records_hash(conn, rows):
    """(hash, [[device_id, [seq, …]], …]) over the signed records `rows` rest on."""
    leaves = {}
    for r in rows:
        for rd in intervals.interval_readings(conn, r["device_id"], r["start"], r["end"]):
            leaves[(r["device_id"], rd["seq"])] = keccak(rd["raw"].encode())
    keys = sorted(leaves)
    digest = "0x" + keccak(b"".join(leaves[k] for k in keys)).hex()
    refs = defaultdict(list)
    for device, seq in keys:
        refs[device].append(seq)
    return digest, [[d, s] for d, s in sorted(refs.items())]


def _balances(conn):
    watt, eea = defaultdict(int), defaultdict(int)
    for (address, asset), total in accounts.balances(conn).items():
        (watt if asset == "WATT" else eea)[address] = total
    return watt, eea


class Engine:
    def __init__(self, settings, log=None):
        self.s = settings
        self.log = log

    def step(self, conn, now=None):
        """Settle everything due at `now`; returns the settlement ids enqueued."""
        now = clock.now() if now is None else now
        with transaction(conn):
            return self._settle_due(conn, now)

    def _settle_due(self, conn, now):
        rows = intervals.closed_intervals(conn, now, self.s.grace_s)
        by_start = defaultdict(list)
        for r in rows:
            by_start[r["start"]].append(r)
        # The commission cursor advances with the rate at 0 too: intervals that closed
        # while no commission was configured are never charged later at a new rate.
        last = latest_closed_start(now, self.s.grace_s)
        nxt = tables.get_state(conn, "commission_next_start")
        nxt = last if nxt is None else nxt
        charged = set(range(nxt, last + 1, LENGTH_S)) if self.s.commission_rate > 0 else set()
        tables.put_state(conn, "commission_next_start", max(nxt, last + LENGTH_S))
        watt, eea = _balances(conn)
        sids = []
        for start in sorted(set(by_start) | charged):
            sids += self._settle_start(conn, start, by_start.get(start, []), start in charged, watt, eea)
        return sids

    def _settle_start(self, conn, start, rows, charge, watt, eea):
        s = self.s
        energy = defaultdict(lambda: [0, 0])
        devices = defaultdict(list)
        unassigned = []
        for r in rows:
            if not r["account"]:
                unassigned.append(r["id"])
                continue
            energy[r["account"]][0] += r["export_wh"]
            energy[r["account"]][1] += r["import_wh"]
            devices[r["account"]].append(r)
        if unassigned:
            marker = "none:" + outbox.settlement_id(s.community, start, "no-account")[2:]
            intervals.mark_settled(conn, unassigned, marker)
        accts = set(energy)
        if charge:
            accts |= {a for a, w in watt.items() if w > 0}
        if not accts:
            return []
        owners = tables.storage_owners(conn)
        size = batch_limit(s, len(owners))
        ordered = sorted(accts)
        batch_no = conn.execute(
            "SELECT COALESCE(MAX(batch) + 1, 0) FROM ledger_batches WHERE community=? AND start=?",
            (s.community, start)).fetchone()[0]
        sids = []
        for i in range(0, len(ordered), size):
            chunk = ordered[i:i + size]
            sid = outbox.settlement_id(s.community, start, batch_no)
            entries, book, acct_rows, total = [], [], [], 0
            for a in chunk:
                held, paid = watt[a], eea[a]
                due = commission.due(held, s.commission_rate) if charge else 0
                fee = min(due, paid)
                ex, im = energy.get(a, (0, 0))
                net = ex - im
                delta = max(net, -held)
                grid = delta - net
                mint, burn = max(delta, 0), max(-delta, 0)
                if mint or burn or fee:
                    entries.append([a, mint, burn, fee])
                if delta:
                    book.append((a, "WATT", delta))
                if fee:
                    book.append((a, "EEA", -fee))
                watt[a], eea[a] = held + delta, paid - fee
                total += fee
                if ex or im or due or a in devices:
                    acct_rows.append((sid, a, ex, im, mint, burn, grid, held, str(due), str(fee)))
            for addr, amount in commission.split(total, owners, s.education_pool, s.network_pool):
                book.append((addr, "EEA", amount))
                eea[addr] += amount
            chunk_rows = [r for a in chunk for r in devices.get(a, ())]
            digest, refs = records_hash(conn, chunk_rows)
            if entries:
                accounts.post(conn, book, REASON, sid)
                outbox.enqueue(conn, "interval", sid, {
                    "community": s.community, "start": start, "batch": batch_no,
                    "records_hash": digest, "entries": entries})
            if not (entries or chunk_rows or acct_rows):
                continue  # only commission-free holders: nothing to record, batch number unused
            intervals.mark_settled(conn, [r["id"] for r in chunk_rows], sid)
            conn.execute(
                "INSERT INTO ledger_batches(settlement_id, community, start, batch, records_hash, records, "
                "commission, onchain) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, s.community, start, batch_no, digest, json.dumps(refs), str(total), int(bool(entries))))
            conn.executemany(
                "INSERT INTO ledger_batch_accounts(settlement_id, account, export_wh, import_wh, minted_wh, "
                "burned_wh, grid_import_wh, stored_wh, commission_due, commission_eea) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", acct_rows)
            if entries:
                sids.append(sid)
            batch_no += 1
            faults.hit("settle_batch")
        if self.log and sids:
            self.log.info("interval %s settled in %d batch(es)", start, len(sids))
        return sids


def grid_import(conn, account=None):
    """Import not covered by WATT, per account (for billing): {account: wh}."""
    sql = "SELECT account, SUM(grid_import_wh) FROM ledger_batch_accounts"
    args = []
    if account:
        sql += " WHERE account=?"
        args.append(accounts.normalize_address(account))
    sql += " GROUP BY account"
    return {r[0]: int(r[1]) for r in conn.execute(sql, args)}
