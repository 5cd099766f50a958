"""The ways into the central system a security review found, each closed: a pending
charger id taken over, secrets kept in the database and logs, password guessing at
scrypt's expense, idTags billed by a charger nobody authorized them for, and
unbounded writes by unauthenticated or hostile clients. Real websockets, real
central system, real SQLite."""
import asyncio
import json
import logging
import ssl

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.db import transaction
from ocpp_cs import auth, server, store
from tests.ocpp.fixtures import (
    DEPOSIT,
    EV_ADDR,
    FAST,
    PASSWORD,
    basic,
    central,
    db,
    eea,
    now_iso,
    raw_client,
    run,
    seed,
)
from tests.ocpp.test_ocpp_security import _cert

SECRET = "onboard-Secret-4711-xyz"


async def status_of(url, headers=None, **kw):
    """The HTTP status a handshake is refused with (and the response), or 101."""
    try:
        async with connect(url, subprotocols=["ocpp1.6"], additional_headers=headers, **kw):
            return 101, None
    except InvalidStatus as e:
        return e.response.status_code, e.response


async def answer_next_call(client, payload):
    """Read the CS's next CALL on a raw client and answer it; → the CALL frame."""
    frame = json.loads(await asyncio.wait_for(client.ws.recv(), 10))
    assert frame[0] == 2, frame
    await client.ws.send(json.dumps([3, frame[1], payload]))
    return frame


# ------------------------------------------------------------------ 1. pending takeover

def test_pending_id_belongs_to_its_first_connection_and_host(tmp_path):
    seed(tmp_path / "g.db")

    async def go():
        async with central(tmp_path / "g.db", allow_unknown_pending=True) as cs:
            async with raw_client(cs, "NEW1", password=None) as first:
                assert (await first.ok("Heartbeat", {}))["currentTime"]
                # a second client for the same pending id while the first lives: refused
                assert (await status_of(f"{cs.url}/NEW1"))[0] == 409
                assert (await status_of(f"{cs.url}/NEW1", local_addr=("127.0.0.2", 0)))[0] \
                    == 409
                assert (await first.ok("Heartbeat", {}))["currentTime"]   # still connected
            # gone: another host may not take the id over; the same host may come back
            assert (await status_of(f"{cs.url}/NEW1", local_addr=("127.0.0.2", 0)))[0] == 403
            async with raw_client(cs, "NEW1", password=None) as again:
                res = await again.ok("BootNotification", {"chargePointVendor": "V",
                                                          "chargePointModel": "M"})
                assert res["status"] == "Pending"
    run(go())
    whats = [json.loads(r[0])["what"] for r in db(tmp_path / "g.db").execute(
        "SELECT detail FROM ocpp_events WHERE kind='security'")]
    assert "pending charger id already connected" in whats
    assert "pending charger id claimed from another host" in whats


def test_authorization_key_is_sent_only_over_tls(tmp_path):
    seed(tmp_path / "g.db")
    change = {"key": "AuthorizationKey", "value": SECRET}

    async def plain():
        async with central(tmp_path / "g.db", allow_unknown_pending=True) as cs, \
                raw_client(cs, "NEW1", password=None) as c:
            with pytest.raises(Exception, match="only over TLS") as refused:
                await cs.call("NEW1", "ChangeConfiguration", change)
            assert type(refused.value).__name__ == "CallRefused"
            # nothing was sent: the next frame the charger sees answers its own Heartbeat
            assert (await c.ok("Heartbeat", {}))["currentTime"]
            # a harmless key still goes over plain ws://
            task = asyncio.ensure_future(cs.call("NEW1", "ChangeConfiguration",
                                                 {"key": "HeartbeatInterval", "value": "60"}))
            frame = await answer_next_call(c, {"status": "Accepted"})
            assert frame[3]["key"] == "HeartbeatInterval"
            assert (await task)["status"] == "Accepted"
    run(plain())

    cert, key = _cert(tmp_path)
    client_ctx = ssl.create_default_context(cafile=cert)

    async def tls():
        async with central(tmp_path / "g.db", allow_unknown_pending=True, tls_cert=cert,
                           tls_key=key) as cs, \
                raw_client(cs, "NEW2", password=None, ssl=client_ctx) as c:
            task = asyncio.ensure_future(cs.call("NEW2", "ChangeConfiguration", change))
            frame = await answer_next_call(c, {"status": "Accepted"})
            assert frame[2:] == ["ChangeConfiguration", change]
            assert (await task)["status"] == "Accepted"
    run(tls())


# ------------------------------------------------------------------ 2. secrets at rest and in logs

