"""Interval settlement: closed 15-minute intervals become balance-book entries and
ledger outbox intents, in one SQLite transaction (a crash anywhere in it leaves nothing).

When an interval has ended at least `grace_s` ago (late readings), each account with
devices in it is settled from the sum of its devices' interval energy
(gateway/ingest/intervals.py, with the adjustments carried into it):

    net   = export_wh - import_wh
    delta = max(net, -balance)        WATT minted (delta > 0) or burned (delta < 0)
    grid  = delta - net               import the WATT balance could not cover (billing)

so per account, always: minted - burned = metered export - (metered import - grid).
Commission, batches, bounds and the records hash: docs/ledger.md ("Settlement engine"),
and beside the code that applies each.
"""
import json
import logging
from collections import defaultdict

from eth_utils import keccak

from gateway import accounts, clock
from gateway.db import transaction
from gateway.ingest import intervals, store
from gateway.ledger import commission, faults, intents, outbox, tables
from gateway.ledger.settings import MAX_INTERVAL_WH

REASON = "interval"
LENGTH_S = intervals.LENGTH_S
DEFAULT_MAX_INTERVAL_WH = 10**12
INT64_MAX = 2**63 - 1

_log = logging.getLogger("egs.gateway.ledger.settlement")


def latest_closed_start(now, grace_s):
    """Start of the newest interval whose end is at least `grace_s` before `now`."""
    return intervals.interval_start(int(now) - grace_s) - LENGTH_S


def batch_limit(settings, owners):
    """Accounts per batch: the configured size, cut to what the gas limit allows."""
    room = settings.max_tx_gas - intents.GAS_BASE - intents.GAS_PER_SPLIT_RECIPIENT * (owners + 2)
    return max(1, min(settings.batch_accounts, intents.MAX_ENTRIES, room // intents.GAS_PER_ENTRY))


def records_hash(conn, rows):
    """(hash, [[device_id, [seq, …]], …]) over the signed records `rows` rest on.

    keccak256 over the concatenated keccak256 of each raw OCMF record (utf-8), ordered by
    device id then sequence: anyone holding the signed records can recompute it and match
    the Settled event on chain.
    """
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


def held(conn):
    """Device intervals held for review, oldest first: [{interval_id, device_id, account,
    start, reason, held_at}]."""
    return [dict(r) for r in conn.execute(
        "SELECT interval_id, device_id, account, start, reason, held_at FROM ledger_review "
        "ORDER BY start, device_id")]


class Engine:
    def __init__(self, settings, log=None):
        self.s = settings
        self.log = log
        self.max_wh = min(getattr(settings, "max_interval_wh", DEFAULT_MAX_INTERVAL_WH), MAX_INTERVAL_WH)

    def step(self, conn, now=None):
        """Settle everything due at `now`; returns the settlement ids enqueued."""
        now = clock.now() if now is None else now
        with transaction(conn):
            return self._settle_due(conn, now)

    def _settle_due(self, conn, now):
        rows = intervals.closed_intervals(conn, now, self.s.grace_s)
        held_ids = {r[0] for r in conn.execute("SELECT interval_id FROM ledger_review")}
        watt, eea = _balances(conn)
        rows = self._hold_out_of_bounds(conn, [r for r in rows if r["id"] not in held_ids], watt, now)
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
        sids = []
        for start in sorted(set(by_start) | charged):
            sids += self._settle_start(conn, start, by_start.get(start, []), start in charged, watt, eea)
        return sids

    def _hold_out_of_bounds(self, conn, rows, watt, now):
        """The rows that may be settled; the others are held for review.

        Every device interval and every account's sum in an interval must be within
        max_interval_wh (and the account's WATT balance plus it inside 64 bits), checked
        before any arithmetic or SQLite write. An account beyond that has its device
        intervals listed in `ledger_review`, logged and recorded as a security event
        `settlement_held`, and not considered again; every other account settles as usual.
        """
        sums = defaultdict(lambda: [0, 0])
        for r in rows:
            key = (r["start"], r["account"] or "")
            sums[key][0] += r["export_wh"]
            sums[key][1] += r["import_wh"]
        bad = {}
        for (start, account), (ex, im) in sums.items():
            worst = max(abs(ex), abs(im))
            if worst > self.max_wh:
                bad[(start, account)] = (f"export {ex} Wh, import {im} Wh in interval {start} beyond "
                                         f"ledger.max_interval_wh = {self.max_wh}")
            elif abs(watt.get(account, 0)) + worst > INT64_MAX:
                bad[(start, account)] = f"WATT balance {watt.get(account, 0)} plus {worst} Wh beyond 64 bits"
        for r in rows:
            key = (r["start"], r["account"] or "")
            if key not in bad and max(abs(r["export_wh"]), abs(r["import_wh"])) > self.max_wh:
                bad[key] = (f"device {r['device_id']}: export {r['export_wh']} Wh, import {r['import_wh']} Wh "
                            f"in interval {r['start']} beyond ledger.max_interval_wh = {self.max_wh}")
        if not bad:
            return rows
        keep = []
        for r in rows:
            key = (r["start"], r["account"] or "")
            if key not in bad:
                keep.append(r)
                continue
            reason = bad[key]
            conn.execute("INSERT INTO ledger_review(interval_id, device_id, account, start, reason, held_at) "
                         "VALUES(?, ?, ?, ?, ?, ?)", (r["id"], r["device_id"], key[1], r["start"], reason, now))
            detail = f"account {key[1] or '(none)'} held for review, not settled: {reason}"
            store.add_event(conn, r["device_id"], "settlement_held", detail[:500], at=now)
            (self.log or _log).warning("interval %s of device %s: %s", r["start"], r["device_id"], detail)
        return keep

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
        # Devices without an account are marked settled under a marker id (never on chain) so
        # they are not reconsidered; reconcile reports them.
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
        # Each batch is one intent, settlement id keccak("community|interval start|batch");
        # device rows that arrive late for this interval are settled under the next numbers.
        batch_no = conn.execute(
            "SELECT COALESCE(MAX(batch) + 1, 0) FROM ledger_batches WHERE community=? AND start=?",
            (s.community, start)).fetchone()[0]
        sids = []
        for i in range(0, len(ordered), size):
            chunk = ordered[i:i + size]
            sid = outbox.settlement_id(s.community, start, batch_no)
            entries, book, acct_rows, total = [], [], [], 0
            # Commission: on every account holding WATT, on the balance it held before this
            # interval's own mint or burn, in escrowed EEA up to what the account has (the
            # rest is recorded as due but not charged).
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
