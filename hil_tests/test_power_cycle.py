"""Power cycles: the device loses power at arbitrary moments (sim: SIGKILL of the firmware
process; hardware: EN pulled low through the serial adapter) and comes back.

No sequence number is ever used for two different records (the gateway would quarantine
the second as `sequence_reused`), and nothing is lost: every number the device signed
before a cut, whether it had left the device or not, ends up in the store exactly once.
"""
import random
import time

from hil_tests.targets import wait_for

CYCLES = 3


def test_power_cycles_reuse_no_sequence_and_lose_nothing(bench):
    dev = bench.device_id
    rng = random.Random()
    signed = []                           # the device's own count after each boot
    stored_before = {r["seq"]: r["raw"] for r in bench.query(
        "SELECT seq, raw FROM readings WHERE device_id=?", dev)}
    for _ in range(CYCLES):
        time.sleep(rng.uniform(0.2, 2.5))  # wherever it is: reading, signing, logging, sending
        bench.device.power_cycle()
        bench.device.wait_console(60)
        st = bench.device.status()
        signed.append(st["seq"])
        assert st["seq"] >= (signed[-2] if len(signed) > 1 else 0), "the counter went back"

    # back for good: everything it holds reaches the gateway, then new readings follow
    top = bench.wait_stored(max(signed) + 3, timeout=90,
                            what="every sequence signed before the cuts, and new ones")
    seqs = bench.stored_seqs()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a duplicate"
    assert top >= max(signed) + 3
    for seq, raw in stored_before.items():
        row = bench.query("SELECT raw FROM readings WHERE device_id=? AND seq=?", dev, seq)
        assert row[0]["raw"] == raw
    assert not bench.quarantine({"sequence_reused", "replayed_sequence", "register_decreased"})
    # the device deletes only what the gateway acknowledged: its backlog drains
    wait_for(lambda: bench.device.status()["counters"]["log_depth"] <= 2, 30,
             "the device's backlog to be acknowledged")
