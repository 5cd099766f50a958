"""Drive firmware.modbus + firmware.meters under MicroPython from a test, one JSON line at a time.

    micropython -X heapsize=100K tests/mp/modbus_probe.py (--tty PATH | --tcp HOST:PORT)
        [--baud 9600] [--timeout-ms 300] [--retries 1]

Reads one JSON command per line on stdin, answers one JSON line on stdout:
    {"op": "energy", "model": "sdm630", "unit": 1}  -> {"ok": true, "value": [imp_wh, exp_wh]}
    {"op": "power", ...} / {"op": "serial", ...}    -> {"ok": true, "value": ...}
    {"op": "read", "unit": 1, "fc": 4, "address": 72, "count": 4} -> {"ok": true, "value": "hex"}
    {"op": "counters"}                               -> {"ok": true, "value": {...}, "mem": n}
    {"op": "quit"}
Failures: {"ok": false, "error": "CrcError", "reason": "...", "code": n (exceptions only)}.
Every answer carries the master's counters, so a test sees what each fault did to them.
The process stays up between commands so tests can switch the emulator's faults in between.
"""
import gc
import json
import sys

from firmware import meters, modbus
from firmware.hal.unix_uart import TcpUart, TtyUart


def options(argv):
    opts = {"baud": 9600, "timeout-ms": 300, "retries": 1}
    i = 0
    while i < len(argv):
        key = argv[i].lstrip("-")
        opts[key] = argv[i + 1]
        i += 2
    for key in ("baud", "timeout-ms", "retries"):
        opts[key] = int(opts[key])
    return opts


def open_link(opts):
    if "tty" in opts:
        return TtyUart(opts["tty"], opts["baud"])
    host, port = opts["tcp"].rsplit(":", 1)
    return TcpUart(host, int(port), opts["baud"])


def handle(master, cmd):
    op = cmd["op"]
    model = cmd.get("model", "sdm630")
    unit = cmd.get("unit", 1)
    if op == "energy":
        return list(meters.read_energy(master, model, unit))
    if op == "power":
        return meters.read_power_w(master, model, unit)
    if op == "serial":
        return meters.read_serial(master, model, unit)
    if op == "read":
        return master.read(unit, cmd["fc"], cmd["address"], cmd["count"]).hex()
    if op == "counters":
        return master.counters
    raise ValueError(f"unknown op {op!r}")


def main():
    opts = options(sys.argv[1:])
    uart = open_link(opts)
    master = modbus.Master(uart, timeout_ms=opts["timeout-ms"], retries=opts["retries"])
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        out = {"ok": True}
        try:
            out["value"] = handle(master, cmd)
        except modbus.ModbusError as e:
            out = {"ok": False, "error": type(e).__name__, "reason": str(e)}
            if isinstance(e, modbus.ExceptionResponse):
                out["code"] = e.code
        except meters.MeterFault as e:
            out = {"ok": False, "error": "MeterFault", "reason": e.reason, "field": e.field}
        gc.collect()
        out["counters"] = master.counters
        out["mem"] = gc.mem_alloc()
        print(json.dumps(out))
    uart.close()


main()
