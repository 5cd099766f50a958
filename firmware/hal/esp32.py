"""HAL for the ESP32 (MicroPython esp32 port): the only firmware module that touches the board.

Same methods as firmware/hal/unix.py. What is where on the device:
- /config.json (the provisioned configuration), /log/ (the flash log, LittleFS);
- the device key and the sequence reservation in NVS (namespace "egs"): NVS is a separate
  flash partition with its own wear levelling and atomic commits, and survives a
  reformatted file system, which is what firmware/sequence.py counts on;
- the meter on UART 2 through an RS-485 transceiver with a direction pin
  (firmware/hal/esp32_uart.py; pins from the config's meter section);
- Wi-Fi station (network.WLAN), time from NTP (ntptime) after every connect and every six
  hours; until the first sync the clock is "unsynchronised" and readings say so (OCMF "U");
- MQTT over TLS (ssl.SSLContext; with broker.ca the server certificate is verified);
- machine.WDT, fed once per main-loop pass; reboot = machine.reset().
- the console is the USB serial REPL: replies with print(), log lines prefixed "# " so they
  never look like a JSON reply.
`machine`, `network`, `esp32` and `ntptime` are imported inside the methods, so the module
compiles, and the rest of the firmware imports, on any port.
"""
import sys
import time

NAME = "esp32"
NVS_NAMESPACE = "egs"
NTP_EVERY_MS = 6 * 3600 * 1000
WIFI_WAIT_MS = 8000
EPOCH_2000 = 946684800      # ports with the 2000 epoch: seconds from 1970 to 2000


class Hal:
    name = NAME

    def __init__(self):
        self.state_dir = ""
        self.config_path = "/config.json"
        self.log_dir = "/log"
        self._wdt = None
        self._wlan = None
        self._synced = False
        self._ntp_at = None
        self._poll = None
        self._epoch_offset = EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0

    # ---------------------------------------------------------------- time
    def time_ms(self):
        return time.time_ns() // 1000000 + self._epoch_offset * 1000

    def time_synced(self):
        return self._synced

    ticks_ms = staticmethod(time.ticks_ms)
    ticks_diff = staticmethod(time.ticks_diff)
    ticks_add = staticmethod(time.ticks_add)
    sleep_ms = staticmethod(time.sleep_ms)

    def _sync_time(self):
        now = time.ticks_ms()
        if self._ntp_at is not None and time.ticks_diff(now, self._ntp_at) < NTP_EVERY_MS:
            return
        self._ntp_at = now
        try:
            import ntptime

            ntptime.settime()
            self._synced = True
        except (OSError, OverflowError) as e:
            self.log("NTP failed: %r" % (e,))

    # ---------------------------------------------------------------- key and counters
    def _nvs(self):
        import esp32

        return esp32.NVS(NVS_NAMESPACE)

    def load_key(self):
        buf = bytearray(32)
        try:
            n = self._nvs().get_blob("key", buf)
        except OSError:               # ESP_ERR_NVS_NOT_FOUND: not provisioned yet
            return None
        if n != 32:
            raise OSError(22, "device key in NVS is damaged")
        return bytes(buf)

    def store_key(self, secret):
        nvs = self._nvs()
        nvs.set_blob("key", secret)
        nvs.commit()

    def entropy_ready(self):
        """The ESP32's RNG is only truly random with the radio on: switch it on."""
        import network

        network.WLAN(network.STA_IF).active(True)
        return True

    def get_counter(self, name):
        try:
            return self._nvs().get_i32(name)
        except OSError:
            return 0

    def set_counter(self, name, value):
        nvs = self._nvs()
        nvs.set_i32(name, value)
        nvs.commit()

    # ---------------------------------------------------------------- meter link
    def preload(self):
        import firmware.hal.esp32_uart  # noqa: F401

    def open_meter(self, meter):
        from firmware.hal.esp32_uart import Esp32Uart

        parity = None if meter["parity"] == "N" else meter["parity"]
        de = meter["de"] if meter["de"] >= 0 else None       # -1: transceiver switches itself
        return Esp32Uart(uart_id=meter["uart"], baudrate=meter["baud"], tx=meter["tx"],
                         rx=meter["rx"], parity=parity, stopbits=meter["stopbits"],
                         de_pin=de)  # pyright: ignore[reportArgumentType] -- None = no DE pin, which Esp32Uart handles; its default 4 makes pyright infer int

    # ---------------------------------------------------------------- network
    def network_up(self, cfg):
        """Wi-Fi connected (waiting up to WIFI_WAIT_MS, watchdog fed); OSError if not."""
        import network

        wlan = self._wlan
        if wlan is None:
            wlan = self._wlan = network.WLAN(network.STA_IF)
        if not wlan.isconnected():
            wlan.active(True)
            wlan.connect(cfg["wifi"]["ssid"], cfg["wifi"]["password"])
            start = time.ticks_ms()
            while not wlan.isconnected():
                if time.ticks_diff(time.ticks_ms(), start) > WIFI_WAIT_MS:
                    raise OSError(118, "Wi-Fi %r not connected" % cfg["wifi"]["ssid"])
                self.feed_watchdog()
                time.sleep_ms(100)
        self._sync_time()
        return True

    def connect_tcp(self, host, port, tls=False, ca="", insecure=False, timeout_ms=5000):
        import socket

        # DNS, TCP, TLS and then the CONNACK wait each block: the watchdog is fed between
        # them so that their sum cannot reach watchdog_ms while each stays within it
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        self.feed_watchdog()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_ms / 1000)
            sock.connect(addr)
            self.feed_watchdog()
            if tls:
                from firmware.hal.tls import wrap

                sock = wrap(sock, host, ca, insecure)
                self.feed_watchdog()
        except Exception:
            sock.close()
            raise
        return sock

    # ---------------------------------------------------------------- console
    def console_read(self):
        """Bytes typed on the USB serial console (never blocks); b"" when none."""
        import select

        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(sys.stdin, select.POLLIN)
        out = b""
        while len(out) < 512 and self._poll.poll(0):
            ch = sys.stdin.read(1)
            if not ch:
                break
            out += ch.encode() if isinstance(ch, str) else ch
        return out

    def console_write_json(self, obj):
        """One JSON line, written piece by piece (no contiguous copy of the whole text)."""
        import json

        json.dump(obj, sys.stdout)
        sys.stdout.write("\n")

    def log(self, message):
        print("# %s" % message)

    def log_exception(self, exc):
        sys.print_exception(exc)

    # ---------------------------------------------------------------- machine
    def start_watchdog(self, timeout_ms):
        if timeout_ms:
            import machine

            self._wdt = machine.WDT(timeout=max(1000, timeout_ms))

    def feed_watchdog(self):
        if self._wdt is not None:
            self._wdt.feed()

    def reboot(self):
        import machine

        machine.reset()
