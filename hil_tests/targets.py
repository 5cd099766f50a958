"""The target layer of the hardware-in-the-loop suite: the same handles on the emulator and
on a bench with a real ESP32, so the tests never ask which one they have.

`Bench` holds them: .device (the real firmware under the MicroPython unix port on a
pseudo-terminal, or the board on --port), .meter (MeterEmulator, or a real meter on the
bus, without control), .stack (broker, gateway and ledger built by sim/stack.py as for the
demo, the same on both targets) and .charger (the emulator of sim/charger.py, or a real
charger with --charger-id). What each is on each target, and how a 15-minute interval is
made to close (CROSSING_S on the emulator, the next real quarter hour on a board):
docs/hil.md.

Every process is started in its own process group through sim.services, put on the
stack's stop list, and stopped by Bench.stop() (and at interpreter exit), whatever a test
did.
"""
import asyncio
import contextlib
import json
import os
import threading
import time
import tty
from pathlib import Path

import pytest

from sim.services import wait_for
from sim.stack import QUARTER_S, Stack, address

COMMUNITY = "hil"
CROSSING_S = 45          # sim: seconds from the device's power-up to its next quarter hour
READING_INTERVAL_S = 1   # firmware interval_s during the suite
PASSWORD = "hil bench ledger password"
PRICE_PER_KWH = "0.3 EEA"    # community price of energy (configured; no market on the bench)
FEE_PER_KWH = "0.05 EEA"     # the station owner's service fee

POOL = address(COMMUNITY, "energy-pool")   # the device's account and the OCPP energy pool
OWNER = address(COMMUNITY, "station-owner")
EV_ACCOUNT = address(COMMUNITY, "ev-driver")


# ---------------------------------------------------------------- serial console

class SerialConsole:
    """The device's provisioning console (firmware/provision.py) over pyserial: one JSON
    request per line, one JSON reply per line; lines that do not start with "{" (boot
    chatter and logs on the ESP32's shared UART) are skipped."""

    def __init__(self, path, baud=115200, timeout=15.0):
        import serial

        self.timeout = timeout
        self.port = serial.Serial()
        self.port.port = path
        self.port.baudrate = baud
        self.port.timeout = 0.1
        # Deasserted before open: on an ESP32 board's auto-reset circuit DTR/RTS are
        # IO0/EN, and opening the port must not reset the board.
        self.port.dtr = False
        self.port.rts = False
        self.port.open()
        self.port.reset_input_buffer()
        self.buf = b""
        self.transcript = []

    def ask(self, request, timeout=None):
        """Send one request (a dict, or a raw line) and return the decoded JSON reply."""
        line = request if isinstance(request, (bytes, str)) else json.dumps(request)
        if isinstance(line, str):
            line = line.encode()
        self.port.reset_input_buffer()
        self.buf = b""
        self.port.write(line + b"\n")
        self.port.flush()
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            chunk = self.port.read(self.port.in_waiting or 1)
            self.buf += chunk
            while b"\n" in self.buf:
                reply, self.buf = self.buf.split(b"\n", 1)
                reply = reply.strip()
                self.transcript.append(reply)
                if reply.startswith(b"{"):
                    return json.loads(reply)
        raise TimeoutError(f"no console reply to {line[:60]!r} within {timeout or self.timeout} s")

    def drain(self, quiet_s=0.5, most_s=5.0):
        """Read and drop whatever arrives until the line has been quiet for quiet_s."""
        end = time.monotonic() + most_s
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < quiet_s:
            if self.port.read(self.port.in_waiting or 1):
                last = time.monotonic()
        self.buf = b""

    def close(self):
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- devices

