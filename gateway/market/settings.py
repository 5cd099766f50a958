"""The [market] config section.

Prices are EEA base units per kWh (18 decimals), energy integer Wh. TOML integers
stop at 2**63 − 1 (about 9.2 EEA), so a price may be a string too:
"550000000000000000" (base units) or "0.55 EEA" (decimal EEA), read by gateway.units.
"""
from gateway.config import ConfigError, section
from gateway.units import UnitError, parse_price

section("market", {
    # Maximum balance per user, Wh (whitepaper B_max); 0 = no cap. See `market sizing`.
    "bmax_wh": (int, 8000),
    # Trades settle per interval of this many seconds (the gateway's 15 minutes).
    "interval_s": (int, 900),
    # Seconds after an interval ends before its trades settle.
    "settle_delay_s": (int, 0),
    # Trades per settlement intent (the WATT contract takes at most 256).
    "settle_batch": (int, 200),
    # How often the service looks for balance changes and closed intervals.
    "poll_s": (float, 2.0),
    # Highest price a charging session's market buy pays ("" = any price).
    "session_max_price": (str, ""),
    # `egs-gw run`: charging sessions buy their energy at the market (the [ocpp]
    # energy pool buys, the EV reimburses it); off = [ocpp] price_per_kwh.
    "price_sessions": (bool, True),
})

MAX_SETTLE_BATCH = 256


def validate(cfg):
    m = cfg["market"]
    if m["bmax_wh"] < 0:
        raise ConfigError(f"market.bmax_wh: must not be negative, got {m['bmax_wh']}")
    if m["interval_s"] <= 0 or 86400 % m["interval_s"]:
        raise ConfigError(f"market.interval_s: must divide a day, got {m['interval_s']}")
    if m["settle_delay_s"] < 0:
        raise ConfigError("market.settle_delay_s: must not be negative")
    if not 1 <= m["settle_batch"] <= MAX_SETTLE_BATCH:
        raise ConfigError(f"market.settle_batch: between 1 and {MAX_SETTLE_BATCH}, "
                          f"got {m['settle_batch']}")
    if m["poll_s"] <= 0:
        raise ConfigError("market.poll_s: must be positive")
    if m["session_max_price"]:
        try:
            parse_price(m["session_max_price"], bare="eea")
        except UnitError as e:
            raise ConfigError(f"market.session_max_price: {e}") from None
    return m


def market_settings(cfg=None):
    """The validated [market] section; defaults when `cfg` is None."""
    if cfg is None:
        from gateway import config as config_mod
        cfg = config_mod.load(None)
    return validate(cfg)
