"""End to end on Anvil: an EV charges 12.345 kWh at a real charger emulator; the ledger
worker carries the session to the contracts; a replayed StopTransaction changes nothing."""
import asyncio

from gateway import accounts
from gateway.db import transaction
from gateway.ledger import keystore, outbox
from gateway.ledger.reconcile import reconcile
from gateway.ledger.settlement import Engine
from gateway.ledger.worker import Worker
from ocpp_cs import auth, store
from protocol import p256
from sim.charger import EV, SimChargePoint
from tests.ledger.fixtures import (
    PASSWORD as KEY_PASSWORD,
)
from tests.ledger.fixtures import (
    T0,
    L,
    Signer,
    addr,
    applied_counts,
    ingest,
    ledger_env_fixture,  # noqa: F401 - the ledger_env fixture
)
from tests.ocpp.fixtures import FAST, PASSWORD, central, now_iso, raw_client, run

PRICE = 310_000_000_000_000_000   # 0.31 EEA per kWh
FEE = 45_000_000_000_000_000      # 0.045 EEA per kWh
ENERGY = 12_345


def drain(w, steps=80):
    for _ in range(steps):
        w.step()
        if w.idle():
            return
    raise AssertionError(f"outbox not drained: {outbox.counts(w.conn)}")


def test_ev_session_settles_exactly_once_on_chain(ledger_env):
    env = ledger_env
    conn = env.conn()
    store.init(conn)
    pool, owner, ev = addr("pool"), addr("station-owner"), addr("ev-driver")
    # the energy pool's WATT: 20 kWh its export meter put into the community
    meter = Signer("pool-meter", "SNPOOL")
    meter.register(conn, account=pool)
    ingest(conn, meter, [(1, T0, 0, 0), (2, T0 + L, 0, 20_000)])
    Engine(env.settings).step(conn, now=T0 + L + 60)
    # the driver prepays 5 EEA into the ledger's escrow (on chain; the worker books it)
    env.deposit(ev, 5 * 10**18)
    w = Worker(conn, env.chain(), keystore.load(env.keystore, KEY_PASSWORD), env.settings)
    drain(w)
    assert accounts.balance(conn, ev, "EEA") == 5 * 10**18
    assert accounts.balance(conn, pool, "WATT") == 20_000
    chain = env.chain()
    supply_before = chain.call(chain.watt.functions.totalSupply().call)

    meter_secret = p256.generate_secret()
    with transaction(conn):
        store.add_charger(conn, "CP-E2E", auth.hash_password(PASSWORD, **FAST), owner, FEE,
                          p256.public_key(meter_secret).hex())
        store.add_id_tag(conn, "DRIVER-1", ev)

    async def charge():
        async with central(env.db_path, price_per_kwh=f"{PRICE} base", energy_pool=pool) as cs:
            cp = SimChargePoint(cs.url, "CP-E2E", password=PASSWORD, sign=True,
                                meter_secret=meter_secret)
            await cp.start()
            try:
                await cp.wait_connected()
                tx = await cp.start_transaction(1, "DRIVER-1", ev=EV(77, 11, 0.3))
                for chunk in (5_000, 5_000, 2_345):
                    assert await cp.deliver(1, chunk) == chunk
                stop = await cp.stop_transaction(1)
                await asyncio.wait_for(stop.done, 15)
                return tx.id
            finally:
                await cp.close()
    tx_id = run(charge())
    sid = outbox.settlement_id("CP-E2E", tx_id)
    row = conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (tx_id,)).fetchone()
    assert (row["state"], row["energy_wh"], row["energy_source"]) == ("settled", ENERGY, "signed")
    energy_eea, fee_eea = ENERGY * PRICE // 1000, ENERGY * FEE // 1000
    assert (energy_eea, fee_eea) == (3_826_950_000_000_000_000, 555_525_000_000_000_000)
    drain(w)
    chain = env.chain()
    bal = chain.balances([ev, pool, owner])          # address → (WATT, escrowed EEA)
    assert bal[ev] == (0, 5 * 10**18 - energy_eea - fee_eea)
    assert bal[owner] == (0, fee_eea)
    assert bal[pool] == (20_000 - ENERGY, energy_eea)
    assert chain.call(chain.watt.functions.totalSupply().call) == supply_before - ENERGY
    assert applied_counts(chain)[sid] == 1
    assert reconcile(conn, chain)["differences"] == []

    # the charger replays its StopTransaction (and a StartTransaction retry) after a reboot
    async def replay():
        async with central(env.db_path, price_per_kwh=f"{PRICE} base", energy_pool=pool) as cs, \
                raw_client(cs, "CP-E2E") as c:
            again = await c.ok("StopTransaction", {"transactionId": tx_id,
                                                   "meterStop": row["meter_stop"],
                                                   "timestamp": row["stop_ts"]})
            assert again == {}
            start = await c.ok("StartTransaction", {
                "connectorId": 1, "idTag": "DRIVER-1", "meterStart": row["meter_start"],
                "timestamp": row["start_ts"]})
            assert start["transactionId"] == tx_id
            # and one with a different meterStop: answered, still nothing changes
            assert await c.ok("StopTransaction", {"transactionId": tx_id, "meterStop": 1,
                                                  "timestamp": now_iso(), "idTag": "DRIVER-1"}) \
                == {"idTagInfo": {"status": "Accepted"}}
    run(replay())
    assert conn.execute("SELECT COUNT(*) FROM ledger_outbox WHERE kind='session'").fetchone()[0] == 1
    drain(w)
    chain = env.chain()
    assert chain.balances([ev, pool, owner]) == bal
    assert applied_counts(chain)[sid] == 1
    assert accounts.balance(conn, ev, "EEA") == 5 * 10**18 - energy_eea - fee_eea
    assert reconcile(conn, chain)["differences"] == []