class _Device:
    """What both kinds of device offer the tests."""

    kind = ""
    platform = ""
    console_path = None
    clock_offset_s = 0         # device clock = host clock - clock_offset_s

    @contextlib.contextmanager
    def console(self, timeout=15.0):
        con = SerialConsole(self.console_path, timeout=timeout)
        try:
            yield con
        finally:
            con.close()

    def ask(self, request, timeout=15.0):
        """One console request on a freshly opened port (closed again afterwards, so
        `egs-gw device provision` can open the port too)."""
        with self.console(timeout) as con:
            return con.ask(request)

    def status(self):
        return self.ask({"cmd": "status"})

    def wait_console(self, timeout=30.0):
        """Until the (re)booted device answers `hello` on its console. One session, asking
        again every 2 s; afterwards late answers to the repeated hellos are drained, so
        they cannot be taken for the reply to the next request."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.console() as con:
                    while time.monotonic() < deadline:
                        try:
                            reply = con.ask({"cmd": "hello"}, timeout=2.0)
                        except TimeoutError:
                            continue
                        if reply.get("ok"):
                            con.drain()
                            return reply
            except OSError:            # a USB console may vanish while the board resets
                time.sleep(0.5)
            if time.monotonic() > deadline:
                raise AssertionError(f"the device's console did not answer within {timeout:.0f} s;"
                                     f" device log:\n{self.log_tail()}")

    def now(self):
        """The device's clock (epoch seconds)."""
        return time.time() - self.clock_offset_s


class SimDevice(_Device):
    """The real firmware under `micropython` (sim/device.py DeviceProcess), unprovisioned,
    with its console on a pseudo-terminal. The slave end stays open here for the whole
    run, as a USB serial chip stays on the bus, so the firmware never sees its console
    hang up; pyserial opens it by path like /dev/ttyUSB0."""

    kind = "sim"
    platform = "unix"          # what the firmware's `hello` reports (its HAL)

    def __init__(self, workdir, crossing_at):
        from sim.device import DeviceProcess

        self.workdir = Path(workdir)
        self.state_dir = self.workdir / "device"
        master, slave = os.openpty()
        tty.setraw(slave)              # no echo of the firmware's replies back into it
        self._fds = [master, slave]
        self.console_path = os.ttyname(slave)
        # the device's clock: its next quarter hour falls at crossing_at (host time)
        boundary = int(crossing_at) // QUARTER_S * QUARTER_S
        offset = crossing_at - boundary
        if offset < 10:
            offset += QUARTER_S
        self.clock_offset_s = offset
        self.proc = DeviceProcess(self.state_dir, console_fd=master,
                                  time_offset_ms=-int(offset * 1000))

    def start(self):
        self.proc.start()
        return self

    def power_cycle(self, off_s=0.0):
        """A power cut: SIGKILL (whatever the firmware was doing), then power up again."""
        self.proc.kill()
        time.sleep(off_s)
        self.proc.start()

    def log_tail(self, n=3000):
        return self.proc.log_text()[-n:]

    def stop(self):
        try:
            self.proc.stop()
        finally:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds = []


class Esp32Device(_Device):
    """An ESP32 running the firmware, its console on a USB serial adapter."""

    kind = "esp32"
    platform = "esp32"

    def __init__(self, port):
        self.console_path = port

    def start(self):
        return self

    def power_cycle(self, off_s=0.0):
        """Reset through the adapter: RTS pulls EN low (IO0 stays high through DTR, so the
        chip boots the firmware, not the ROM loader), as esptool's hard reset does. The
        ROM's boot banner ("rst:0x1 ...") on the console proves the reset happened."""
        import serial

        s = serial.Serial()
        s.port = self.console_path
        s.baudrate = 115200
        s.timeout = 0.1
        s.dtr = False
        s.rts = False
        s.open()
        try:
            s.reset_input_buffer()
            s.dtr = False
            s.rts = True
            time.sleep(max(0.1, off_s))
            s.rts = False
            seen = b""
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and b"rst:" not in seen:
                seen += s.read(256)
        finally:
            s.close()
        if b"rst:" not in seen:
            raise AssertionError(f"no boot banner on {self.console_path} after pulling RTS: the "
                                 "adapter's RTS does not reach EN (native-USB board?)")

    def log_tail(self, n=3000):
        return "(the ESP32 logs to its console UART)"

    def stop(self):
        pass


# ---------------------------------------------------------------- meters

