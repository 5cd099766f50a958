"""Transactions: retries, replays, disconnects, offline queues, sanity checks, settlement."""
import asyncio
import json

from gateway.ledger import outbox
from sim.charger import EV, SimChargePoint
from tests.ocpp.fixtures import (
    DEPOSIT,
    EV_ADDR,
    FEE,
    OWNER,
    PASSWORD,
    POOL,
    PRICE,
    central,
    db,
    eea,
    now_iso,
    raw_client,
    run,
    seed,
    watt,
)


def cost(wh):
    return wh * PRICE // 1000, wh * FEE // 1000


def test_duplicate_start_gets_same_id_and_stop_twice_settles_once(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 9 * DEPOSIT)])
    start = {"connectorId": 1, "idTag": "TAG1", "meterStart": 50_000, "timestamp": now_iso(-7200)}

    async def go():
        async with central(tmp_path / "g.db") as cs:
            async with raw_client(cs) as c:
                first = await c.start(start)
            async with raw_client(cs) as c:   # the retry arrives on a new connection
                again = await c.ok("StartTransaction", start)
                assert again == first
                # a different start (another meterStart) is another transaction
                other = await c.start(dict(start, connectorId=2, meterStart=9,
                                                            timestamp=now_iso()))
                assert other["transactionId"] != first["transactionId"]
                assert other["idTagInfo"]["status"] == "ConcurrentTx"
                stop = {"transactionId": first["transactionId"], "meterStop": 62_345,
                        "timestamp": now_iso()}
                answers = [await c.ok("StopTransaction", stop) for _ in range(2)]
                # even a replay with other values is answered and changes nothing
                answers.append(await c.ok("StopTransaction", dict(stop, meterStop=99_999)))
                assert answers[0] == answers[1] == answers[2] == {}
                return first["transactionId"]
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    energy_eea, fee_eea = cost(12_345)
    assert eea(conn, EV_ADDR) == 9 * DEPOSIT - energy_eea - fee_eea
    assert eea(conn, POOL) == energy_eea and eea(conn, OWNER) == fee_eea
    assert watt(conn, POOL) == 10**9 - 12_345
    rows = conn.execute("SELECT * FROM ledger_outbox").fetchall()
    assert len(rows) == 1
    assert rows[0]["settlement_id"] == outbox.settlement_id("CP1", tx_id)
    payload = json.loads(rows[0]["payload"])
    assert payload == {"payer": EV_ADDR, "pool": POOL, "station_owner": OWNER,
                       "energy_wh": 12_345, "energy_eea": energy_eea, "fee_eea": fee_eea,
                       "records_hash": payload["records_hash"]}
    tx = conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (tx_id,)).fetchone()
    assert (tx["meter_stop"], tx["state"]) == (62_345, "settled")
    assert conn.execute("SELECT COUNT(*) FROM ocpp_events WHERE kind='stop_replay_differs'"
                        ).fetchone()[0] == 1


def test_disconnect_mid_session_and_reconnect(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 9 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            cp = SimChargePoint(cs.url, "CP1", password=PASSWORD, connectors=2)
            await cp.start()
            try:
                await cp.wait_connected()
                tx = await cp.start_transaction(1, "TAG1", ev=EV(60, 11, 0.2))
                await asyncio.wait_for(tx.started, 10)
                await cp.deliver(1, 4000)
                await cp.wait_idle()
                await cp.drop_connection()          # socket dies mid-session
                await cp.deliver(1, 3000)           # MeterValues queued while reconnecting
                await cp.wait_connected()
                await cp.deliver(1, 2000)
                done = await cp.stop_transaction(1)
                await asyncio.wait_for(done.done, 10)
                assert cp.boots == 1                # a reconnect is not a reboot
                return tx.id
            finally:
                await cp.close()
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    tx = conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (tx_id,)).fetchone()
    assert (tx["state"], tx["energy_wh"]) == ("settled", 9000)
    regs = [r[0] for r in conn.execute(
        "SELECT wh FROM ocpp_meter_values WHERE transaction_id=? ORDER BY id", (tx_id,))]
    assert regs == [tx["meter_start"] + 4000, tx["meter_start"] + 7000, tx["meter_start"] + 9000]


