"""A charging session settled end to end: an EV charges at the charger (emulator) → the
central system authorizes the idTag against its prepaid EEA, records the transaction,
settles it once → the ledger moves EEA from the EV's escrow to the energy pool and the
station owner and burns the pool's WATT for the energy, on Anvil.

The pool's WATT is what the bench's device minted for the energy its meter exported:
the car buys the community's own energy, so this test also waits for that interval.
"""
from gateway.ledger.outbox import settlement_id
from gateway.units import EEA, parse_price
from hil_tests.targets import EV_ACCOUNT, FEE_PER_KWH, OWNER, POOL, PRICE_PER_KWH, wait_for

ENERGY_WH = 400


def test_charging_session_settled_end_to_end(bench):
    charger = bench.charger.require_control("the test must plug in an EV and charge it")
    bench.meter.require_control("the energy pool's WATT comes from the emulated meter's export")

    # the driver prepays on chain; the ledger worker books the deposit for the central system
    booked = bench.book(EV_ACCOUNT, "EEA")
    bench.stack.deposit([(EV_ACCOUNT, 5 * EEA)])
    wait_for(lambda: bench.book(EV_ACCOUNT, "EEA") == booked + 5 * EEA, 30,
             "the deposit to reach the gateway's book")
    # the energy pool holds WATT minted from the device's export, on chain as in the book
    wait_for(lambda: bench.book(POOL, "WATT") >= ENERGY_WH and bench.outbox_idle(),
             bench.settlement_wait_s(), "WATT minted for the pool by interval settlement")

    chain = bench.stack.chain()
    who = [EV_ACCOUNT, POOL, OWNER]
    before = chain.balances(who)
    tx_id = charger.charge(bench.id_tag, ENERGY_WH)

    def settled():
        rows = bench.query("SELECT * FROM ocpp_transactions WHERE id=?", tx_id)
        return rows and rows[0]["state"] == "settled" and rows[0]
    session = wait_for(settled, 30, "the central system to settle the session")
    sid = settlement_id(bench.charger_id, tx_id)
    assert session["settlement_id"] == sid and session["energy_wh"] == ENERGY_WH
    wait_for(lambda: chain.applied(sid) and bench.outbox_idle(), 60,
             "the session settlement to be confirmed on chain")

    price, fee = parse_price(PRICE_PER_KWH, bare="base"), parse_price(FEE_PER_KWH, bare="base")
    energy_eea, fee_eea = ENERGY_WH * price // 1000, ENERGY_WH * fee // 1000
    assert int(session["energy_eea"]) == energy_eea and int(session["fee_eea"]) == fee_eea
    after = chain.balances(who)
    assert after[EV_ACCOUNT] == (before[EV_ACCOUNT][0], before[EV_ACCOUNT][1] - energy_eea - fee_eea)
    assert after[POOL] == (before[POOL][0] - ENERGY_WH, before[POOL][1] + energy_eea)
    assert after[OWNER] == (before[OWNER][0], before[OWNER][1] + fee_eea)
    for a in who:
        assert after[a] == (bench.book(a, "WATT"), bench.book(a, "EEA")), f"chain and book of {a}"

    # settled once: the settlement id was applied by exactly one event on chain
    events = [e for e in chain.events(chain.watt, "Settled", 0, chain.block_number())
              if "0x" + bytes(e["args"]["sid"]).hex() == sid]
    assert len(events) == 1 and events[0]["args"]["burned"] == ENERGY_WH
    shown = bench.stack.gw("session", "show", tx_id)
    assert shown["state"] == "settled" and shown["energy_wh"] == ENERGY_WH
    assert bench.stack.gw("ledger", "reconcile")["differences"] == []
