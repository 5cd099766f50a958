"""Hostile numbers at the OCPP entry point, and an emulator whose CALL goes unanswered.

JSON integers have no size limit, SQLite's have 64 bits, and a decimal register
value like "1e1000000" costs seconds of CPU to turn into an int: each must get a
clear answer, keep the connection, and never lose a StopTransaction.
"""
import asyncio
import json

from gateway.db import transaction
from ocpp_cs import store
from sim.charger import EV, SimChargePoint
from tests.ocpp.fixtures import (
    DEPOSIT,
    EV_ADDR,
    PASSWORD,
    PRICE,
    central,
    db,
    eea,
    now_iso,
    raw_client,
    run,
    seed,
    settings,
)

HUGE = 2**64


def test_integers_beyond_64_bits_are_refused_or_kept_never_internal_errors(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            assert await c.error("StatusNotification", {
                "connectorId": HUGE, "status": "Available", "errorCode": "NoError"}) == \
                "PropertyConstraintViolation"
            assert await c.error("StartTransaction", {
                "connectorId": 1, "idTag": "TAG1", "meterStart": HUGE,
                "timestamp": now_iso()}) == "PropertyConstraintViolation"
            # values for a transaction no row can have: stored unlinked, answered
            assert await c.ok("MeterValues", {"connectorId": 1, "transactionId": HUGE,
                                              "meterValue": [{"timestamp": now_iso(),
                                                              "sampledValue": [{"value": "7"}]}]}
                              ) == {}
            # a stop for such a transaction is answered like any unknown one
            assert await c.ok("StopTransaction", {"transactionId": HUGE, "meterStop": 1,
                                                  "timestamp": now_iso()}) == {}
            assert (await c.ok("Heartbeat", {}))["currentTime"]
    run(go())
    conn = db(tmp_path / "g.db")
    assert conn.execute("SELECT COUNT(*) FROM ocpp_transactions").fetchone()[0] == 0
    assert conn.execute("SELECT transaction_id, value FROM ocpp_meter_values").fetchone()[:] == \
        (None, "7")
    assert conn.execute("SELECT COUNT(*) FROM ocpp_events WHERE kind='unknown_transaction'"
                        ).fetchone()[0] == 1


def test_register_values_with_huge_exponents_are_stored_raw_not_converted(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])
    values = [{"value": "1e1000000", "unit": "Wh"},       # int() of it: ~35 s of CPU
              {"value": "1e999999", "unit": "kWh"},       # × 1000 overflows the decimal context
              {"value": "99999999999999999999", "unit": "Wh"},  # beyond SQLite INTEGER
              {"value": "12.5", "unit": "kWh"}]

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            tx = (await c.start({"connectorId": 1, "idTag": "TAG1",
                                                  "meterStart": 12_000,
                                                  "timestamp": now_iso(-3600)}))["transactionId"]
            assert await c.ok("MeterValues", {"connectorId": 1, "transactionId": tx,
                                              "meterValue": [{"timestamp": now_iso(-60),
                                                              "sampledValue": values}]}) == {}
            assert await c.ok("StopTransaction", {
                "transactionId": tx, "meterStop": 13_000, "timestamp": now_iso(),
                "transactionData": [{"timestamp": now_iso(), "sampledValue": values}]}) == {}
            return tx
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    rows = conn.execute("SELECT value, wh FROM ocpp_meter_values WHERE transaction_id=? "
                        "ORDER BY id", (tx_id,)).fetchall()
    assert [(r["value"], r["wh"]) for r in rows] == [(v["value"], None) for v in values[:3]] \
        + [("12.5", 12_500)] + [(v["value"], None) for v in values[:3]] + [("12.5", 12_500)]
    tx = store.get_transaction(conn, tx_id)
    assert (tx["state"], tx["energy_wh"]) == ("settled", 1_000)


def test_stop_with_meter_stop_beyond_64_bits_is_kept_held_and_settled_once_by_operator(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {"fee": 0})],
         tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            tx = (await c.start({"connectorId": 1, "idTag": "TAG1",
                                                  "meterStart": 0,
                                                  "timestamp": now_iso(-3600)}))["transactionId"]
            stop = {"transactionId": tx, "meterStop": HUGE, "timestamp": now_iso(),
                    "idTag": "TAG1"}
            for _ in range(2):   # answered every time, recorded once
                assert await c.ok("StopTransaction", stop) == {"idTagInfo": {"status": "Accepted"}}
            return tx
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    tx = store.get_transaction(conn, tx_id)
    assert (tx["state"], tx["meter_stop"]) == ("review", None)
    assert "out of range" in tx["review_reason"] and tx["stop_ts"] is not None
    assert conn.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 0
    s = settings()
    price = store.configured_price(PRICE)
    with transaction(conn):
        try:
            store.settle(conn, tx_id, s, price)
            raise AssertionError("settled without a usable meterStop")
        except store.StoreError as e:
            assert "reviewed energy" in str(e)
    with transaction(conn):
        assert store.settle(conn, tx_id, s, price, energy_override=4_000, note="photo") == \
            "settled"
    with transaction(conn):
        assert store.settle(conn, tx_id, s, price, energy_override=9_000, note="again") == \
            "settled"
    assert eea(conn, EV_ADDR) == 5 * DEPOSIT - 4_000 * PRICE // 1000
    assert conn.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 1


def test_emulator_resends_an_unanswered_start_and_gets_the_same_transaction(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 9 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            cp = SimChargePoint(cs.url, "CP1", password=PASSWORD, response_timeout=1,
                                heartbeat=False)
            await cp.start()
            try:
                await cp.wait_connected()
                # the CS records the start but its answer never arrives; the socket stays up
                link = cs.connections["CP1"]
                real_send = link.send_frame
                swallowed = []

                async def lose_first_start_answer(message):
                    if '"transactionId"' in message and not swallowed:
                        swallowed.append(message)
                        return
                    await real_send(message)
                link.send_frame = lose_first_start_answer
                tx = await cp.start_transaction(1, "TAG1", ev=EV(60, 11, 0.2))
                await asyncio.wait_for(tx.started, 20)
                assert swallowed and cs.connections["CP1"] is link   # same connection
                assert json.loads(swallowed[0])[2]["transactionId"] == tx.id
                await cp.deliver(1, 700)
                await asyncio.wait_for((await cp.stop_transaction(1)).done, 10)
                return tx.id
            finally:
                await cp.close()
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    assert conn.execute("SELECT COUNT(*) FROM ocpp_transactions").fetchone()[0] == 1
    assert store.get_transaction(conn, tx_id)["state"] == "settled"
    assert store.get_transaction(conn, tx_id)["energy_wh"] == 700
