"""A reading flows to the ledger: meter → firmware → mosquitto → gateway (verified, stored,
acknowledged) → 15-minute interval settled → WATT minted on Anvil.

Each link is checked against an independent account of it, not against the component's
own output: the signatures again with the key the device gave over its console, the
interval's energy from the signed registers by the documented interpolation, the
on-chain records hash from the signed records themselves, and the chain against the
gateway's book with `egs-gw ledger reconcile`.
"""
import json

from eth_utils import keccak

from hil_tests.targets import POOL, wait_for
from protocol import ocmf


def register_at(points, b):
    """A cumulative register pair at time b from readings (t, import, export): exact at a
    reading, integer-interpolated between the two around b, and from the first reading
    when b lies before the device's first (the interval counts only what was measured)."""
    before = [p for p in points if p[0] <= b]
    after = [p for p in points if p[0] >= b]
    if before and before[-1][0] == b:
        return before[-1][1:]
    if not before:
        return points[0][1:]
    if not after:
        return None
    (t0, i0, e0), (t1, i1, e1) = before[-1], after[0]
    return (i0 + (i1 - i0) * (b - t0) // (t1 - t0), e0 + (e1 - e0) * (b - t0) // (t1 - t0))


def usable(rows):
    """Readings in sequence order whose clock moves forward (a later one at the same
    second replaces the earlier)."""
    out = []
    for r in sorted(rows, key=lambda r: r["seq"]):
        p = (r["time_epoch"], r["import_wh"], r["export_wh"])
        if out and p[0] < out[-1][0]:
            continue
        if out and p[0] == out[-1][0]:
            out[-1] = p
        else:
            out.append(p)
    return out


def test_a_reading_flows_to_the_ledger(bench):
    bench.meter.require_control("the test must know that the meter exports energy")
    dev = bench.device_id

    def settled_on_chain():
        return bench.query(
            "SELECT i.* FROM intervals i JOIN ledger_outbox o ON o.settlement_id = i.settlement_id "
            "WHERE i.device_id=? AND i.state='settled' AND o.state='confirmed' ORDER BY i.start",
            dev)
    wait_for(settled_on_chain, bench.settlement_wait_s(),
             "the device's interval to be settled and confirmed on chain")
    wait_for(bench.outbox_idle, 60, "the ledger outbox to drain")
    interval = settled_on_chain()[0]
    start, end, sid = interval["start"], interval["end"], interval["settlement_id"]

    # every signed reading verifies with the key the device gave over its serial console
    pub = ocmf.load_public_key(bench.device.ask({"cmd": "pubkey"})["pubkey"])
    rows = bench.query("SELECT * FROM readings WHERE device_id=? ORDER BY seq", dev)
    for r in rows:
        rec = ocmf.verify(r["raw"], pub)
        assert (rec.sequence, rec.import_wh, rec.export_wh, rec.time_epoch) == \
            (r["seq"], r["import_wh"], r["export_wh"], r["time_epoch"])
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gap, no duplicate"

    # the interval's energy is the register difference across it
    points = usable(r for r in rows if r["time_trusted"])
    r_start, r_end = register_at(points, start), register_at(points, end)
    assert (interval["import_wh"], interval["export_wh"]) == \
        (r_end[0] - r_start[0], r_end[1] - r_start[1])
    net = interval["export_wh"] - interval["import_wh"]
    assert net > 0, "the emulated meter exports"

    # the book: this interval's export minted for the device's account
    batch = bench.query("SELECT * FROM ledger_batches WHERE settlement_id=?", sid)[0]
    acct = bench.query("SELECT * FROM ledger_batch_accounts WHERE settlement_id=? AND account=?",
                       sid, POOL)[0]
    assert (acct["export_wh"], acct["import_wh"], acct["minted_wh"], acct["burned_wh"]) == \
        (interval["export_wh"], interval["import_wh"], net, 0)

    # the chain: applied once, minting exactly that, committing to exactly these records
    chain = bench.stack.chain()
    assert chain.applied(sid)
    events = [e for e in chain.events(chain.watt, "Settled", 0, chain.block_number())
              if "0x" + bytes(e["args"]["sid"]).hex() == sid]
    assert len(events) == 1
    ev = events[0]["args"]
    assert (ev["minted"], ev["burned"]) == (net, 0)
    refs = json.loads(batch["records"])
    assert [d for d, _ in refs] == [dev]
    ref_seqs = refs[0][1]
    raw = {r["seq"]: r["raw"] for r in rows}
    covering = [r["seq"] for r in rows if start <= r["time_epoch"] <= end]
    assert set(covering) <= set(ref_seqs), "the settlement rests on every reading inside it"
    digest = keccak(b"".join(keccak(raw[s].encode()) for s in sorted(ref_seqs)))
    assert "0x" + bytes(ev["records_hash"]).hex() == "0x" + digest.hex() == batch["records_hash"]

    # chain and book agree (the reconcile a technician runs)
    watt, _escrow = chain.balances([POOL])[POOL]
    assert watt == bench.book(POOL, "WATT")
    report = bench.stack.gw("ledger", "reconcile")
    assert report["differences"] == []