def test_secrets_are_redacted_in_stored_commands_and_logs(tmp_path, caplog):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("04A1B2C3", EV_ADDR, 5 * DEPOSIT)])
    cert, key = _cert(tmp_path)
    client_ctx = ssl.create_default_context(cafile=cert)
    caplog.set_level(logging.DEBUG)

    async def until_finished(cs, cid):
        while (await cs.db.run(store.get_command, cid))["state"] not in ("done", "failed"):
            await asyncio.sleep(0.05)

    async def go():
        async with central(tmp_path / "g.db", tls_cert=cert, tls_key=key) as cs, \
                raw_client(cs, ssl=client_ctx) as c:
            # the CLI's way: a row in ocpp_commands that the service sends
            cid = await cs.db.run(store.queue_command, "CP1", "ChangeConfiguration",
                                  {"key": "AuthorizationKey", "value": SECRET})
            frame = await answer_next_call(c, {"status": "Accepted"})
            assert frame[3]["value"] == SECRET                  # the charger gets it
            await until_finished(cs, cid)
            # a charger that does not keep AuthorizationKey write-only: its answer is redacted
            cid2 = await cs.db.run(store.queue_command, "CP1", "GetConfiguration", {})
            await answer_next_call(c, {"configurationKey": [
                {"key": "AuthorizationKey", "readonly": False, "value": SECRET},
                {"key": "HeartbeatInterval", "readonly": False, "value": "300"}]})
            await until_finished(cs, cid2)
            # an expired command is redacted too
            cid3 = await cs.db.run(store.queue_command, "GHOST", "ChangeConfiguration",
                                   {"key": "AuthorizationKey", "value": SECRET})
            assert await cs.db.run(store.expire_command, cid3)
            # idTags in the logs
            assert (await c.ok("Authorize", {"idTag": "04A1B2C3"}))["idTagInfo"]["status"] == \
                "Accepted"
            await c.ok("Authorize", {"idTag": "DEADBEEF99"})
            await c.ok("StartTransaction", {"connectorId": 1, "idTag": "04A1B2C3",
                                            "meterStart": 0, "timestamp": now_iso()})
    run(go())
    conn = db(tmp_path / "g.db")
    dump = "\n".join(conn.iterdump())
    assert SECRET not in dump
    rows = conn.execute("SELECT payload, result FROM ocpp_commands ORDER BY id").fetchall()
    assert json.loads(rows[0]["payload"]) == {"key": "AuthorizationKey", "value": "<redacted>"}
    assert json.loads(rows[1]["result"])["configurationKey"][0]["value"] == "<redacted>"
    assert json.loads(rows[1]["result"])["configurationKey"][1]["value"] == "300"
    assert json.loads(rows[2]["payload"])["value"] == "<redacted>"
    ocpp_records = [r for r in caplog.records if r.name.startswith("ocpp_cs")]
    assert ocpp_records, "the central system logged nothing"
    for r in ocpp_records:
        text = r.getMessage()
        assert SECRET not in text, text
        assert "04A1B2C3" not in text and "DEADBEEF99" not in text, text
    assert not [r for r in ocpp_records if r.levelno >= logging.INFO and '"idTag"' in
                r.getMessage()]


# ------------------------------------------------------------------ 3. password guessing

