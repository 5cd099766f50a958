"""Modbus link benchmark: our RTU master against the pymodbus emulator, pymodbus beside it.

    .venv/bin/python bench/modbus_link.py [--quick]

One emulated SDM630 (sim/meter.py, frozen counters) serves over TCP and over the pty link.
Measured in the same run, on the same emulator: the read time of one energy reading (4
input registers at 0x0048, import and export) with firmware.modbus under CPython and under
`micropython -X heapsize=100K` (the real binary), against the pymodbus sync client reading
the same registers (the baseline); and under MicroPython, decoding a float32 energy
register to exact Wh with integers (meters.f32_scaled) against struct.unpack('>f') + float
multiply (what the firmware must NOT do: it loses Wh), CRC-16 of an 8-byte request and a
256-byte frame, and the heap in use after the readings (gc.mem_alloc()).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.framer import FramerType

from firmware import meters, modbus
from firmware.hal.unix_uart import TcpUart, TtyUart
from sim.meter import MeterEmulator
from sim.services import micropython

MP_SCRIPT = """
import gc, json, struct, sys, time
from firmware import meters, modbus
from firmware.hal.unix_uart import TcpUart, TtyUart
N = {n}
DECODES = {decodes}
def link(arg):
    if arg.startswith("tcp:"):
        host, port = arg[4:].rsplit(":", 1)
        return TcpUart(host, int(port))
    return TtyUart(arg, 9600)
out = {{}}
for name, arg in (("tcp", "{tcp}"), ("pty", "{pty}")):
    m = modbus.Master(link(arg), timeout_ms=500, retries=0)
    meters.read_energy(m, "sdm630", 1)
    times = []
    for _ in range(N):
        t = time.ticks_us()
        meters.read_energy(m, "sdm630", 1)
        times.append(time.ticks_diff(time.ticks_us(), t))
    out[name] = times
    m.uart.close()
gc.collect()
out["mem_alloc"] = gc.mem_alloc()
t = time.ticks_us()
for i in range(DECODES):
    meters.f32_scaled(0x47C0E6B7 + 977 * i, 1000, 1)
out["f32_us"] = time.ticks_diff(time.ticks_us(), t) / DECODES
t = time.ticks_us()
for i in range(DECODES):
    int(struct.unpack(">f", (0x47C0E6B7 + 977 * i).to_bytes(4, "big"))[0] * 1000)
out["float_us"] = time.ticks_diff(time.ticks_us(), t) / DECODES
req = bytes(6)
frame = bytes(range(256))
t = time.ticks_us()
for _ in range(DECODES):
    modbus.crc16(req)
out["crc8_us"] = time.ticks_diff(time.ticks_us(), t) / DECODES
t = time.ticks_us()
for _ in range(DECODES // 10):
    modbus.crc16(frame)
out["crc256_us"] = time.ticks_diff(time.ticks_us(), t) / (DECODES // 10)
print(json.dumps(out))
"""


def timed(fn, n):
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def row(label, times_ms, baseline=None):
    mean = statistics.mean(times_ms)
    extra = f"   ({mean / baseline:.2f}x baseline)" if baseline else ""
    print(f"  {label:<44} mean {mean:7.3f} ms  median {statistics.median(times_ms):7.3f} ms"
          f"{extra}")
    return mean


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer reads")
    args = ap.parse_args()
    n = 30 if args.quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, "meter")
        kw = {"import_wh": 98_765_432, "export_wh": 1_234, "speed": 0}
        with MeterEmulator("sdm630", tcp=("127.0.0.1", 0), **kw) as tcp_em, \
                MeterEmulator("sdm630", serial_link=link, **kw) as tty_em:
            del tty_em
            port = tcp_em.port
            print(f"== one energy reading (fc 04, 4 registers), {n} reads each")
            print(" TCP (RTU frames over TCP, loopback)")
            client = ModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU, timeout=1)
            client.connect()
            base = row("pymodbus ModbusTcpClient (baseline)", timed(
                lambda: client.read_input_registers(0x48, count=4, device_id=1), n))
            client.close()
            master = modbus.Master(TcpUart("127.0.0.1", port), timeout_ms=500, retries=0)
            row("firmware.modbus under CPython, 9600 baud", timed(
                lambda: meters.read_energy(master, "sdm630", 1), n), base)
            master.uart.close()
            # Our master keeps the RTU inter-frame silence before every request (3.5
            # characters: 4.0 ms at 9600 baud, 1.75 ms above 19200), which the pymodbus TCP
            # client does not; back-to-back reads pay it in full, so the 115200-baud row shows
            # the master without most of it. The firmware reads twice a minute, where this
            # does not matter.
            master = modbus.Master(TcpUart("127.0.0.1", port, baudrate=115200),
                                   timeout_ms=500, retries=0)
            row("firmware.modbus under CPython, 115200 baud", timed(
                lambda: meters.read_energy(master, "sdm630", 1), n), base)
            master.uart.close()
            tcp_base = base
            # Over a pty the time includes the emulator's pty pump and pymodbus' own serial
            # handling: a link figure, not a line-speed figure.
            print(" pty link (two pty pairs, emulator pump, pymodbus serial server)")
            client = ModbusSerialClient(link, framer=FramerType.RTU, baudrate=9600, timeout=1)
            client.connect()
            base = row("pymodbus ModbusSerialClient (baseline)", timed(
                lambda: client.read_input_registers(0x48, count=4, device_id=1), n))
            client.close()
            master = modbus.Master(TtyUart(link, 9600), timeout_ms=500, retries=0)
            row("firmware.modbus under CPython", timed(
                lambda: meters.read_energy(master, "sdm630", 1), n), base)
            master.uart.close()
            script = MP_SCRIPT.format(n=n, decodes=200 if args.quick else 2000,
                                      tcp=f"tcp:127.0.0.1:{port}", pty=link)
            env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT}")
            proc = subprocess.run([micropython(), "-X", "heapsize=100K", "-c", script],
                                  cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=300, check=False)
            if proc.returncode:
                sys.exit(f"micropython failed:\n{proc.stdout}{proc.stderr}")

            mp = json.loads(proc.stdout.strip().splitlines()[-1])
            print(" under micropython -X heapsize=100K")
            row("firmware.modbus, TCP, 9600 baud", [t / 1000 for t in mp["tcp"]], tcp_base)
            row("firmware.modbus, pty", [t / 1000 for t in mp["pty"]], base)
    print("== MicroPython micro-figures")
    print(f"  float32 register -> exact Wh (integers)       {mp['f32_us']:7.2f} us"
          f"   baseline struct+float (inexact) {mp['float_us']:.2f} us")
    print(f"  CRC-16 of an 8-byte request (6 data bytes)    {mp['crc8_us']:7.2f} us")
    print(f"  CRC-16 of a 256-byte frame                    {mp['crc256_us']:7.2f} us")
    print(f"  heap in use after the readings                {mp['mem_alloc']:7d} bytes "
          "(of 100K; includes the json/struct/select modules)")


if __name__ == "__main__":
    main()
