"""Provisioning over the serial console: one JSON object per line in, one JSON reply per line out.

Why a line protocol of JSON objects: an installer's laptop, a HIL test (pyserial) and a
person typing into a terminal can all drive it, one line = one command is robust against
the REPL's echo and boot chatter, and the replies are parseable without a state machine.
Every request gets exactly one reply line starting with "{"; lines the device prints for
people (logs, on the ESP32 where they share the UART) never start with "{".

Requests ("cmd" selects the command):
    {"cmd":"hello"}       -> {"ok":true,"fw":..,"platform":..,"provisioned":..,"device_id":..,
                              "has_key":..}
    {"cmd":"provision","device_id":..,"community":..,"wifi":{"ssid","password"},
     "broker":{"host","port","tls"},"mqtt":{"username","password"},
     "meter":{"model","unit","baud","port"}, ...any other config key}
                          -> {"ok":true,"device_id":..,"pubkey":"04..","key":"generated"|"kept",
                              "reboot_required":true}
        Validated as a whole (firmware/config.py) on top of the current configuration,
        saved atomically. The device key is generated here, on the device, from os.urandom
        (on the ESP32 with the radio up, so its RNG is seeded by RF noise) the first time;
        a re-provisioning keeps it. Takes effect after "reboot".
    {"cmd":"pubkey"}      -> {"ok":true,"pubkey":"04..."}  (65-byte SEC1 point, hex)
    {"cmd":"status"}      -> {"ok":true,"provisioned":..,"connected":..,"config":{..no secrets},
                              ..the MQTT status fields (counters, seq, meter fault)..}
    {"cmd":"reboot"}      -> {"ok":true,"rebooting":true}, then the device restarts
    {"cmd":"ca","size":n,"at":offset,"data":"<base64>"}
                          -> {"ok":true,"received":m} while parts are missing, then
                             {"ok":true,"ca":"<path>","size":n,"sha256":".."}
        The broker's CA certificate (DER, at most MAX_CA bytes) in parts of a line each,
        in order from at=0 (which starts over); the whole is checked as a certificate and
        kept under a name made of its hash, so the CA in use stays until a provision names
        the new path in broker.ca. A provision removes the CA files it does not name.
        Validation: TLS without broker.ca is refused unless broker.insecure is true, and
        broker.ca must be a file on the device.
Errors: {"ok":false,"error":"<reason>"} for a line that is not JSON, not an object, too long
(> 2048 bytes), an unknown command (these four checked by protocol/console.py, which the
gateway's side shares), or an invalid configuration (the reason names the key).
The private key never leaves the device; passwords are never echoed.
"""
from firmware import config
from protocol import console, p256

MAX_CA = 4096                   # bytes of DER: a CA certificate, not a bundle
CA_PREFIX = "ca-"
CA_PART = "ca.part"


def hexlify(data):
    return "".join("%02x" % b for b in data)