def test_wrong_password_bursts_are_refused_before_scrypt(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            runs = lambda: getattr(cs, "scrypt_runs", None)
            async with raw_client(cs) as c:          # the charger, before the attack
                assert (await c.ok("Heartbeat", {}))["currentTime"]
            assert runs() == 1
            other = {"local_addr": ("127.0.0.2", 0)}
            codes = [(await status_of(f"{cs.url}/CP1", basic("CP1", f"guess-{i}"), **other))
                     for i in range(30)]
            statuses = [code for code, _ in codes]
            assert statuses[:auth.AUTH_BURST] == [401] * auth.AUTH_BURST
            assert set(statuses[auth.AUTH_BURST:]) == {429}
            assert int(codes[-1][1].headers["Retry-After"]) >= 1
            # concurrent guesses cannot slip past the bucket either
            burst = await asyncio.gather(*[
                status_of(f"{cs.url}/CP1", basic("CP1", f"again-{i}"), local_addr=("127.0.0.3", 0))
                for i in range(20)])
            assert {code for code, _ in burst} == {429}   # the charger id's bucket is empty
            assert runs() == 1 + auth.AUTH_BURST
            # the legitimate charger still gets in, from the verified cache (no scrypt)
            async with raw_client(cs) as c:
                assert (await c.ok("Heartbeat", {}))["currentTime"]
            assert runs() == 1 + auth.AUTH_BURST
    run(go())


def test_many_chargers_behind_one_address_log_in_at_once(tmp_path):
    ids = [f"CP{i}" for i in range(3 * auth.AUTH_BURST)]
    seed(tmp_path / "g.db", chargers=[(cid, {}) for cid in ids])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            codes = await asyncio.gather(*[status_of(f"{cs.url}/{cid}", basic(cid, PASSWORD))
                                           for cid in ids])
            assert {code for code, _ in codes} == {101}
    run(go())


def test_verified_password_cache_follows_a_password_change(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            for _ in range(3):
                async with raw_client(cs) as c:
                    assert (await c.ok("Heartbeat", {}))["currentTime"]
            assert cs.scrypt_runs == 1
            new = "a-new-Passw0rd-2"
            await cs.db.run(store.update_charger, "CP1",
                            password_hash=auth.hash_password(new, **FAST))
            assert (await status_of(f"{cs.url}/CP1", basic("CP1", PASSWORD)))[0] == 401
            async with raw_client(cs, password=new) as c:
                assert (await c.ok("Heartbeat", {}))["currentTime"]
            assert cs.scrypt_runs == 3
    run(go())


def test_throttle_memory_is_bounded():
    t = auth.Throttle(burst=2, refill_s=10, max_keys=100)
    for i in range(1000):
        key = ("host", f"10.0.{i // 256}.{i % 256}")
        assert t.wait([key], now=0.0) is None
        t.take([key], now=0.0)
    assert len(t) <= 100
    # hammering keeps a bucket in debt; it refills with time
    for _ in range(10):
        t.take([("charger", "CP1")], now=0.0)
    assert t.wait([("charger", "CP1")], now=0.0) == 30
    assert t.wait([("charger", "CP1")], now=30.0) is None
    assert auth.network_of("2001:db8::1") == auth.network_of("2001:db8::ffff") == "2001:db8::/64"
    assert auth.network_of("::ffff:10.1.2.3") == "10.1.2.3"


# ------------------------------------------------------------------ 4. billing only what was authorized

def _victim_db(path, **charger):
    seed(path, chargers=[("CP1", charger)], tags=[("VICTIM", EV_ADDR, 50 * DEPOSIT)])


def test_start_for_an_idtag_not_authorized_on_this_charger_bills_nothing(tmp_path):
    _victim_db(tmp_path / "g.db")

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            start = await c.ok("StartTransaction", {"connectorId": 1, "idTag": "VICTIM",
                                                    "meterStart": 0,
                                                    "timestamp": now_iso(-3 * 3600)})
            assert start["idTagInfo"]["status"] == "Invalid"
            await c.ok("StopTransaction", {"transactionId": start["transactionId"],
                                           "meterStop": 60_000, "timestamp": now_iso()})
            return start["transactionId"]
    tx_id = run(go())
    conn = db(tmp_path / "g.db")
    tx = store.get_transaction(conn, tx_id)
    assert tx["state"] == "review" and "not authorized on this charger" in tx["review_reason"]
    assert eea(conn, EV_ADDR) == 50 * DEPOSIT


def test_authorize_grants_one_session_on_that_charger(tmp_path):
    _victim_db(tmp_path / "g.db")
    seed(tmp_path / "g.db", chargers=[("CP2", {})], pool_watt=0)

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c, \
                raw_client(cs, "CP2") as c2:
            assert (await c.ok("Authorize", {"idTag": "victim"}))["idTagInfo"]["status"] == \
                "Accepted"
            # granted to CP1, not to CP2
            other = await c2.ok("StartTransaction", {"connectorId": 1, "idTag": "VICTIM",
                                                     "meterStart": 0, "timestamp": now_iso()})
            assert other["idTagInfo"]["status"] == "Invalid"
            start = await c.ok("StartTransaction", {"connectorId": 1, "idTag": "VICTIM",
                                                    "meterStart": 0,
                                                    "timestamp": now_iso(-3600)})
            assert start["idTagInfo"]["status"] == "Accepted"
            # the grant is spent: a second session needs a second Authorize
            again = await c.ok("StartTransaction", {"connectorId": 2, "idTag": "VICTIM",
                                                    "meterStart": 0, "timestamp": now_iso()})
            assert again["idTagInfo"]["status"] == "Invalid"
            await c.ok("StopTransaction", {"transactionId": start["transactionId"],
                                           "meterStop": 7_000, "timestamp": now_iso()})
            return start["transactionId"]
    tx_id = run(go())
    assert store.get_transaction(db(tmp_path / "g.db"), tx_id)["state"] == "settled"


def test_remote_start_grants_the_session(tmp_path):
    _victim_db(tmp_path / "g.db")

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            task = asyncio.ensure_future(cs.call("CP1", "RemoteStartTransaction",
                                                 {"idTag": "VICTIM", "connectorId": 1}))
            await answer_next_call(c, {"status": "Accepted"})
            assert (await task)["status"] == "Accepted"
            start = await c.ok("StartTransaction", {"connectorId": 1, "idTag": "VICTIM",
                                                    "meterStart": 0, "timestamp": now_iso()})
            assert start["idTagInfo"]["status"] == "Accepted"
            # a RemoteStart the charger rejected grants nothing
            task = asyncio.ensure_future(cs.call("CP1", "RemoteStartTransaction",
                                                 {"idTag": "VICTIM", "connectorId": 2}))
            await answer_next_call(c, {"status": "Rejected"})
            await task
            start2 = await c.ok("StartTransaction", {"connectorId": 2, "idTag": "VICTIM",
                                                     "meterStart": 0, "timestamp": now_iso()})
            assert start2["idTagInfo"]["status"] == "Invalid"
    run(go())


def test_energy_above_the_chargers_rated_power_is_held(tmp_path):
    seed(tmp_path / "g.db", tags=[("VICTIM", EV_ADDR, 50 * DEPOSIT)])
    conn = db(tmp_path / "g.db")
    with transaction(conn):
        store.add_charger(conn, "CP1", auth.hash_password(PASSWORD, **FAST), max_power_w=11_000)

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            await c.ok("Authorize", {"idTag": "VICTIM"})
            start = await c.ok("StartTransaction", {"connectorId": 1, "idTag": "VICTIM",
                                                    "meterStart": 0,
                                                    "timestamp": now_iso(-3600)})
            assert start["idTagInfo"]["status"] == "Accepted"
            # 60 kWh in an hour from an 11 kW charger (the config allows 400 kW)
            await c.ok("StopTransaction", {"transactionId": start["transactionId"],
                                           "meterStop": 60_000, "timestamp": now_iso()})
            return start["transactionId"]
    tx = store.get_transaction(conn, run(go()))
    assert tx["state"] == "review" and "exceeds 11000 W" in tx["review_reason"]
    assert eea(conn, EV_ADDR) == 50 * DEPOSIT


def test_unknown_and_refused_idtags_get_the_same_answer(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})],
         tags=[("POOR", None, DEPOSIT - 1), ("BLK", None, DEPOSIT), ("OLD", None, DEPOSIT)])
    conn = db(tmp_path / "g.db")
    conn.execute("UPDATE ocpp_id_tags SET status='blocked' WHERE id_tag='BLK'")
    conn.execute("UPDATE ocpp_id_tags SET expires_at=1 WHERE id_tag='OLD'")

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            answers = {tag: (await c.ok("Authorize", {"idTag": tag}))["idTagInfo"]
                       for tag in ("POOR", "BLK", "OLD", "NOBODY")}
            assert set(map(json.dumps, answers.values())) == {'{"status": "Invalid"}'}
    run(go())
    # the operator still sees why
    reasons = [json.loads(r[0])["status"] for r in conn.execute(
        "SELECT detail FROM ocpp_events WHERE kind='auth_refused' ORDER BY id")]
    assert reasons == ["Blocked", "Blocked", "Expired", "Invalid"]


