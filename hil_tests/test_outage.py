"""Broker outage: mosquitto stops; the device keeps reading and signing into its flash log
(it deletes nothing the gateway has not acknowledged); when the broker is back the backlog
is replayed oldest first and the store has every reading once: no gap, no duplicate.

While the broker is down the device is observed through its serial console, the only
way left to reach it.
"""
from hil_tests.targets import wait_for

BACKLOG = 6          # readings to accumulate while the broker is down


def test_broker_outage_buffers_and_replays(bench):
    dev = bench.device_id
    bench.wait_stored(bench.contiguous_top())
    bench.stack.broker.stop()
    try:
        down = wait_for(lambda: (st := bench.device.status()).get("connected") is False and st,
                        30, "the device to notice the broker is gone")
        stored_at_down = bench.contiguous_top()
        held = wait_for(lambda: (st := bench.device.status())["seq"] >= down["seq"] + BACKLOG
                        and st, 60, f"{BACKLOG} readings signed during the outage")
        assert held["acked"] <= stored_at_down, "acknowledged only what the gateway stored"
        assert held["counters"]["log_depth"] >= held["seq"] - held["acked"] >= BACKLOG, \
            "everything not acknowledged is still in the device's flash log"
        assert bench.contiguous_top() <= down["seq"], "nothing can arrive without a broker"
    finally:
        bench.stack.broker.start()

    final = bench.wait_stored(held["seq"] + 2, timeout=90,
                              what="the backlog replayed and new readings after the outage")
    rows = bench.query("SELECT seq, time_epoch FROM readings WHERE device_id=? ORDER BY seq", dev)
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a duplicate"
    assert final >= held["seq"]
    # the readings signed during the outage carry the time they were taken, not of arrival
    outage = [r["time_epoch"] for r in rows if down["seq"] < r["seq"] <= held["seq"]]
    assert outage == sorted(outage) and len(set(outage)) == len(outage)
    assert not bench.quarantine({"sequence_reused", "replayed_sequence", "register_decreased"})
    wait_for(lambda: bench.device.status()["counters"]["log_depth"] <= 2, 30,
             "the device to delete what the gateway acknowledged")
    st = bench.device.status()
    assert st["connected"] and st["counters"]["reconnects"] >= 1
