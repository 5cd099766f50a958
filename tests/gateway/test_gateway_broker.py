"""Broker security with real mosquitto and the configuration `egs-gw broker config` writes."""
import json
import os
import stat
from pathlib import Path

import pytest

from gateway.devices import broker
from gateway.ingest import store
from tests.gateway.fixtures import (  # noqa: F401
    COMMUNITY,
    Peer,
    Signer,
    cleanup_fixture,
    cli_invoke,
    gwdb_fixture,
    secured_broker,
    topic,
)


@pytest.fixture
def secured(tmp_path, gwdb):
    Signer("dev1").register(gwdb)
    Signer("dev2").register(gwdb)
    mosq, summary = secured_broker(tmp_path, gwdb, tmp_path / "gw.sqlite")
    with mosq:
        peers = []

        def peer(user, password=None, **kw):
            if password is None:
                password = broker.credential(summary["dir"], user, create=False)
            p = Peer(mosq.port, user, password, client_id=f"{user}-{len(peers)}", **kw)
            peers.append(p)
            return p

        yield mosq, summary, peer
        for p in peers:
            p.close()


def test_config_files_and_credentials(secured):
    _, s, _ = secured
    assert s["devices"] == ["dev1", "dev2"] and s["gateway_user"] == "egs-gateway"
    for user, path in s["credentials"].items():
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600, (user, oct(mode))
    passwd = Path(s["passwd"]).read_text()
    assert "dev1:$7$" in passwd and "egs-gateway:$" in passwd
    assert broker.credential(s["dir"], "dev1", create=False) not in passwd   # hashed, not clear text
    acl = Path(s["acl"]).read_text()
    assert f"pattern write egs/v1/{COMMUNITY}/%u/ocmf" in acl
    assert f"pattern read egs/v1/{COMMUNITY}/%u/ack" in acl


def test_device_cannot_publish_under_another_id(secured):
    _, _, peer = secured
    gw = peer("egs-gateway")
    assert gw.connect()
    gw.subscribe(f"egs/v1/{COMMUNITY}/+/ocmf")
    gw.subscribe(f"egs/v1/{COMMUNITY}/+/status")
    dev1 = peer("dev1")
    assert dev1.connect()
    dev1.publish(topic("dev2"), b"forged by dev1")
    dev1.publish(topic("dev2", "status"), b'{"state":"online"}')
    dev1.publish(topic("dev1"), b"own reading")          # positive control, sent after
    assert gw.get() == (topic("dev1"), b"own reading")
    assert gw.get(timeout=0.5) is None
    assert all(payload != b"forged by dev1" for _, payload in gw.log)


def test_device_cannot_read_another_devices_ack_or_cmd(secured):
    _, _, peer = secured
    dev1 = peer("dev1")
    assert dev1.connect()
    dev1.subscribe(topic("dev2", "ack"))
    dev1.subscribe(topic("dev2", "cmd"))
    dev1.subscribe(f"egs/v1/{COMMUNITY}/+/ack")
    dev1.subscribe(topic("dev1", "ack"))
    gw = peer("egs-gateway")
    assert gw.connect()
    gw.publish(topic("dev2", "ack"), b'{"seq": 7}')
    gw.publish(topic("dev2", "cmd"), b'{"cmd": "reboot"}')
    gw.publish(topic("dev1", "ack"), b'{"seq": 1}')       # positive control, sent after
    got = dev1.get()
    assert got == (topic("dev1", "ack"), b'{"seq": 1}')
    dev1.get(timeout=0.5)
    assert all(t.split("/")[3] == "dev1" for t, _ in dev1.log)


def test_device_cannot_forge_acks_or_commands(secured):
    _, _, peer = secured
    dev2 = peer("dev2")
    assert dev2.connect()
    dev2.subscribe(topic("dev2", "ack"))
    dev2.subscribe(topic("dev2", "cmd"))
    dev1 = peer("dev1")
    assert dev1.connect()
    dev1.publish(topic("dev2", "ack"), b'{"seq": 999999}')
    dev1.publish(topic("dev2", "cmd"), b'{"cmd": "reboot"}')
    dev1.publish(topic("dev1", "ack"), b'{"seq": 999999}')   # not even its own ack
    gw = peer("egs-gateway")
    assert gw.connect()
    gw.publish(topic("dev2", "ack"), b'{"seq": 3}')
    assert dev2.get() == (topic("dev2", "ack"), b'{"seq": 3}')
    assert dev2.get(timeout=0.5) is None


