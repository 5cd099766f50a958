"""Emulated Modbus energy meters: `egs-sim meter`, and MeterEmulator for tests.

A pymodbus 3 server (SimDevice datastore, RTU framing) serving the register maps of
firmware/meters.py, so the emulator and the firmware read the same table. Energy counters
advance from a power profile (sim/profiles.py) on a simulated clock (its own, from
start_epoch at `speed`; or, when EGS_CLOCK is set and no start_epoch is given, the demo's
shared clock, gateway/clock.py); faults are injected while it runs (FAULTS). Subclasses
may override `power_at(t)` for other profiles (sim/households.py).

Links: `--serial-link PATH`, a real tty (a USB RS-485 adapter for hardware-in-the-loop
runs) or a pseudo-terminal link the emulator makes (`_open_serial_link`); or `--tcp
HOST:PORT`, RTU frames (with CRC) over TCP, for runs with many meters. From the CLI:
`--fault KIND[:COUNT]`, and `--control FILE`: a JSON object re-read whenever the file
changes, e.g. {"fault": "crc", "count": 2}, {"fault": null}, {"import_wh": 0}.
"""
import asyncio
import errno
import json
import logging
import os
import signal
import struct
import sys
import threading
import time
import tty
from pathlib import Path

import click
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware import meters
from firmware.modbus import crc16
from gateway import clock
from sim.profiles import PROFILES, profile_power_w

WMS_PER_WH = 3_600_000          # energy is integrated in W*ms
# Faults (set_fault(kind, count=None, **params); count None = until cleared):
#   timeout         no reply                      crc             last CRC byte flipped
#   exception       exception reply, code=N       slow            reply after delay_s seconds
#   nan             energy/power registers hold the model's NaN / "not available" pattern
#   infinite        float registers hold +inf     negative        energy registers negative
#   garbage         noise bytes before the reply (a valid frame follows)
#   noise           noise bytes instead of the reply
#   short           reply cut in half             wrong_unit      reply from another unit
#   wrong_function  reply echoes another function code
# Counter reset or decrease: set_energy(import_wh=..., export_wh=...).
FAULTS = ("timeout", "crc", "exception", "slow", "nan", "infinite", "negative", "garbage",
          "noise", "short", "wrong_unit", "wrong_function")
_VALUE_FAULTS = ("nan", "infinite", "negative")
_PACKET_FAULTS = ("timeout", "crc", "garbage", "noise", "short", "wrong_unit", "wrong_function")
NOISE = b"\x00\xff\x55\xaa\x13"


def _words(raw, count):
    return [(raw >> (16 * (count - 1 - i))) & 0xFFFF for i in range(count)]


def encode_field(field, value):
    """Register words for an integer value in Wh / W, as the meter would hold it.

    Floats: the float32 nearest to value * div / mul. Integers: floor(value * div / mul),
    the meter's completed units (ABB: 0.01 kWh).
    """
    _fc, _addr, kind, mul, div = field
    count = meters.WORDS[kind]
    if kind == meters.F32:
        bits = struct.unpack(">I", struct.pack(">f", value * div / mul))[0]
        return _words(bits, 2)
    raw = (value * div) // mul
    bits = 16 * count
    if kind.startswith("u") and not 0 <= raw < (1 << bits):
        raise ValueError(f"{value} does not fit {kind}")
    return _words(raw & ((1 << bits) - 1), count)


def fault_words(field, fault):
    """Register words for a value fault in a field, or None if the type cannot show it."""
    kind = field[2]
    count = meters.WORDS[kind]
    if kind == meters.F32:
        bits = {"nan": 0x7FC00000, "infinite": 0x7F800000, "negative": 0xC2C80000}[fault]
        return _words(bits, 2)                      # negative: -100.0
    if fault == "nan":
        bits = 16 * count
        top = (1 << (bits - 1)) - 1 if kind.startswith("s") else (1 << bits) - 1
        return _words(top, count)
    return None