def test_start_in_flight_when_connection_drops_is_retried_idempotently(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 9 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            cp = SimChargePoint(cs.url, "CP1", password=PASSWORD)
            await cp.start()
            try:
                await cp.wait_connected()
                # the CS records the start, but the answer is lost with the connection
                real_send = cs.connections["CP1"].send_frame
                dropped = asyncio.Event()

                async def lose_start_answer(message):
                    if '"transactionId"' in message and not dropped.is_set():
                        dropped.set()
                        cs.connections["CP1"].connection.transport.abort()
                        return
                    await real_send(message)
                cs.connections["CP1"].send_frame = lose_start_answer
                tx = await cp.start_transaction(1, "TAG1")
                await asyncio.wait_for(dropped.wait(), 10)
                await asyncio.wait_for(tx.started, 20)  # answered after the reconnect
                await cp.deliver(1, 500)
                await asyncio.wait_for((await cp.stop_transaction(1)).done, 10)
                return tx.id
            finally:
                await cp.close()
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    assert conn.execute("SELECT COUNT(*) FROM ocpp_transactions").fetchone()[0] == 1
    assert conn.execute("SELECT state, energy_wh FROM ocpp_transactions WHERE id=?",
                        (tx_id,)).fetchone()[:] == ("settled", 500)


def test_offline_queue_replayed_with_original_timestamps(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 9 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db", offline_after_s=60) as cs:
            cp = SimChargePoint(cs.url, "CP1", password=PASSWORD, connectors=2)
            await cp.start()
            try:
                await cp.wait_connected()
                # the charger met TAG1 before (its authorization cache): the CS granted it
                assert await cp.authorize("TAG1") == "Accepted"
                await cp.go_offline()
                cp.clock_offset = -3 * 3600          # the outage was three hours ago
                known = await cp.start_transaction(1, "TAG1", ev=EV(60, 11, 0.5))
                stranger = await cp.start_transaction(2, "NOT-KNOWN", ev=EV(40, 7.4, 0.3))
                await cp.deliver(1, 6000)
                await cp.deliver(2, 2500)
                start_ts = known.start_epoch
                await cp.stop_transaction(1)
                await cp.stop_transaction(2)
                assert known.id is None and len(cp._queue) == 6
                cp.go_online()
                await cp.wait_connected()
                await asyncio.wait_for(known.done, 10)
                await asyncio.wait_for(stranger.done, 10)
                return known.id, stranger.id, start_ts
            finally:
                await cp.close()
    known_id, stranger_id, start_epoch = run(go())
    conn = db(tmp_path / "g.db")
    k = conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (known_id,)).fetchone()
    assert k["state"] == "settled" and k["energy_wh"] == 6000
    assert abs(k["start_epoch"] - start_epoch) < 0.01 and k["offline_start"] == 1
    s = conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (stranger_id,)).fetchone()
    # energy delivered to an unknown idTag offline: recorded, flagged, held — never lost
    assert s["state"] == "review" and s["energy_wh"] == 2500
    assert "offline_unknown_id_tag" in json.loads(s["flags"])
    assert "no account" in s["review_reason"]
    assert conn.execute("SELECT COUNT(*) FROM ocpp_events WHERE kind='offline_unknown_id_tag'"
                        ).fetchone()[0] == 1
    assert len(conn.execute("SELECT * FROM ledger_outbox").fetchall()) == 1


def _session(tmp_path, meter_start, meter_stop, values=(), start_offset=-3600, **over):
    """Run one raw session; → the transaction row."""
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db", **over) as cs, raw_client(cs) as c:
            tx = (await c.start({
                "connectorId": 1, "idTag": "TAG1", "meterStart": meter_start,
                "timestamp": now_iso(start_offset)}))["transactionId"]
            for sv in values:
                await c.ok("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
                    {"timestamp": now_iso(-60), "sampledValue": [sv]}]})
            await c.ok("StopTransaction", {"transactionId": tx, "meterStop": meter_stop,
                                           "timestamp": now_iso()})
            return tx
    tx = run(go())
    return db(tmp_path / "g.db").execute("SELECT * FROM ocpp_transactions WHERE id=?",
                                         (tx,)).fetchone()


