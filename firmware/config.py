"""The device configuration: defaults, strict validation, load and save.

One JSON object (firmware/config.example.json documents every key). Validation is strict,
because a typo in a field name on a device in a cellar is otherwise found months later:
unknown keys are errors, except keys starting with "_", which are comments. Every error is
a ConfigError (a ValueError) whose message names the key, so the provisioning console can
answer with it. The same module validates on CPython (sim/device.py checks its options with
it before starting MicroPython).
"""
import json

from firmware import meters
from protocol import topics

BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class ConfigError(ValueError):
    pass


def defaults():
    return {
        "device_id": None,
        "community": None,
        "wifi": {"ssid": "", "password": ""},
        "broker": {"host": "127.0.0.1", "port": 1883, "tls": False, "ca": "", "insecure": False},
        "mqtt": {"username": "", "password": "", "keepalive_s": 60, "backoff_max_s": 30},
        "meter": {"model": "sdm630", "unit": 1, "baud": 9600, "parity": "N", "stopbits": 1,
                  "port": "", "timeout_ms": 500, "retries": 2, "serial": "",
                  "uart": 2, "tx": 17, "rx": 16, "de": 4},
        "interval_s": 60,
        "status_interval_s": 300,
        "ack_timeout_s": 60,
        "ota_trial_s": 900,
        "log": {"max_bytes": 512 * 1024, "segments": 16},
        "watchdog_ms": 30000,
    }


def _num(value, what, lo, hi, integer=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (integer and not isinstance(value, int)):
        raise ConfigError("%s must be %s" % (what, "an integer" if integer else "a number"))
    if not lo <= value <= hi:
        raise ConfigError("%s must be between %s and %s, got %s" % (what, lo, hi, value))
    return value


def _text(value, what, most=128, empty=True):
    if not isinstance(value, str):
        raise ConfigError("%s must be a string" % what)
    if len(value) > most:
        raise ConfigError("%s is longer than %d characters" % (what, most))
    if not empty and not value:
        raise ConfigError("%s must not be empty" % what)
    for ch in value:
        if ord(ch) < 0x20:
            raise ConfigError("%s contains a control character" % what)
    return value


def _bool(value, what):
    if not isinstance(value, bool):
        raise ConfigError("%s must be true or false" % what)
    return value


def merge(base, update, where=""):
    """base updated recursively with update; unknown keys are errors, "_..." are comments."""
    if not isinstance(update, dict):
        raise ConfigError("%s must be a JSON object" % (where.rstrip(".") or "config"))
    for key, value in update.items():
        if not isinstance(key, str):
            raise ConfigError("keys must be strings")
        if key.startswith("_"):
            continue
        name = where + key
        if key not in base:
            raise ConfigError("unknown key %s" % name)
        if isinstance(base[key], dict):
            merge(base[key], value, name + ".")
        else:
            base[key] = value
    return base


def validate(cfg):
    """The checked configuration (defaults filled in); ConfigError names the bad key."""
    c = merge(defaults(), cfg)
    for key in ("device_id", "community"):
        if c[key] is None:
            raise ConfigError("%s is missing" % key)
        try:
            topics.check_id(c[key], key)
        except ValueError as e:
            raise ConfigError(str(e))
    _text(c["wifi"]["ssid"], "wifi.ssid", 32)
    _text(c["wifi"]["password"], "wifi.password", 64)
    b = c["broker"]
    _text(b["host"], "broker.host", 253, empty=False)
    _num(b["port"], "broker.port", 1, 65535)
    _bool(b["tls"], "broker.tls")
    _text(b["ca"], "broker.ca", 256)
    _bool(b["insecure"], "broker.insecure")
    m = c["mqtt"]
    _text(m["username"], "mqtt.username", 128)
    _text(m["password"], "mqtt.password", 128)
    _num(m["keepalive_s"], "mqtt.keepalive_s", 2, 3600)
    _num(m["backoff_max_s"], "mqtt.backoff_max_s", 0.1, 3600, integer=False)
    mt = c["meter"]
    if not isinstance(mt["model"], str) or mt["model"] not in meters.MODELS:
        raise ConfigError("meter.model must be one of %s" % ", ".join(sorted(meters.MODELS)))
    _num(mt["unit"], "meter.unit", 1, 247)
    if mt["baud"] not in BAUDS:
        raise ConfigError("meter.baud must be one of %s" % ", ".join(str(b) for b in BAUDS))
    if mt["parity"] not in ("N", "E", "O"):
        raise ConfigError("meter.parity must be N, E or O")
    if mt["stopbits"] not in (1, 2):
        raise ConfigError("meter.stopbits must be 1 or 2")
    _text(mt["port"], "meter.port", 256)
    _num(mt["timeout_ms"], "meter.timeout_ms", 10, 10000)
    _num(mt["retries"], "meter.retries", 0, 10)
    _text(mt["serial"], "meter.serial", 32)
    for pin in ("uart", "tx", "rx", "de"):
        _num(mt[pin], "meter." + pin, -1, 48)
    _num(c["interval_s"], "interval_s", 0.01, 86400, integer=False)
    _num(c["status_interval_s"], "status_interval_s", 1, 86400, integer=False)
    _num(c["ack_timeout_s"], "ack_timeout_s", 0.5, 86400, integer=False)
    _num(c["ota_trial_s"], "ota_trial_s", 1, 86400, integer=False)
    _num(c["log"]["max_bytes"], "log.max_bytes", 4096, 64 * 1024 * 1024)
    _num(c["log"]["segments"], "log.segments", 2, 256)
    if c["log"]["max_bytes"] // c["log"]["segments"] < 256:
        # the flash log refuses it at boot, which would reboot the device forever
        raise ConfigError("log.max_bytes / log.segments must be at least 256 bytes")
    _num(c["watchdog_ms"], "watchdog_ms", 0, 600000)
    return c


def check_tls(cfg):
    """Refuse a TLS link that would not check who the broker is: without the broker's CA
    any server can present a certificate and read the MQTT password, and forge acks."""
    b = cfg["broker"]
    if b["tls"] and not b["ca"] and not b["insecure"]:
        raise ConfigError("broker.tls needs broker.ca (the broker's CA, sent with the ca "
                          "command) or broker.insecure: true")
    return cfg


def public(cfg):
    """The configuration without secrets, for status replies."""
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            value = public(value)
        elif key == "password" and value:
            value = "***"
        out[key] = value
    return out


def load(path):
    """Validated config from a JSON file; OSError if missing, ConfigError if bad."""
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError("%s is not valid JSON: %s" % (path, e))
    return validate(data)


def save(path, cfg):
    """Write atomically (temp file + rename), so a power cut leaves the old or the new."""
    import os

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(cfg))
    os.rename(tmp, path)
