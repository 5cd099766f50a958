"""Broker stopped for 30 s and restarted: nothing lost, nothing stored twice.

The device keeps reading during the outage (its flash log grows), reconnects with backoff
when mosquitto is back, and replays everything the acking subscriber has not acknowledged,
oldest first. The subscriber stores by sequence like the gateway: the test checks there is
no gap, that a sequence delivered twice always carried the same bytes (so storing it once
is right), and that the device's log empties once everything is acknowledged.
"""
import time

from tests.firmware.fixtures import (  # noqa: F401
    device_config,
    device_factory,
    meter,
    subscriber,
    wait_for,
    wait_status,
)

OUTAGE_S = 30


def test_broker_outage_no_gap_no_duplicate(mosquitto, meter, subscriber, device_factory):
    dev = device_factory(device_config("out1", mosquitto.port, meter.port, interval_s=0.5))
    wait_for(lambda: len(subscriber.seqs("out1")) >= 3, what="readings before the outage")

    mosquitto.stop()
    before = max(subscriber.seqs("out1"))
    time.sleep(OUTAGE_S)
    during = dev.request({"cmd": "status"})
    assert not during["connected"]
    assert during["counters"]["log_depth"] >= during["seq"] - before > 10, during
    mosquitto.start()

    target = during["seq"] + 3
    wait_for(lambda: subscriber.contiguous("out1") >= target, timeout=30,
             what="the backlog after the broker came back")
    seqs = subscriber.seqs("out1")
    assert seqs == list(range(1, len(seqs) + 1)), "a sequence gap"
    assert not subscriber.reused, "a sequence arrived twice with different bytes"
    st = wait_status(dev, lambda r: r["counters"]["log_depth"] <= 2,
                     "the device's log to empty")
    assert st["counters"]["reconnects"] >= 1 and st["counters"]["dropped"] == 0
    assert st["connected"]
