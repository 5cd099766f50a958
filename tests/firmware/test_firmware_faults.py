"""Meter faults: counted, reported in the status, never signed as a reading.

One device reads an emulated SDM630; the emulator injects each fault in turn. While a fault
lasts the device's sequence must not move (nothing signed), the console and the retained
MQTT status name the fault and count it, and when the fault clears readings resume with
the next sequence number and the true register values.
"""
from protocol import ocmf
from tests.firmware.fixtures import (  # noqa: F401
    device_config,
    device_factory,
    meter,
    subscriber,
    wait_for,
    wait_status,
)
from tests.firmware.modbus_fixtures import f32_words_to_wh

# emulator fault -> (fault kind in the status, does it count as a Modbus error)
CASES = [
    ("timeout", "timeout", True),
    ("crc", "crc", True),
    ("exception", "exception", True),
    ("short", "frame", True),
    ("nan", "nan", False),
    ("infinite", "infinite", False),
    ("negative", "negative", False),
]


def _status(dev):
    return dev.request({"cmd": "status"})


def _fault_phase(dev, kind, start_faults):
    """Wait until `kind` was counted at least twice; the sequence must not move meanwhile."""
    first = wait_status(dev, lambda s: s["faults"].get(kind, 0) > start_faults,
                        f"fault {kind} counted")
    assert first["meter_fault"]["kind"] == kind, first["meter_fault"]
    later = wait_status(dev, lambda s: s["faults"][kind] >= first["faults"][kind] + 2,
                        f"more {kind} faults")
    assert later["seq"] == first["seq"], f"a reading was signed during a {kind} fault"
    return later


def test_faults_are_counted_reported_and_never_signed(mosquitto, meter, subscriber,
                                                      device_factory):
    dev = device_factory(device_config("f1", mosquitto.port, meter.port, interval_s=0.2))
    wait_for(lambda: len(subscriber.seqs("f1")) >= 2, what="good readings first")
    key = ocmf.load_public_key(dev.pubkey())

    for emu_kind, kind, modbus_error in CASES:
        before = _status(dev)
        meter.set_fault(emu_kind)
        st = _fault_phase(dev, kind, before["faults"].get(kind, 0))
        assert st["counters"]["meter_faults"] > before["counters"]["meter_faults"]
        if modbus_error:
            assert st["counters"]["modbus_errors"] > before["counters"]["modbus_errors"]
        wait_for(lambda k=kind: isinstance(subscriber.status.get("f1"), dict)
                 and (subscriber.status["f1"].get("meter_fault") or {}).get("kind") == k,
                 what=f"{kind} in the retained MQTT status")
        meter.clear_fault()
        wait_status(dev, lambda s, seq=st["seq"]: s["seq"] > seq + 1, f"readings after {kind}")

    # a cumulative register going backwards (a reset meter, a tampered register)
    good = f32_words_to_wh(meter.registers("import_wh"))
    before = _status(dev)
    meter.set_energy(import_wh=good - 5000)
    st = _fault_phase(dev, "decrease", before["faults"].get("decrease", 0))
    assert "import_wh" in st["meter_fault"]["detail"]
    meter.set_energy(import_wh=good + 1000)
    wait_for(lambda: _status(dev)["seq"] > st["seq"] + 1, what="readings after the decrease")
    assert _status(dev)["meter_fault"] is None

    # nothing a fault produced was signed: every record verifies and carries real values
    final = _status(dev)
    wait_for(lambda: subscriber.contiguous("f1") >= final["seq"], what="all records delivered")
    values = []
    for seq in subscriber.seqs("f1"):
        rec = ocmf.verify(subscriber.record("f1", seq), key)
        values.append(rec.import_wh)
        assert rec.import_wh in (f32_words_to_wh(meter.registers("import_wh")), good), rec.import_wh
    assert values == sorted(values), "signed registers never go backwards"
    # every sequence once, none missing (the device keeps reading: more may have come)
    seqs = subscriber.seqs("f1")
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= final["seq"]


def test_a_decrease_while_the_device_was_off_is_not_signed(mosquitto, meter, subscriber,
                                                           device_factory):
    """After a reboot the last signed registers are the baseline, also when the gateway
    had acknowledged every record (the normal case): the check used to find the meter
    serial of the newest record only among unacknowledged ones, took "no serial" for
    "another meter", and signed a register that had gone backwards."""
    dev = device_factory(device_config("f2", mosquitto.port, meter.port, interval_s=0.2))
    wait_for(lambda: subscriber.contiguous("f2") >= 2, what="good readings first")
    meter.set_fault("timeout")                      # no more readings: let the acks settle
    st = wait_status(dev, lambda s: s["seq"] >= 2 and s["acked"] == s["seq"]
                     and s["faults"].get("timeout", 0) > 0, "everything acknowledged")
    dev.kill()
    good = f32_words_to_wh(meter.registers("import_wh"))
    meter.clear_fault()
    meter.set_energy(import_wh=good - 5000)         # wound back while the device was off
    dev.start()
    after = _fault_phase(dev, "decrease", 0)
    assert after["seq"] == st["seq"], "a decreased register was signed after the reboot"
    assert "import_wh" in after["meter_fault"]["detail"]
