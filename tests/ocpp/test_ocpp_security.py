"""Security profiles 1 (Basic auth) and 2 (TLS + Basic), unknown chargers, reconnects."""
import asyncio
import datetime
import json
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.db import transaction
from ocpp_cs import auth, store
from sim.charger import SimChargePoint
from tests.ocpp.fixtures import (
    FAST,
    PASSWORD,
    basic,
    central,
    db,
    raw_client,
    run,
    seed,
)


def status_of(exc_info):
    return exc_info.value.response.status_code


async def refused(url, headers=None, subprotocols=("ocpp1.6",), **kw):
    with pytest.raises(InvalidStatus) as e:
        async with connect(url, subprotocols=list(subprotocols) if subprotocols else None,
                           additional_headers=headers, **kw):
            pass
    return status_of(e)


def test_password_hash_is_slow_salted_and_checked():
    h1, h2 = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert h1 != h2 and h1.startswith("scrypt$16384$8$1$") and PASSWORD not in h1
    assert auth.verify_password(h1, PASSWORD)
    assert not auth.verify_password(h1, PASSWORD + "x")
    assert not auth.verify_password("scrypt$garbage", PASSWORD)
    assert not auth.verify_password(None, PASSWORD)
    with pytest.raises(auth.PasswordError):
        auth.hash_password("short")
    assert auth.parse_basic("Basic !!notbase64") is None
    assert auth.parse_basic("Bearer abc") is None
    assert auth.parse_basic(basic("CP1", "a:b")["Authorization"]) == ("CP1", "a:b")


def test_profile1_refuses_missing_and_wrong_credentials(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {}), ("CP2", {"password": "other-password"})])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            url = f"{cs.url}/CP1"
            assert await refused(url) == 401
            assert await refused(url, basic("CP1", "wrong-password")) == 401
            # CP2's valid credentials do not open CP1
            assert await refused(url, basic("CP2", "other-password")) == 401
            assert await refused(url, {"Authorization": "Basic %%%"}) == 401
            # two Authorization headers (the right one among them): refused, not a 500
            assert await refused(url, [("Authorization", basic("CP1", PASSWORD)["Authorization"]),
                                       ("Authorization", basic("CP1", "x")["Authorization"])]) \
                == 401
            assert await refused(f"{cs.url}/GHOST", basic("GHOST", PASSWORD)) == 404
            assert await refused(f"ws://127.0.0.1:{cs.port}/elsewhere/CP1",
                                 basic("CP1", PASSWORD)) == 404
            assert await refused(f"{cs.url}/bad%20id", basic("bad id", PASSWORD)) == 400
            # right credentials but no ocpp1.6 subprotocol offered
            assert await refused(url, basic("CP1", PASSWORD), subprotocols=None) == 400
            assert await refused(url, basic("CP1", PASSWORD), subprotocols=["ocpp2.0.1"]) == 400
            # and the right ones work, twice (the second time from the verified cache)
            for _ in range(2):
                async with raw_client(cs) as c:
                    assert c.ws.subprotocol == "ocpp1.6"
                    assert (await c.ok("Heartbeat", {}))["currentTime"]
    run(go())
    whats = {json.loads(r[0])["what"] for r in db(tmp_path / "g.db").execute(
        "SELECT detail FROM ocpp_events WHERE kind='security'")}
    assert whats == {"authentication failed: no credentials",
                     "authentication failed: wrong user or password", "unknown charger refused"}


def test_refused_handshakes_cannot_flood_the_database(tmp_path):
    """An unauthenticated client can be refused any number of times: each reason from one
    host is written at most once per period, with the count of refusals not written."""
    seed(tmp_path / "g.db", chargers=[("CP1", {})])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            cs.refusals.period_s = 1.0
            # the refusal log, not the password throttle (test_ocpp_hardening), is tested here
            cs.throttle = auth.Throttle(burst=10_000)
            for i in range(60):
                assert await refused(f"{cs.url}/CP1", basic("CP1", f"guess-{i}")) == 401
                assert await refused(f"{cs.url}/GHOST{i}") == 404
            await asyncio.sleep(1.1)
            assert await refused(f"{cs.url}/CP1", basic("CP1", "one-more")) == 401
            # the right password still gets in
            async with raw_client(cs) as c:
                assert (await c.ok("Heartbeat", {}))["currentTime"]
    run(go())
    rows = [json.loads(r[0]) for r in db(tmp_path / "g.db").execute(
        "SELECT detail FROM ocpp_events WHERE kind='security' ORDER BY id")]
    wrong = [r for r in rows if r["what"] == "authentication failed: wrong user or password"]
    assert len(wrong) == 2 and wrong[1]["refusals_not_logged"] == 59
    assert len([r for r in rows if r["what"] == "unknown charger refused"]) == 1
    assert len(rows) == 3


