"""Config sections of the gateway core: [gateway], [mqtt], [ingest], [intervals], [broker].

Declared here (imported by gateway/commands.py and gateway/service.py) so that
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
    "workers": (int, 0),
    "pool_min_batch": (int, 64),
    "max_record_bytes": (int, 16384),
    "min_time": (int, 1577836800),
    "max_future_s": (int, 300),
    "resend_cooldown_s": (float, 10.0),
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
