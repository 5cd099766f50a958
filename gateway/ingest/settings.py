"""Config sections of the gateway core: [gateway], [mqtt], [ingest], [intervals], [broker].

Declared here, and imported by the modules that read them (egs-gw run, the MQTT
session, provisioning), so that `gateway.config.load` rejects a misspelt key in any of
them at start. Every key is documented in gateway/gateway.example.toml; keep the two in
step.
"""
from gateway.config import REQUIRED, section

# [gateway] is first declared in gateway/config.py with `community` only; we extend it.
section("gateway", {
    "community": (str, REQUIRED),
    # Plug-in components `egs-gw run` starts when their module is installed.
    "components": (list, ["ledger", "ocpp", "market"]),
    "log_level": (str, "INFO"),
})

section("mqtt", {
    "broker": (str, "127.0.0.1:1883"),
    "user": (str, ""),
    "password_file": (str, ""),
    "updater_password_file": (str, ""),
    "client_id": (str, ""),
    "keepalive": (int, 30),
    "tls": (bool, False),
    "ca_file": (str, ""),
    "reconnect_max_s": (float, 30.0),
}, paths=("password_file", "updater_password_file", "ca_file"))

section("ingest", {
    "batch_size": (int, 500),
    "linger_ms": (int, 50),
    "workers": (int, 0),
    "pool_min_batch": (int, 64),
    "max_record_bytes": (int, 16384),
    "min_time": (int, 1577836800),
    "max_future_s": (int, 300),
    "resend_cooldown_s": (float, 10.0),
    "gap_give_up": (int, 5),
    # What a device in hostile hands can make the gateway keep or accept (docs/security.md).
    "quarantine_keep_bytes": (int, 1024),
    "quarantine_per_device": (int, 100),
    "quarantine_total": (int, 10000),
    "events_per_device": (int, 1000),
    "events_total": (int, 100000),
    "status_interval_s": (float, 10.0),
    "status_burst": (int, 10),
    "max_age_s": (int, 30 * 86400),
    "registration_skew_s": (int, 7200),
    "energy_limit": (bool, True),
    "max_power_w": (int, 100000),
    "energy_tolerance_pct": (int, 10),
    "model_max_power_w": (dict, {}),
    "device_max_power_w": (dict, {}),
})

section("intervals", {
    "estimate_gap_s": (int, 900),
    "long_gap_s": (int, 6 * 3600),
    "grace_s": (int, 120),
    "tick_s": (float, 5.0),
})

section("broker", {
    "dir": (str, "broker"),
    "host": (str, "127.0.0.1"),
    "port": (int, 1883),
    "tls_port": (int, 0),
    "tls_host": (str, "0.0.0.0"),
    "certfile": (str, ""),
    "keyfile": (str, ""),
    "cafile": (str, ""),
    "gateway_user": (str, "egs-gateway"),
}, paths=("dir", "certfile", "keyfile", "cafile"))


