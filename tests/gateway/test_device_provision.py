"""`egs-gw device provision` against the real firmware on a pseudo-terminal, and
`egs-gw device set`: re-provisioning changes only what it is told, TLS always comes with
the broker's CA, and the label shows what the gateway stored."""
import json

import pytest

from gateway.devices.provision import Console
from gateway.ingest import store
from tests.firmware.certs import CA
from tests.gateway.fixtures import (  # noqa: F401
    COMMUNITY,
    Signer,
    cli_invoke,
    gateway_config,
    gwdb_fixture,
    secured_broker,
)
from tests.gateway.test_gateway_firmware import PtyDevice

ACCOUNT = "0x" + "ab" * 20


@pytest.fixture
def bench(tmp_path, gwdb):
    """(provision(*args) -> CLI result, the device) with a broker configuration, no broker."""
    db_path = tmp_path / "gw.sqlite"
    _, summary = secured_broker(tmp_path, gwdb, db_path)
    dev = PtyDevice(tmp_path / "dev1").start()

    def provision(*args):
        return cli_invoke("device", "provision", "--db", db_path, "--port", dev.port, "--id", "dev1",
                          "--community", COMMUNITY, "--broker-dir", summary["dir"], "--timeout", "20",
                          *args)

    yield provision, dev
    # let a reboot the last provision asked for finish first: killing the device while its
    # supervisor restarts it races (sim/device.py)
    con = Console(dev.port, timeout=20)
    try:
        con.request({"cmd": "hello"})
    finally:
        con.close()
        dev.close()


def device_config(dev):
    return json.loads((dev.state_dir / "config.json").read_text())


