"""Serial provisioning over a pseudo-terminal with pyserial, as an installer's laptop does it.

The firmware's console is the master side of a pty; pyserial opens the slave, a real tty.
A new device has no configuration and no key: the key is generated on the device at
provisioning, only the public key comes back, the configuration is persisted, and every
bad line gets one JSON error reply. After `reboot` the device runs with what it was given
(the real broker and the emulated meter) and its readings verify with that public key.
"""
import json
import os
import stat

import pytest
import serial

from protocol import ocmf
from sim.device import DeviceProcess
from tests.firmware.fixtures import meter, subscriber, wait_for  # noqa: F401


class Console:
    def __init__(self, path):
        self.port = serial.Serial(path, 115200, timeout=10)
        self.transcript = []

    def ask(self, obj):
        line = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
        if isinstance(line, str):
            line = line.encode()
        self.port.write(line + b"\n")
        while True:
            reply = self.port.readline()
            assert reply.endswith(b"\n"), f"no reply to {line[:60]!r}"
            self.transcript.append(reply)
            if reply.startswith(b"{"):
                return json.loads(reply)


@pytest.fixture
def pty_device(tmp_path):
    master, slave = os.openpty()
    console = Console(os.ttyname(slave))
    dev = DeviceProcess(tmp_path / "dev", console_fd=master)
    dev.start()
    yield dev, console
    dev.kill()
    console.port.close()
    os.close(master)
    os.close(slave)


def test_provisioning_over_a_serial_line(pty_device, mosquitto, meter, subscriber):
    dev, con = pty_device
    hello = con.ask({"cmd": "hello"})
    assert hello["ok"] and hello["provisioned"] is False and hello["has_key"] is False
    assert hello["fw"] and hello["platform"] == "unix"
    assert con.ask({"cmd": "pubkey"})["ok"] is False, "no key before provisioning"
    assert con.ask({"cmd": "status"})["state"] == "unprovisioned"

    good = {"cmd": "provision", "device_id": "prov-1", "community": "c1",
            "wifi": {"ssid": "cellar", "password": "wifi-secret"},
            "broker": {"host": "127.0.0.1", "port": mosquitto.port, "tls": False},
            "mqtt": {"username": "prov-1", "password": "mqtt-secret"},
            "meter": {"model": "sdm630", "unit": 1, "baud": 9600,
                      "port": f"tcp:127.0.0.1:{meter.port}"},
            "interval_s": 0.3}
    bad_lines = [
        (b"hello", "JSON"),
        (b"[1, 2]", "object"),
        (b"\xff\xfe\xfd", "JSON"),
        (json.dumps({"cmd": "format"}), "unknown command"),
        (json.dumps({"nocmd": 1}), "unknown command"),
        (json.dumps(dict(good, device_id="a/b+#")), "device_id"),
        (json.dumps(dict(good, meter={"model": "sdm9999"})), "meter.model"),
        (json.dumps(dict(good, meter={"unit": 0})), "meter.unit"),
        (json.dumps(dict(good, broker={"port": 70000})), "broker.port"),
        (json.dumps(dict(good, broker="localhost")), "broker"),
        (json.dumps(dict(good, colour="blue")), "unknown key colour"),
        (json.dumps({"cmd": "provision", "community": "c1"}), "device_id is missing"),
        (b"{" + b" " * 3000 + b"}", "too long"),
    ]
    for line, reason in bad_lines:
        reply = con.ask(line)
        assert reply["ok"] is False and reason in reply["error"], (line[:50], reply)
    assert con.ask({"cmd": "hello"})["provisioned"] is False, "bad commands changed nothing"
    assert not (dev.state_dir / "device.key").exists()

    reply = con.ask(good)
    assert reply["ok"] and reply["key"] == "generated" and reply["device_id"] == "prov-1"
    pubkey = reply["pubkey"]
    ocmf.load_public_key(pubkey)                     # a valid P-256 point
    key_file = dev.state_dir / "device.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret_hex = key_file.read_text().strip()
    assert len(bytes.fromhex(secret_hex)) == 32
    saved = json.loads((dev.state_dir / "config.json").read_text())
    assert saved["device_id"] == "prov-1" and saved["mqtt"]["password"] == "mqtt-secret"
    assert saved["meter"]["port"] == f"tcp:127.0.0.1:{meter.port}"
    assert con.ask({"cmd": "pubkey"}) == {"ok": True, "pubkey": pubkey}
    status = con.ask({"cmd": "status"})
    assert status["config"]["mqtt"]["password"] == "***"
    assert status["config"]["wifi"]["password"] == "***"

    assert con.ask({"cmd": "reboot"}) == {"ok": True, "rebooting": True}
    hello = con.ask({"cmd": "hello"})
    assert hello["provisioned"] and hello["has_key"] and hello["device_id"] == "prov-1"
    assert con.ask({"cmd": "pubkey"})["pubkey"] == pubkey, "the key survived the reboot"

    # the provisioned device reads, signs with the generated key, publishes
    wait_for(lambda: len(subscriber.seqs("prov-1")) >= 2, what="readings after provisioning")
    rec = ocmf.verify(subscriber.record("prov-1", 1), ocmf.load_public_key(pubkey))
    assert rec.gateway_serial == "prov-1"
    assert subscriber.status["prov-1"]["pubkey"] == pubkey

    # re-provisioning keeps the key; nothing secret ever crossed the line
    again = con.ask({"cmd": "provision", "interval_s": 1})
    assert again["ok"] and again["key"] == "kept" and again["pubkey"] == pubkey
    text = b"".join(con.transcript)
    for secret in (secret_hex.encode(), b"mqtt-secret", b"wifi-secret"):
        assert secret not in text
