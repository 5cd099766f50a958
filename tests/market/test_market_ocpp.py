"""A charging session bought at the market, through the real central system.

The central system (ocpp_cs, real websockets, OCPP-J frames) settles a stopped
transaction with the market's price source (what `egs-gw run` installs as
ctx.hooks["ocpp_price_source"]): the energy pool buys the session's energy from the
community's sellers, the EV reimburses the pool at the fills' price and pays the
station's fee, and the pool's WATT for the energy is burned — ocpp_cs unchanged.
"""
import json

from gateway import accounts
from gateway.db import transaction
from gateway.ledger import outbox
from gateway.market.book import SELL
from gateway.market.exchange import session_price_source
from ocpp_cs.server import CentralSystem
from tests.market.fixtures import EEA, addr, market, price
from tests.ocpp.fixtures import (
    DEPOSIT,
    EV_ADDR,
    FEE,
    OWNER,
    POOL,
    PRICE,
    db,
    eea,
    now_iso,
    raw_client,
    run,
    seed,
    settings,
    watt,
)

SELLER = addr(4242)


def test_session_energy_is_bought_at_the_market(tmp_path):
    path = tmp_path / "g.db"
    seed(path, chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 9 * DEPOSIT)], pool_watt=0)
    conn = db(path)
    with transaction(conn):
        accounts.post(conn, [(SELLER, "WATT", 20_000), (POOL, "EEA", 5 * EEA)], "test_seed")
    m = market(conn, bmax_wh=0)
    m.place(SELLER, SELL, 10_000, price("0.25"))   # cheaper than the configured 0.30
    m.place(SELLER, SELL, 10_000, price("0.28"))

    async def go():
        cs = CentralSystem(path, settings(), price_source=session_price_source("c1", POOL, PRICE))
        await cs.start(port=0)
        cs.url = f"ws://127.0.0.1:{cs.port}/ocpp"
        try:
            async with raw_client(cs) as c:
                started = await c.start({  # Authorize, then start
                    "connectorId": 1, "idTag": "TAG1", "meterStart": 50_000,
                    "timestamp": now_iso(-3600)})
                await c.ok("StopTransaction", {"transactionId": started["transactionId"],
                                               "meterStop": 62_345, "timestamp": now_iso()})
                return started["transactionId"]
        finally:
            await cs.stop()

    tx_id = run(go())
    conn2 = db(path)
    energy = 12_345
    fills = 10_000 * price("0.25") // 1000 + 2_345 * price("0.28") // 1000
    p = -(-fills * 1000 // energy)  # the fills' average, rounded up
    tx = conn2.execute("SELECT state, price_per_kwh, energy_eea FROM ocpp_transactions WHERE id=?",
                       (tx_id,)).fetchone()
    assert tx["state"] == "settled" and int(tx["price_per_kwh"]) == p
    energy_eea = energy * p // 1000
    assert energy_eea - fills < energy  # the pool is made whole, to the Wh
    assert eea(conn2, EV_ADDR) == 9 * DEPOSIT - energy_eea - energy * FEE // 1000
    assert eea(conn2, OWNER) == energy * FEE // 1000
    assert eea(conn2, POOL) == 5 * EEA - fills + energy_eea
    assert watt(conn2, POOL) == 0  # bought from the seller, then burned for the EV
    assert (watt(conn2, SELLER), eea(conn2, SELLER)) == (20_000 - energy, fills)
    # On the ledger: first the trades (seller -> pool), then the session (burn, payments).
    rows = conn2.execute("SELECT kind, settlement_id, payload FROM ledger_outbox ORDER BY id")
    rows = rows.fetchall()
    assert [r["kind"] for r in rows] == ["trades", "session"]
    assert rows[0]["settlement_id"] == outbox.settlement_id("c1", "trades", "session",
                                                            f"CP1:{tx_id}")
    trades = json.loads(rows[0]["payload"])["trades"]
    assert [(t["seller"], t["buyer"], t["wh"]) for t in trades] == [
        (SELLER, POOL, 10_000), (SELLER, POOL, 2_345)]
    assert m.quote()["asks"] == [(price("0.28"), 10_000 - 2_345, 1)]
    conn.close()
    conn2.close()
