"""`egs-gw charger|account|session`, and CS → charger calls from the CLI to a live charger."""
import asyncio
import json

from click.testing import CliRunner

from gateway.cli import main
from protocol import p256
from sim.charger import EV, SimChargePoint
from tests.ocpp.fixtures import EV_ADDR, OWNER, PASSWORD, POOL, PRICE, central, run, seed


def cli(tmp_path, *args, ok=True):
    conf = tmp_path / "gw.toml"
    if not conf.exists():
        conf.write_text(f'[ocpp]\nprice_per_kwh = "{PRICE} base"\nenergy_pool = "{POOL}"\n'
                        'min_deposit_eea = "1 EEA"\n')
    result = CliRunner().invoke(main, [*args, "--config", str(conf), "--db",
                                       str(tmp_path / "g.db"), "--json"])
    if ok:
        assert result.exit_code == 0, (args, result.output)
        return json.loads(result.stdout)
    assert result.exit_code != 0, (args, result.output)
    return result.output


def test_charger_account_session_commands(tmp_path):
    c = cli(tmp_path, "charger", "add", "--id", "CP9", "--password", PASSWORD, "--owner", OWNER,
            "--fee", "0.05EEA", "--meter-key", p256.public_key(b"\x3f" * 32).hex())
    assert c["id"] == "CP9" and c["fee_per_kwh"] == str(5 * 10**16) and c["has_password"]
    assert "password_hash" not in c
    assert "already exists" in cli(tmp_path, "charger", "add", "--id", "CP9", "--password",
                                   PASSWORD, ok=False)
    assert "needs --owner" in cli(tmp_path, "charger", "add", "--id", "CP8", "--password",
                                  PASSWORD, "--fee", "5", ok=False)
    assert "8..64" in cli(tmp_path, "charger", "add", "--id", "CP8", "--password", "x", ok=False)
    assert "meter-key" in cli(tmp_path, "charger", "add", "--id", "CP8", "--password", PASSWORD,
                              "--meter-key", "nonsense", ok=False)
    assert "invalid charger id" in cli(tmp_path, "charger", "add", "--id", "bad/id",
                                       "--password", PASSWORD, ok=False)
    assert [x["id"] for x in cli(tmp_path, "charger", "list")] == ["CP9"]
    assert cli(tmp_path, "charger", "show", "--id", "CP9")["sessions"] == []
    assert "unknown charger" in cli(tmp_path, "charger", "show", "--id", "NOPE", ok=False)

    a = cli(tmp_path, "account", "add", "--id-tag", "TAG7", "--address", EV_ADDR)
    assert (a["address"], a["eea"]) == (EV_ADDR, "0")
    b = cli(tmp_path, "account", "add", "--id-tag", "CARD2")
    assert b["address"].startswith("0x") and len(b["address"]) == 42
    assert cli(tmp_path, "account", "show", "--id-tag", "TAG7")["authorization"]["status"] == \
        "Blocked"
    credit = cli(tmp_path, "account", "credit", "--id-tag", "TAG7", "--amount", "2.5 EEA",
                 "--ref", "dep-1")
    assert credit["eea"] == str(25 * 10**17) and credit["applied"]
    again = cli(tmp_path, "account", "credit", "--id-tag", "TAG7", "--amount", "2.5 EEA",
                "--ref", "dep-1")
    assert again["eea"] == str(25 * 10**17) and not again["applied"]
    assert "not an EEA amount" in cli(tmp_path, "account", "credit", "--id-tag", "TAG7",
                                      "--amount", "lots", ok=False)
    assert cli(tmp_path, "account", "show", "--id-tag", "TAG7")["authorization"]["status"] == \
        "Accepted"
    assert cli(tmp_path, "account", "block", "--id-tag", "TAG7")["status"] == "blocked"
    assert cli(tmp_path, "account", "block", "--id-tag", "TAG7", "--unblock")["status"] == "active"
    assert {x["id_tag"] for x in cli(tmp_path, "account", "list")} == {"TAG7", "CARD2"}
    assert cli(tmp_path, "session", "list") == []
    assert "unknown transaction" in cli(tmp_path, "session", "show", "5", ok=False)
    # without a running central system a command expires instead of lingering
    out = cli(tmp_path, "charger", "reset", "--id", "CP9", "--timeout", "0.3", ok=False)
    assert "no central system took the command" in out


