"""A reading flows: emulated meter -> real firmware under MicroPython -> mosquitto -> subscriber.

The subscriber verifies each OCMF signature with `cryptography` (protocol.ocmf.verify)
against the public key the device gave on its console and in its retained birth message,
and compares the energy with the meter's registers decoded independently (Fraction oracle).
"""
import json
import time

from protocol import ocmf
from tests.firmware.fixtures import (  # noqa: F401
    Subscriber,
    device_config,
    device_factory,
    meter,
    subscriber,
    wait_for,
    wait_status,
)
from tests.firmware.modbus_fixtures import f32_words_to_wh


def _status(sub, dev_id, pred=lambda s: True):
    return wait_for(lambda: isinstance(sub.status.get(dev_id), dict) and pred(sub.status[dev_id])
                    and sub.status[dev_id], what=f"status of {dev_id}")


def test_signed_readings_carry_the_exact_register_values(mosquitto, meter, subscriber,
                                                         device_factory):
    meter.set_energy(import_wh=98_765_432, export_wh=16_777_217)
    want_import = f32_words_to_wh(meter.registers("import_wh"))
    want_export = f32_words_to_wh(meter.registers("export_wh"))
    assert want_import == 98_765_430        # float32 resolution of the meter itself
    dev = device_factory(device_config("m1", mosquitto.port, meter.port, interval_s=0.3))
    pubkey = dev.pubkey()
    assert len(bytes.fromhex(pubkey)) == 65 and pubkey.startswith("04")

    birth = _status(subscriber, "m1")
    assert birth["state"] == "online" and birth["pubkey"] == pubkey
    assert birth["fw"] and birth["model"] == "sdm630" and birth["meter_serial"] == "20241234"
    for key in ("modbus_errors", "reconnects", "log_depth", "meter_faults", "dropped"):
        assert isinstance(birth["counters"][key], int), key

    wait_for(lambda: len(subscriber.seqs("m1")) >= 3, what="three readings")
    key = ocmf.load_public_key(birth["pubkey"])
    for seq in subscriber.seqs("m1")[:3]:
        rec = ocmf.verify(subscriber.record("m1", seq), key)
        assert rec.sequence == seq
        assert (rec.import_wh, rec.export_wh) == (want_import, want_export)
        assert rec.meter_serial == "20241234" and rec.gateway_serial == "m1"
        assert rec.time_status == "S"
    assert subscriber.seqs("m1")[:3] == [1, 2, 3]

    # a tampered copy does not verify
    raw = subscriber.record("m1", 1)
    forged = raw.replace('"RV":98765.430', '"RV":98766.430')
    assert forged != raw
    try:
        ocmf.verify(forged, key)
    except ocmf.OcmfError:
        pass
    else:
        raise AssertionError("forged record verified")

    # the counters move: later readings follow the registers exactly
    meter.set_energy(import_wh=98_765_500)
    want = f32_words_to_wh(meter.registers("import_wh"))
    assert want > want_import
    last = wait_for(lambda: [s for s in subscriber.seqs("m1")
                             if ocmf.parse(subscriber.record("m1", s)).import_wh == want],
                    what="a reading with the new register value")
    assert ocmf.verify(subscriber.record("m1", last[0]), key).import_wh == want
    assert not subscriber.reused

    # everything acknowledged by the subscriber is gone from the device's log
    top = subscriber.contiguous("m1")
    st = _status(subscriber, "m1")
    reply = wait_status(dev, lambda r: r["acked"] >= top, "device to take the ack")
    assert reply["counters"]["log_depth"] <= reply["seq"] - reply["acked"]
    assert st["pubkey"] == pubkey


