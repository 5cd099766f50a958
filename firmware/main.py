"""Firmware entry point: pick the HAL, boot, run the main loop, restart on reboot.

On the ESP32 the board's /main.py is two lines: `from firmware import main; main.main()`.
On the unix port (tests, `egs-sim device`): `micropython -m firmware.main --state-dir DIR`.

Without a valid configuration the device stays in provisioning mode: the console answers
and nothing else runs. A reboot (console or `.../cmd`) says goodbye on MQTT, then resets
the machine; an unexpected exception resets it after a pause instead of ending the program
(on the ESP32 the watchdog would, only later). Never a soft restart in-process: a
fragmented heap would stay fragmented. What is needed only at boot or while a console
command is answered is imported then and unloaded afterwards (firmware/heap.py).
"""
import gc
import sys

from firmware.heap import unload
from protocol.console import MAX_LINE


class Device:
    """What the console sees of the device: configuration, key, running application."""

    def __init__(self, cfg, secret, app=None):
        self.cfg = cfg
        self.secret = secret
        self.app = app
        self.reboot_requested = False


class LineReader:
    """Console bytes to lines; an over-long line becomes None (answered with an error).

    The line is gathered in one buffer allocated at start: a hostile or runaway console
    (kilobytes without a newline) must not grow allocations on a 100 KB heap — it did, and
    a MemoryError there rebooted the device.
    """

    def __init__(self):
        self.buf = bytearray(MAX_LINE)
        self.n = 0
        self.discarding = False

    def feed(self, data):
        out = []
        while data:
            i = data.find(b"\n")
            chunk = data if i < 0 else data[:i]
            data = b"" if i < 0 else data[i + 1:]
            if not self.discarding:
                if self.n + len(chunk) > MAX_LINE:
                    self.n = 0
                    self.discarding = True      # answer once, drop the rest of the line
                    out.append(None)
                else:
                    self.buf[self.n:self.n + len(chunk)] = chunk
                    self.n += len(chunk)
            if i >= 0:                          # end of line
                if not self.discarding:
                    line = bytes(self.buf[:self.n]).strip()
                    if line:
                        out.append(line)
                self.n = 0
                self.discarding = False
        return out


class ConsolePort:
    def __init__(self, hal, device):
        self.hal = hal
        self.device = device
        self.reader = LineReader()
        self.eof = False

    def poll(self):
        if self.eof:
            return
        data = self.hal.console_read()
        if data is None:
            self.eof = True
            return
        if not data:
            return
        lines = self.reader.feed(data)
        if lines:
            from firmware.provision import Console

            console = Console(self.hal, self.device)
            for line in lines:
                try:
                    self.hal.console_write_json(console.answer(line))
                except MemoryError:
                    # a console command is not worth a reboot of the meter: answer small
                    gc.collect()
                    self.hal.console_write_json({"ok": False, "error": "out of memory; retry"})
            console = None
            unload()


def boot(hal):
    """The Device after loading configuration and key."""
    from firmware import config

    cfg = None
    try:
        cfg = config.load(hal.config_path)
    except OSError:
        hal.log("no configuration: provisioning mode (send {\"cmd\":\"hello\"})")
    except ValueError as e:
        hal.log("configuration rejected, provisioning mode: %s" % (e,))
    secret = hal.load_key()
    # A configuration but no key: a device set up from a config file by `egs-sim device`.
    if cfg is not None and secret is None:
        from protocol import p256

        hal.entropy_ready()     # the ESP32's RNG is truly random only with the radio on
        secret = p256.generate_secret()
        hal.store_key(secret)
        hal.log("generated a new device key")
    return Device(cfg, secret)


def run_once(hal):
    """Boot and run until a reboot is requested (True) or, on a device without
    configuration, until the console closes (False)."""
    # The code that stays loaded comes first, so it sits together at the bottom of the
    # heap; what boot() loads and unloads again leaves a hole above it, not between.
    from firmware.app import App

    hal.preload()
    device = boot(hal)
    unload()
    console = ConsolePort(hal, device)
    cfg = device.cfg
    if cfg is None:
        while not device.reboot_requested:
            hal.feed_watchdog()
            console.poll()
            if console.eof:
                return False
            hal.sleep_ms(20)
        return True
    hal.start_watchdog(cfg["watchdog_ms"])
    app = App(hal, cfg, device.secret)
    device.app = app
    unload()
    hal.log("device %s up: seq %s, log depth %d, pubkey %s" % (
        cfg["device_id"], app.log.last_seq, app.log.depth(), app.pubkey_hex))
    while True:
        hal.feed_watchdog()
        console.poll()
        if device.reboot_requested or app.reboot_requested:
            app.shutdown("reboot")
            return True
        wait = app.step()
        if wait:
            app.mqtt.wait(wait)


def run(hal):
    """Run until a reboot, then reboot the machine (a fresh heap, as after a power cut):
    machine.reset() on the ESP32; on unix the process exits with REBOOT_EXIT and its
    supervisor (sim/device.py) starts it again."""
    try:
        if run_once(hal) is False:
            return
        hal.log("rebooting")
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - the device must come back, whatever happened
        hal.log_exception(e)
        hal.log("application failed (%r); rebooting in 5 s" % (e,))
        hal.sleep_ms(5000)
    hal.reboot()


def _arg(argv, name, default=None):
    if name in argv:
        i = argv.index(name)
        if i + 1 < len(argv):
            return argv[i + 1]
    return default


def main(argv=None):
    if sys.platform == "esp32":
        from firmware.hal.esp32 import Hal

        run(Hal())
        return
    from firmware.hal.unix import Hal

    argv = sys.argv if argv is None else argv
    offset = _arg(argv, "--time-offset-ms", "0")
    run(Hal(_arg(argv, "--state-dir", ".state/device"), time_offset_ms=int(offset or 0)))


if __name__ == "__main__":
    main()
