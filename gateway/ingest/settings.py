"""Config sections of the gateway core: [gateway], [mqtt], [ingest], [intervals], [broker].

Declared here (imported by gateway/ingest/commands.py and gateway/service.py) so that
`gateway.config.load` rejects a misspelt key in any of them at start. Every key is
documented in gateway/gateway.example.toml; keep the two in step.
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
    "client_id": (str, ""),
    "keepalive": (int, 30),
    "tls": (bool, False),
    "ca_file": (str, ""),
    "reconnect_max_s": (float, 30.0),
})

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
})

section("intervals", {
    "estimate_gap_s": (int, 900),
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
})


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
        ("intervals.estimate_gap_s", cfg["intervals"]["estimate_gap_s"] > 0, "positive"),
        ("intervals.grace_s", cfg["intervals"]["grace_s"] >= 0, "not negative"),
        ("intervals.tick_s", cfg["intervals"]["tick_s"] > 0, "positive"),
    ]
    for key, ok, what in checks:
        if not ok:
            section, name = key.split(".")
            raise ConfigError(f"{key}: must be {what}, got {cfg[section][name]!r}")
    if cfg["mqtt"]["password_file"] and not cfg["mqtt"]["user"]:
        raise ConfigError("mqtt.user: required when mqtt.password_file is set")
    return cfg
