"""The [market] config section, and the parsers for prices and energy people type.

Prices are EEA base units per kWh (18 decimals), energy integer Wh. TOML integers
stop at 2**63 − 1 (about 9.2 EEA), so a price may be a string too. Spellings:
  price:  "550000000000000000" (base units), "0.55 EEA" / "0.55eea" (decimal EEA);
  energy: "1500" (Wh), "1.5 kWh" / "1.5kwh", "1500 Wh".
Never a float on the way: decimal text is converted exactly or refused.
"""
from decimal import Decimal, InvalidOperation

from gateway.config import ConfigError, section

EEA_DECIMALS = 18

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

# The largest order or agent threshold, Wh (1 TWh, far beyond any community). The
# store keeps Wh as SQLite integers (at most 2**63 - 1); this refuses the absurd
# with a clear error before it gets there.
MAX_WH = 10**12


class UnitError(ValueError):
    pass


def _decimal(text, what):
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise UnitError(f"not a {what}: {text!r}") from None
    if not d.is_finite():
        raise UnitError(f"not a {what}: {text!r}")
    if d and d.adjusted() > 40:  # far beyond any real amount; never build a giant integer
        raise UnitError(f"{what} too large: {text!r}")
    return d


def parse_price(value):
    """A price in EEA base units per kWh (positive integer)."""
    if isinstance(value, bool):
        raise UnitError(f"not a price: {value!r}")
    if isinstance(value, int):
        units = value
    else:
        text = str(value).strip().replace("_", "").lower()
        if text.endswith("eea"):
            d = _decimal(text[:-3].strip(), "price").scaleb(EEA_DECIMALS)
            if d != d.to_integral_value():
                raise UnitError(f"{value!r} has more than {EEA_DECIMALS} decimals")
            units = int(d)
        elif text.isdigit() and len(text) <= 40:
            units = int(text)
        else:
            raise UnitError(f"not a price: {value!r} (base units per kWh as digits, "
                            "or decimal EEA per kWh like '0.55 EEA')")
    if units <= 0:
        raise UnitError(f"price must be positive, got {value!r}")
    return units


def parse_wh(value):
    """An energy quantity in Wh (positive integer)."""
    if isinstance(value, bool):
        raise UnitError(f"not an energy quantity: {value!r}")
    if isinstance(value, int):
        wh = value
    else:
        text = str(value).strip().replace("_", "").lower()
        if text.endswith("kwh"):
            d = _decimal(text[:-3].strip(), "quantity") * 1000
            if d != d.to_integral_value():
                raise UnitError(f"{value!r} is not a whole number of Wh")
            wh = int(d)
        else:
            if text.endswith("wh"):
                text = text[:-2].strip()
            if not text.isdigit() or len(text) > 40:
                raise UnitError(f"not an energy quantity: {value!r} (Wh, or '1.5 kWh')")
            wh = int(text)
    if wh <= 0:
        raise UnitError(f"quantity must be positive, got {value!r}")
    return wh


def format_price(units):
    """Base units per kWh as decimal EEA, exactly: 550000000000000000 -> '0.55'."""
    if units is None:
        return "-"
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**EEA_DECIMALS)
    frac_text = f"{frac:018d}".rstrip("0")
    return f"{sign}{whole}.{frac_text}" if frac_text else f"{sign}{whole}"


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
            parse_price(m["session_max_price"])
        except UnitError as e:
            raise ConfigError(f"market.session_max_price: {e}") from None
    return m


def market_settings(cfg=None):
    """The validated [market] section; defaults when `cfg` is None."""
    if cfg is None:
        from gateway import config as config_mod
        cfg = config_mod.load(None)
    return validate(cfg)
