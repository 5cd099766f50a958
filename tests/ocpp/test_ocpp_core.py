"""One test per Core message (charger → central system), positive and negative."""
import json
import sys

from tests.ocpp.fixtures import (
    DEPOSIT,
    EV_ADDR,
    OWNER,
    central,
    db,
    eea,
    now_iso,
    raw_client,
    run,
    seed,
)

BOOT = {"chargePointVendor": "EGS", "chargePointModel": "T1"}


def test_boot_notification_accepted_and_recorded(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})])

    async def go():
        async with central(tmp_path / "g.db", heartbeat_interval=123) as cs, raw_client(cs) as c:
            res = await c.ok("BootNotification", dict(BOOT, firmwareVersion="1.2",
                                                       chargePointSerialNumber="SN9"))
            assert res["status"] == "Accepted" and res["interval"] == 123
            assert res["currentTime"].endswith("Z")
            # negative: vendor missing → ProtocolError, and vendor too long → TypeConstraint
            assert await c.error("BootNotification", {"chargePointModel": "T1"}) == \
                "ProtocolError"
            assert await c.error("BootNotification", dict(BOOT, chargePointVendor="V" * 21)) \
                == "TypeConstraintViolation"
    run(go())
    row = db(tmp_path / "g.db").execute("SELECT * FROM ocpp_chargers WHERE id='CP1'").fetchone()
    assert (row["vendor"], row["model"], row["firmware"], row["serial"]) == ("EGS", "T1", "1.2", "SN9")


def test_heartbeat(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            assert (await c.ok("Heartbeat", {}))["currentTime"].endswith("Z")
            # negative: Heartbeat takes no properties
            assert await c.error("Heartbeat", {"x": 1}) == "FormationViolation"
            assert "CP1" in cs.seen
    run(go())


def test_status_notification_keeps_connector_states(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            for conn_id, status in ((0, "Available"), (1, "Preparing"), (2, "Faulted"),
                                    (1, "Charging")):
                await c.ok("StatusNotification", {"connectorId": conn_id, "status": status,
                                                  "errorCode": "NoError" if status != "Faulted"
                                                  else "GroundFailure",
                                                  "timestamp": now_iso()})
            # negative: a status outside the enum, a negative connector
            assert await c.error("StatusNotification", {
                "connectorId": 1, "status": "Sleeping", "errorCode": "NoError"}) == \
                    "PropertyConstraintViolation"
            assert await c.error("StatusNotification", {
                "connectorId": -1, "status": "Available", "errorCode": "NoError"}) == \
                    "PropertyConstraintViolation"
    run(go())
    rows = db(tmp_path / "g.db").execute(
        "SELECT connector_id, status, error_code FROM ocpp_connectors ORDER BY connector_id"
    ).fetchall()
    assert [tuple(r) for r in rows] == [(0, "Available", "NoError"), (1, "Charging", "NoError"),
                                        (2, "Faulted", "GroundFailure")]


def test_authorize_statuses(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})],
         tags=[("RICH", EV_ADDR, DEPOSIT), ("POOR", None, DEPOSIT - 1), ("BLK", None, DEPOSIT),
               ("OLD", None, DEPOSIT)])
    conn = db(tmp_path / "g.db")
    conn.execute("UPDATE ocpp_id_tags SET status='blocked' WHERE id_tag='BLK'")
    conn.execute("UPDATE ocpp_id_tags SET expires_at=1 WHERE id_tag='OLD'")

    async def go():
        async with central(tmp_path / "g.db", id_tag_suffixes=["-EMAID"]) as cs, raw_client(cs) as c:
            async def status(tag):
                return (await c.ok("Authorize", {"idTag": tag}))["idTagInfo"]["status"]
            assert await status("RICH") == "Accepted"
            assert await status("rich") == "Accepted"          # CiString: case-insensitive
            assert await status("RICH-EMAID") == "Accepted"    # configured vendor suffix
            # a charger learns only Invalid for any refusal (which idTags exist stays unknown)
            assert await status("POOR") == "Invalid"           # balance below the deposit
            assert await status("BLK") == "Invalid"
            assert await status("OLD") == "Invalid"
            assert await status("NOBODY") == "Invalid"
            assert await status("RICH-OTHER") == "Invalid"     # not a configured suffix
            # negative: idTag longer than CiString20
            assert await c.error("Authorize", {"idTag": "X" * 21}) == "TypeConstraintViolation"
    run(go())
    reasons = [json.loads(r[0]) for r in conn.execute(
        "SELECT detail FROM ocpp_events WHERE kind='auth_refused' ORDER BY id")]
    assert [r["status"] for r in reasons] == ["Blocked", "Blocked", "Expired", "Invalid", "Invalid"]
    assert "below the minimum deposit" in reasons[0]["reason"]