class EmulatedMeter:
    """MeterEmulator: on a pty link to the emulated device, or on a USB RS-485 adapter
    wired to the ESP32's bus. It exports at a steady rate (a PV system in full sun), so the
    ledger has WATT to mint."""

    emulated = True
    MODEL = "sdm630"
    SERIAL = 20240815
    EXPORT_W = -36_000       # flat profile: negative = export
    SPEED = 10               # simulated seconds per real second: 100 Wh of export per second

    def __init__(self, serial_link):
        from sim.meter import MeterEmulator

        self.emulator = MeterEmulator(self.MODEL, serial_link=serial_link, profile="flat",
                                      flat_w=self.EXPORT_W, speed=self.SPEED,
                                      import_wh=2_345_678, export_wh=1_000_000,
                                      serial_number=self.SERIAL)
        self.serial = str(self.SERIAL)

    @property
    def link(self):
        """The tty the emulated device opens (the pty link's far end)."""
        return self.emulator.tty_path

    def start(self):
        self.emulator.start()
        return self

    def stop(self):
        self.emulator.stop()

    def require_control(self, why):
        return self

    def serial_matches(self, serial):
        """Whether `serial` is this meter's serial number (the emulator's is known)."""
        return str(serial) == self.serial

    def disconnect(self):
        """The meter falls silent on the bus, as with its A/B pair unplugged."""
        self.emulator.set_fault("timeout")

    def reconnect(self):
        self.emulator.clear_fault()

    def energy_wh(self):
        return self.emulator.energy_wh()


class RealMeter:
    """A meter on the ESP32's RS-485 bus that the suite cannot control."""

    emulated = False
    link = None
    serial = None

    def start(self):
        return self

    def stop(self):
        pass

    def serial_matches(self, serial):
        """A real meter's serial is not known to the suite: any non-empty one is its."""
        return bool(serial)

    def require_control(self, why):
        pytest.skip(f"{why}: a real meter is not under the suite's control "
                    "(give --meter-port with a USB RS-485 adapter driven by the emulator)")


# ---------------------------------------------------------------- chargers

class SimCharger:
    """sim/charger.py's SimChargePoint on its own event loop thread, with blocking helpers."""

    external = False

    def __init__(self, url, charger_id, password):
        self.url, self.id, self.password = url, charger_id, password
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name=f"charger-{charger_id}")
        self.cp = None

    def run(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self):
        from sim.charger import SimChargePoint

        self.thread.start()

        async def go():
            self.cp = SimChargePoint(self.url, self.id, password=self.password, connectors=1,
                                     register_wh=4_000_000, backoff=(0.2, 2.0))
            await self.cp.start()
            await self.cp.wait_connected(30)
        self.run(go())
        return self

    def require_control(self, why):
        return self

    def charge(self, id_tag, wh):
        """One session: plug in, authorize and start, deliver `wh`, stop; the transactionId."""
        from sim.charger import EV

        async def go():
            cp = self.cp
            tx = await cp.start_transaction(1, id_tag, ev=EV(60, 11, 0.2, id_tag=id_tag))
            if tx is None:
                raise AssertionError(f"the central system did not authorize {id_tag}")
            await asyncio.wait_for(tx.started, 20)
            if tx.id_tag_status != "Accepted":
                raise AssertionError(f"StartTransaction answered {tx.id_tag_status}")
            await cp.deliver(1, wh)
            done = await cp.stop_transaction(1)
            await asyncio.wait_for(done.done, 20)
            return tx.id
        return self.run(go())

    def stop(self):
        if self.cp is not None and self.loop.is_running():
            with contextlib.suppress(Exception):
                self.run(self.cp.close(), timeout=10)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


class ExternalCharger:
    """A real charger configured with the central system's URL and this chargeBoxId."""

    external = True

    def __init__(self, charger_id):
        self.id = charger_id

    def start(self):
        return self

    def require_control(self, why):
        pytest.skip(f"{why}: the real charger {self.id} needs a car plugged in and a card "
                    "presented; run without --charger-id to use the charge point emulator")

    def stop(self):
        pass


# ---------------------------------------------------------------- the bench

