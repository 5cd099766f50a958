"""HAL for the MicroPython unix port: the firmware on a Linux host, in tests and emulation.

Everything the application needs from the machine, in one place (the ESP32 twin is
firmware/hal/esp32.py, with the same methods):
- state directory: config.json, the device key (device.key, hex, mode 0600), the counters
  that must survive a reboot (counters.json), and the flash log (log/);
- the meter link: a tty path (USB RS-485 adapter, or the emulator's pseudo-terminal) or
  "tcp:HOST:PORT" (RTU over TCP), through firmware/hal/unix_uart.py;
- host time (the host keeps it synchronised), or the demo's simulated clock when the
  environment has EGS_CLOCK="<origin>:<speed>:<real_start>" (gateway/clock.py: every process
  of a demo reads the same accelerated time); a plain TCP socket (TLS via `ssl`) for MQTT;
- the console: stdin/stdout, read without blocking; log lines go to stderr so the console
  carries nothing but the provisioning protocol's JSON replies;
- no watchdog (the process supervisor is one); reboot = exit with REBOOT_EXIT, and the
  supervisor (sim/device.py) starts the process again, like a reset.

The unix port has no os.chmod: the key file is made 0600 with `chmod` through os.system
before the key is written into it, and its mode is checked afterwards.
"""
import json
import os
import select
import sys
import time

NAME = "unix"


# Exit status meaning "start me again" (sim/device.py restarts the process on it).
REBOOT_EXIT = 75


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _sim_clock():
    """(origin_ms, speed, real_start_ms) from EGS_CLOCK, or None (gateway/clock.py)."""
    text = os.getenv("EGS_CLOCK")
    if not text:
        return None
    parts = text.split(":")
    try:
        origin, speed, real = float(parts[0]), float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise ValueError("EGS_CLOCK must be ORIGIN:SPEED:REAL_START, got %r" % text)
    if len(parts) != 3 or speed <= 0:
        raise ValueError("EGS_CLOCK must be ORIGIN:SPEED:REAL_START, got %r" % text)
    return int(origin * 1000), speed, int(real * 1000)