def test_start_transaction(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            ts = now_iso()
            res = await c.start({"connectorId": 1, "idTag": "TAG1",
                                                  "meterStart": 1000, "timestamp": ts})
            assert res["idTagInfo"]["status"] == "Accepted"
            assert isinstance(res["transactionId"], int)
            # unknown tag online: answered Invalid, still gets an id (OCPP requires one)
            res2 = await c.ok("StartTransaction", {"connectorId": 2, "idTag": "WHO",
                                                   "meterStart": 5, "timestamp": ts})
            assert res2["idTagInfo"]["status"] == "Invalid"
            assert res2["transactionId"] != res["transactionId"]
            # negative: connector 0, a timestamp that is not one, meterStart as a string
            assert await c.error("StartTransaction", {"connectorId": 0, "idTag": "TAG1",
                                                      "meterStart": 1, "timestamp": ts}) == \
                    "PropertyConstraintViolation"
            assert await c.error("StartTransaction", {"connectorId": 1, "idTag": "TAG1",
                                                      "meterStart": 1, "timestamp": "noon"}) \
                    == "PropertyConstraintViolation"
            assert await c.error("StartTransaction", {"connectorId": 1, "idTag": "TAG1",
                                                      "meterStart": "1", "timestamp": ts}) \
                    == "TypeConstraintViolation"
            return res["transactionId"]
    tx_id = run(go())
    tx = db(tmp_path / "g.db").execute("SELECT * FROM ocpp_transactions WHERE id=?",
                                       (tx_id,)).fetchone()
    assert (tx["charger_id"], tx["connector_id"], tx["meter_start"], tx["state"], tx["address"]) \
        == ("CP1", 1, 1000, "active", EV_ADDR)


def test_meter_values(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            tx = (await c.start({"connectorId": 1, "idTag": "TAG1",
                                                  "meterStart": 1000,
                                                  "timestamp": now_iso(-3600)}))["transactionId"]
            assert await c.ok("MeterValues", {
                "connectorId": 1, "transactionId": tx, "meterValue": [{
                    "timestamp": now_iso(), "sampledValue": [
                        {"value": "1500", "measurand": "Energy.Active.Import.Register",
                         "unit": "Wh"},
                        {"value": "1.6", "unit": "kWh"},
                        {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"}]}]}
            ) == {}
            # negative: no sampled values at all; an unknown unit
            assert await c.error("MeterValues", {"connectorId": 1, "meterValue": []}) == \
                    "OccurenceConstraintViolation"
            assert await c.error("MeterValues", {"connectorId": 1, "meterValue": [{
                "timestamp": now_iso(), "sampledValue": [{"value": "1", "unit": "MWh"}]}]}) \
                    == "PropertyConstraintViolation"
            return tx
    tx = run(go())
    rows = db(tmp_path / "g.db").execute(
        "SELECT value, unit, wh, measurand FROM ocpp_meter_values WHERE transaction_id=? "
        "ORDER BY id", (tx,)).fetchall()
    assert [(r["value"], r["wh"]) for r in rows] == [("1500", 1500), ("1.6", 1600), ("7200", None)]


def test_stop_transaction_settles_and_unknown_stop_is_answered(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            tx = (await c.start({"connectorId": 1, "idTag": "TAG1",
                                                  "meterStart": 1000,
                                                  "timestamp": now_iso(-3600)}))["transactionId"]
            res = await c.ok("StopTransaction", {"transactionId": tx, "meterStop": 11000,
                                                 "timestamp": now_iso(), "idTag": "TAG1",
                                                 "reason": "EVDisconnected"})
            assert res["idTagInfo"]["status"] == "Accepted"
            # a stop for a transaction the CS never issued is answered too
            assert await c.ok("StopTransaction", {"transactionId": 999999, "meterStop": 1,
                                                  "timestamp": now_iso()}) == {}
            # negative: transactionId missing; a reason outside the enum
            assert await c.error("StopTransaction", {"meterStop": 1,
                                                     "timestamp": now_iso()}) == "ProtocolError"
            assert await c.error("StopTransaction", {"transactionId": tx, "meterStop": 1,
                                                     "timestamp": now_iso(),
                                                     "reason": "Bored"}) == \
                    "PropertyConstraintViolation"
            return tx
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    tx = conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (tx_id,)).fetchone()
    assert (tx["state"], tx["energy_wh"], tx["stop_reason"]) == ("settled", 10000, "EVDisconnected")
    assert eea(conn, EV_ADDR) == 5 * DEPOSIT - 10 * (300 + 50) * 10**15
    assert eea(conn, OWNER) == 10 * 50 * 10**15
    assert conn.execute("SELECT COUNT(*) FROM ocpp_events WHERE kind='unknown_transaction'"
                        ).fetchone()[0] == 1


def test_data_transfer(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {"meter_key": "04" + "11" * 64})])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            announced = json.dumps({"meters": [{"connectorId": 1, "type": "SIGNATURE",
                                                "publicKey": "04" + "22" * 64}]})
            res = await c.ok("DataTransfer", {"vendorId": "generalConfiguration",
                                              "messageId": "setMeterConfiguration",
                                              "data": announced})
            assert res["status"] == "Accepted"
            assert (await c.ok("DataTransfer", {"vendorId": "generalConfiguration",
                                                "messageId": "other"}))["status"] == \
                    "UnknownMessageId"
            assert (await c.ok("DataTransfer", {"vendorId": "com.example",
                                                "data": "hello"}))["status"] == "UnknownVendorId"
            assert (await c.ok("DataTransfer", {"vendorId": "generalConfiguration",
                                                "messageId": "setMeterConfiguration",
                                                "data": "{not json"}))["status"] == "Rejected"
            # nested past the decoder's recursion limit (the interpreter's default, as in
            # `egs-gw`; the test run raises it): Rejected, not an InternalError
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(1000)
            try:
                deep = await c.ok("DataTransfer", {"vendorId": "generalConfiguration",
                                                   "messageId": "setMeterConfiguration",
                                                   "data": "[" * 3_000 + "]" * 3_000})
            finally:
                sys.setrecursionlimit(limit)
            assert deep["status"] == "Rejected"
            # negative: vendorId missing
            assert await c.error("DataTransfer", {"data": "x"}) == "ProtocolError"
    run(go())
    conn = db(tmp_path / "g.db")
    row = conn.execute("SELECT meter_key, announced_keys FROM ocpp_chargers").fetchone()
    # an announced key is recorded but never replaces the registered one
    assert row["meter_key"] == "04" + "11" * 64
    assert json.loads(row["announced_keys"]) == {"1": "04" + "22" * 64}
    assert conn.execute("SELECT COUNT(*) FROM ocpp_events WHERE kind='security'").fetchone()[0] == 1
