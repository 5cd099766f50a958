"""The gateway with the real firmware under MicroPython: provisioned over a serial line
(a pseudo-terminal, driven by `egs-gw device provision` with pyserial), then its signed
readings flow through secured mosquitto into the store and are acknowledged."""
import json
import os
import pty
import struct
import sys
import threading
import tty
from fractions import Fraction
from pathlib import Path

import pytest

from gateway import db
from gateway.devices.provision import Console, ProvisionError
from gateway.ingest import store
from protocol import ocmf
from sim.device import DeviceProcess
from sim.meter import MeterEmulator
from tests.gateway.fixtures import (  # noqa: F401
    COMMUNITY,
    cli_invoke,
    gateway_config,
    gwdb_fixture,
    secured_broker,
    start_gateway,
    wait_for,
)


class PtyDevice(DeviceProcess):
    """The real firmware with its console on a pseudo-terminal, as an ESP32 on a USB-serial
    adapter: `port` is the tty path an installer's pyserial opens. A reboot (the firmware
    exits to be started again) keeps the same line, like the USB adapter stays plugged in."""

    def __init__(self, state_dir, **kw):
        master, slave = pty.openpty()
        tty.setraw(slave)
        self._fds = (master, slave)       # the slave stays open: the line is up between opens
        self.port = os.ttyname(slave)
        super().__init__(state_dir, console_fd=master, **kw)

    def close(self):
        self.kill()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = ()


def f32_wh(wh):
    """Wh as an SDM630 reports it: kWh rounded to float32, back to the nearest Wh."""
    kwh32 = struct.unpack(">f", struct.pack(">f", wh / 1000))[0]
    return round(Fraction(kwh32) * 1000)


@pytest.fixture
def meter():
    with MeterEmulator("sdm630", tcp=("127.0.0.1", 0), speed=0, import_wh=98_765_432,
                       export_wh=4_321, serial_number=20241234) as m:
        yield m


def test_provision_real_firmware_then_readings_are_stored_and_acked(tmp_path, gwdb, meter):
    db_path = tmp_path / "gw.sqlite"
    mosq, summary = secured_broker(tmp_path, gwdb, db_path)      # no device credentials yet
    dev = PtyDevice(tmp_path / "dev1")
    with mosq:
        dev.start()
        try:
            res = cli_invoke("device", "provision", "--db", db_path, "--port", dev.port, "--id", "dev1",
                             "--community", COMMUNITY, "--broker", f"127.0.0.1:{mosq.port}",
                             "--broker-dir", summary["dir"], "--meter-link", f"tcp:127.0.0.1:{meter.port}",
                             "--interval", "0.5", "--account", "0x" + "cd" * 20, "--timeout", "20", "--json")
            assert res.exit_code == 0, res.stderr + dev.log_text()[-2000:]
            label = json.loads(res.stdout)
            assert label["id"] == "dev1" and label["key"] == "generated" and label["broker_reloaded"] is True
            assert label["meter_serial"] == str(meter.serial_number) or "20241234" in label["meter_serial"]
            d = store.get_device(gwdb, "dev1")
            assert d["pubkey"] == label["pubkey"] and d["account"] == "0x" + "cd" * 20
            assert label["fingerprint"] == ocmf.key_fingerprint(bytes.fromhex(label["pubkey"]))
            assert "dev1:" in Path(summary["passwd"]).read_text()
            # the key never left the device: only its public half is on the gateway side
            assert not any("device.key" in str(p) for p in Path(summary["dir"]).rglob("*"))

            # the emulator's registers jump by 568 Wh between two readings half a second apart
            # below, which no meter can: the energy plausibility limit would hold that reading
            cfg = gateway_config(tmp_path, mosq.port, summary["gateway_password_file"],
                                 ingest={"energy_limit": False})
            gw = start_gateway(tmp_path, cfg, db_path)
            try:
                wait_for(lambda: (store.get_device(gwdb, "dev1")["acked_seq"] or 0) >= 3, timeout=60,
                         what="readings from the firmware stored and acknowledged")
                rows = sorted(store.readings(gwdb, "dev1", limit=1000), key=lambda r: r["seq"])
                # an SDM630 holds kWh as float32: 98,765.432 kWh reads as 98,765.4296875
                assert rows and all((r["import_wh"], r["export_wh"]) == (f32_wh(98_765_432), f32_wh(4_321))
                                    for r in rows), [(r["import_wh"], r["export_wh"]) for r in rows]
                assert {r["meter_serial"] for r in rows} == {label["meter_serial"]}
                for r in rows:       # the stored raw record is the evidence: it verifies as is
                    assert ocmf.verify(r["raw"], bytes.fromhex(label["pubkey"])).sequence == r["seq"]
                seqs = [r["seq"] for r in rows]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
                meter.set_energy(import_wh=98_766_000)
                wait_for(lambda: any(r["import_wh"] == 98_766_000 for r in store.readings(gwdb, "dev1")),
                         timeout=30, what="the new register value")
                wait_for(lambda: (store.get_device(gwdb, "dev1")["status"] or {}).get("state") == "online",
                         timeout=30, what="retained status")
                # the device hears the acks (asked over its serial console, still there next to MQTT)
                console = Console(dev.port, timeout=10)
                try:
                    def device_caught_up():
                        return console.request({"cmd": "status"})["acked"] >= 3
                    wait_for(device_caught_up, timeout=30, what="the device to see the gateway's acks")
                finally:
                    console.close()
                assert store.quarantined(gwdb) == []
            finally:
                gw.stop()
            # provisioning again (say, a new Wi-Fi password) keeps the key and the registration
            res = cli_invoke("device", "provision", "--db", db_path, "--port", dev.port, "--id", "dev1",
                             "--community", COMMUNITY, "--broker", f"127.0.0.1:{mosq.port}",
                             "--broker-dir", summary["dir"], "--meter-link", f"tcp:127.0.0.1:{meter.port}",
                             "--wifi-ssid", "Sonnenhof", "--timeout", "20")
            assert res.exit_code == 0, res.stderr
            assert "device label" in res.stdout and label["fingerprint"] in res.stdout
            assert store.get_device(gwdb, "dev1")["pubkey"] == label["pubkey"]
            conn = db.connect(db_path, readonly=True)
            acked = conn.execute("SELECT acked_seq FROM devices WHERE id='dev1'").fetchone()[0]
            stored = conn.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM readings").fetchone()
            conn.close()
            assert stored[2] >= acked and stored[0] == stored[2] - stored[1] + 1
        finally:
            dev.close()


