"""The firmware killed with SIGKILL at random points, 50 times.

Each run is short (interval 0.05 s, killed 0.05-0.6 s after start: during boot, the log
scan, a Modbus read, signing, an append, an ack or the state file), with an acking
subscriber on the real broker. In a third of the runs the kill also lands "mid-write":
a partial record (a prefix of a valid header and body) is left at the end of the newest
segment, as an append cut short leaves it; the firmware must drop it and go on.

After every kill the flash log is opened (firmware/flashlog.py under CPython) and must be
readable, strictly increasing, and agree byte for byte with every earlier snapshot and with
what the subscriber received: a sequence number is never used for two different records.
At the end the device runs until everything is delivered: no sequence is missing.
"""
import os
import random
import struct
import subprocess

from firmware.flashlog import HEADER, MAGIC, FlashLog
from tests.firmware.fixtures import device_config, device_factory, meter, subscriber, wait_for  # noqa: F401

KILLS = 50


def _snapshot(log_dir):
    log = FlashLog(str(log_dir))
    recs = log.records()
    seqs = [r[0] for r in recs]
    assert seqs == sorted(set(seqs)), f"log not strictly increasing: {seqs}"
    return {r[0]: bytes(r[3]) for r in recs}, log


def _tear(log_dir, rng):
    """Leave a record cut short at the end of the newest segment."""
    segs = sorted(p for p in os.listdir(log_dir) if p.endswith(".seg"))
    if not segs:
        return False
    body = b"OCMF|" + bytes(rng.getrandbits(8) for _ in range(400))
    header = struct.pack(HEADER, MAGIC, len(body), 10 ** 6, 1, 2, 0x12345678)
    whole = header + body
    with open(os.path.join(log_dir, segs[-1]), "ab") as f:
        f.write(whole[:rng.randrange(1, len(whole))])
    return True


def test_sigkill_fifty_times(mosquitto, meter, subscriber, device_factory):
    rng = random.Random(20241123)
    cfg = device_config("pc1", mosquitto.port, meter.port, interval_s=0.05,
                        mqtt={"keepalive_s": 10, "backoff_max_s": 0.3})
    dev = device_factory(cfg, start=False)
    log_dir = dev.state_dir / "log"
    seen = {}          # seq -> bytes, from every snapshot
    torn = 0
    for i in range(KILLS):
        dev.start()
        energy = 1_000_000 + 1000 * i
        meter.set_energy(import_wh=energy, export_wh=i)
        try:
            dev.proc.wait(timeout=rng.uniform(0.05, 0.6))
        except subprocess.TimeoutExpired:
            pass                                  # still running: the normal case
        else:
            raise AssertionError(f"firmware exited by itself:\n{dev.log_text()[-2000:]}")
        dev.kill()
        if rng.random() < 1 / 3 and _tear(log_dir, rng):
            torn += 1
        records, _ = _snapshot(log_dir)
        for seq, body in records.items():
            if seq in seen:
                assert seen[seq] == body, f"sequence {seq} reused after kill {i}"
            seen[seq] = body
    assert torn >= 10
    print(f"kills {KILLS}, torn tails {torn}, sequences in snapshots {len(seen)}, max {max(seen)}")

    # power back for good: everything reaches the subscriber, once, unchanged
    dev.start()
    _snapshot(log_dir)
    last = max(seen)
    wait_for(lambda: subscriber.contiguous("pc1") >= last + 5, timeout=60,
             what="delivery of the backlog after the last kill")
    got = subscriber.seqs("pc1")
    assert got == list(range(1, len(got) + 1)), "a sequence is missing"
    for seq, body in seen.items():
        assert subscriber.record("pc1", seq).encode() == body, f"sequence {seq} differs"
    assert not subscriber.reused
    assert "MemoryError" not in dev.log_text()
    boots = dev.log_text().count(" up: seq ")
    assert boots >= KILLS // 2, "most runs got as far as the main loop"
