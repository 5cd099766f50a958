"""The [ledger] config section and the resolved settings the ledger code uses.

Every key is declared here so a typo in the config file is an error at start.
Contract addresses come from the deployment file `egs-gw ledger deploy` writes,
unless given explicitly (`watt`, `eea`), e.g. for a chain deployed elsewhere.
The keystore password is never a config value: it is read from `password_file`
or from the environment variable named by `password_env`.
"""
import json
from pathlib import Path

from gateway.config import REQUIRED, ConfigError, require, section

section("ledger", {
    "rpc_url": (str, "http://127.0.0.1:8545"),
    "chain_id": (int, 31337),
    "rpc_timeout_s": (float, 10.0),
    "keystore": (str, "ledger-key.json"),
    "password_file": (str, ""),
    "password_env": (str, "EGS_LEDGER_PASSWORD"),
    "deployment": (str, "ledger-deployment.json"),
    "watt": (str, ""),
    "eea": (str, ""),
    # How many blocks on top of the one holding a settlement before it counts.
    "confirmations": (int, 1),
    # An interval is settled this many seconds after it ends (late readings).
    "grace_s": (int, 120),
    "tick_s": (float, 2.0),
    # Accounts per settlement transaction (the contract takes at most 512).
    "batch_accounts": (int, 400),
    # Signed transactions broadcast ahead of the oldest unconfirmed one.
    "max_in_flight": (int, 8),
    "max_tx_gas": (int, 16_000_000),
    "max_fee_gwei": (float, 500.0),
    "reprice_after_s": (float, 300.0),
    # Storage commission, in EEA base units per kWh stored, per 15-minute interval.
    "commission_rate": (int, 0),
    # Most energy (Wh, export or import) one account may settle in one interval; an
    # account beyond it is held for review (security event "settlement_held").
    "max_interval_wh": (int, 10**12),
    "education_pool": (str, ""),
    "network_pool": (str, ""),
    # Deployment only: the five EEA holders of the whitepaper distribution.
    "distribution": (dict, {}),
}, paths=("keystore", "password_file", "deployment"))

DISTRIBUTION_KEYS = ("open_issue", "company", "foundation", "founding_team", "contribution")
MAX_BATCH = 512
# Settled sums of many intervals stay far inside SQLite's 64-bit integers.
MAX_INTERVAL_WH = 10**15


class LedgerConfigError(ConfigError):
    pass


class Settings:
    """[ledger] plus the community, with addresses resolved and checked."""

    def __init__(self, cfg, base_dir=None):
        from gateway.accounts import BalanceError, normalize_address

        led = cfg["ledger"]
        self.raw = led
        self.base_dir = Path(base_dir) if base_dir else Path.cwd()
        self._cfg = cfg
        self.rpc_url = led["rpc_url"]
        self.chain_id = led["chain_id"]
        self.rpc_timeout_s = led["rpc_timeout_s"]
        self.keystore = self._path(led["keystore"])
        self.password_file = self._path(led["password_file"]) if led["password_file"] else None
        self.password_env = led["password_env"]
        self.deployment_path = self._path(led["deployment"])
        self.confirmations = _at_least("ledger.confirmations", led["confirmations"], 0)
        self.grace_s = _at_least("ledger.grace_s", led["grace_s"], 0)
        self.tick_s = led["tick_s"]
        self.batch_accounts = _at_least("ledger.batch_accounts", led["batch_accounts"], 1)
        if self.batch_accounts > MAX_BATCH:
            raise LedgerConfigError(f"ledger.batch_accounts: at most {MAX_BATCH}")
        self.max_in_flight = _at_least("ledger.max_in_flight", led["max_in_flight"], 1)
        self.max_tx_gas = _at_least("ledger.max_tx_gas", led["max_tx_gas"], 100_000)
        self.max_fee_wei = int(led["max_fee_gwei"] * 10**9)
        self.reprice_after_s = _at_least("ledger.reprice_after_s", led["reprice_after_s"], 0)
        self.commission_rate = _at_least("ledger.commission_rate", led["commission_rate"], 0)
        self.max_interval_wh = _at_least("ledger.max_interval_wh", led["max_interval_wh"], 1)
        if self.max_interval_wh > MAX_INTERVAL_WH:
            raise LedgerConfigError(f"ledger.max_interval_wh: at most {MAX_INTERVAL_WH}")
        try:
            self.education_pool = normalize_address(led["education_pool"]) if led["education_pool"] else None
            self.network_pool = normalize_address(led["network_pool"]) if led["network_pool"] else None
        except BalanceError as e:
            raise LedgerConfigError(f"ledger pools: {e}") from None
        if self.commission_rate and not (self.education_pool and self.network_pool):
            raise LedgerConfigError(
                "ledger.commission_rate needs ledger.education_pool and ledger.network_pool")
        self._explicit = {"watt": led["watt"], "eea": led["eea"]}
        self.distribution = led["distribution"]

    @property
    def community(self):
        return require(self._cfg, "gateway.community")

    def _path(self, value):
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    def deployment(self):
        """{"watt": addr, "eea": addr, "block": n, ...} from the file, explicit keys winning."""
        from gateway.accounts import normalize_address

        data = {}
        if self.deployment_path.exists():
            try:
                data = json.loads(self.deployment_path.read_text())
            except json.JSONDecodeError as e:
                raise LedgerConfigError(f"{self.deployment_path}: not valid JSON: {e}") from None
        for key, value in self._explicit.items():
            if value:
                data[key] = value
        for key in ("watt", "eea"):
            if not data.get(key):
                raise LedgerConfigError(
                    f"no {key.upper()} contract address: run `egs-gw ledger deploy` or set ledger.{key}")
            data[key] = normalize_address(data[key])
        data.setdefault("block", 0)
        return data

    def distribution_addresses(self):
        from gateway.accounts import normalize_address

        missing = [k for k in DISTRIBUTION_KEYS if not self.distribution.get(k)]
        if missing:
            raise LedgerConfigError(f"ledger.distribution: missing {', '.join(missing)}")
        unknown = sorted(set(self.distribution) - set(DISTRIBUTION_KEYS))
        if unknown:
            raise LedgerConfigError(f"ledger.distribution: unknown key(s) {', '.join(unknown)}")
        return [normalize_address(self.distribution[k]) for k in DISTRIBUTION_KEYS]


def _at_least(key, value, low):
    if value < low:
        raise LedgerConfigError(f"{key}: must be at least {low}, got {value}")
    return value


__all__ = ["DISTRIBUTION_KEYS", "REQUIRED", "LedgerConfigError", "Settings"]