def test_cs_to_charger_commands_from_the_cli(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 5 * 10**18)])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            cp = SimChargePoint(cs.url, "CP1", password=PASSWORD, connectors=2)
            await cp.start()
            try:
                await cp.wait_connected()

                async def gw(*args, ok=True):
                    return await asyncio.to_thread(cli, tmp_path, *args, ok=ok)

                assert (await gw("charger", "remote-start", "--id", "CP1", "--id-tag", "TAG1",
                                 "--connector", "1"))["status"] == "Accepted"
                while cp.connectors[1].tx is None or cp.connectors[1].tx.id is None:
                    await asyncio.sleep(0.02)
                tx_id = cp.connectors[1].tx.id
                cp.connectors[1].ev = EV(50, 11, 0.5)
                await cp.deliver(1, 1_500)
                assert (await gw("charger", "remote-stop", "--id", "CP1", "--transaction",
                                 str(tx_id)))["status"] == "Accepted"
                # a refusal is printed (JSON too) and exits 1
                assert json.loads(await gw("charger", "remote-stop", "--id", "CP1", "--transaction",
                                           "99999", ok=False))["status"] == "Rejected"
                await cp.wait_idle()
                while (await gw("session", "show", str(tx_id)))["state"] == "active":
                    await asyncio.sleep(0.05)
                s = await gw("session", "show", str(tx_id))
                assert (s["state"], s["energy_wh"], s["stop_reason"]) == ("settled", 1500, "Remote")
                assert [x["id"] for x in await gw("session", "list", "--state", "settled")] == \
                    [tx_id]

                assert (await gw("charger", "unlock", "--id", "CP1", "--connector", "2"
                                 ))["status"] == "Unlocked"
                assert cp.unlocked == [2]
                assert (await gw("charger", "availability", "--id", "CP1", "--connector", "2",
                                 "--type", "inoperative"))["status"] == "Accepted"
                assert cp.connectors[2].available is False
                assert (await gw("charger", "config", "set", "--id", "CP1",
                                 "MeterValueSampleInterval", "15"))["status"] == "Accepted"
                assert json.loads(await gw("charger", "config", "set", "--id", "CP1", "NoSuchKey",
                                           "1", ok=False))["status"] == "NotSupported"
                got = await gw("charger", "config", "get", "--id", "CP1",
                               "MeterValueSampleInterval", "Bogus")
                assert got["configurationKey"] == [{"key": "MeterValueSampleInterval",
                                                    "readonly": False, "value": "15"}]
                assert got["unknownKey"] == ["Bogus"]
                cp.auth_cache["X"] = "Accepted"
                assert (await gw("charger", "clear-cache", "--id", "CP1"))["status"] == "Accepted"
                assert cp.auth_cache == {}
                assert (await gw("charger", "trigger", "--id", "CP1", "StatusNotification",
                                 "--connector", "2"))["status"] == "Accepted"
                assert json.loads(await gw("charger", "trigger", "--id", "CP1",
                                           "FirmwareStatusNotification", ok=False)
                                  )["status"] == "NotImplemented"
                boots = cp.boots
                assert (await gw("charger", "reset", "--id", "CP1"))["status"] == "Accepted"
                while cp.boots == boots:
                    await asyncio.sleep(0.02)
                assert cp.resets == ["Soft"]
                shown = await gw("charger", "show", "--id", "CP1")
                assert {c["connector_id"]: c["status"] for c in shown["connectors"]}[2] == \
                    "Unavailable"
                # a charger that is not connected: a clear failure, not a hang
                await cp.close()
                while "CP1" in cs.connections:
                    await asyncio.sleep(0.02)
                out = await gw("charger", "reset", "--id", "CP1", ok=False)
                assert "not connected" in out
            finally:
                await cp.close()
    run(go(), timeout=90)