def test_provision_errors_are_one_line(tmp_path, gwdb, meter):
    db_path = tmp_path / "gw.sqlite"
    _, summary = secured_broker(tmp_path, gwdb, db_path)
    res = cli_invoke("device", "provision", "--db", db_path, "--port", "/dev/nonexistent-tty", "--id", "d1",
                     "--community", COMMUNITY, "--broker-dir", summary["dir"])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "cannot open serial port" in res.stderr
    dev = PtyDevice(tmp_path / "d1").start()
    try:
        res = cli_invoke("device", "provision", "--db", db_path, "--port", dev.port, "--id", "d1",
                         "--community", COMMUNITY, "--broker-dir", summary["dir"], "--meter-model", "nosuch",
                         "--timeout", "20")
        assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.stderr
        assert "device refused 'provision'" in res.stderr and "meter.model" in res.stderr
        assert store.get_device(gwdb, "d1") is None
        res = cli_invoke("device", "provision", "--db", db_path, "--port", dev.port, "--id", "d1",
                         "--community", COMMUNITY, "--broker-dir", tmp_path / "no-broker")
        assert res.exit_code == 1 and "no broker configuration" in res.stderr
    finally:
        dev.close()


def test_console_skips_noise_and_hostile_lines():
    """What a device prints besides its replies (boot messages, binary garbage, JSON that is
    not an object or nests too deep to decode) is skipped; a refusal is a clear error."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    replies = [
        [b"boot: ets Jun  8 2016\r\n", b"\xff\xfe\x00garbage\n", b"[1, 2]\n", b"{not json\n",
         b'{"a":' + b"[" * 3000 + b"\n", b'{"ok": true, "fw": "0.1.0"}\n'],
        [b'{"ok": false, "error": "meter.model: unknown"}\n'],
    ]

    def device():
        buf = b""
        for lines in replies:
            while b"\n" not in buf:
                buf += os.read(master, 4096)
            buf = buf.split(b"\n", 1)[1]
            for line in lines:
                os.write(master, line)

    t = threading.Thread(target=device, daemon=True)
    t.start()
    console = Console(os.ttyname(slave), timeout=10)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)     # the interpreter's default, as in `egs-gw` (the test run raises it)
    try:
        assert console.request({"cmd": "hello"}) == {"ok": True, "fw": "0.1.0"}
        with pytest.raises(ProvisionError, match="device refused 'provision': meter.model: unknown"):
            console.request({"cmd": "provision"})
    finally:
        sys.setrecursionlimit(limit)
        console.close()
        t.join(5)
        os.close(master)
        os.close(slave)