class Bench:
    """Everything the suite runs against, started once per session: the stack (sim/stack.py)
    and the target's device, meter and charger around it.

    bench.stack: .broker, a real mosquitto configured by `egs-gw broker config` (per-device
    credentials and ACL), stop()/start() for outages; .gateway, `egs-gw run` as a
    subprocess with a generated config (ingest, intervals, ledger on Anvil, the OCPP central
    system on --ocpp); .anvil with the WATT/EEA contracts deployed by `egs-gw ledger deploy`;
    .chain() reads them, .deposit() prepays EEA on chain; .gw(…) runs `egs-gw` on the
    bench's config.
    """

    def __init__(self, opts, workdir):
        self.opts = opts
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.target = opts["target"]
        self.device_id = opts["device_id"] or ("hil-sim-1" if self.target == "sim" else "hil-esp32")
        self.stack = Stack(self.workdir, COMMUNITY, PASSWORD, broker=opts["broker"],
                           ocpp=opts.get("ocpp"))
        self.started = time.time()
        self._conn = None
        self.provisioned = None
        self.device = self.meter = self.charger = None
        self.charger_id = opts["charger_id"] or "HIL-CP1"
        self.charger_password = opts.get("charger_password") or "hil-charger-pw-1"
        self.id_tag = "HIL-EV-1"
        self.meter_model = opts.get("meter_model") or EmulatedMeter.MODEL
        self.reading_interval = opts.get("reading_interval") or READING_INTERVAL_S

    # -- life cycle ----------------------------------------------------------------
    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        # each piece is put on the stop list before it starts, so a half-started one is
        # stopped too
        stack = self.stack
        stack.start_anvil()
        # The emulated meter runs its energy SPEED times faster than the device's clock, so
        # the gateway's energy limit must allow that much power (a real meter needs nothing).
        emulated = self.target == "sim" or self.opts["meter_port"]
        fast = abs(EmulatedMeter.EXPORT_W) * EmulatedMeter.SPEED * 2
        stack.write_config(["ledger", "ocpp"],
                           ingest={"device_max_power_w": {self.device_id: fast}} if emulated else {},
                           intervals={"tick_s": 0.5, "grace_s": 0},
                           ledger={"grace_s": 5, "tick_s": 0.3},
                           ocpp={"price_per_kwh": PRICE_PER_KWH, "command_poll_s": 0.2})
        stack.create_ledger_key(cheap_kdf=True)
        stack.deploy()
        stack.start_broker()
        stack.start_gateway()
        self.meter = self._make_meter()
        stack.on_stop("meter", self.meter.stop)
        self.meter.start()
        self.device = self._make_device()
        stack.on_stop("device", self.device.stop)
        self.device.start()
        self.device.wait_console(60)
        self.provisioned = self._provision()
        self._register_charging()
        self.charger = self._make_charger()
        stack.on_stop("charger", self.charger.stop)
        self.charger.start()

    def stop(self):
        errors = self.stack.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if errors:
            raise RuntimeError("bench stopped with errors: " + "; ".join(errors))

    # -- pieces ----------------------------------------------------------------------
    def _make_meter(self):
        if self.target == "sim":
            return EmulatedMeter(self.workdir / "meter-link")
        if self.opts["meter_port"]:
            return EmulatedMeter(self.opts["meter_port"])
        return RealMeter()

    def _make_device(self):
        if self.target == "sim":
            return SimDevice(self.workdir, time.time() + CROSSING_S)
        return Esp32Device(self.opts["port"])

    def _make_charger(self):
        if self.opts["charger_id"]:
            return ExternalCharger(self.opts["charger_id"])
        return SimCharger(self.stack.ocpp_url, self.charger_id, self.charger_password)

    def _register_charging(self):
        """The charger (Basic auth password, station owner, service fee) and the EV
        driver's idTag with the account it pays from, as an operator registers them."""
        self.stack.gw("charger", "add", "--id", self.charger_id, "--password",
                      self.charger_password, "--owner", OWNER, "--fee", FEE_PER_KWH)
        self.stack.gw("account", "add", "--id-tag", self.id_tag, "--address", EV_ACCOUNT)

    def device_broker(self):
        """The broker address the device is given (on a bench: this machine's LAN address)."""
        return f"{self.stack.broker_host}:{self.stack.broker_port}"

    def provision_args(self):
        """`egs-gw device provision` for the bench's device, as an installer runs it."""
        args = ["device", "provision", "--port", self.device.console_path, "--id", self.device_id,
                "--community", COMMUNITY, "--broker", self.device_broker(),
                "--broker-dir", self.stack.broker_dir, "--meter-model", self.meter_model,
                "--interval", self.reading_interval, "--account", POOL, "--timeout", 60]
        if self.device.kind == "sim":          # the unix port opens the meter by path
            args += ["--meter-link", self.meter.link]
        if self.opts["wifi_ssid"]:
            args += ["--wifi-ssid", self.opts["wifi_ssid"],
                     "--wifi-password", self.opts["wifi_password"] or ""]
        return args

    def _provision(self):
        """`egs-gw device provision` over the device's serial console, then the bench's
        own timing (reconnect backoff, ack timeout) set over the same console; later
        provisioning keeps these (the device merges a provision onto its configuration)."""
        hello = self.device.ask({"cmd": "hello"})
        key_before = self.device.ask({"cmd": "pubkey"})
        if hello.get("has_key") and self._device_has_history():
            self._preregister()
        label = self.stack.gw(*self.provision_args())
        reply = self.device.ask({"cmd": "provision", "ack_timeout_s": 5, "status_interval_s": 5,
                                 "mqtt": {"backoff_max_s": 1, "keepalive_s": 10}})
        assert reply.get("ok"), reply
        self.device.ask({"cmd": "reboot"})
        self.device.wait_console(60)
        self.wait_stored(3, what="the first readings after provisioning")
        return {"hello": hello, "pubkey_before": key_before, "label": label}

    def _device_has_history(self):
        st = self.device.status()
        self._history = st
        return bool(st.get("seq"))

    def _preregister(self):
        """A board that signed readings in an earlier run starts above 1: registered from
        the first number an earlier gateway did not acknowledge (the board deleted those
        below it, and still holds and will replay the rest)."""
        st = self._history
        serial = st.get("meter_serial") or self.meter.serial
        pub = self.device.ask({"cmd": "pubkey"})["pubkey"]
        if serial:
            self.stack.gw("device", "add", "--id", self.device_id, "--pubkey", pub,
                          "--meter-serial", serial, "--account", POOL,
                          "--first-seq", int(st.get("acked") or 0) + 1)

    # -- the store ---------------------------------------------------------------------
    def conn(self):
        if self._conn is None:
            from gateway import db

            self._conn = db.connect(self.stack.db_path)
        return self._conn

    def query(self, sql, *args):
        return self.conn().execute(sql, args).fetchall()

    def stored_seqs(self):
        return [r[0] for r in self.query(
            "SELECT seq FROM readings WHERE device_id=? ORDER BY seq", self.device_id)]

    def first_seq(self):
        row = self.query("SELECT first_seq FROM devices WHERE id=?", self.device_id)
        return row[0][0] if row else 1

    def contiguous_top(self):
        """Highest n such that first_seq..n are all stored."""
        seqs = self.stored_seqs()
        top = self.first_seq() - 1
        for s in seqs:
            if s == top + 1:
                top = s
            elif s > top + 1:
                break
        return top

    def wait_stored(self, upto, timeout=60, what=None):
        """Until every sequence from the device's first up to `upto` is stored."""
        wait_for(lambda: self.contiguous_top() >= upto, timeout,
                 what or f"readings up to {upto} stored without a gap")
        return self.contiguous_top()

    def quarantine(self, reasons=None):
        rows = self.query("SELECT reason, detail, raw, seq, device_id FROM quarantine ORDER BY id")
        return [dict(r) for r in rows if reasons is None or r["reason"] in reasons]

    def settlement_wait_s(self):
        """Upper bound for the device's next quarter hour to be signed and settled."""
        device_now = self.device.now()
        to_boundary = QUARTER_S - device_now % QUARTER_S
        return to_boundary + 90

    def outbox_idle(self):
        return not self.query("SELECT 1 FROM ledger_outbox WHERE state IN ('queued', 'signed')")

    def book(self, account, asset):
        from gateway import accounts

        return accounts.balance(self.conn(), account, asset)

    def log_tails(self):
        """Logs worth reading when a test fails."""
        out = self.stack.log_tails()
        if self.device is not None:
            out.append("--- device\n" + self.device.log_tail())
        return "\n".join(out)