def host_port(value, what, default_port=1883):
    """'HOST:PORT' (or 'HOST') -> (host, port) with a clear error naming `what`."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"{what}: expected HOST:PORT, got {value!r}")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{what}: port must be a number, got {value!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"{what}: port out of range in {value!r}")
    return host, number


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def validate(cfg):
    """Check values (types are checked by gateway.config); errors name the key."""
    from gateway.config import ConfigError, require

    try:
        require(cfg, "gateway.community")
        from protocol.topics import check_id
        check_id(cfg["gateway"]["community"], "gateway.community")
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"gateway.community: {e}") from None
    if str(cfg["gateway"]["log_level"]).upper() not in LOG_LEVELS:
        raise ConfigError(f"gateway.log_level: one of {', '.join(LOG_LEVELS)}, "
                          f"got {cfg['gateway']['log_level']!r}")
    for name in cfg["gateway"]["components"]:
        if not isinstance(name, str):
            raise ConfigError(f"gateway.components: names must be strings, got {name!r}")
    try:
        host_port(cfg["mqtt"]["broker"], "mqtt.broker")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    checks = [
        ("mqtt.keepalive", cfg["mqtt"]["keepalive"] >= 5, "at least 5 seconds"),
        ("mqtt.reconnect_max_s", cfg["mqtt"]["reconnect_max_s"] > 0, "positive"),
        ("ingest.batch_size", 1 <= cfg["ingest"]["batch_size"] <= 100000, "between 1 and 100000"),
        ("ingest.linger_ms", 0 <= cfg["ingest"]["linger_ms"] <= 10000, "between 0 and 10000"),
        ("ingest.workers", cfg["ingest"]["workers"] >= -1, "-1 (all cores), 0 (inline) or a count"),
        ("ingest.pool_min_batch", cfg["ingest"]["pool_min_batch"] >= 1, "at least 1"),
        ("ingest.max_record_bytes", cfg["ingest"]["max_record_bytes"] >= 512, "at least 512"),
        ("ingest.max_future_s", cfg["ingest"]["max_future_s"] >= 0, "not negative"),
        ("ingest.resend_cooldown_s", cfg["ingest"]["resend_cooldown_s"] >= 0, "not negative"),
        ("ingest.gap_give_up", cfg["ingest"]["gap_give_up"] >= 0, "0 (never) or a number of requests"),
        ("ingest.quarantine_keep_bytes", cfg["ingest"]["quarantine_keep_bytes"] >= 64, "at least 64"),
        ("ingest.quarantine_per_device", cfg["ingest"]["quarantine_per_device"] >= 1, "at least 1"),
        ("ingest.quarantine_total", cfg["ingest"]["quarantine_total"] >= cfg["ingest"]["quarantine_per_device"],
         "at least ingest.quarantine_per_device"),
        ("ingest.events_per_device", cfg["ingest"]["events_per_device"] >= 10, "at least 10"),
        ("ingest.events_total", cfg["ingest"]["events_total"] >= cfg["ingest"]["events_per_device"],
         "at least ingest.events_per_device"),
        ("ingest.status_interval_s", cfg["ingest"]["status_interval_s"] >= 0, "not negative"),
        ("ingest.status_burst", cfg["ingest"]["status_burst"] >= 1, "at least 1"),
        ("ingest.max_age_s", cfg["ingest"]["max_age_s"] >= 0, "0 (no horizon) or seconds"),
        ("ingest.registration_skew_s", cfg["ingest"]["registration_skew_s"] >= 0, "not negative"),
        ("ingest.max_power_w", cfg["ingest"]["max_power_w"] > 0, "positive"),
        ("ingest.energy_tolerance_pct", 0 <= cfg["ingest"]["energy_tolerance_pct"] <= 1000,
         "between 0 and 1000"),
        ("intervals.estimate_gap_s", cfg["intervals"]["estimate_gap_s"] > 0, "positive"),
        ("intervals.long_gap_s", cfg["intervals"]["long_gap_s"] >= cfg["intervals"]["estimate_gap_s"],
         "at least intervals.estimate_gap_s"),
        ("intervals.grace_s", cfg["intervals"]["grace_s"] >= 0, "not negative"),
        ("intervals.tick_s", cfg["intervals"]["tick_s"] > 0, "positive"),
    ]
    for key, ok, what in checks:
        if not ok:
            section, name = key.split(".")
            raise ConfigError(f"{key}: must be {what}, got {cfg[section][name]!r}")
    for table in ("model_max_power_w", "device_max_power_w"):
        for name, watts in cfg["ingest"][table].items():
            if isinstance(watts, bool) or not isinstance(watts, int) or watts <= 0:
                raise ConfigError(f"ingest.{table}.{name}: a positive number of watts, got {watts!r}")
    if cfg["mqtt"]["password_file"] and not cfg["mqtt"]["user"]:
        raise ConfigError("mqtt.user: required when mqtt.password_file is set")
    return cfg
