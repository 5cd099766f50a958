"""The `[ocpp]` config section and the few parsers its values need.

Amounts are EEA base units (18 decimals) inside. In the config a bare number is EEA
(`price_per_kwh = "0.3"`, `= 1` or `"0.3 EEA"`); base units need the suffix 'base'
(`"300000000000000000 base"`), read by gateway.units.
Energy is always integer Wh.
"""
from gateway import config as config_mod
from gateway.config import REQUIRED, ConfigError
from gateway.units import parse_eea, parse_price


class _AmountMeta(type):
    """isinstance(value, Amount) holds for the spellings of a price or an amount."""

    def __instancecheck__(cls, value):
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return value >= 0
        if isinstance(value, str):
            try:
                parse_price(value, bare="eea", minimum=0)
            except ValueError:
                return False
            return True
        return False


class Amount(metaclass=_AmountMeta):
    """Config field type: a non-negative EEA amount (int base units or a string)."""


def parse_listen(text, default_port=9000):
    """'HOST:PORT', '[v6]:PORT' or 'HOST' (port 9000) → (host, port)."""
    text = str(text).strip()
    if text and ":" not in text:
        return text, default_port
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"ocpp.listen: expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


config_mod.section("ocpp", {
    # `egs-gw run` serves OCPP when started with --ocpp HOST:PORT, or when this is true
    "enabled": (bool, False),
    # where the central system listens; `egs-gw run --ocpp HOST:PORT` overrides it
    "listen": (str, "127.0.0.1:9000"),
    # security profile 2: both set → wss:// (TLS + Basic auth); both empty → profile 1 (ws://)
    "tls_cert": (str, ""),
    "tls_key": (str, ""),
    # unknown charge points: refused (HTTP 404) or accepted as Pending until registered
    "allow_unknown_pending": (bool, False),
    # community price of energy, EEA base units per kWh (when no market prices the session)
    "price_per_kwh": (Amount, REQUIRED),
    # an idTag is Accepted only when its account's prepaid EEA balance covers this
    "min_deposit_eea": (Amount, "1 EEA"),
    # `egs-gw account credit` (book-only goodwill, no tokens on chain): the most one account
    # and all accounts together may have outstanding (credits minus reversals)
    "goodwill_max_per_account": (Amount, "500 EEA"),
    "goodwill_max_total": (Amount, "5000 EEA"),
    # account that receives the energy payment and whose WATT is burned for the energy delivered
    "energy_pool": (str, REQUIRED),
    # vendor suffixes stripped from idTags before lookup, e.g. ["-EMAID", ":0"]
    "id_tag_suffixes": (list, []),
    "heartbeat_interval": (int, 300),
    # seconds a CS → charger call waits for its answer
    "call_timeout": (int, 30),
    # a StartTransaction stamped this many seconds in the past was queued offline
    "offline_after_s": (int, 120),
    # sanity limits: above them a session is held for review instead of billed
    "max_session_wh": (int, 250_000),
    # a charger's rated power when it has none of its own (`egs-gw charger add --max-power-w`)
    "max_power_w": (int, 400_000),
    # a live StartTransaction bills only an idTag Accepted for that charger (Authorize or
    # RemoteStart) at most this many seconds before
    "authorize_window_s": (int, 600),
    # meter values stored per charger per minute; more are answered but not stored
    "meter_values_per_min": (int, 600),
    # thousands of connections make Python's garbage collector stall the event loop; every
    # gc_freeze_s live objects are frozen out of it (reference counting still frees them),
    # every gc_full_s everything is collected once (0 turns this off; see server.py)
    "gc_freeze_s": (float, 1.0),
    "gc_full_s": (float, 6 * 3600.0),
    # how often the service looks for CLI commands (ocpp_commands table)
    "command_poll_s": (float, 0.2),
}, paths=("tls_cert", "tls_key"))


class Settings:
    """The validated [ocpp] section as attributes (amounts as int base units)."""

    def __init__(self, section, need_settlement=True):
        self.listen = parse_listen(section["listen"])
        self.tls_cert = section["tls_cert"]
        self.tls_key = section["tls_key"]
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("ocpp.tls_cert and ocpp.tls_key: set both (profile 2) or neither")
        self.allow_unknown_pending = section["allow_unknown_pending"]
        self.price_per_kwh = self._amount(section, "price_per_kwh", need_settlement, parse_price)
        self.min_deposit_eea = self._amount(section, "min_deposit_eea", True, parse_eea)
        self.goodwill_max_per_account = self._amount(section, "goodwill_max_per_account", True, parse_eea)
        self.goodwill_max_total = self._amount(section, "goodwill_max_total", True, parse_eea)
        pool = section["energy_pool"]
        if pool is REQUIRED:
            if need_settlement:
                raise ConfigError("ocpp.energy_pool: required (the account paid for energy)")
            pool = None
        else:
            from gateway.accounts import BalanceError, normalize_address
            try:
                pool = normalize_address(pool)
            except BalanceError as e:
                raise ConfigError(f"ocpp.energy_pool: {e}") from None
        self.energy_pool = pool
        suffixes = section["id_tag_suffixes"]
        if not all(isinstance(s, str) and s for s in suffixes):
            raise ConfigError("ocpp.id_tag_suffixes: a list of non-empty strings")
        # longest first so "-EMAID-1" wins over "-1"
        self.id_tag_suffixes = sorted(suffixes, key=len, reverse=True)
        for key in ("heartbeat_interval", "call_timeout", "offline_after_s",
                    "max_session_wh", "max_power_w", "authorize_window_s",
                    "meter_values_per_min"):
            value = section[key]
            if value <= 0:
                raise ConfigError(f"ocpp.{key}: must be positive, got {value}")
            setattr(self, key, value)
        self.command_poll_s = max(0.02, section["command_poll_s"])
        self.gc_freeze_s = max(0.0, section["gc_freeze_s"])
        self.gc_full_s = max(self.gc_freeze_s, section["gc_full_s"])

    @staticmethod
    def _amount(section, key, required, parse):
        value = section[key]
        if value is REQUIRED:
            if required:
                raise ConfigError(f"ocpp.{key}: required (EEA per kWh, e.g. \"0.3\")")
            return None
        try:
            return parse(str(value), bare="eea", minimum=0)   # a bare number is EEA
        except ValueError as e:
            raise ConfigError(f"ocpp.{key}: {e}") from None

    @property
    def tls(self):
        return bool(self.tls_cert)

    def ssl_context(self):
        if not self.tls:
            return None
        import ssl
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"ocpp.tls_cert/tls_key: cannot load: {e}") from None
        return ctx
