"""Registration rules that keep devices apart from the broker's own users and from each
other's meters, and the file modes of the gateway's secrets."""
import logging
import os
import stat

import pytest

from gateway import db
from gateway.devices import broker, provision
from gateway.ingest import mqtt as ingest_mqtt
from gateway.ingest import store
from tests.gateway.fixtures import COMMUNITY, Signer, gwdb_fixture  # noqa: F401


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- device ids and meter serials ------------------------------------------------------

@pytest.mark.parametrize("name", ["egs-gateway", "egs-updater"])
def test_device_id_may_not_be_a_broker_user(gwdb, name):
    with pytest.raises(store.StoreError) as e:
        Signer(name).register(gwdb)
    assert str(e.value) == f"device id {name!r} is the broker's own MQTT user; choose another id"
    assert store.get_device(gwdb, name) is None


def test_device_id_may_not_be_the_configured_gateway_user(tmp_path, gwdb):
    """`broker config` remembers the names it gave the gateway and the updater."""
    broker.write_config(gwdb, tmp_path / "b", COMMUNITY, gateway_user="gw-main", updater_user="gw-ota")
    for name in ("gw-main", "gw-ota"):
        with pytest.raises(store.StoreError, match="broker's own MQTT user"):
            Signer(name).register(gwdb)
    with pytest.raises(store.StoreError, match="broker's own MQTT user"):
        store.add_device(gwdb, "gw-other", Signer().pub, "SN-9", reserved=("gw-other",))


def test_provision_refuses_a_broker_user_before_touching_its_credential(tmp_path, gwdb):
    """Provisioning under the gateway's name would hand the gateway's password to a device."""
    broker.write_config(gwdb, tmp_path / "b", COMMUNITY)
    before = broker.credential(tmp_path / "b", "egs-gateway", create=False)
    with pytest.raises(ValueError, match="broker's own MQTT user"):
        provision.provision(gwdb, str(tmp_path / "no-such-tty"), "egs-gateway", community=COMMUNITY,
                            broker="127.0.0.1:1883", broker_dir=tmp_path / "b")
    assert broker.credential(tmp_path / "b", "egs-gateway", create=False) == before


def test_meter_serial_of_an_active_device_is_refused(gwdb):
    Signer("dev1", serial="SN-1").register(gwdb)
    with pytest.raises(store.StoreError) as e:
        Signer("dev2", serial="SN-1").register(gwdb)
    assert str(e.value) == "meter SN-1 is already registered for device dev1"
    assert store.get_device(gwdb, "dev2") is None
    # the same for a meter replacement onto another device's meter
    Signer("dev3", serial="SN-3").register(gwdb)
    with pytest.raises(store.StoreError, match="meter SN-1 is already registered for device dev1"):
        store.replace_meter(gwdb, "dev3", "SN-1")
    # once the first device is revoked its meter may move to a new device
    store.revoke_device(gwdb, "dev1", "replaced")
    assert Signer("dev2", serial="SN-1").register(gwdb)["meter_serial"] == "SN-1"


# ---- file modes ----------------------------------------------------------------------

def test_new_database_and_its_wal_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "gw.sqlite"
        conn = db.connect(path)
        store.init(conn)
        for f in (path, tmp_path / "gw.sqlite-wal", tmp_path / "gw.sqlite-shm"):
            assert f.exists() and _mode(f) == 0o600, (f.name, oct(_mode(f)))
        conn.close()
        assert os.umask(0o022) == 0o022       # the process's umask is left as it was
    finally:
        os.umask(old)


def test_existing_open_database_is_tightened_with_a_warning(tmp_path, caplog):
    path = tmp_path / "gw.sqlite"
    store.init(db.connect(path))
    for f in (path, tmp_path / "gw.sqlite-wal", tmp_path / "gw.sqlite-shm"):
        if f.exists():
            os.chmod(f, 0o644)
    with caplog.at_level(logging.WARNING):
        conn = db.connect(path)
        conn.execute("SELECT 1").fetchone()
    assert _mode(path) == 0o600
    for f in (tmp_path / "gw.sqlite-wal", tmp_path / "gw.sqlite-shm"):
        assert _mode(f) == 0o600
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and "0644" in w and "0600" in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        db.connect(path).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("mode,warned", [(0o644, True), (0o640, True), (0o600, False), (0o400, False)])
def test_readable_password_file_is_warned_about(tmp_path, caplog, mode, warned):
    pw = tmp_path / "gateway.password"
    pw.write_text("secret\n")
    os.chmod(pw, mode)
    with caplog.at_level(logging.WARNING):
        assert ingest_mqtt.read_password(str(pw)) == "secret"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) is warned, warnings
    if warned:
        assert len(warnings) == 1 and str(pw) in warnings[0] and "\n" not in warnings[0]


@pytest.mark.parametrize("mode,warned", [(0o644, True), (0o604, True), (0o600, False)])
def test_readable_tls_key_is_warned_about(tmp_path, gwdb, caplog, mode, warned):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("certificate\n")
    key.write_text("key\n")
    os.chmod(key, mode)
    with caplog.at_level(logging.WARNING):
        broker.write_config(gwdb, tmp_path / "b", COMMUNITY, tls_port=8883, certfile=str(cert),
                            keyfile=str(key))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) is warned, warnings
    if warned:
        assert len(warnings) == 1 and str(key) in warnings[0] and "\n" not in warnings[0]


def test_tls_key_shared_with_the_broker_group_is_fine(tmp_path, gwdb, caplog):
    """0640 with mosquitto's group is how Debian's broker (dropping root) reads its key."""
    import pwd
    try:
        gid = pwd.getpwnam("mosquitto").pw_gid
    except KeyError:
        pytest.skip("no mosquitto system user")
    if os.geteuid() != 0:
        pytest.skip("needs root to give the key to mosquitto's group")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("certificate\n")
    key.write_text("key\n")
    os.chown(key, 0, gid)
    os.chmod(key, 0o640)
    with caplog.at_level(logging.WARNING):
        broker.write_config(gwdb, tmp_path / "b", COMMUNITY, tls_port=8883, certfile=str(cert),
                            keyfile=str(key))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