@pytest.mark.parametrize("user,password", [("nobody", "guess"), ("dev1", "wrong"), (None, None)])
def test_unknown_user_wrong_password_and_anonymous_refused(secured, user, password):
    _, _, peer = secured
    p = peer(user or "anon", password) if user else peer("anon", "")
    if user is None:
        p.c.username_pw_set(None, None)
    assert not p.connect(timeout=3)
    assert p.reason is not None and p.reason.is_failure


def test_revoked_device_loses_its_credential(tmp_path, gwdb):
    Signer("dev1").register(gwdb)
    db_path = tmp_path / "gw.sqlite"
    mosq, s = secured_broker(tmp_path, gwdb, db_path)
    old = broker.credential(s["dir"], "dev1", create=False)
    with mosq:
        p = Peer(mosq.port, "dev1", old, client_id="dev1-a")
        assert p.connect()
        p.close()
        res = cli_invoke("device", "revoke", "--db", db_path, "--id", "dev1", "--broker-dir", s["dir"], "--yes",
                         "--json")
        assert res.exit_code == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["broker_credential_removed"] is True and out["broker_reloaded"] is True
        assert "dev1:" not in Path(s["passwd"]).read_text()
        p = Peer(mosq.port, "dev1", old, client_id="dev1-b")
        try:
            assert not p.connect(timeout=3)      # the running broker re-read its password file
        finally:
            p.close()
    # regenerating keeps the gateway's password and leaves the revoked device out
    res = cli_invoke("broker", "config", "--db", db_path, "--out", s["dir"], "--community", COMMUNITY,
                     "--port", mosq.port, "--json")
    s2 = json.loads(res.stdout)
    assert s2["devices"] == [] and s2["reloaded"] is False
    assert broker.credential(s["dir"], "egs-gateway", create=False) == \
        Path(s["gateway_password_file"]).read_text().strip()
    assert store.get_device(gwdb, "dev1")["revoked"] is True