class Console:
    """The commands. Loaded only while a line is answered (firmware/main.py), so its code
    does not occupy the device's heap between commands."""

    def __init__(self, hal, device):
        """device: has .cfg (dict or None), .secret (bytes or None), .app (App or None),
        .reboot_requested (set by the reboot command)."""
        self.hal = hal
        self.device = device

    def answer(self, line):
        """The reply (a dict, written as one JSON line by the HAL) to one request line
        (bytes), or to None for a too-long line. The HAL streams it (json.dump): the
        status reply is over a kilobyte, and one contiguous block that size, twice (the
        text and the text with its newline), failed on a fragmented 100 KB heap."""
        return self.handle(line)

    def handle(self, line):
        """The reply (a dict) to one request line (bytes or str; None: too long)."""
        try:
            msg = console.parse_request(line)
        except console.MessageError as e:
            return console.error_reply(str(e))
        handler = {"hello": self.hello, "provision": self.provision, "pubkey": self.pubkey,
                   "status": self.status, "reboot": self.reboot, "ca": self.ca}[msg["cmd"]]
        try:
            return handler(msg)
        except config.ConfigError as e:
            return console.error_reply(str(e))
        except OSError as e:
            return console.error_reply("device error: %s" % (e,))

    def hello(self, msg):
        from firmware.version import FW_VERSION

        d = self.device
        return {"ok": True, "fw": FW_VERSION, "platform": self.hal.name,
                "provisioned": d.cfg is not None,
                "device_id": d.cfg["device_id"] if d.cfg else None,
                "has_key": d.secret is not None}

    def provision(self, msg):
        d = self.device
        update = {}
        for key, value in msg.items():
            if key != "cmd":
                update[key] = value
        base = config.validate(d.cfg) if d.cfg else config.defaults()
        cfg = config.check_tls(config.validate(config.merge(base, update)))
        ca = cfg["broker"]["ca"]
        if ca and not _exists(ca):
            raise config.ConfigError("broker.ca: no file %s on the device (send it with the "
                                     "ca command first)" % ca)
        kept = "kept"
        if d.secret is None:
            if not self.hal.entropy_ready():
                return console.error_reply("random source not ready (radio off)")
            secret = p256.generate_secret()
            self.hal.store_key(secret)
            d.secret = secret
            kept = "generated"
        config.save(self.hal.config_path, cfg)
        d.cfg = cfg
        self._drop_other_cas(ca)
        return {"ok": True, "device_id": cfg["device_id"], "community": cfg["community"],
                "pubkey": hexlify(p256.public_key(d.secret)), "key": kept,
                "reboot_required": True}

    def pubkey(self, msg):
        d = self.device
        if d.secret is None:
            return console.error_reply("no device key yet: provision first")
        return {"ok": True, "pubkey": hexlify(p256.public_key(d.secret))}

    def status(self, msg):
        d = self.device
        out = {}
        out["ok"] = True
        out["provisioned"] = d.cfg is not None
        if d.app is not None:
            out.update(d.app.status())
            out["connected"] = d.app.mqtt.connected
            out["mqtt_error"] = d.app.mqtt.last_error
        else:
            out["state"] = "unprovisioned" if d.cfg is None else "starting"
        if d.cfg is not None:
            out["config"] = config.public(d.cfg)
        return out

    def reboot(self, msg):
        self.device.reboot_requested = True
        return {"ok": True, "rebooting": True}

    # ---------------------------------------------------------------- the broker's CA
    def _ca_dir(self):
        return getattr(self.hal, "state_dir", "")

    def ca(self, msg):
        import binascii
        import os

        size, at, data = msg.get("size"), msg.get("at"), msg.get("data")
        if not _int(size) or not 1 <= size <= MAX_CA:
            return console.error_reply("ca: size must be 1..%d bytes" % MAX_CA)
        if not _int(at) or not isinstance(data, str):
            return console.error_reply('ca: needs "at" (an offset) and "data" (base64)')
        try:
            part = binascii.a2b_base64(data)
        except ValueError:
            return console.error_reply("ca: data is not base64")
        path = self._ca_dir() + "/" + CA_PART
        have = 0 if at == 0 else _size(path)
        if at != have:
            return console.error_reply("ca: expected at=%d, got %d (start again at 0)" % (have, at))
        if not part or at + len(part) > size:
            return console.error_reply("ca: data runs past size %d" % size)
        with open(path, "wb" if at == 0 else "ab") as f:
            f.write(part)
        part = None
        received = _size(path)
        if received < size:
            return {"ok": True, "received": received}
        with open(path, "rb") as f:
            der = f.read()
        try:
            import ssl

            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
        except (ValueError, OSError):
            os.remove(path)
            return console.error_reply("ca: not a DER certificate")
        import hashlib

        digest = "".join("%02x" % b for b in hashlib.sha256(der).digest())
        final = self._ca_dir() + "/" + CA_PREFIX + digest[:16] + ".der"
        os.rename(path, final)
        return {"ok": True, "ca": final, "size": len(der), "sha256": digest}

    def _drop_other_cas(self, keep):
        """CA files no configuration names any more (after a provision that saved)."""
        import os

        d = self._ca_dir()
        for name in os.listdir(d or "/"):
            path = d + "/" + name
            if (name == CA_PART or (name.startswith(CA_PREFIX) and name.endswith(".der"))) \
                    and path != keep:
                try:
                    os.remove(path)
                except OSError:
                    pass


def _int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _size(path):
    import os

    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False
