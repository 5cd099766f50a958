"""Signed meter values (OCMF in SignedData): valid in all three encodings, tampered, missing."""
import asyncio
import json

import pytest

from protocol import ocmf, p256
from sim.charger import EV, SimChargePoint
from tests.ocpp.fixtures import (
    DEPOSIT,
    EV_ADDR,
    PASSWORD,
    central,
    db,
    now_iso,
    raw_client,
    run,
    seed,
)

SECRET = bytes.fromhex("3f" * 32)
PUB = p256.public_key(SECRET)
META = {"gi": "EGS-TEST", "gs": "G1", "gv": "1", "mv": "EGS", "mm": "M", "ms": "MS1"}


def record(seq, wh, when=None):
    return ocmf.build(SECRET, seq, wh, 0, int(when or 1_790_000_000), **META)


def signed(value, context):
    return {"value": value, "context": context, "format": "SignedData",
            "measurand": "Energy.Active.Import.Register", "unit": "Wh"}


def tx_row(tmp_path, tx_id):
    return db(tmp_path / "g.db").execute("SELECT * FROM ocpp_transactions WHERE id=?",
                                         (tx_id,)).fetchone()


@pytest.mark.parametrize("encoding", ["plain", "hex", "oca"])
def test_emulator_signed_session_is_billed_from_verified_readings(tmp_path, encoding):
    cp_secret = p256.generate_secret()
    seed(tmp_path / "g.db", chargers=[("CP1", {"meter_key": p256.public_key(cp_secret).hex()})],
         tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            cp = SimChargePoint(cs.url, "CP1", password=PASSWORD, sign=True,
                                meter_secret=cp_secret, signed_encoding=encoding)
            await cp.start()
            try:
                await cp.wait_connected()
                assert (await cp.announce_meter_key()).status == "Accepted"
                tx = await cp.start_transaction(1, "TAG1", ev=EV(60, 11, 0.1))
                await cp.deliver(1, 2_000)
                await cp.deliver(1, 1_234)
                await asyncio.wait_for((await cp.stop_transaction(1)).done, 10)
                return tx.id
            finally:
                await cp.close()
    tx = tx_row(tmp_path, run(go()))
    assert (tx["state"], tx["energy_source"], tx["energy_wh"]) == ("settled", "signed", 3_234)
    assert tx["signed_end_wh"] - tx["signed_begin_wh"] == 3_234
    rows = db(tmp_path / "g.db").execute(
        "SELECT context, verify_state FROM ocpp_meter_values WHERE format='SignedData' "
        "AND transaction_id=? ORDER BY id", (tx["id"],)).fetchall()
    assert [tuple(r) for r in rows] == [("Transaction.Begin", "verified"),
                                        ("Sample.Periodic", "verified"),
                                        ("Sample.Periodic", "verified"),
                                        ("Transaction.End", "verified")]


def _raw_session(tmp_path, meter_key, begin=None, end=None, meter_stop=11_000, meter_start=1_000,
                 extra_tx=False):
    seed(tmp_path / "g.db", chargers=[("CP1", {"meter_key": meter_key})],
         tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            ids = []
            for n in range(2 if extra_tx else 1):
                tx = (await c.start({
                    "connectorId": 1, "idTag": "TAG1", "meterStart": meter_start + n,
                    "timestamp": now_iso(-3600)}))["transactionId"]
                if begin is not None:
                    await c.ok("MeterValues", {"connectorId": 1, "transactionId": tx,
                                               "meterValue": [{"timestamp": now_iso(-3600),
                                                               "sampledValue": [begin]}]})
                stop = {"transactionId": tx, "meterStop": meter_stop, "timestamp": now_iso()}
                if end is not None:
                    stop["transactionData"] = [{"timestamp": now_iso(), "sampledValue": [end]}]
                await c.ok("StopTransaction", stop)
                ids.append(tx)
            return ids
    return [tx_row(tmp_path, i) for i in run(go())]


def test_signed_readings_win_over_unsigned_meter_stop(tmp_path):
    (tx,) = _raw_session(tmp_path, PUB.hex(), signed(record(1, 1_000), "Transaction.Begin"),
                         signed(record(2, 9_500), "Transaction.End"), meter_stop=11_000)
    assert (tx["state"], tx["energy_wh"], tx["energy_source"]) == ("settled", 8_500, "signed")
    assert any("differs from signed" in f for f in json.loads(tx["flags"]))


def test_tampered_signed_value_holds_the_session(tmp_path):
    good = record(2, 9_500)
    tampered = good.replace('"RV":9.500', '"RV":19.500')
    assert tampered != good
    (tx,) = _raw_session(tmp_path, PUB.hex(), signed(record(1, 1_000), "Transaction.Begin"),
                         signed(tampered, "Transaction.End"))
    assert tx["state"] == "review" and "SignatureMismatch" in tx["review_reason"]
    conn = db(tmp_path / "g.db")
    assert conn.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM ocpp_events WHERE kind='security'").fetchone()[0] == 1


def test_value_signed_with_another_key_holds_the_session(tmp_path):
    other = p256.generate_secret()
    forged = ocmf.build(other, 2, 9_500, 0, 1_790_000_000, **META)
    (tx,) = _raw_session(tmp_path, PUB.hex(), signed(record(1, 1_000), "Transaction.Begin"),
                         signed(forged, "Transaction.End"))
    assert tx["state"] == "review" and "failed verification" in tx["review_reason"]


def test_missing_signed_values_hold_a_signing_chargers_session(tmp_path):
    (tx,) = _raw_session(tmp_path, PUB.hex())
    assert tx["state"] == "review" and "signed meter values missing" in tx["review_reason"]


def test_garbage_signed_data_is_stored_and_holds(tmp_path):
    (tx,) = _raw_session(tmp_path, PUB.hex(), signed("OCMF|{not json|{}", "Transaction.Begin"),
                         signed("\u0000" * 50, "Transaction.End"))
    assert tx["state"] == "review"
    rows = db(tmp_path / "g.db").execute(
        "SELECT verify_state FROM ocpp_meter_values WHERE format='SignedData'").fetchall()
    assert [r[0] for r in rows] == ["invalid", "invalid"]


def test_signed_data_without_registered_key_holds(tmp_path):
    (tx,) = _raw_session(tmp_path, None, signed(record(1, 1_000), "Transaction.Begin"),
                         signed(record(2, 9_500), "Transaction.End"))
    assert tx["state"] == "review" and "no registered meter key" in tx["review_reason"]


def test_signed_records_replayed_into_a_second_transaction_hold_it(tmp_path):
    first, second = _raw_session(tmp_path, PUB.hex(), signed(record(1, 1_000), "Transaction.Begin"),
                                 signed(record(2, 9_500), "Transaction.End"), extra_tx=True)
    assert first["state"] == "settled"
    assert second["state"] == "review" and "replayed" in second["review_reason"]