def test_tls_listener_config(tmp_path, gwdb):
    """The TLS option writes a TLS listener mosquitto accepts, and a TLS client connects."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from sim.services import Mosquitto, free_port

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    Signer("dev1").register(gwdb)
    port, tls_port = free_port(), free_port()
    res = cli_invoke("broker", "config", "--db", tmp_path / "gw.sqlite", "--out", tmp_path / "b",
                 "--community", COMMUNITY, "--port", port, "--tls-port", tls_port, "--tls-host", "127.0.0.1",
                 "--certfile", tmp_path / "cert.pem", "--keyfile", tmp_path / "key.pem", "--run-as", "root",
                 "--json")
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)
    with Mosquitto(tmp_path / "b", port=port, config_text=Path(s["config"]).read_text()):
        from sim.services import wait_port
        wait_port(tls_port)
        p = Peer(tls_port, "dev1", broker.credential(s["dir"], "dev1", create=False), client_id="tls1")
        p.c.tls_set(ca_certs=str(tmp_path / "cert.pem"), cert_reqs=ssl.CERT_REQUIRED)
        try:
            assert p.connect()
        finally:
            p.close()
    res = cli_invoke("broker", "config", "--db", tmp_path / "gw.sqlite", "--out", tmp_path / "c",
                 "--community", COMMUNITY, "--tls-port", 8883)
    assert res.exit_code == 1 and res.stderr.strip() == \
        "egs-gw: error: a TLS listener needs --certfile and --keyfile"


@pytest.mark.parametrize("args,message", [
    (("--community", "c1\nuser\tdev2"), "community"),
    (("--community", "c1 c2"), "community"),
    (("--host", "127.0.0.1\nallow_anonymous true"), "host"),
    (("--run-as", "root\nallow_anonymous true"), "run-as user"),
])
def test_values_that_would_add_config_lines_are_refused(tmp_path, gwdb, args, message):
    """A community, address or user ends up in a line of the ACL or mosquitto.conf: a line
    break in one would add directives (another user's topics, anonymous access)."""
    Signer("dev1").register(gwdb)
    base = {"--community": COMMUNITY}
    base.update(dict(zip(args[::2], args[1::2])))
    flat = [x for kv in base.items() for x in kv]
    res = cli_invoke("broker", "config", "--db", tmp_path / "gw.sqlite", "--out", tmp_path / "b", *flat)
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not (tmp_path / "b" / "acl").exists() and not (tmp_path / "b" / "mosquitto.conf").exists()


# ---- client ids are bound to user names -------------------------------------------------

def _peer(secured, cleanup, user, client_id, clean=True):
    mosq, s, _ = secured
    p = Peer(mosq.port, user, broker.credential(s["dir"], user, create=False), client_id=client_id,
             clean=clean)
    p.drops = []
    p.c.on_disconnect = lambda client, userdata, flags, reason, props: p.drops.append(reason)
    cleanup.append(p)
    return p


@pytest.mark.parametrize("victim_id", [f"egs-gw-{COMMUNITY}", "egs-gateway"])
def test_device_credential_cannot_displace_the_gateway(secured, cleanup, victim_id):
    """A device's credential connecting with the gateway's client id (the one it has always
    used, or its user name) must not drop the gateway's connection or its session."""
    import time

    gw = _peer(secured, cleanup, "egs-gateway", victim_id, clean=False)
    assert gw.connect()
    gw.subscribe(f"egs/v1/{COMMUNITY}/+/ocmf")
    thief = _peer(secured, cleanup, "dev2", victim_id)
    assert thief.connect()
    time.sleep(0.3)
    dev1 = _peer(secured, cleanup, "dev1", "dev1")
    assert dev1.connect()
    dev1.publish(topic("dev1"), b"reading after the attempt")
    assert gw.get() == (topic("dev1"), b"reading after the attempt")
    assert gw.drops == []


def test_device_credential_cannot_displace_another_device(secured, cleanup):
    """dev1's credential connecting with dev2's client id (the firmware connects with its
    device id) leaves dev2 connected: it still gets its commands and its readings arrive."""
    import time

    dev2 = _peer(secured, cleanup, "dev2", "dev2")
    assert dev2.connect()
    dev2.subscribe(topic("dev2", "cmd"))
    gw = _peer(secured, cleanup, "egs-gateway", "egs-gateway")
    assert gw.connect()
    gw.subscribe(f"egs/v1/{COMMUNITY}/+/ocmf")
    thief = _peer(secured, cleanup, "dev1", "dev2")
    assert thief.connect()
    time.sleep(0.3)
    gw.publish(topic("dev2", "cmd"), b'{"cmd": "resend", "from": 1}')
    assert dev2.get() == (topic("dev2", "cmd"), b'{"cmd": "resend", "from": 1}')
    dev2.publish(topic("dev2"), b"dev2 reading")
    assert gw.get() == (topic("dev2"), b"dev2 reading")
    assert dev2.drops == []


def test_sessions_are_kept_under_the_user_name(secured, cleanup):
    """The broker keys a persistent session by user name: what was queued for the gateway
    while it was away reaches it whatever client id it comes back with."""
    gw = _peer(secured, cleanup, "egs-gateway", "gw-before", clean=False)
    assert gw.connect()
    gw.subscribe(f"egs/v1/{COMMUNITY}/+/ocmf")
    gw.close()
    dev1 = _peer(secured, cleanup, "dev1", "dev1")
    assert dev1.connect()
    dev1.publish(topic("dev1"), b"queued while away")
    back = _peer(secured, cleanup, "egs-gateway", "gw-after", clean=False)
    assert back.connect()
    assert back.get() == (topic("dev1"), b"queued while away")


def test_updater_offers_updates_and_reads_status_only(secured, cleanup):
    """`device update` logs in as its own user: it reads the devices' status and writes
    their cmd topic, nothing else (a stolen updater password cannot forge acks or readings)."""
    _, s, _ = secured
    assert s["updater_user"] == "egs-updater"
    assert s["credentials"]["egs-updater"] == s["updater_password_file"]
    assert stat.S_IMODE(os.stat(s["updater_password_file"]).st_mode) == 0o600
    assert "egs-updater:$" in Path(s["passwd"]).read_text()
    dev1 = _peer(secured, cleanup, "dev1", "dev1")
    assert dev1.connect()
    dev1.subscribe(topic("dev1", "cmd"))
    dev1.subscribe(topic("dev1", "ack"))
    dev1.publish(topic("dev1", "status"), b'{"state": "online"}', retain=True)
    gw = _peer(secured, cleanup, "egs-gateway", "egs-gateway")
    assert gw.connect()
    gw.subscribe(f"egs/v1/{COMMUNITY}/+/ocmf")
    updater = _peer(secured, cleanup, "egs-updater", "egs-gw-update-1")
    assert updater.connect()
    updater.subscribe(f"egs/v1/{COMMUNITY}/+/ocmf")
    updater.subscribe(topic("dev1", "status"))
    assert updater.get() == (topic("dev1", "status"), b'{"state": "online"}')
    updater.publish(topic("dev1", "ack"), b'{"seq": 999999}')
    updater.publish(topic("dev1"), b"forged by the updater")
    updater.publish(topic("dev1", "status"), b'{"state": "offline"}')
    updater.publish(topic("dev1", "cmd"), b'{"cmd": "update"}')      # positive control, last
    assert dev1.get() == (topic("dev1", "cmd"), b'{"cmd": "update"}')
    dev1.publish(topic("dev1"), b"genuine")
    assert gw.get() == (topic("dev1"), b"genuine")
    assert dev1.get(timeout=0.3) is None and gw.get(timeout=0.3) is None
    assert updater.get(timeout=0.3) is None


@pytest.mark.parametrize("updater_user,device,message", [
    ("egs-gateway", None, "the same user"),
    ("dev1", "dev1", "also a device id"),
])
def test_updater_user_must_be_its_own(tmp_path, gwdb, updater_user, device, message):
    if device:
        Signer(device).register(gwdb)
    with pytest.raises(broker.BrokerError, match=message):
        broker.write_config(gwdb, tmp_path / "b", COMMUNITY, updater_user=updater_user)


def test_updater_login(tmp_path, gwdb):
    from gateway.config import ConfigError

    s = broker.write_config(gwdb, tmp_path / "b", COMMUNITY)
    cfg = {"mqtt": {"user": "egs-gateway", "updater_password_file": ""}, "broker": {"dir": s["dir"]}}
    assert broker.updater_login(cfg) == ("egs-updater", broker.credential(s["dir"], "egs-updater",
                                                                          create=False))
    cfg["mqtt"]["updater_password_file"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="^mqtt.updater_password_file: cannot read .*missing"):
        broker.updater_login(cfg)
    cfg["mqtt"]["user"] = ""                     # a gateway on an open broker: so is the update
    assert broker.updater_login(cfg) == (None, None)
    with pytest.raises(broker.BrokerError, match="broker's own MQTT user"):
        broker.add_credential(s["dir"], "egs-updater")


def test_device_update_runs_beside_the_gateway(tmp_path, gwdb, cleanup):
    """`egs-gw device update` on a secured broker while the gateway runs: it logs in as the
    updater, offers the release, follows the status to the end, and the gateway stays up."""
    import time

    from tests.gateway.fixtures import gateway_config, start_gateway
    from tools import release

    pub = release.generate_key(tmp_path / "release.pem")
    bundle, manifest = release.build(release.load_secret(tmp_path / "release.pem"), tmp_path / "dist")
    Signer("dev1").register(gwdb)
    db_path = tmp_path / "gw.sqlite"
    mosq, s = secured_broker(tmp_path, gwdb, db_path)
    with mosq:
        cfg = gateway_config(tmp_path, mosq.port, s["gateway_password_file"],
                             broker={"dir": s["dir"]})
        gw = start_gateway(tmp_path, cfg, db_path)
        cleanup.append(gw)
        dev = Peer(mosq.port, "dev1", broker.credential(s["dir"], "dev1", create=False), client_id="dev1")
        cleanup.append(dev)

        def on_cmd(client, userdata, msg):      # a device that takes the update at once
            body = json.loads(msg.payload)
            if body.get("cmd") == "update":
                client.publish(topic("dev1", "status"), json.dumps(
                    {"state": "online", "fw": body["version"], "ota": {"confirmed": True}}), 1, True)
        dev.c.message_callback_add(topic("dev1", "cmd"), on_cmd)
        assert dev.connect()
        dev.subscribe(topic("dev1", "cmd"))
        dev.publish(topic("dev1", "status"), b'{"state": "online", "fw": "0.0.1"}', retain=True)
        started = time.time()
        res = cli_invoke("device", "update", "--config", cfg, "--db", db_path, "--release", bundle,
                         "--release-key", pub.hex() if isinstance(pub, bytes) else pub,
                         "--device", "dev1", "--host", "127.0.0.1", "--timeout", 20, "--json")
        assert res.exit_code == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["version"] == manifest["version"]
        assert out["devices"]["dev1"]["result"] == "updated"
        assert time.time() - started < 20
        log = (tmp_path / "gw.log").read_text()
        assert log.count("connected to MQTT broker") == 1 and "retrying" not in log, log[-2000:]


def _connects(port, user, password, tag):
    p = Peer(port, user, password, client_id=f"{user}-{tag}")
    try:
        return p.connect(timeout=3)
    finally:
        p.close()


def test_broker_config_refuses_a_missing_database(tmp_path, gwdb):
    """A mistyped --db must not create an empty database and rewrite passwd without devices."""
    Signer("dev1").register(gwdb)
    db_path = tmp_path / "gw.sqlite"
    _, s = secured_broker(tmp_path, gwdb, db_path)
    before = Path(s["passwd"]).read_text()
    wrong = tmp_path / "typo.sqlite"
    res = cli_invoke("broker", "config", "--db", wrong, "--out", s["dir"], "--community", COMMUNITY)
    assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.stderr
    assert str(wrong) in res.stderr and "--db" in res.stderr and "store.db" in res.stderr
    assert not wrong.exists() and Path(s["passwd"]).read_text() == before
    for args in (("device", "restore", "--id", "dev1"), ("device", "rotate-password", "dev1", "--yes")):
        res = cli_invoke(*args, "--db", wrong, "--broker-dir", s["dir"])
        assert res.exit_code == 1 and str(wrong) in res.stderr and not wrong.exists(), res.stderr
    # first-time setup says so explicitly
    fresh = tmp_path / "fresh.sqlite"
    res = cli_invoke("broker", "config", "--db", fresh, "--out", tmp_path / "b2", "--community", COMMUNITY,
                     "--init", "--json")
    assert res.exit_code == 0, res.stderr
    assert fresh.exists() and json.loads(res.stdout)["devices"] == []


def test_broker_config_keeps_device_logins_another_database_does_not_know(tmp_path, gwdb):
    """Run against the wrong (existing) database, `broker config` would reload the live broker
    with a passwd holding no device: every meter locked out. It needs --force for that."""
    Signer("dev1").register(gwdb)
    Signer("dev2").register(gwdb)
    db_path = tmp_path / "gw.sqlite"
    mosq, s = secured_broker(tmp_path, gwdb, db_path)
    other = tmp_path / "other.sqlite"
    from gateway import db
    store.init(db.connect(other))
    with mosq:
        pw = broker.credential(s["dir"], "dev1", create=False)
        before = Path(s["passwd"]).read_text()
        res = cli_invoke("broker", "config", "--db", other, "--out", s["dir"], "--community", COMMUNITY,
                         "--port", mosq.port)
        assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.stderr
        assert "2 device user(s)" in res.stderr and "dev1, dev2" in res.stderr and "--force" in res.stderr
        assert Path(s["passwd"]).read_text() == before
        assert _connects(mosq.port, "dev1", pw, "a")
        res = cli_invoke("broker", "config", "--db", other, "--out", s["dir"], "--community", COMMUNITY,
                         "--port", mosq.port, "--force", "--json")
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["reloaded"] is True
        assert not _connects(mosq.port, "dev1", pw, "b")       # what --force asked for


def test_restore_undoes_a_revocation_with_the_same_login(tmp_path, gwdb):
    Signer("dev1").register(gwdb)
    db_path = tmp_path / "gw.sqlite"
    mosq, s = secured_broker(tmp_path, gwdb, db_path)
    pw = broker.credential(s["dir"], "dev1", create=False)
    with mosq:
        res = cli_invoke("device", "revoke", "--db", db_path, "--id", "dev1", "--broker-dir", s["dir"], "--yes")
        assert res.exit_code == 0, res.stderr
        assert not _connects(mosq.port, "dev1", pw, "a")
        res = cli_invoke("device", "restore", "--db", db_path, "--id", "dev1", "--broker-dir", s["dir"],
                         "--note", "wrong device", "--json")
        assert res.exit_code == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["revoked"] is False and out["password_kept"] is True and out["broker_reloaded"] is True
        assert _connects(mosq.port, "dev1", pw, "b")            # the device logs in as it is
        assert store.get_device(gwdb, "dev1")["revoked"] is False
        kinds = [e["kind"] for e in store.events(gwdb, "dev1")]
        assert "device_revoked" in kinds and "device_restored" in kinds
        res = cli_invoke("device", "restore", "--db", db_path, "--id", "dev1", "--broker-dir", s["dir"])
        assert res.exit_code == 1 and "not revoked" in res.stderr


def test_rotate_password_retires_the_old_one(tmp_path, gwdb):
    Signer("dev1").register(gwdb)
    Signer("dev2").register(gwdb)
    db_path = tmp_path / "gw.sqlite"
    mosq, s = secured_broker(tmp_path, gwdb, db_path)
    old = broker.credential(s["dir"], "dev1", create=False)
    with mosq:
        res = cli_invoke("device", "rotate-password", "dev1", "--db", db_path, "--broker-dir", s["dir"],
                         "--yes", "--json")
        assert res.exit_code == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["broker_reloaded"] is True and out["pushed_to_device"] is False
        new = broker.credential(s["dir"], "dev1", create=False)
        assert new != old and stat.S_IMODE(os.stat(out["credential_file"]).st_mode) == 0o600
        assert not _connects(mosq.port, "dev1", old, "a")
        assert _connects(mosq.port, "dev1", new, "b")
        assert _connects(mosq.port, "dev2", broker.credential(s["dir"], "dev2", create=False), "c")


@pytest.mark.parametrize("args", [("device", "revoke", "--id", "dev1"),
                                  ("device", "rotate-password", "dev1")])
def test_destructive_commands_without_a_terminal_need_yes(tmp_path, gwdb, args):
    Signer("dev1").register(gwdb)
    db_path = tmp_path / "gw.sqlite"
    _, s = secured_broker(tmp_path, gwdb, db_path)
    before = Path(s["passwd"]).read_text()
    res = cli_invoke(*args, "--db", db_path, "--broker-dir", s["dir"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("egs-gw: error: ") and "--yes" in res.stderr
    assert store.get_device(gwdb, "dev1")["revoked"] is False
    assert Path(s["passwd"]).read_text() == before


def test_update_to_the_running_version_is_skipped(tmp_path, gwdb, cleanup):
    """A device already on the release's version: `skipped` with the reason, exit 0, and no
    offer is sent (nothing to do is not "updated")."""
    from tools import release

    pub = release.generate_key(tmp_path / "release.pem")
    bundle, manifest = release.build(release.load_secret(tmp_path / "release.pem"), tmp_path / "dist")
    Signer("dev1").register(gwdb)
    db_path = tmp_path / "gw.sqlite"
    mosq, s = secured_broker(tmp_path, gwdb, db_path)
    with mosq:
        from tests.gateway.fixtures import gateway_config
        cfg = gateway_config(tmp_path, mosq.port, s["gateway_password_file"], broker={"dir": s["dir"]})
        dev = Peer(mosq.port, "dev1", broker.credential(s["dir"], "dev1", create=False), client_id="dev1")
        cleanup.append(dev)
        assert dev.connect()
        dev.subscribe(topic("dev1", "cmd"))
        dev.publish(topic("dev1", "status"), json.dumps(
            {"state": "online", "fw": manifest["version"], "ota": {"confirmed": True}}).encode(), retain=True)
        res = cli_invoke("device", "update", "--config", cfg, "--db", db_path, "--release", bundle,
                         "--release-key", pub.hex() if isinstance(pub, bytes) else pub,
                         "--device", "dev1", "--host", "127.0.0.1", "--timeout", 60, "--json")
        assert res.exit_code == 0, res.stderr
        got = json.loads(res.stdout)["devices"]["dev1"]
        assert got == {"result": "skipped", "detail": f"already runs version {manifest['version']}"}
        assert not [t for t, _ in dev.log if t.endswith("/cmd")]