def test_negative_energy_is_held(tmp_path):
    tx = _session(tmp_path, 10_000, 9_000)
    assert tx["state"] == "review" and "negative energy" in tx["review_reason"]
    assert db(tmp_path / "g.db").execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 0


def test_lifetime_register_as_meter_stop_is_held(tmp_path):
    tx = _session(tmp_path, 0, 48_123_456)
    assert tx["state"] == "review" and "lifetime register" in tx["review_reason"]


def test_more_energy_than_power_allows_is_held(tmp_path):
    tx = _session(tmp_path, 0, 50_000, start_offset=-600, max_power_w=22_000)
    assert tx["state"] == "review" and "exceeds 22000 W" in tx["review_reason"]


def test_kwh_register_labelled_wh_is_held(tmp_path):
    tx = _session(tmp_path, 1_200_000, 1_210_000, values=[
        {"value": "1205.5", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}])
    assert tx["state"] == "review" and "looks like kWh" in tx["review_reason"]


def test_kwh_register_correctly_labelled_is_billed(tmp_path):
    tx = _session(tmp_path, 1_200_000, 1_210_000, values=[
        {"value": "1205.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"}])
    assert tx["state"] == "settled" and tx["energy_wh"] == 10_000


def test_insufficient_balance_at_stop_is_held_not_overdrawn(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            tx = (await c.start({
                "connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                "timestamp": now_iso(-7200)}))["transactionId"]
            await c.ok("StopTransaction", {"transactionId": tx, "meterStop": 40_000,
                                           "timestamp": now_iso()})
            return tx
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    tx = conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (tx_id,)).fetchone()
    assert tx["state"] == "review" and "not enough EEA" in tx["review_reason"]
    assert eea(conn, EV_ADDR) == DEPOSIT and eea(conn, POOL) == 0
    assert conn.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 0


def test_stop_with_unreadable_timestamp_is_answered_kept_and_held(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            tx = (await c.start({
                "connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                "timestamp": now_iso(-3600)}))["transactionId"]
            assert await c.ok("StopTransaction", {
                "transactionId": tx, "meterStop": 5_000, "timestamp": "yesterday-ish",
                "transactionData": [{"timestamp": "later", "sampledValue": [{"value": "5000"}]}]}
            ) == {}
            return tx
    tx = db(tmp_path / "g.db").execute("SELECT * FROM ocpp_transactions WHERE id=?",
                                       (run(go()),)).fetchone()
    assert (tx["state"], tx["meter_stop"], tx["stop_ts"]) == ("review", 5_000, "yesterday-ish")
    assert "timestamp unreadable" in tx["review_reason"]


def test_failing_price_source_holds_the_session_and_still_answers(tmp_path):
    from ocpp_cs.server import CentralSystem
    from tests.ocpp.fixtures import settings

    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    def broken(conn, tx, energy_wh):
        conn.execute("INSERT INTO ocpp_events(charger_id, kind, detail) VALUES('x', 'half', '{}')")
        raise RuntimeError("market unreachable")

    async def go():
        cs = CentralSystem(tmp_path / "g.db", settings(), price_source=broken)
        await cs.start(port=0)
        cs.url = f"ws://127.0.0.1:{cs.port}/ocpp"
        try:
            async with raw_client(cs) as c:
                tx = (await c.start({
                    "connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                    "timestamp": now_iso(-3600)}))["transactionId"]
                assert await c.ok("StopTransaction", {"transactionId": tx, "meterStop": 2_000,
                                                      "timestamp": now_iso()}) == {}
                return tx
        finally:
            await cs.stop()
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    tx = conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (tx_id,)).fetchone()
    assert tx["state"] == "review" and "market unreachable" in tx["review_reason"]
    # the price source's half-done write was rolled back with the settlement
    assert conn.execute("SELECT COUNT(*) FROM ocpp_events WHERE kind='half'").fetchone()[0] == 0
    assert eea(conn, EV_ADDR) == 5 * DEPOSIT
    assert conn.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 0