def test_review_release_and_void_from_the_cli(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {"fee": 0})], tags=[("TAG1", EV_ADDR, 5 * 10**18)])
    from tests.ocpp.fixtures import now_iso, raw_client

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            ids = []
            for stop in (-500, 48_000_000):
                tx = (await c.ok("StartTransaction", {
                    "connectorId": 1, "idTag": "TAG1", "meterStart": 1000 + len(ids),
                    "timestamp": now_iso(-3600)}))["transactionId"]
                await c.ok("StopTransaction", {"transactionId": tx, "meterStop": stop,
                                               "timestamp": now_iso()})
                ids.append(tx)
            return ids
    neg, huge = run(go())
    assert [s["state"] for s in cli(tmp_path, "session", "list", "--state", "review")] == \
        ["review", "review"]
    # assessed again, it stays in review: printed, and exit status 1
    again = json.loads(cli(tmp_path, "session", "settle", str(huge), "--note", "look again", ok=False))
    assert (again["state"], again["id"]) == ("review", huge)
    s = cli(tmp_path, "session", "settle", str(huge), "--energy-wh", "7000", "--note",
            "meter photo: 7 kWh")
    assert (s["state"], s["energy_wh"], s["energy_source"]) == ("settled", 7000, "operator")
    assert s["energy_eea"] == str(7000 * PRICE // 1000)
    assert "not under review" in cli(tmp_path, "session", "settle", str(huge), "--note", "x",
                                     ok=False)
    assert cli(tmp_path, "session", "void", str(neg), "--note", "meter fault")["state"] == "void"
    assert "not under review" in cli(tmp_path, "session", "void", str(neg), "--note", "x", ok=False)


def test_command_in_flight_when_the_service_stops_fails_and_cli_never_hangs(tmp_path):
    """A command the service took but never finished: recorded as failed, and a CLI waiting
    on a command stuck as 'sent' (service killed) gives up instead of waiting forever."""
    import threading
    import time

    from gateway.db import transaction
    from ocpp_cs import store
    from tests.ocpp.fixtures import db, raw_client

    seed(tmp_path / "g.db", chargers=[("CP1", {})])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            conn = db(tmp_path / "g.db")
            with transaction(conn):
                cid = store.queue_command(conn, "CP1", "Reset", {"type": "Soft"})
            frame = json.loads(await asyncio.wait_for(c.ws.recv(), 10))  # never answered
            assert frame[2] == "Reset"
            assert store.get_command(conn, cid)["state"] == "sent"
        return cid
    cid = run(go())
    row = db(tmp_path / "g.db").execute("SELECT * FROM ocpp_commands WHERE id=?",
                                        (cid,)).fetchone()
    assert row["state"] == "failed" and "stopped" in row["error"]

    # a service that claims the command and dies: nothing will ever finish it
    (tmp_path / "gw.toml").write_text(f'[ocpp]\nprice_per_kwh = "{PRICE} base"\nenergy_pool = "{POOL}"\n'
                                      "call_timeout = 1\n")
    stop = threading.Event()

    def dead_service():
        conn = db(tmp_path / "g.db")
        while not stop.is_set():
            with transaction(conn):
                store.claim_commands(conn)
            time.sleep(0.02)
    t = threading.Thread(target=dead_service)
    t.start()
    try:
        out = cli(tmp_path, "charger", "reset", "--id", "CP1", "--timeout", "0.5", ok=False)
    finally:
        stop.set()
        t.join()
    assert "recorded no answer" in out


def test_charger_and_account_remove_refuse_active_sessions_and_keep_history(tmp_path):
    """`charger remove` / `account remove`: refused while a session runs (or a balance
    remains) unless --force, confirmed with --yes, and the sessions stay on record."""
    seed(tmp_path / "g.db", chargers=[("CP1", {"fee": 0})], tags=[("TAG1", EV_ADDR, 5 * 10**18)])
    cli(tmp_path, "account", "add", "--id-tag", "SPARE")
    from tests.ocpp.fixtures import now_iso, raw_client

    async def start():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            return (await c.ok("StartTransaction", {
                "connectorId": 1, "idTag": "TAG1", "meterStart": 1000,
                "timestamp": now_iso(-60)}))["transactionId"]
    tx = run(start())
    # no terminal and no --yes: nothing happens, exit status 2
    res = CliRunner().invoke(main, ["charger", "remove", "--id", "CP1", "--db", str(tmp_path / "g.db")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "--yes" in res.stderr, res.output
    assert "active session" in cli(tmp_path, "charger", "remove", "--id", "CP1", "--yes", ok=False)
    assert "active session" in cli(tmp_path, "account", "remove", "--id-tag", "TAG1", "--yes",
                                   ok=False)
    assert [x["id"] for x in cli(tmp_path, "charger", "list")] == ["CP1"]
    out = cli(tmp_path, "charger", "remove", "--id", "CP1", "--yes", "--force")
    assert out == {"id": "CP1", "removed": True, "active_sessions": 1}
    assert cli(tmp_path, "charger", "list") == []
    assert "unknown charger" in cli(tmp_path, "charger", "remove", "--id", "CP1", "--yes", ok=False)
    assert [s["id"] for s in cli(tmp_path, "session", "list", "--charger", "CP1")] == [tx]
    # the balance alone also needs --force; the balance book keeps it under the address
    out = cli(tmp_path, "account", "remove", "--id-tag", "TAG1", "--yes", "--force")
    assert out["active_sessions"] == 1 and int(out["eea"]) > 0
    assert {x["id_tag"] for x in cli(tmp_path, "account", "list")} == {"SPARE"}
    from tests.ocpp.fixtures import db, eea
    conn = db(tmp_path / "g.db")
    assert eea(conn, EV_ADDR) == int(out["eea"])      # the balance book keeps it
    conn.close()
    assert cli(tmp_path, "account", "remove", "--id-tag", "SPARE", "--yes")["removed"] is True
    assert cli(tmp_path, "account", "list") == []
    assert [s["id"] for s in cli(tmp_path, "session", "list")] == [tx]


def test_account_remove_refuses_a_balance_without_force(tmp_path):
    cli(tmp_path, "account", "add", "--id-tag", "TAG2", "--address", EV_ADDR)
    cli(tmp_path, "account", "credit", "--id-tag", "TAG2", "--amount", "2 EEA", "--ref", "d1")
    err = cli(tmp_path, "account", "remove", "--id-tag", "TAG2", "--yes", ok=False)
    assert "prepaid balance" in err and "--force" in err
    assert [x["id_tag"] for x in cli(tmp_path, "account", "list")] == ["TAG2"]
    out = cli(tmp_path, "account", "remove", "--id-tag", "TAG2", "--yes", "--force")
    assert out["removed"] and out["eea"] == str(2 * 10**18)
    res = CliRunner().invoke(main, ["account", "remove", "--id-tag", "TAG2", "--yes", "--db",
                                    str(tmp_path / "nowhere.db")])
    assert res.exit_code == 1 and "nowhere.db" in res.stderr
    assert not (tmp_path / "nowhere.db").exists()


def _gw(tmp_path, *args, input=None):
    """`egs-gw ARGS` with stdout and stderr apart (warnings go to stderr)."""
    conf = tmp_path / "gw.toml"
    if not conf.exists():
        conf.write_text(f'[ocpp]\nprice_per_kwh = "{PRICE} base"\nenergy_pool = "{POOL}"\n')
    return CliRunner().invoke(main, [*args, "--config", str(conf), "--db", str(tmp_path / "g.db"),
                                     "--json"], input=input)


def _stored_password_is(tmp_path, charger_id, password):
    """The charger's stored password hash is that of `password` (what Basic auth checks)."""
    from gateway import db as db_mod
    from ocpp_cs import auth
    from ocpp_cs import store as ocpp_store
    conn = db_mod.connect(str(tmp_path / "g.db"))
    try:
        return auth.verify_password(ocpp_store.get_charger(conn, charger_id)["password_hash"],
                                    password)
    finally:
        conn.close()


def test_a_charger_password_is_read_from_a_file_or_stdin_without_a_warning(tmp_path):
    secret = tmp_path / "cp1.pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    r = _gw(tmp_path, "charger", "add", "--id", "CP1", "--password-file", str(secret))
    assert r.exit_code == 0 and r.stderr == "", r.output
    assert _stored_password_is(tmp_path, "CP1", PASSWORD)
    r = _gw(tmp_path, "charger", "set", "--id", "CP1", "--password-file", "-",
            input="another-secret-1\n")
    assert r.exit_code == 0 and r.stderr == "", r.output
    assert _stored_password_is(tmp_path, "CP1", "another-secret-1")
    assert not _stored_password_is(tmp_path, "CP1", PASSWORD)


def test_a_password_file_others_may_read_is_used_with_a_one_line_warning(tmp_path):
    secret = tmp_path / "cp1.pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    r = _gw(tmp_path, "charger", "add", "--id", "CP1", "--password-file", str(secret))
    assert r.exit_code == 0, r.output
    assert r.stderr.count("\n") == 1 and "readable by others" in r.stderr, r.stderr
    assert "chmod 600" in r.stderr and _stored_password_is(tmp_path, "CP1", PASSWORD)


def test_a_password_on_the_command_line_still_works_with_a_one_line_warning(tmp_path):
    for args in (("add", "--id", "CP1", "--password", PASSWORD),
                 ("set", "--id", "CP1", "--password", "another-secret-1")):
        r = _gw(tmp_path, "charger", *args)
        assert r.exit_code == 0, r.output
        assert r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("egs-gw: warning: --password ") and "--password-file" in r.stderr
    assert _stored_password_is(tmp_path, "CP1", "another-secret-1")


def test_a_missing_or_empty_password_file_is_a_one_line_error_and_registers_nothing(tmp_path):
    empty = tmp_path / "empty.pw"
    empty.write_text("")
    empty.chmod(0o600)
    for path, what in ((tmp_path / "nope.pw", "cannot read"), (empty, "is empty")):
        r = _gw(tmp_path, "charger", "add", "--id", "CP1", "--password-file", str(path))
        assert r.exit_code == 1 and what in r.stderr and r.stderr.count("\n") == 1, r.output
        assert json.loads(r.stderr)["exit"] == 1
    r = _gw(tmp_path, "charger", "add", "--id", "CP1")          # no terminal to ask on
    assert r.exit_code == 2 and "--password-file" in r.stderr and r.stderr.count("\n") == 1
    r = _gw(tmp_path, "charger", "add", "--id", "CP1", "--password", PASSWORD,
            "--password-file", str(empty))
    assert r.exit_code == 2 and "not both" in r.stderr, r.output
    assert cli(tmp_path, "charger", "list") == []