def _blocks(model):
    """(function, address, count) blocks the meter serves: read plans of every field."""
    m = meters.get_model(model)
    wanted = meters.read_plan([m["import_wh"], m["export_wh"]])
    for name in ("power_w", "serial"):
        if m.get(name):
            wanted += meters.read_plan([m[name]])
    merged = []
    for fc, addr, count in sorted(wanted):
        if merged and merged[-1][0] == fc and addr <= merged[-1][1] + merged[-1][2]:
            _fc, paddr, pcount = merged[-1]
            merged[-1] = (fc, paddr, max(paddr + pcount, addr + count) - paddr)
        else:
            merged.append((fc, addr, count))
    return merged


# ---------------------------------------------------------------- the emulator

class MeterEmulator:
    """One emulated meter on one link, served from a background thread.

        with MeterEmulator("sdm630", tcp=("127.0.0.1", 0), import_wh=98_765_432) as meter:
            meter.port, meter.set_fault("crc", count=1), meter.set_energy(import_wh=0)
    """

    def __init__(self, model="sdm630", *, serial_link=None, tcp=None, unit=1, import_wh=0,
                 export_wh=0, profile="flat", speed=1.0, flat_w=1000, serial_number=12345678,
                 baudrate=9600, start_epoch=None):
        self.model_name = model
        self.model = meters.get_model(model)
        if (serial_link is None) == (tcp is None):
            raise ValueError("give exactly one of serial_link or tcp")
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
        if not 1 <= unit <= 247:
            raise ValueError("unit must be 1..247")
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.serial_link = str(serial_link) if serial_link is not None else None
        self.tcp = tcp
        self.unit = unit
        self.profile = profile
        self.speed = speed
        self.flat_w = flat_w
        self.serial_number = serial_number
        self.baudrate = baudrate
        self.port = None            # TCP port once started
        self.tty_path = None        # the tty the firmware opens
        self.requests = 0           # requests answered (or deliberately not answered)
        self._lock = threading.Lock()
        self._fault = None          # (kind, remaining or None, params)
        self._acc_import = int(import_wh) * WMS_PER_WH
        self._acc_export = int(export_wh) * WMS_PER_WH
        if self._acc_import < 0 or self._acc_export < 0:
            raise ValueError("energy must be >= 0")
        self._shared_clock = start_epoch is None and clock.active()
        if self._shared_clock:
            start_epoch = clock.now()
        start = time.time() if start_epoch is None else start_epoch
        self._sim_ms = int(start * 1000)
        self._t0 = time.monotonic()
        self._sim0 = self._sim_ms
        self._thread = None
        self._loop = None
        self._server = None
        self._fds = []
        self._link_made = False
        self._error = None

    # ---- state, usable from any thread
    def _sim_now_ms(self):
        if self._shared_clock:
            return int(clock.now() * 1000)
        return self._sim0 + int((time.monotonic() - self._t0) * 1000 * self.speed)

    def power_at(self, t):
        """Net power in W (+ import, - export) at `t` seconds since midnight."""
        return profile_power_w(self.profile, t, self.flat_w)

    def _advance(self):
        now = self._sim_now_ms()
        while self._sim_ms < now:
            step = min(60_000, now - self._sim_ms)
            t = ((self._sim_ms + step // 2) // 1000) % 86400
            p = self.power_at(t)
            if p > 0:
                self._acc_import += p * step
            else:
                self._acc_export -= p * step
            self._sim_ms += step

    def energy_wh(self):
        """(import_wh, export_wh): the meter's true counters now."""
        with self._lock:
            self._advance()
            return self._acc_import // WMS_PER_WH, self._acc_export // WMS_PER_WH

    def power_w(self):
        with self._lock:
            return self.power_at((self._sim_now_ms() // 1000) % 86400)

    def set_energy(self, import_wh=None, export_wh=None):
        """Set the counters (a counter reset, a replaced meter, a decrease)."""
        with self._lock:
            self._advance()
            if import_wh is not None:
                self._acc_import = int(import_wh) * WMS_PER_WH
            if export_wh is not None:
                self._acc_export = int(export_wh) * WMS_PER_WH

    def registers(self, name):
        """Register words the meter serves now for field `name` (faults aside)."""
        field = self.model[name]
        if name == "import_wh":
            return encode_field(field, self.energy_wh()[0])
        if name == "export_wh":
            return encode_field(field, self.energy_wh()[1])
        if name == "power_w":
            return encode_field(field, self.power_w())
        if name == "serial":
            return encode_field(field, self.serial_number)
        raise KeyError(name)

    def set_fault(self, kind, count=None, **params):
        """Inject `kind` for the next `count` replies (None: until clear_fault())."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(FAULTS)})")
        if kind == "exception":
            try:
                params["code"] = ExcCodes(int(params.get("code", 4)))
            except ValueError:
                raise ValueError("exception code must be one of "
                                 + ", ".join(str(int(c)) for c in ExcCodes)) from None
        if kind == "slow":
            params["delay_s"] = float(params.get("delay_s", 1.0))
        if kind in _VALUE_FAULTS and all(
                fault_words(self.model[n], kind) is None for n in ("import_wh", "export_wh")):
            raise ValueError(f"{self.model_name} registers cannot hold {kind}")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._fault = (kind, count, params)

    def clear_fault(self):
        with self._lock:
            self._fault = None

    def _take_fault(self, kinds):
        """The active fault if it is one of kinds, consuming one use."""
        with self._lock:
            if self._fault is None or self._fault[0] not in kinds:
                return None
            kind, left, params = self._fault
            if left is not None:
                left -= 1
                self._fault = (kind, left, params) if left > 0 else None
            return kind, params

    # ---- pymodbus hooks (event-loop thread)
    async def _action(self, function_code, start_address, address, count, registers, values):
        if values is not None:
            return ExcCodes.ILLEGAL_FUNCTION          # a meter's energy is read-only
        self.requests += 1
        fault = self._take_fault(("exception", "slow") + _VALUE_FAULTS)
        if fault and fault[0] == "exception":
            return fault[1]["code"]
        if fault and fault[0] == "slow":
            await asyncio.sleep(fault[1]["delay_s"])
        for name in ("import_wh", "export_wh", "power_w", "serial"):
            field = self.model.get(name)
            if not field or field[0] != function_code:
                continue
            words = None
            if fault and fault[0] in _VALUE_FAULTS and name != "serial":
                if name == "power_w" and fault[0] == "negative":
                    words = None
                else:
                    words = fault_words(field, fault[0])
            if words is None:
                words = self.registers(name)
            at = field[1] - start_address
            registers[at:at + len(words)] = words
        return None

    def _trace_packet(self, sending, data):
        if not sending or not data:
            return data
        if data[0] != self.unit:
            return b""                  # no such unit on this bus: silence
        fault = self._take_fault(_PACKET_FAULTS)
        if fault is None:
            return data
        kind = fault[0]
        if kind == "timeout":
            return b""
        if kind == "crc":
            return data[:-1] + bytes([data[-1] ^ 0x5A])
        if kind == "garbage":
            return NOISE + data
        if kind == "noise":
            return NOISE * 3
        if kind == "short":
            return data[:max(1, len(data) // 2)]
        body = bytearray(data[:-2])
        if kind == "wrong_unit":
            body[0] = (body[0] % 247) + 1
        else:                               # wrong_function
            body[1] = 3 if body[1] & 0x7F == 4 else 4
        crc = crc16(body)
        return bytes(body) + bytes([crc & 0xFF, crc >> 8])

    def _device(self):
        hr, ir = [], []
        for fc, addr, count in _blocks(self.model):
            (hr if fc == 3 else ir).append(
                SimData(addr, count=count, values=0, datatype=DataType.REGISTERS))
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        invalid = [SimData(0, datatype=DataType.INVALID)]
        return SimDevice(id=0, simdata=(bits, list(bits), hr or invalid, ir or invalid),
                         action=self._action)

    # ---- lifecycle
    def start(self):
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name=f"meter-{self.model_name}-{self.unit}")
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("meter emulator did not start")
        if self._error:
            self._thread.join(5)
            self._cleanup_link()
            raise self._error
        return self

    def _run(self, ready):
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except Exception as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _serve(self):
        if self.tcp is not None:
            host, port = self.tcp
            self._server = ModbusTcpServer(self._device(), framer=FramerType.RTU,
                                           address=(host, port),
                                           trace_packet=self._trace_packet)
            await self._listen()
            self.port = self._server.transport.sockets[0].getsockname()[1]
            return
        port = self._open_serial_link()
        self._server = ModbusSerialServer(self._device(), framer=FramerType.RTU, port=port,
                                          baudrate=self.baudrate,
                                          trace_packet=self._trace_packet)
        await self._listen()

    async def _listen(self):
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError as exc:         # pymodbus: "Could not start listen ..."
            where = f"{self.tcp[0]}:{self.tcp[1]}" if self.tcp else self.serial_link
            raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {where}: {exc}") from None

    def _open_serial_link(self):
        """Path pymodbus opens: the given tty, or one end of a new pty link.

        If serial_link is an existing tty, pymodbus opens it. Otherwise the link is made
        here and its far end published as a symlink at serial_link. pymodbus opens its port
        by path through pyserial, and a pty master has no path, so the link is two pty
        pairs joined master to master (a null-modem cable): pymodbus/pyserial opens one
        slave, the firmware opens the other (the symlink). Both slaves are in raw mode;
        every RTU byte crosses two real ttys. A symlink into /dev/pts is taken for a link
        left by a killed earlier run and replaced; a symlink to anything else
        (/dev/serial/by-id/...) is followed to the real tty.
        """
        link = Path(self.serial_link)
        if link.is_symlink() and not os.path.realpath(link).startswith("/dev/pts/"):
            link = Path(os.path.realpath(link))   # e.g. /dev/serial/by-id/... -> ttyUSB0
        if link.exists() and not link.is_symlink():
            fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                if not os.isatty(fd):
                    raise OSError(errno.ENOTTY, f"{link} is not a tty")
            finally:
                os.close(fd)
            self.tty_path = str(link)
            return str(link)
        if link.is_symlink():
            link.unlink()                   # a pty link left by an earlier (killed) run
        master_a, slave_a = os.openpty()
        master_b, slave_b = os.openpty()
        self._fds = [master_a, slave_a, master_b, slave_b]
        for fd in (slave_a, slave_b):
            tty.setraw(fd)
        for fd in (master_a, master_b):
            os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()
        loop.add_reader(master_a, self._pump, master_a, master_b)
        loop.add_reader(master_b, self._pump, master_b, master_a)
        self.tty_path = os.ttyname(slave_b)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(self.tty_path, link)
        self._link_made = True
        return os.ttyname(slave_a)

    @staticmethod
    def _pump(src, dst):
        try:
            data = os.read(src, 4096)
        except BlockingIOError:
            return
        except OSError:                     # the other side is gone: stop pumping
            asyncio.get_running_loop().remove_reader(src)
            return
        while data:
            try:
                n = os.write(dst, data)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            data = data[n:]

    async def _shutdown(self):
        loop = asyncio.get_running_loop()
        for fd in self._fds[0::2]:
            loop.remove_reader(fd)
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        await asyncio.sleep(0)

    def _cleanup_link(self):
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        if self._link_made:
            try:
                Path(self.serial_link).unlink()
            except FileNotFoundError:
                pass
            self._link_made = False

    def stop(self):
        if self._thread is None:
            return
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._cleanup_link()

    def __enter__(self):
        return self.start() if self._thread is None else self

    def __exit__(self, *exc):
        self.stop()

    # ---- runtime control from a file (CLI)
    def apply_control(self, doc):
        """Apply a control document: {"fault": kind|null, "count", "code", "delay_s",
        "import_wh", "export_wh"}. TypeError/ValueError for anything else."""
        if not isinstance(doc, dict):
            raise TypeError("control document must be a JSON object")
        unknown = set(doc) - {"fault", "count", "code", "delay_s", "import_wh", "export_wh"}
        if unknown:
            raise ValueError(f"unknown control keys: {', '.join(sorted(unknown))}")
        if "fault" in doc:
            if doc["fault"] is None:
                self.clear_fault()
            else:
                params = {k: doc[k] for k in ("code", "delay_s") if k in doc}
                self.set_fault(doc["fault"], doc.get("count"), **params)
        if "import_wh" in doc or "export_wh" in doc:
            self.set_energy(doc.get("import_wh"), doc.get("export_wh"))


def _parse_fault(value):
    if value is None:
        return None
    kind, _, count = value.partition(":")
    if kind not in FAULTS:
        raise click.BadParameter(f"unknown fault {kind!r} (known: {', '.join(FAULTS)})")
    try:
        return kind, (int(count) if count else None)
    except ValueError:
        raise click.BadParameter("COUNT must be an integer") from None


def _parse_tcp(value):
    host, sep, port = (value or "").rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter("expected HOST:PORT")
    return host or "127.0.0.1", int(port)


@click.command("meter")
@click.option("--model", type=click.Choice(sorted(meters.MODELS)), default="sdm630",
              show_default=True)
@click.option("--serial-link", "serial_link", metavar="PATH",
              help="tty to serve on, or where to publish a new pseudo-terminal (symlink)")
@click.option("--tcp", metavar="HOST:PORT", help="serve RTU frames over TCP")
@click.option("--unit", type=click.IntRange(1, 247), default=1, show_default=True)
@click.option("--import-wh", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--export-wh", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--profile", type=click.Choice(PROFILES), default="flat", show_default=True)
@click.option("--flat-w", type=int, default=1000, show_default=True,
              help="power of the flat profile (negative = export)")
@click.option("--speed", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="simulated seconds per real second (0 freezes the counters)")
@click.option("--serial-number", type=click.IntRange(0, 0xFFFFFFFE), default=12345678,
              show_default=True)
@click.option("--baud", type=int, default=9600, show_default=True)
@click.option("--fault", metavar="KIND[:COUNT]", help=f"start with a fault: {', '.join(FAULTS)}")
@click.option("--control", type=click.Path(dir_okay=False), metavar="FILE",
              help="JSON file re-read on change: {\"fault\": ..., \"import_wh\": ...}")
def command(model, serial_link, tcp, unit, import_wh, export_wh, profile, flat_w, speed,
            serial_number, baud, fault, control):
    """Emulate a Modbus energy meter (SDM630/SDM120/SDM72, ABB B23, Chint DDSU666)."""
    if (serial_link is None) == (tcp is None):
        raise click.UsageError("give exactly one of --serial-link PATH or --tcp HOST:PORT")
    first_fault = _parse_fault(fault)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)   # our errors are one line
    emulator = MeterEmulator(model, serial_link=serial_link,
                             tcp=_parse_tcp(tcp) if tcp else None, unit=unit,
                             import_wh=import_wh, export_wh=export_wh, profile=profile,
                             speed=speed, flat_w=flat_w, serial_number=serial_number,
                             baudrate=baud)
    if first_fault:
        emulator.set_fault(*first_fault)
    try:
        emulator.start()
    except OSError as exc:
        raise click.ClickException(
            f"cannot open the meter link: {exc.strerror or exc}") from None
    where = (f"tcp {emulator.tcp[0]}:{emulator.port}" if tcp
             else f"{emulator.serial_link} -> {emulator.tty_path}")
    click.echo(f"meter {model} unit {unit} on {where}", err=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    seen = None
    try:
        while True:
            time.sleep(0.2)
            if control and os.path.exists(control):
                stamp = os.stat(control).st_mtime_ns
                if stamp != seen:
                    seen = stamp
                    try:
                        with open(control) as f:
                            emulator.apply_control(json.load(f))
                    except (TypeError, ValueError, OSError) as exc:
                        click.echo(f"control file {control}: {exc}", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
