"""A meter whose serial link disappears (emulator stopped, USB adapter unplugged) must not
take the device down: the firmware keeps running, counts the fault, and reads again once
the link is back on the same path (the adapter plugged in again)."""
import time

from sim.meter import MeterEmulator
from tests.firmware.fixtures import device_config, device_factory  # noqa: F401


def test_device_survives_its_meter_tty_going_away(tmp_path, mosquitto, device_factory):
    link = tmp_path / "meter.tty"
    emu = MeterEmulator("sdm630", serial_link=link, speed=0, import_wh=5_000, export_wh=0)
    emu.start()
    try:
        cfg = device_config("hup1", mosquitto.port, 0, interval_s=0.3)
        cfg["meter"] = {"model": "sdm630", "port": str(link), "baud": 9600,
                        "timeout_ms": 200, "retries": 0}
        dev = device_factory(cfg, name="hup")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and dev.request({"cmd": "status"}).get("seq", 0) < 1:
            time.sleep(0.2)
        assert dev.request({"cmd": "status"}).get("seq", 0) >= 1, "no reading over the tty"
    finally:
        emu.stop()
    time.sleep(2.0)     # several reading cycles against a vanished tty
    assert dev.alive, f"firmware died when its meter tty went away (exit {dev.proc.returncode})"
    seq_while_gone = dev.request({"cmd": "status"}).get("seq", 0)

    with MeterEmulator("sdm630", serial_link=link, speed=0, import_wh=6_000, export_wh=0):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if dev.request({"cmd": "status"}).get("seq", 0) > seq_while_gone + 1:
                break
            time.sleep(0.2)
        assert dev.request({"cmd": "status"}).get("seq", 0) > seq_while_gone + 1, \
            "no readings after the meter link came back"