class Hal:
    name = NAME

    def __init__(self, state_dir, console_in=None, console_out=None, time_offset_ms=0):
        """time_offset_ms: added to the host clock (tests put the device's clock just
        before a quarter hour, say, without waiting for one)."""
        self.time_offset_ms = time_offset_ms
        self._clock = _sim_clock()
        self.state_dir = state_dir.rstrip("/") or "."
        try:
            os.mkdir(self.state_dir)
        except OSError:
            pass
        self.config_path = self.state_dir + "/config.json"
        self.key_path = self.state_dir + "/device.key"
        self.counters_path = self.state_dir + "/counters.json"
        self.log_dir = self.state_dir + "/log"
        self._in = console_in if console_in is not None else sys.stdin.buffer
        self._out = console_out if console_out is not None else sys.stdout
        self._poll = select.poll()
        try:
            self._poll.register(self._in, select.POLLIN)
        except (OSError, TypeError, ValueError):
            self._poll = None
        self._counters = None

    # ---------------------------------------------------------------- time
    def time_ms(self):
        """Wall-clock epoch milliseconds (on the simulated clock when EGS_CLOCK is set)."""
        t = time.time_ns() // 1000000
        if self._clock is not None:
            origin_ms, speed, real_ms = self._clock
            t = origin_ms + int((t - real_ms) * speed)
        return t + self.time_offset_ms

    def time_synced(self):
        return True

    ticks_ms = staticmethod(time.ticks_ms)
    ticks_diff = staticmethod(time.ticks_diff)
    ticks_add = staticmethod(time.ticks_add)
    sleep_ms = staticmethod(time.sleep_ms)

    # ---------------------------------------------------------------- key and counters
    def load_key(self):
        """The 32-byte device secret, or None when the device has none yet."""
        try:
            with open(self.key_path) as f:
                text = f.read().strip()
        except OSError:
            return None
        try:
            import binascii

            key = binascii.unhexlify(text)
        except ValueError:
            raise OSError(22, "device.key is damaged")
        if len(key) != 32:
            raise OSError(22, "device.key is damaged")
        return key

    def store_key(self, secret):
        import binascii

        if "'" in self.key_path:
            raise OSError(22, "state directory path contains a quote")
        tmp = self.key_path + ".tmp"
        with open(tmp, "w"):
            pass
        os.system("chmod 600 '%s'" % tmp)
        if os.stat(tmp)[0] & 0o077:
            os.remove(tmp)
            raise OSError(1, "cannot make the key file private (chmod 600 failed)")
        with open(tmp, "w") as f:
            f.write(binascii.hexlify(secret).decode())
        os.rename(tmp, self.key_path)

    def entropy_ready(self):
        """The host's urandom is seeded long before we run."""
        return True

    def _load_counters(self):
        if self._counters is None:
            try:
                with open(self.counters_path) as f:
                    loaded = json.loads(f.read())
            except (OSError, ValueError):   # missing or torn file: start from zero
                loaded = None
            self._counters = loaded if isinstance(loaded, dict) else {}
        return self._counters

    def get_counter(self, name):
        value = self._load_counters().get(name, 0)
        return value if isinstance(value, int) else 0

    def set_counter(self, name, value):
        """Persist before returning (temp file + rename: old or new survives a cut)."""
        counters = dict(self._load_counters())
        counters[name] = value
        tmp = self.counters_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(counters))
        os.rename(tmp, self.counters_path)
        self._counters = counters

    # ---------------------------------------------------------------- meter link
    def preload(self):
        """Import the meter link's code at boot, before the heap fills with data."""
        import firmware.hal.unix_uart  # noqa: F401

    def open_meter(self, meter):
        """A UART (firmware/hal/uart.py interface) for meter["port"]."""
        from firmware.hal.unix_uart import TcpUart, TtyUart

        port = meter["port"]
        if not port:
            raise OSError(19, "meter.port is not set")
        if port.startswith("tcp:"):
            host, _, num = port[4:].rpartition(":")
            try:
                number = int(num)
            except ValueError:
                raise OSError(22, "meter.port must be tcp:HOST:PORT")
            return TcpUart(host or "127.0.0.1", number, baudrate=meter["baud"])
        parity = None if meter["parity"] == "N" else meter["parity"]
        return TtyUart(port, baudrate=meter["baud"], parity=parity,
                       stopbits=meter["stopbits"])

    # ---------------------------------------------------------------- network
    def network_up(self, cfg):
        return True

    def network_info(self):
        return {}

    def connect_tcp(self, host, port, tls=False, ca="", insecure=False, timeout_ms=5000):
        import socket

        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_ms / 1000)
            sock.connect(addr)
            if tls:
                from firmware.hal.tls import wrap

                sock = wrap(sock, host, ca, insecure)
        except Exception:
            sock.close()
            raise
        return sock

    # ---------------------------------------------------------------- console
    def console_read(self):
        """Bytes waiting on the console (never blocks); b"" when none; None at EOF."""
        if self._poll is None:
            return None
        out = b""
        while len(out) < 512:
            ev = self._poll.poll(0)
            if not ev:
                break
            if not ev[0][1] & select.POLLIN:
                self._poll = None
                return out or None
            ch = self._in.read(1)
            if not ch:
                self._poll = None
                return out or None
            out += ch
        return out

    def console_write_json(self, obj):
        """One JSON line, written piece by piece (no contiguous copy of the whole text)."""
        json.dump(obj, self._out)
        self._out.write("\n")
        try:
            self._out.flush()
        except (AttributeError, OSError):
            pass

    def log_exception(self, exc):
        err = sys.stderr
        sys.print_exception(exc, err)  # pyright: ignore[reportArgumentType] -- unix stub types stderr as CPython's TextIO; it is a stream here

    def log(self, message):
        sys.stderr.write("%d %s\n" % (self.time_ms() // 1000, message))

    # ---------------------------------------------------------------- machine
    def feed_watchdog(self):
        pass

    def start_watchdog(self, timeout_ms):
        pass

    def reboot(self):
        """The unix stand-in for machine.reset(): exit, the supervisor starts us again."""
        sys.exit(REBOOT_EXIT)
