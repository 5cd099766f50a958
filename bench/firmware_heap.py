"""Firmware heap benchmark: 1,000 reading cycles with 100K of heap, and what they need.

    .venv/bin/python bench/firmware_heap.py [--quick] [--cycles N] [--heap 100K]

The real firmware runs as deployed (sim/device.py): its code as .mpy files in a ROMFS
image, which on an ESP32 sits in flash and is executed in place, and exactly `--heap`
bytes of MicroPython heap for everything else, on the unix port, reading an emulated
SDM630 over RTU-over-TCP every 20 ms and publishing to a real mosquitto, with an acking
subscriber so the flash log is trimmed as on a real site. Figures, all measured in this
run (how: beside the code in main()): cycles done, MemoryErrors and restarts (both must
be 0), peak live heap, the smallest heap that runs 100 cycles, and the same two for one
bare OCMF sign as the baseline. Heap on the unix port is 64-bit: pointers, object headers
and dict slots are twice the size of an ESP32's, so these figures overstate its needs.
"""
import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho

from protocol import messages_gateway, topics
from sim.device import (
    ROMFS_MOUNT,
    DeviceProcess,
    build_config,
    build_romfs,
    firmware_env,
    heap_bytes,
    romfs_argv,
)
from sim.meter import MeterEmulator
from sim.services import Mosquitto

COMMUNITY = "bench"

BARE_SIGN = ROMFS_MOUNT + """\
gc.collect()
a = gc.mem_alloc()
from protocol import ocmf
secret = bytes(range(1, 33))
r = ocmf.build(secret, 1, 98765432, 4321, 1795464445, gi="EGS", gs="dev", gv="0.1.0",
               mv="Eastron", mm="SDM630", ms="12345678")
gc.collect()
print("live", gc.mem_alloc() - a, "len", len(r))
"""


class Acker:
    """Acknowledges every reading like the gateway (highest contiguous sequence)."""

    def __init__(self, port):
        self.seqs = set()
        self.top = 0
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-acker")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topics.subscription(COMMUNITY, "ocmf"), qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg):
        payload = msg.payload.decode()
        pg = payload.index('"PG":"F') + 7
        seq = int(payload[pg:payload.index('"', pg)])
        device = topics.parse(msg.topic)[1]
        with self.lock:
            self.seqs.add(seq)
            while self.top + 1 in self.seqs:
                self.top += 1
            top = self.top
        client.publish(topics.topic(COMMUNITY, device, "ack"), messages_gateway.ack(top), qos=1)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def run_device(workdir, broker, meter, heap, cycles, interval_s=0.02, timeout=None,
               want_status=False):
    """(ok, stats) for one device run of `cycles` readings with `heap` bytes."""
    acker = Acker(broker.port)
    cfg = {"device_id": "hb", "community": COMMUNITY,
           "broker": {"host": "127.0.0.1", "port": broker.port},
           "meter": {"model": "sdm630", "port": f"tcp:127.0.0.1:{meter.port}",
                     "timeout_ms": 300, "retries": 1},
           "mqtt": {"keepalive_s": 30, "backoff_max_s": 1}, "interval_s": interval_s,
           "status_interval_s": 3600}
    dev = DeviceProcess(workdir, config=build_config(cfg), heapsize=heap)
    start = time.monotonic()
    dev.start()
    limit = timeout or (cycles * interval_s * 4 + 30)
    ok = False
    try:
        while time.monotonic() - start < limit:
            if acker.top >= cycles:
                ok = True
                break
            if "MemoryError" in dev.log_text() or not dev.alive:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        status = {}
        if ok and want_status:
            try:
                status = dev.request({"cmd": "status"}, timeout=10)
            except TimeoutError:
                ok = False
    finally:
        dev.kill()
        acker.close()
    log = dev.log_text()
    stats = {"cycles": acker.top, "seconds": elapsed,
             "memory_errors": log.count("MemoryError"),
             "restarts": log.count(" up: seq ") - 1 + dev.reboots,
             "status": status}
    ok = ok and stats["memory_errors"] == 0 and stats["restarts"] == 0
    return ok, stats


def bare_sign_ok(heap):
    import subprocess

    proc = subprocess.run(romfs_argv(BARE_SIGN, heap), capture_output=True, text=True,
                          env=firmware_env(), cwd=ROOT, timeout=60, check=False)
    return proc.returncode == 0 and "live" in proc.stdout, proc.stdout


def smallest(ok, lo, hi, step=1024):
    """Smallest budget in [lo, hi] (multiples of step) for which ok(budget) is true."""
    if not ok(hi):
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def kb(n):
    return f"{n / 1024:.1f} KB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 cycles, coarse search")
    ap.add_argument("--cycles", type=int, default=None)
    ap.add_argument("--heap", default="100K")
    args = ap.parse_args()
    cycles = args.cycles or (200 if args.quick else 1000)
    budget = heap_bytes(args.heap)
    image = build_romfs()

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "mq") as broker, \
            MeterEmulator("sdm630", tcp=("127.0.0.1", 0), speed=60, import_wh=98_765_432,
                          profile="household") as meter:
        ok, main_run = run_device(Path(tmp) / "main", broker, meter, budget, cycles,
                                  want_status=True)
        # Live heap at cycle boundaries: the firmware collects once per reading and reports
        # the smallest free heap it saw (status "heap.min_free"); budget - that = peak.
        st = main_run["status"]
        min_free = (st.get("heap") or {}).get("min_free")

        search_cycles = 50 if args.quick else 100
        step = 4096 if args.quick else 2048
        runs = [0]

        def fw_ok(heap):
            runs[0] += 1
            good, _ = run_device(Path(tmp) / f"search{runs[0]}", broker, meter, heap,
                                 search_cycles, timeout=60)
            return good

        # Smallest heap that runs the cycles: a binary search over the budget, so it counts
        # the peak including what a cycle allocates and frees, and fragmentation. Baseline:
        # the same for one bare OCMF sign (protocol.ocmf.build from the same image), i.e.
        # the least any signing device needs.
        fw_min = smallest(fw_ok, 32 * 1024, budget, step)
        sign_min = smallest(lambda h: bare_sign_ok(h)[0], 4 * 1024, budget, 512)
        sign_live = bare_sign_ok(budget)[1].split()

    print("firmware heap: MicroPython unix port (64-bit), code as .mpy in ROMFS "
          f"({image.stat().st_size} bytes; flash on an ESP32)")
    print(f"  {cycles} reading cycles with {kb(budget)} heap: "
          f"{'ok' if ok else 'FAILED'}, {main_run['cycles']} done, "
          f"{main_run['memory_errors']} MemoryError, {main_run['restarts']} restarts, "
          f"{main_run['cycles'] / main_run['seconds']:.1f} cycles/s")
    if min_free is not None:
        print(f"  live heap at cycle boundaries: peak {kb(budget - min_free)} "
              f"(least free {kb(min_free)})")
    print(f"  smallest heap running {search_cycles} cycles: "
          f"{kb(fw_min) if fw_min else 'more than the budget'} (step {kb(step)}, {runs[0]} runs)")
    print(f"  baseline, same run: one bare OCMF sign needs {kb(sign_min) if sign_min else '?'}"
          f" of heap; ocmf+p256 live after it: {kb(int(sign_live[1])) if sign_live else '?'}")
    if fw_min and sign_min:
        print(f"  firmware / bare sign: {fw_min / sign_min:.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