def test_commands_acks_and_hostile_messages(mosquitto, meter, device_factory):
    sub = Subscriber(mosquitto.port, ack=False)        # nothing acknowledged: all kept
    try:
        # a stale command kept by the broker must not act (it would reboot on every connect)
        sub.client.publish("egs/v1/c1/m2/cmd", json.dumps({"cmd": "reboot"}), qos=1,
                           retain=True).wait_for_publish(5)
        dev = device_factory(device_config("m2", mosquitto.port, meter.port, interval_s=0.3))
        wait_for(lambda: len(sub.seqs("m2")) >= 3, what="readings")

        # resend from 1: the device replays what the gateway has not acknowledged
        before = sum(1 for d, s in sub.arrivals if s == 1)
        sub.cmd("m2", {"cmd": "resend", "from": 1})
        wait_for(lambda: sum(1 for d, s in sub.arrivals if s == 1) > before, what="replay of 1")

        # hostile and malformed input on ack and cmd: counted, ignored, link stays up
        for bad in (b"not json", b"\xff\xfe", json.dumps({"cmd": "format_disk"}),
                    json.dumps({"cmd": "resend", "from": "x"}), json.dumps([1, 2]),
                    json.dumps({"cmd": "set_interval", "interval_s": -5}),
                    b"{" * 20000):
            sub.cmd("m2", bad)
        for bad in (b"{}", json.dumps({"seq": -1}), json.dumps({"seq": True})):
            sub.client.publish("egs/v1/c1/m2/ack", bad, qos=1).wait_for_publish(5)
        st = wait_status(dev, lambda r: r["counters"]["bad_messages"] >= 8,
                         "bad messages counted")
        assert st["connected"] and st["counters"]["reconnects"] == 0, st
        assert dev.reboots == 0 and dev.log_text().count(" up: seq ") == 1, "retained reboot"
        n = len(sub.seqs("m2"))
        wait_for(lambda: len(sub.seqs("m2")) > n + 2, what="readings after hostile input")

        # an ack beyond what the device has sent is ignored (counted): it deletes nothing,
        # and later records are still delivered
        bad_before = dev.request({"cmd": "status"})["counters"]["bad_messages"]
        sub.client.publish("egs/v1/c1/m2/ack", json.dumps({"seq": 10 ** 9}), qos=1)
        st = wait_status(dev, lambda r: r["counters"]["bad_messages"] > bad_before, "ignored ack")
        assert st["acked"] == 0
        top = max(sub.seqs("m2"))
        wait_for(lambda: max(sub.seqs("m2")) > top + 1, what="records after a huge ack")

        # set_interval: applied, persisted, reported
        sub.cmd("m2", {"cmd": "set_interval", "interval_s": 0.2})
        wait_for(lambda: isinstance(sub.status.get("m2"), dict)
                 and sub.status["m2"].get("interval_s") == 0.2, what="interval in status")
        saved = json.loads((dev.state_dir / "config.json").read_text())
        assert saved["interval_s"] == 0.2

        # reboot: goodbye on status, back online, numbering continues without reuse
        last = max(sub.seqs("m2"))
        sub.cmd("m2", {"cmd": "reboot"})
        wait_for(lambda: any(d == "m2" and isinstance(s, dict) and s.get("reason") == "reboot"
                             for d, s in sub.status_history), what="offline before reboot")
        wait_for(lambda: max(sub.seqs("m2")) > last + 2, what="readings after reboot")
        seqs = sub.seqs("m2")
        assert seqs == list(range(1, len(seqs) + 1)), "no gap, no reuse across the reboot"
        assert not sub.reused
        assert dev.alive

        # last will: the process dies, the broker tells everyone it is offline
        dev.kill()
        wait_for(lambda: sub.status.get("m2") == {"state": "offline"}, what="last will")
    finally:
        sub.close()


def test_meter_over_a_real_tty(tmp_path, mosquitto, subscriber, device_factory):
    """RTU framing across real ttys: the emulator's pseudo-terminal link, opened by the
    unix HAL as the meter's serial port (an ABB B23 this time: holding registers, u64)."""
    from sim.meter import MeterEmulator

    link = tmp_path / "meter.tty"
    with MeterEmulator("abb_b23", serial_link=link, speed=0, import_wh=98_765_430,
                       export_wh=1_230, serial_number=7654321, baudrate=9600) as emu:
        cfg = device_config("tty1", mosquitto.port, 0, interval_s=0.3)
        cfg["meter"] = {"model": "abb_b23", "port": str(link), "baud": 9600,
                        "timeout_ms": 300, "retries": 1}
        dev = device_factory(cfg, name="tty", time_offset_ms=-86_400_000)   # a day behind
        key = ocmf.load_public_key(dev.pubkey())
        wait_for(lambda: len(subscriber.seqs("tty1")) >= 2, what="readings over the tty")
        rec = ocmf.verify(subscriber.record("tty1", 1), key)
        assert (rec.import_wh, rec.export_wh) == emu.energy_wh() == (98_765_430, 1_230)
        assert rec.meter_serial == "7654321"
        assert abs(rec.time_epoch - (time.time() - 86_400)) < 60, "the device's own clock"