# ------------------------------------------------------------------ 5. bounded writes

def test_pending_cap_holds_under_concurrent_newcomers(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "MAX_PENDING", 10)
    seed(tmp_path / "g.db")

    async def go():
        async with central(tmp_path / "g.db", allow_unknown_pending=True) as cs:
            codes = await asyncio.gather(*[status_of(f"{cs.url}/NEW{i}") for i in range(80)])
            assert sorted({code for code, _ in codes}) == [101, 503]
    run(go())
    assert store.count_pending(db(tmp_path / "g.db")) == 10


def test_meter_values_beyond_the_quota_are_answered_not_stored(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})])
    values = {"connectorId": 1, "meterValue": [{"timestamp": now_iso(), "sampledValue": [
        {"value": str(i)} for i in range(4)]}]}

    async def go():
        async with central(tmp_path / "g.db", meter_values_per_min=10) as cs, \
                raw_client(cs) as c:
            for _ in range(6):
                assert await c.ok("MeterValues", values) == {}
            assert (await c.ok("Heartbeat", {}))["currentTime"]
            return cs.meter_quota.dropped
    assert run(go()) == 16
    conn = db(tmp_path / "g.db")
    assert conn.execute("SELECT COUNT(*) FROM ocpp_meter_values").fetchone()[0] == 8
    events = [json.loads(r[0]) for r in conn.execute(
        "SELECT detail FROM ocpp_events WHERE kind='security'")]
    assert len(events) == 1 and events[0]["what"].startswith("meter values over quota")


def test_removing_a_charger_leaves_no_queued_secret_behind(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP9", {})])
    conn = db(tmp_path / "g.db")
    with transaction(conn):
        cid = store.queue_command(conn, "CP9", "ChangeConfiguration",
                                  {"key": "AuthorizationKey", "value": SECRET})
    with transaction(conn):
        store.remove_charger(conn, "CP9")
    row = store.get_command(conn, cid)
    assert row["state"] == "expired" and row["error"] == "charger removed"
    assert SECRET not in "\n".join(conn.iterdump())
