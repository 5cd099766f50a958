"""Heap budget: the firmware runs reading cycles with 100K of heap without a MemoryError.

The device runs as deployed (code as .mpy in a ROMFS image, which on the ESP32 sits in
flash; see sim/device.py) with exactly 100K of heap for itself, reading every 30 ms, while
an acking subscriber takes everything. A test runs 200 cycles; bench/firmware_heap.py runs
1,000 and prints the figures.
"""
from tests.firmware.fixtures import device_config, device_factory, meter, subscriber, wait_for  # noqa: F401

CYCLES = 200


def test_reading_cycles_within_100k_heap(mosquitto, meter, subscriber, device_factory):
    cfg = device_config("heap1", mosquitto.port, meter.port, interval_s=0.03,
                        status_interval_s=3600)
    dev = device_factory(cfg, heapsize="100K")
    wait_for(lambda: subscriber.contiguous("heap1") >= CYCLES, timeout=60,
             what=f"{CYCLES} readings")
    st = dev.request({"cmd": "status"})
    log = dev.log_text()
    assert "MemoryError" not in log, log[-3000:]
    assert "heap for the firmware 10" in log          # 100K = 102400 bytes, as configured
    assert dev.starts == 1 and log.count(" up: seq ") == 1, "no restart"
    assert st["counters"]["readings"] >= CYCLES and st["counters"]["log_errors"] == 0
    assert st["heap"]["min_free"] > 8 * 1024, st["heap"]
    assert not subscriber.reused
