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
Errors: {"ok":false,"error":"<reason>"} for a line that is not JSON, not an object, too long
(> 2048 bytes), an unknown command (these four checked by protocol/console.py, which the
gateway's side shares), or an invalid configuration (the reason names the key).
The private key never leaves the device; passwords are never echoed.
"""
from firmware import config
from protocol import console, p256


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
                   "status": self.status, "reboot": self.reboot}[msg["cmd"]]
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
        cfg = config.validate(config.merge(base, update))
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
