"""How each outbox intent becomes one contract call, and how much gas it may need.

Validation happens here, before signing: an intent whose payload cannot be a
valid call (bad address, negative or non-integer amount, too many entries) is
rejected with a clear reason instead of being broadcast to fail on chain.

The gas limit is an upper bound computed from the payload, not an estimate from
the node: the worker signs several transactions ahead, and an estimate taken
before the previous ones are mined could be too low. The per-item figures bound
the worst case (fresh storage slots everywhere) with a margin; the contract tests
check them against measured gas.
"""
import re

ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")

MAX_ENTRIES = 512  # contracts/WATT.vy MAX_ENTRIES
MAX_TRADES = 256   # contracts/WATT.vy MAX_TRADES
MAX_OWNERS = 64    # contracts/WATT.vy MAX_OWNERS
U256 = 2**256
ZERO = "0x" + "00" * 20

GAS_BASE = 90_000
GAS_PER_ENTRY = 34_000        # mint to a fresh account (~24.5k) + commission (~5k) + margin
GAS_PER_SPLIT_RECIPIENT = 32_000
GAS_SESSION = 180_000
GAS_PER_TRADE = 65_000
GAS_STORAGE = 60_000 + 6_000 * MAX_OWNERS
GAS_WITHDRAW = 120_000


class IntentError(ValueError):
    pass


def _addr(value, what):
    if not isinstance(value, str) or not ADDRESS.match(value):
        raise IntentError(f"{what}: not an address: {value!r}")
    return value.lower()


def _payee(value, what):
    """An address the contract refuses when zero (setStorage owner, withdraw target):
    rejected here, or the transaction would revert on every retry and block the queue."""
    value = _addr(value, what)
    if value == ZERO:
        raise IntentError(f"{what}: the zero address is refused by the contract")
    return value


def _amount(value, what):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < U256:
        raise IntentError(f"{what}: not a non-negative integer amount: {value!r}")
    return value


def _hash(value, what="records_hash"):
    if not (isinstance(value, str) and value.startswith("0x") and len(value) == 66):
        raise IntentError(f"{what}: expected 0x + 64 hex digits, got {value!r}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise IntentError(f"{what}: not hex: {value!r}") from None


def call_for(kind, sid, payload, storage_owners=0):
    """(function name, args, gas limit) for one intent; IntentError if it can never be valid."""
    sid_b = _hash(sid, "settlement id")
    if not isinstance(payload, dict):
        raise IntentError("payload is not an object")
    try:
        if kind == "interval":
            entries = payload["entries"]
            if not isinstance(entries, list) or not 0 < len(entries) <= MAX_ENTRIES:
                raise IntentError(f"entries: 1 to {MAX_ENTRIES} expected")
            args = []
            commission = False
            for i, e in enumerate(entries):
                if not isinstance(e, list) or len(e) != 4:
                    raise IntentError(f"entries[{i}]: expected [account, mint, burn, commission]")
                acct = _addr(e[0], f"entries[{i}].account")
                mint, burn, fee = (_amount(v, f"entries[{i}]") for v in e[1:])
                commission = commission or fee > 0
                args.append((acct, mint, burn, fee))
            gas = GAS_BASE + GAS_PER_ENTRY * len(args)
            if commission:
                gas += GAS_PER_SPLIT_RECIPIENT * (storage_owners + 2)
            return "settleInterval", [sid_b, _hash(payload["records_hash"]), args], gas
        if kind == "session":
            args = [sid_b, _hash(payload["records_hash"]),
                    _addr(payload["payer"], "payer"), _addr(payload["pool"], "pool"),
                    _addr(payload["station_owner"], "station_owner"),
                    _amount(payload["energy_wh"], "energy_wh"),
                    _amount(payload["energy_eea"], "energy_eea"), _amount(payload["fee_eea"], "fee_eea")]
            return "settleSession", args, GAS_SESSION
        if kind == "trades":
            trades = payload["trades"]
            if not isinstance(trades, list) or not 0 < len(trades) <= MAX_TRADES:
                raise IntentError(f"trades: 1 to {MAX_TRADES} expected")
            args = []
            for i, t in enumerate(trades):
                if not isinstance(t, dict):
                    raise IntentError(f"trades[{i}]: not an object")
                args.append((_addr(t["seller"], f"trades[{i}].seller"), _addr(t["buyer"], f"trades[{i}].buyer"),
                             _amount(t["wh"], f"trades[{i}].wh"), _amount(t["eea"], f"trades[{i}].eea")))
            return ("settleTrades", [sid_b, _hash(payload["records_hash"]), args],
                    GAS_BASE + GAS_PER_TRADE * len(args))
        if kind == "storage":
            return ("setStorage", [sid_b, _payee(payload["owner"], "owner"),
                                   _amount(payload["capacity_wh"], "capacity_wh")], GAS_STORAGE)
        if kind == "withdraw":
            return ("withdraw", [sid_b, _payee(payload["account"], "account"),
                                 _amount(payload["amount"], "amount")], GAS_WITHDRAW)
    except KeyError as e:
        raise IntentError(f"payload misses {e.args[0]!r}") from None
    raise IntentError(f"unknown settlement kind {kind!r}")
