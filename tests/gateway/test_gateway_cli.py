"""`egs-gw` commands of the gateway core: --json shapes and one-line errors."""
import base64
import json

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from gateway.cli import main
from gateway.ingest import store
from gateway.ingest.core import IngestCore, Message
from tests.gateway.fixtures import COMMUNITY, T0, Signer, cli_invoke, egs_gw, topic

ACCOUNT = "0x" + "ab" * 20


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.delenv("EGS_GW_CONFIG", raising=False)
    monkeypatch.setenv("EGS_GW_DB", str(tmp_path / "gw.sqlite"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)
    return invoke


def ok_json(res):
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def one_line_error(res, contains):
    assert res.exit_code != 0
    assert res.stdout == ""
    err = res.stderr
    assert err.startswith("egs-gw: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert contains in err, err
    return err


def test_device_add_list_show_with_every_key_form(cli, tmp_path):
    keys = [Signer(f"d{i}") for i in range(4)]
    pem = keys[1].key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "d1.pem").write_bytes(pem)
    der = keys[2].key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    der3 = keys[3].key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    forms = [keys[0].pub.hex(), str(tmp_path / "d1.pem"), base64.b64encode(der).decode(), der3.hex()]
    for i, (k, form) in enumerate(zip(keys, forms, strict=True)):
        d = ok_json(cli("device", "add", "--id", k.id, "--pubkey", form, "--meter-serial", f"SN{i}",
                        "--account", ACCOUNT.upper().replace("0X", "0x"), "--json"))
        assert d["id"] == k.id and d["pubkey"] == k.pub.hex() and d["account"] == ACCOUNT
        assert d["meter_serial"] == f"SN{i}" and d["revoked"] is False and len(d["fingerprint"]) == 16
    listed = ok_json(cli("device", "list", "--json"))["devices"]
    assert [d["id"] for d in listed] == ["d0", "d1", "d2", "d3"]
    show = ok_json(cli("device", "show", "--id", "d1", "--json"))
    assert show["meters"][0]["meter_serial"] == "SN1" and show["open_gaps"] == [] and show["readings"] == 0
    for args in (("device", "list"), ("device", "show", "--id", "d1")):
        res = cli(*args)
        assert res.exit_code == 0 and "d1" in res.stdout


def test_device_errors_are_one_line(cli):
    s = Signer("d1")
    one_line_error(cli("device", "list"), "no gateway database")
    ok_json(cli("device", "add", "--id", "d1", "--pubkey", s.pub.hex(), "--meter-serial", "X", "--json"))
    one_line_error(cli("device", "add", "--id", "d1", "--pubkey", Signer().pub.hex(), "--meter-serial", "X"),
                   "already registered")
    one_line_error(cli("device", "add", "--id", "d2", "--pubkey", s.pub.hex(), "--meter-serial", "X"),
                   "already registered for device d1")
    one_line_error(cli("device", "add", "--id", "d/2", "--pubkey", Signer().pub.hex(), "--meter-serial", "X"),
                   "device id")
    one_line_error(cli("device", "add", "--id", "d3", "--pubkey", "04" + "00" * 64, "--meter-serial", "X"),
                   "--pubkey")
    one_line_error(cli("device", "add", "--id", "d3", "--pubkey", Signer().pub.hex(), "--meter-serial", "X",
                       "--account", "0x123"), "not an EVM address")
    one_line_error(cli("device", "add", "--id", "d3"), "Missing option")
    one_line_error(cli("device", "show", "--id", "nope"), "no device 'nope'")
    one_line_error(cli("device", "frobnicate"), "No such command")


def test_revoke_and_replace_meter(cli):
    s = Signer("d1")
    cli("device", "add", "--id", "d1", "--pubkey", s.pub.hex(), "--meter-serial", "OLD")
    d = ok_json(cli("device", "replace-meter", "--id", "d1", "--meter-serial", "NEW", "--note", "broken",
                    "--json"))
    assert d == {"id": "d1", "meter_serial": "NEW", "epoch": 1}
    one_line_error(cli("device", "replace-meter", "--id", "d1", "--meter-serial", "OLD"), "already installed")
    r = ok_json(cli("device", "revoke", "--id", "d1", "--reason", "stolen", "--yes", "--json"))
    assert r["revoked"] is True and r["revoked_reason"] == "stolen" and r["broker_credential_removed"] is False
    one_line_error(cli("device", "revoke", "--id", "d1", "--yes"), "already revoked")
    one_line_error(cli("device", "replace-meter", "--id", "d1", "--meter-serial", "NEWER"), "revoked")
    ev = ok_json(cli("events", "--json"))
    assert [e["kind"] for e in ev["security_events"]] == ["device_revoked", "meter_replaced"]


def _ingest(tmp_path, signer, recs):
    from gateway import db
    from gateway.ingest import intervals
    conn = db.connect(tmp_path / "gw.sqlite")
    # readings at T0, weeks before the registration on the wall clock: time bounds off
    core = IngestCore(conn, COMMUNITY, {"max_future_s": 10**9, "max_age_s": 0, "registration_skew_s": 10**10})
    msgs = [Message(topic(signer.id), r.encode() if isinstance(r, str) else r) for r in recs]
    out = core.commit(msgs, core.verify_inline(core.prepare(msgs)))
    intervals.refresh(conn)
    conn.close()
    return out


def test_readings_intervals_events_status(cli, tmp_path):
    s = Signer("d1")
    cli("device", "add", "--id", "d1", "--pubkey", s.pub.hex(), "--meter-serial", s.serial, "--account", ACCOUNT)
    recs = [s.record(i, 1000 * i, 7 * i, T0 + 300 * i) for i in range(1, 9)]
    _ingest(tmp_path, s, [*recs, "garbage", s.record(9, 1, 0, T0 + 2700)])
    r = ok_json(cli("readings", "--json"))
    assert r["count"] == 8
    first = r["readings"][0]
    assert set(first) == {"device_id", "seq", "time", "time_epoch", "time_status", "time_trusted",
                          "import_wh", "export_wh", "meter_serial", "meter_epoch", "received_at", "raw",
                          "future"}
    assert first["seq"] == 8 and first["raw"] == recs[7] and first["import_wh"] == 8000
    assert ok_json(cli("readings", "--device", "d1", "--limit", "3", "--json"))["count"] == 3
    assert ok_json(cli("readings", "--since", T0 + 300 * 6, "--json"))["count"] == 3
    iso = "2026-11-17T20:00:00Z"
    assert ok_json(cli("readings", "--since", iso, "--json"))["count"] == 8
    assert ok_json(cli("readings", "--since", "1d", "--json"))["count"] == 0   # T0 is days before now
    one_line_error(cli("readings", "--since", "yesterday-ish"), "--since")
    for huge in ("99999999999999999999", "99999999999999999999d"):   # beyond SQLite's 64-bit integers
        one_line_error(cli("readings", "--since", huge), "out of range")
    one_line_error(cli("readings", "--device", "zz"), "no device 'zz'")
    one_line_error(cli("readings", "--limit", "0"), "--limit")
    iv = ok_json(cli("intervals", "--device", "d1", "--json"))
    assert iv["count"] == 3
    row = iv["intervals"][1]
    for key in ("id", "device_id", "account", "start", "end", "start_time", "import_wh", "export_wh",
                "metered_import_wh", "adjust_import_wh", "estimated", "state", "settlement_id"):
        assert key in row
    assert row["account"] == ACCOUNT and row["state"] == "open"
    # first interval from the first reading (1000 Wh at T0+300) to R(T0+900) = 3000, then 3000 more
    assert [i["import_wh"] for i in iv["intervals"]] == [2000, 3000, 2000]
    ev = ok_json(cli("events", "--json"))
    assert {q["reason"] for q in ev["quarantine"]} == {"malformed", "register_decreased"}
    assert set(ev["quarantine"][0]) >= {"id", "device_id", "reason", "detail", "raw", "count", "seq"}
    res = cli("status", "--json")      # no service: the state is printed, and exit status 1
    assert res.exit_code == 1
    st = json.loads(res.stdout)
    assert st["service"]["running"] is False and st["service"]["healthy"] is False
    assert st["devices"] == [{"id": "d1", "revoked": False, "state": None, "last_seen": st["devices"][0]["last_seen"],
                              "last_seen_s": st["devices"][0]["last_seen_s"], "last_seq": 8, "acked_seq": 8,
                              "unacked_stored": 0, "missing": 0, "device_log_depth": None}]
    for args in (("readings",), ("intervals",), ("events",)):
        res = cli(*args)
        assert res.exit_code == 0 and res.stdout, args
    res = cli("status")
    assert res.exit_code == 1 and "gateway not running" in res.stdout and res.stderr == ""


def test_device_show_prints_status_as_text_not_python(cli, tmp_path):
    from gateway import db
    s = Signer("d1")
    cli("device", "add", "--id", "d1", "--pubkey", s.pub.hex(), "--meter-serial", s.serial)
    conn = db.connect(tmp_path / "gw.sqlite")
    store.set_status(conn, "d1", {"state": "online", "counters": {"log_depth": 3, "resets": None},
                                  "faults": ["meter_timeout", "ntp"], "ip": None})
    conn.commit()
    conn.close()
    res = cli("device", "show", "--id", "d1")
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "{" not in out and "None" not in out and "['" not in out, out
    assert "state: online" in out and "log_depth: 3" in out and "resets: -" in out
    assert "faults: meter_timeout, ntp" in out and "ip: -" in out
    assert ok_json(cli("device", "show", "--id", "d1", "--json"))["status"]["counters"] == \
        {"log_depth": 3, "resets": None}


def test_intervals_show_the_quarter_hour_in_progress_without_storing_it(cli, tmp_path, monkeypatch):
    from gateway import db
    from gateway.cliutil import iso
    s = Signer("d1")
    cli("device", "add", "--id", "d1", "--pubkey", s.pub.hex(), "--meter-serial", s.serial, "--account", ACCOUNT)
    # readings up to T0+1200: [T0, T0+900) is complete, [T0+900, T0+1800) is still filling
    _ingest(tmp_path, s, [s.record(i, 1000 * i, 10 * i, T0 + 300 * i) for i in range(1, 5)])
    iv = ok_json(cli("intervals", "--json"))
    assert iv["count"] == 2
    cur, done = iv["intervals"]
    assert cur["in_progress"] is True and cur["state"] == "in progress" and cur["id"] is None
    assert cur["start"] == T0 + 900 and cur["import_wh"] == 1000 and cur["export_wh"] == 10
    assert cur["end"] == T0 + 1800 and cur["reading_until"] == iso(T0 + 1200)
    assert done["in_progress"] is False and done["state"] == "open" and done["import_wh"] == 2000
    assert ok_json(cli("intervals", "--limit", "1", "--json"))["intervals"][0]["in_progress"] is True
    monkeypatch.setenv("COLUMNS", "200")
    res = cli("intervals")
    assert res.exit_code == 0 and res.stdout.count("in progress") == 1
    conn = db.connect(tmp_path / "gw.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM intervals").fetchone()[0] == 1   # nothing new stored
    conn.close()


def test_readings_stamped_ahead_of_the_gateway_clock_are_flagged(cli, tmp_path, monkeypatch):
    from gateway import db
    s = Signer("d1")
    cli("device", "add", "--id", "d1", "--pubkey", s.pub.hex(), "--meter-serial", s.serial)
    conn = db.connect(tmp_path / "gw.sqlite")
    core = IngestCore(conn, COMMUNITY, {"max_future_s": 10**9, "max_age_s": 0, "registration_skew_s": 10**10})
    # received on the gateway at T0+60: seq 1 was stamped before that, seq 2 120 s ahead of it
    msgs = [Message(topic("d1"), s.record(1, 100, 0, T0).encode(), received_at=T0 + 60),
            Message(topic("d1"), s.record(2, 200, 0, T0 + 180).encode(), received_at=T0 + 60)]
    core.commit(msgs, core.verify_inline(core.prepare(msgs)))
    conn.close()
    monkeypatch.setenv("COLUMNS", "200")
    r = ok_json(cli("readings", "--json"))["readings"]
    assert [(x["seq"], x["future"]) for x in r] == [(2, True), (1, False)]
    res = cli("readings")
    assert res.exit_code == 0 and res.stdout.count("future") == 1


def test_verify_command(cli, tmp_path):
    s = Signer("d1")
    recs = [s.record(i, 98765432 + i, 5, T0 + 60 * i) for i in (1, 2)]
    f = tmp_path / "records.txt"
    f.write_text("\n".join(recs) + "\n")
    out = ok_json(cli("verify", f, "--pubkey", s.pub.hex(), "--json"))
    assert out["all_verified"] and out["verified"] == 2
    assert out["records"][0]["import_wh"] == 98765433 and out["records"][0]["sequence"] == 1
    # from stdin, one tampered: exit 1, result says which
    bad = recs[1].replace('"RV":98765.434', '"RV":98765.999')
    res = cli("verify", "-", "--pubkey", s.pub.hex(), "--json", input=recs[0] + "\n" + bad + "\n")
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert [r["verified"] for r in out["records"]] == [True, False]
    assert "SignatureMismatch" in out["records"][1]["error"]
    # no key given: the registered device's key is used (GS is the device id)
    assert cli("verify", f, "--json").exit_code == 1
    cli("device", "add", "--id", "d1", "--pubkey", s.pub.hex(), "--meter-serial", s.serial)
    out = ok_json(cli("verify", f, "--json"))
    assert out["all_verified"] and out["records"][0]["device_id"] == "d1"
    # OCPP hex encoding of a record is accepted too
    res = cli("verify", "-", "--pubkey", s.pub.hex(), input=recs[0].encode().hex() + "\n")
    assert res.exit_code == 0 and "OK" in res.stdout
    one_line_error(cli("verify", tmp_path / "missing.txt"), "cannot read")
    one_line_error(cli("verify", "-", input=""), "no records")
    one_line_error(cli("verify", f, "--pubkey", "nonsense"), "--pubkey")


def test_run_config_errors_name_the_key(cli, tmp_path):
    db = tmp_path / "gw.sqlite"
    cases = [
        ("[mqtt]\nbrokr = 'x'\n", "mqtt.brokr: unknown key"),
        ("[mqtt]\nbroker = 'localhost:notaport'\n[gateway]\ncommunity = 'c'\n", "mqtt.broker: port"),
        ("[ingest]\nbatch_size = 'many'\n", "ingest.batch_size: expected int"),
        ("[ingest]\nbatch_size = 0\n[gateway]\ncommunity = 'c'\n", "ingest.batch_size: must be"),
        ("[gateway]\ncommunity = 'a/b'\n", "gateway.community"),
        ("[gateway]\ncommunity = 'c'\nlog_level = 'LOUD'\n", "gateway.log_level"),
        ("[gateway]\ncommunity = 'c'\ncomponents = ['warp']\n", "gateway.components: unknown component"),
        ("[warp]\nx = 1\n", "warp: unknown section"),
        ("[mqtt\n", "not valid TOML"),
        ("", "gateway.community: required"),
        ("[gateway]\ncommunity = 'c'\n[mqtt]\nuser = 'u'\npassword_file = '/nonexistent/pw'\n",
         "mqtt.password_file: cannot read"),
    ]
    for text, expected in cases:
        cfg = tmp_path / "gw.toml"
        cfg.write_text(text)
        one_line_error(cli("run", "--config", cfg, "--db", db), expected)
    one_line_error(cli("run", "--config", tmp_path / "absent.toml"), "config file not found")
    one_line_error(cli("run", "--db", db, "--community", "c", "--broker", "nohost:"), "mqtt.broker")
    one_line_error(cli("run", "--db", db, "--community", "c", "--ocpp", "x:y"), "--ocpp")
    # the real console script: same one line, no traceback
    cfg.write_text(cases[0][0])
    res = egs_gw("run", "--config", cfg, "--db", db, timeout=60)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == "egs-gw: error: mqtt.brokr: unknown key\n"


def test_example_config_is_valid():
    from pathlib import Path

    from gateway import config as config_mod
    from gateway.ingest import settings
    example = Path(__file__).resolve().parents[2] / "gateway" / "gateway.example.toml"
    cfg = config_mod.load(example)
    settings.validate(cfg)
    assert cfg["gateway"]["community"] and cfg["mqtt"]["broker"]
    # a first start from the example must not start a ledger that has no key (an ERROR
    # on every start that sends a new user the wrong way)
    assert "ledger" not in cfg["gateway"]["components"] or cfg.get("ledger", {}).get("keystore")


def test_store_survives_concurrent_cli_reads_while_ingesting(cli, tmp_path):
    s = Signer("d1")
    cli("device", "add", "--id", "d1", "--pubkey", s.pub.hex(), "--meter-serial", s.serial)
    _ingest(tmp_path, s, [s.record(i, i, 0, T0 + i) for i in range(1, 50)])
    from gateway import db
    conn = db.connect(tmp_path / "gw.sqlite")
    conn.execute("BEGIN IMMEDIATE")   # a writer holds the lock (the service mid-batch)
    try:
        assert ok_json(cli("readings", "--limit", "100", "--json"))["count"] == 49
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert store.count_readings(db.connect(tmp_path / "gw.sqlite", readonly=True)) == 49


def test_relative_paths_in_a_config_file_are_beside_it(tmp_path):
    """The systemd unit and a technician's shell elsewhere use the same database: a relative
    path in the config file is the config file's directory's, not the working directory's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from gateway import db

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "gateway.toml").write_text('[gateway]\ncommunity = "c1"\n[store]\ndb = "data/gw.sqlite"\n')
    (etc / "data").mkdir()
    conn = db.connect(etc / "data" / "gw.sqlite")
    store.init(conn)
    Signer("beside").register(conn)
    conn.close()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("EGS_GW_CONFIG", "EGS_GW_DB")}
    res = subprocess.run([str(Path(sys.executable).parent / "egs-gw"), "device", "list", "--config",
                          "../etc/gateway.toml", "--json"], cwd=home, capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert [d["id"] for d in json.loads(res.stdout)["devices"]] == ["beside"]
    assert not (home / "data").exists()
    # a path given on the command line stays the working directory's
    res = subprocess.run([str(Path(sys.executable).parent / "egs-gw"), "device", "list", "--config",
                          "../etc/gateway.toml", "--db", "data/gw.sqlite"], cwd=home,
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert res.returncode == 1 and str(Path("data/gw.sqlite")) in res.stderr


def test_every_path_key_of_the_config_resolves_beside_the_file(tmp_path):
    from gateway import config, service

    service.declare_sections()
    paths = {"store": ["db"], "mqtt": ["password_file", "updater_password_file", "ca_file"],
             "broker": ["dir", "certfile", "keyfile", "cafile"],
             "ledger": ["keystore", "password_file", "deployment"], "ocpp": ["tls_cert", "tls_key"]}
    (tmp_path / "release.pub").write_text("04" + "ab" * 64)
    lines = ['[gateway]\ncommunity = "c1"', '[firmware]\nrelease_pubkey = "release.pub"']
    for sec, keys in paths.items():
        lines.append(f"[{sec}]\n" + "".join(f'{k} = "rel/{k}"\n' for k in keys))
    (tmp_path / "g.toml").write_text("\n".join(lines) + "\n")
    cfg = config.load(str(tmp_path / "g.toml"))
    for sec, keys in paths.items():
        for k in keys:
            assert cfg[sec][k] == str(tmp_path / "rel" / k), (sec, k)
    assert cfg["firmware"]["release_pubkey"] == str(tmp_path / "release.pub")
    # a hex key stays a key; absolute paths and empty values stay as written
    (tmp_path / "g.toml").write_text('[firmware]\nrelease_pubkey = "04abcd"\n[mqtt]\nca_file = "/x/ca.pem"\n'
                                     'password_file = ""\n')
    cfg = config.load(str(tmp_path / "g.toml"), {"mqtt.user": "u"})
    assert cfg["firmware"]["release_pubkey"] == "04abcd"
    assert cfg["mqtt"]["ca_file"] == "/x/ca.pem" and cfg["mqtt"]["password_file"] == ""


def test_status_reports_components_and_exits_1_unless_the_gateway_is_healthy(tmp_path, gwdb, mosquitto,
                                                                            cleanup):
    """A running gateway: status 0 with each component's health; stopped: 1, state still shown."""
    from tests.gateway.fixtures import gateway_config, start_gateway, wait_for

    db_path = tmp_path / "gw.sqlite"
    cfg = gateway_config(tmp_path, mosquitto.port, "", gateway={"components": ["ocpp"]},
                         mqtt={"user": "", "password_file": ""})
    gw = start_gateway(tmp_path, cfg, db_path)
    cleanup.append(gw)

    def status():
        return cli_invoke("status", "--config", cfg, "--db", db_path, "--json")

    wait_for(lambda: "ocpp" in json.loads(status().stdout)["service"]["components"], timeout=30,
             what="the ocpp component in the heartbeat")
    res = status()
    st = json.loads(res.stdout)["service"]
    assert res.exit_code == 0, res.stdout
    assert st["running"] and st["connected"] and st["healthy"]
    assert st["components"]["ocpp"] == {"ok": True, "listening": None}
    gw.stop()
    res = status()
    st = json.loads(res.stdout)["service"]
    assert res.exit_code == 1 and st["running"] is False and st["healthy"] is False
    human = cli_invoke("status", "--config", cfg, "--db", db_path)
    assert human.exit_code == 1 and "gateway not running" in human.stdout