def test_pending_chargers_are_capped(tmp_path, monkeypatch):
    from ocpp_cs import server
    monkeypatch.setattr(server, "MAX_PENDING", 3)
    seed(tmp_path / "g.db")

    async def go():
        async with central(tmp_path / "g.db", allow_unknown_pending=True) as cs:
            for i in range(3):
                async with raw_client(cs, f"NEW{i}", password=None) as c:
                    assert (await c.ok("Heartbeat", {}))["currentTime"]
            assert await refused(f"{cs.url}/NEW9") == 503
            # one already pending may still come back
            async with raw_client(cs, "NEW1", password=None) as c:
                assert (await c.ok("Heartbeat", {}))["currentTime"]
    run(go())
    conn = db(tmp_path / "g.db")
    assert store.count_pending(conn) == 3 and store.get_charger(conn, "NEW9") is None


def test_unknown_charger_pending_until_registered(tmp_path):
    seed(tmp_path / "g.db")

    async def go():
        async with central(tmp_path / "g.db", allow_unknown_pending=True) as cs:
            async with raw_client(cs, "NEW1", password=None) as c:
                res = await c.ok("BootNotification", {"chargePointVendor": "V",
                                                      "chargePointModel": "M"})
                assert res["status"] == "Pending"
                assert await c.error("Authorize", {"idTag": "X"}) == "SecurityError"
                assert await c.error("StartTransaction", {
                    "connectorId": 1, "idTag": "X", "meterStart": 0,
                    "timestamp": "2026-01-01T00:00:00Z"}) == "SecurityError"
                assert (await c.ok("Heartbeat", {}))["currentTime"]
            conn = db(tmp_path / "g.db")
            assert store.get_charger(conn, "NEW1")["status"] == "pending"
            with transaction(conn):
                store.add_charger(conn, "NEW1", auth.hash_password(PASSWORD, **FAST))
            # registered now: without the password it is refused, with it accepted
            assert await refused(f"{cs.url}/NEW1") == 401
            async with raw_client(cs, "NEW1") as c:
                res = await c.ok("BootNotification", {"chargePointVendor": "V",
                                                      "chargePointModel": "M"})
                assert res["status"] == "Accepted"
    run(go())


def test_reconnect_replaces_and_closes_old_connection(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as old:
            assert (await old.ok("Heartbeat", {}))["currentTime"]
            first = cs.connections["CP1"]
            async with raw_client(cs) as new:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(old.ws.recv(), 10)
                assert closed.value.rcvd.reason == "replaced by a new connection"
                assert cs.connections["CP1"] is not first
                assert (await new.ok("Heartbeat", {}))["currentTime"]
            await asyncio.sleep(0.1)
            assert "CP1" not in cs.connections   # the new one left; the old never returns
    run(go())


def _cert(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cs.crt", tmp_path / "cs.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_profile2_tls_with_basic_auth(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})])
    cert, key = _cert(tmp_path)
    client_ctx = ssl.create_default_context(cafile=cert)

    async def go():
        async with central(tmp_path / "g.db", tls_cert=cert, tls_key=key) as cs:
            assert cs.url.startswith("wss://")
            # TLS without the password, and the wrong password: still refused
            assert await refused(f"{cs.url}/CP1", ssl=client_ctx) == 401
            assert await refused(f"{cs.url}/CP1", basic("CP1", "wrong-password"),
                                 ssl=client_ctx) == 401
            # a client that does not trust the certificate never gets to HTTP
            with pytest.raises(ssl.SSLCertVerificationError):
                async with connect(f"{cs.url}/CP1", subprotocols=["ocpp1.6"],
                                   additional_headers=basic("CP1", PASSWORD),
                                   ssl=ssl.create_default_context()):
                    pass
            # plain ws:// to the TLS port fails
            with pytest.raises((OSError, ConnectionClosed, asyncio.TimeoutError, Exception)):
                async with connect(f"ws://127.0.0.1:{cs.port}/ocpp/CP1", subprotocols=["ocpp1.6"],
                                   additional_headers=basic("CP1", PASSWORD), open_timeout=3):
                    pass
            cp = SimChargePoint(cs.url, "CP1", password=PASSWORD, ssl=client_ctx)
            await cp.start()
            try:
                await cp.wait_connected()
                assert cp.boot_status == "Accepted"
                assert (await cp.heartbeat()).current_time
            finally:
                await cp.close()
    run(go())