def test_reprovisioning_changes_only_what_it_is_told(bench, gwdb):
    provision, dev = bench
    res = provision("--broker", "10.0.0.2:1883", "--meter-model", "abb_b23", "--meter-address", "3",
                    "--meter-serial", "B23-777", "--wifi-ssid", "Sonnenhof", "--wifi-password", "pw-1",
                    "--interval", "30", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["account"] is None
    res = provision("--broker", "10.0.0.9:1884", "--meter-serial", "B23-777", "--json")
    assert res.exit_code == 0, res.stderr
    cfg = device_config(dev)
    assert (cfg["broker"]["host"], cfg["broker"]["port"]) == ("10.0.0.9", 1884)
    assert cfg["meter"]["model"] == "abb_b23" and cfg["meter"]["unit"] == 3
    assert cfg["wifi"] == {"ssid": "Sonnenhof", "password": "pw-1"}
    assert cfg["interval_s"] == 30 and cfg["broker"]["tls"] is False


def test_label_shows_the_account_stored(bench, gwdb):
    provision, _ = bench
    res = provision("--meter-serial", "S-1", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["account"] is None and store.get_device(gwdb, "dev1")["account"] is None
    # re-provisioning with an account stores it, and the label says what is stored
    res = provision("--meter-serial", "S-1", "--account", ACCOUNT.upper().replace("0X", "0x"), "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["account"] == store.get_device(gwdb, "dev1")["account"] == ACCOUNT
    res = provision("--meter-serial", "S-1")
    assert res.exit_code == 0, res.stderr
    assert ACCOUNT in res.stdout, res.stdout


def test_tls_needs_the_brokers_ca(bench, gwdb, tmp_path):
    provision, dev = bench
    res = provision("--broker-tls", "--meter-serial", "S-1")
    assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "--broker-tls needs the broker's CA" in res.stderr
    assert not (dev.state_dir / "config.json").exists(), "the device was not touched"
    (tmp_path / "junk.pem").write_text("not a certificate")
    res = provision("--broker-tls", "--broker-ca", tmp_path / "junk.pem", "--meter-serial", "S-1")
    assert res.exit_code == 1 and "junk.pem: not a PEM or DER certificate" in res.stderr, res.stderr

    ca = CA()
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    res = provision("--broker", "localhost:8883", "--broker-tls", "--broker-ca", tmp_path / "ca.pem",
                    "--meter-serial", "S-1", "--json")
    assert res.exit_code == 0, res.stderr
    cfg = device_config(dev)
    assert cfg["broker"]["tls"] is True and cfg["broker"]["insecure"] is False
    assert json.loads(res.stdout)["broker_ca"] == cfg["broker"]["ca"]
    with open(cfg["broker"]["ca"], "rb") as f:
        assert f.read() == ca.der, "PEM given, DER installed"
    # re-provisioning without TLS options keeps TLS and the CA
    res = provision("--broker", "localhost:8884", "--meter-serial", "S-1")
    assert res.exit_code == 0, res.stderr
    again = device_config(dev)["broker"]
    assert (again["tls"], again["ca"], again["port"]) == (True, cfg["broker"]["ca"], 8884)
    # a lab without a CA says so explicitly
    res = provision("--no-broker-tls", "--meter-serial", "S-1")
    assert res.exit_code == 0 and device_config(dev)["broker"]["tls"] is False, res.stderr
    res = provision("--broker-tls", "--insecure", "--meter-serial", "S-1")
    assert res.exit_code == 0, res.stderr
    assert device_config(dev)["broker"]["insecure"] is True


def test_tls_ca_defaults_to_the_gateway_config(bench, gwdb, tmp_path):
    provision, dev = bench
    ca = CA()
    (tmp_path / "ca.der").write_bytes(ca.der)
    cfg = gateway_config(tmp_path, 1883, tmp_path / "pw", broker={"cafile": str(tmp_path / "ca.der")})
    res = provision("--config", cfg, "--broker-tls", "--meter-serial", "S-1")
    assert res.exit_code == 0, res.stderr
    with open(device_config(dev)["broker"]["ca"], "rb") as f:
        assert f.read() == ca.der


def test_device_set_account(tmp_path, gwdb):
    db_path = tmp_path / "gw.sqlite"
    Signer("dev1").register(gwdb)
    assert store.get_device(gwdb, "dev1")["account"] is None
    res = cli_invoke("device", "set", "dev1", "--account", "0x" + "AB" * 20, "--db", db_path, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["account"] == ACCOUNT == store.get_device(gwdb, "dev1")["account"]
    events = [e for e in store.events(gwdb, "dev1") if e["kind"] == "account_changed"]
    assert events and ACCOUNT in events[0]["detail"]
    res = cli_invoke("device", "set", "dev1", "--no-account", "--db", db_path)
    assert res.exit_code == 0 and "account none" in res.stdout, res.stderr
    assert store.get_device(gwdb, "dev1")["account"] is None


@pytest.mark.parametrize("args,message", [
    (("dev1", "--account", "0x1234"), "not an EVM address"),
    (("dev1",), "nothing to change"),
    (("dev1", "--account", ACCOUNT, "--no-account"), "contradict"),
    (("nodev", "--account", ACCOUNT), "no device 'nodev'"),
])
def test_device_set_errors_are_one_line(tmp_path, gwdb, args, message):
    Signer("dev1").register(gwdb, account=ACCOUNT)
    res = cli_invoke("device", "set", *args, "--db", tmp_path / "gw.sqlite")
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert store.get_device(gwdb, "dev1")["account"] == ACCOUNT, "nothing changed"


def test_the_wifi_password_is_read_from_a_file(bench, tmp_path):
    provision, dev = bench
    secret = tmp_path / "wifi.pw"
    secret.write_text("pw with spaces \n")
    secret.chmod(0o600)
    res = provision("--meter-serial", "S-1", "--wifi-ssid", "Sonnenhof",
                    "--wifi-password-file", secret, "--json")
    assert res.exit_code == 0, res.stderr
    assert "warning" not in res.stderr, res.stderr
    assert device_config(dev)["wifi"] == {"ssid": "Sonnenhof", "password": "pw with spaces "}


def test_a_wifi_password_on_the_command_line_warns_and_a_missing_file_is_one_line(tmp_path):
    db_path = tmp_path / "gw.sqlite"
    base = ("device", "provision", "--db", db_path, "--port", tmp_path / "no-such-tty", "--id",
            "dev1", "--community", COMMUNITY, "--wifi-ssid", "Sonnenhof")
    res = cli_invoke(*base, "--wifi-password", "pw-1")
    lines = res.stderr.splitlines()
    assert lines[0].startswith("egs-gw: warning: --wifi-password ") and "--wifi-password-file" in lines[0]
    res = cli_invoke(*base, "--wifi-password-file", tmp_path / "nope.pw")
    assert res.exit_code == 1, res.output
    assert res.stderr.count("\n") == 1 and "--wifi-password-file: cannot read" in res.stderr
    assert not db_path.exists()
