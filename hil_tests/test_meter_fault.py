"""Meter disconnected: the device reports a meter fault and signs nothing while the meter
is silent; when it answers again, readings resume with the next sequence number and the
registers carry on where they were (cumulative, never lower).

A meter unplugged from the RS-485 pair simply stops answering: the emulator is silenced
(`timeout` fault) on the same link, pty or USB adapter, as the cable would leave it.
"""
import itertools
import time

from hil_tests.targets import wait_for


def test_meter_disconnected_and_reconnected(bench):
    meter = bench.meter.require_control("the test must unplug the meter")
    dev = bench.device_id
    bench.wait_stored(bench.contiguous_top())
    meter.disconnect()
    try:
        status = wait_for(lambda: (st := bench.device.status()).get("meter_fault") and st,
                          30, "the device to report a meter fault")
        assert status["meter_fault"]["kind"] == "timeout", status["meter_fault"]
        faults_at_start = status["counters"]["meter_faults"]
        silent_seq = status["seq"]
        # what the gateway knows: the device's retained status says so too
        wait_for(lambda: (bench.stack.gw("device", "show", "--id", dev).get("status") or {})
                 .get("meter_fault"), 30, "the gateway to see the fault in the device's status")
        bench.wait_stored(silent_seq, what="everything signed before the fault")
        # several reading slots pass: nothing is signed, faults are counted
        time.sleep(4 * bench.reading_interval + 2)
        status = bench.device.status()
        assert status["seq"] == silent_seq, "a reading was signed without a meter"
        assert status["counters"]["meter_faults"] > faults_at_start
        assert max(bench.stored_seqs()) == silent_seq
    finally:
        meter.reconnect()

    wait_for(lambda: bench.device.status().get("meter_fault") is None, 30,
             "the fault to clear once the meter answers")
    top = bench.wait_stored(silent_seq + 2, what="readings after the meter came back")
    rows = bench.query("SELECT seq, import_wh, export_wh FROM readings WHERE device_id=? "
                       "AND seq BETWEEN ? AND ? ORDER BY seq", dev, silent_seq, top)
    assert [r["seq"] for r in rows] == list(range(silent_seq, top + 1)), \
        "readings resume with the next number: no sequence was spent on the silence"
    for a, b in itertools.pairwise(rows):
        assert b["import_wh"] >= a["import_wh"] and b["export_wh"] >= a["export_wh"]
    assert not bench.quarantine({"register_decreased", "sequence_reused"})
    wait_for(lambda: (bench.stack.gw("device", "show", "--id", dev).get("status") or {})
             .get("meter_fault") is None, 30, "the retained status to clear the fault")
    shown = bench.stack.gw("device", "show", "--id", dev)
    assert shown["status"]["meter_serial"] == shown["meter_serial"], "the same meter is back"
