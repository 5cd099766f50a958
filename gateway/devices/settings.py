"""Config section [firmware]: what `egs-gw device flash` and `device update` need.

    [firmware]
    release_pubkey = "04ab…"     # hex SEC1 P-256 key (or a file holding it) releases are signed with
    update_host = ""             # address devices reach the gateway's update server on
                                 # (default: the host part of mqtt.broker)
    update_port = 0              # 0: any free port
"""
from gateway.config import section

section("firmware", {
    "release_pubkey": (str, ""),
    "update_host": (str, ""),
    "update_port": (int, 0),
}, maybe_paths=("release_pubkey",))


def release_pubkey(cfg):
    return cfg.get("firmware", {}).get("release_pubkey", "")
