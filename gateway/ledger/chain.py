"""The gateway's view of the chain: web3 over JSON-RPC (HTTP), the two contracts.

Only this module talks JSON-RPC. Every failure to reach the node (refused,
timed out, a broken response) surfaces as `ChainUnavailable`, which callers
treat as "try again later": intents stay in the outbox, nothing is lost.
Contract ABIs and bytecode come from the committed build in contracts/build/.
"""
import json
from functools import cached_property
from pathlib import Path

import requests
from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3 import HTTPProvider, Web3
from web3.exceptions import ProviderConnectionError, Web3RPCError

from gateway.units import format_eea

BUILD = Path(__file__).resolve().parents[2] / "contracts" / "build"


class ChainUnavailable(ConnectionError):
    pass


class ChainError(ValueError):
    """The node answered, but with something we cannot work with (wrong chain id, no code)."""


class RpcError(ChainError):
    """The node answered a JSON-RPC call with an error object."""


class InsufficientFunds(ChainError):
    """The sending key cannot pay the gas of what it is about to send; nothing was sent."""


def format_eth(wei):
    """Wei as decimal ETH, exactly, trailing zeros dropped: 1500000000000000000 → '1.5'."""
    whole, frac = divmod(int(wei), 10**18)
    frac_text = f"{frac:018d}".rstrip("0")
    return f"{whole}.{frac_text}" if frac_text else str(whole)


def artifact(name):
    path = BUILD / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ChainError(f"no contract build at {path}: run `python contracts/build.py`") from None


_UNREACHABLE = (requests.RequestException, ProviderConnectionError, ConnectionError, TimeoutError)


def _hex(value):
    """0x-prefixed lower-case hex of bytes / HexBytes / str."""
    if isinstance(value, str):
        return value if value.startswith("0x") else "0x" + value
    return "0x" + bytes(value).hex()


class Chain:
    """A JSON-RPC endpoint plus (optionally) the deployed WATT and EEA contracts."""

    def __init__(self, rpc_url, chain_id, deployment=None, timeout_s=10.0):
        self.rpc_url = rpc_url
        self.chain_id = chain_id
        self.deployment = deployment or {}
        self.w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        self._checked = False

    @classmethod
    def from_settings(cls, settings, with_contracts=True):
        return cls(settings.rpc_url, settings.chain_id,
                   settings.deployment() if with_contracts else None, settings.rpc_timeout_s)

    # ---- plumbing ----------------------------------------------------------------

    def call(self, fn, *args, **kwargs):
        """Run a web3 call, turning every 'node not reachable' into ChainUnavailable."""
        try:
            return fn(*args, **kwargs)
        except _UNREACHABLE as e:
            raise ChainUnavailable(f"chain not reachable at {self.rpc_url}: {type(e).__name__}") from None

    def rpc(self, method, params):
        """A raw JSON-RPC call: the plain result, without web3's result formatting.

        Used where web3's formatters cost more than the call (receipts of a batch
        carry hundreds of logs, each address checksummed on the way)."""
        resp = self.call(self.w3.provider.make_request, method, params)
        if "error" in resp:
            err = resp["error"]
            raise RpcError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
        return resp.get("result")

    def check(self):
        """The node is the configured chain and the contracts have code there."""
        if self._checked:
            return
        got = self.call(lambda: self.w3.eth.chain_id)
        if got != self.chain_id:
            raise ChainError(f"node at {self.rpc_url} is chain {got}, configured ledger.chain_id is {self.chain_id}")
        for key in ("watt", "eea"):
            addr = self.deployment.get(key)
            if addr and not self.call(self.w3.eth.get_code, Web3.to_checksum_address(addr)):
                raise ChainError(f"no contract code at the {key.upper()} address {addr} on chain {got}")
        self._checked = True

    @cached_property
    def watt(self):
        return self.contract("WATT", self.deployment["watt"])

    @cached_property
    def eea(self):
        return self.contract("EEA", self.deployment["eea"])

    def contract(self, name, address):
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact(name)["abi"])

    # ---- reads ---------------------------------------------------------------------

    def block_number(self):
        return self.call(lambda: self.w3.eth.block_number)

    def nonce(self, address, block="pending"):
        return self.call(self.w3.eth.get_transaction_count, Web3.to_checksum_address(address), block)

    def native_balance(self, address):
        return self.call(self.w3.eth.get_balance, Web3.to_checksum_address(address))

    def require_funds(self, address, gas, fees, what):
        """Raise InsufficientFunds, naming the address and the ETH it needs, unless
        `address` can pay `gas` at `fees` (the fee fields of `fees()`); checked before
        anything is signed, so a key without gas fails in one line and sends nothing."""
        price = fees.get("maxFeePerGas", fees.get("gasPrice", 0))
        need = gas * price
        have = self.native_balance(address)
        if have < need:
            address = address.lower()
            raise InsufficientFunds(
                f"{what} needs up to {format_eth(need)} ETH of gas ({gas} gas at {price / 10**9:g} gwei), "
                f"{address} holds {format_eth(have)} ETH: fund {address} with at least "
                f"{format_eth(need - have)} ETH (on a local Anvil: `egs-gw ledger fund`)")
        return need

    def receipt(self, tx_hash):
        """{status, blockNumber, blockHash, gasUsed} or None while not mined."""
        r = self.rpc("eth_getTransactionReceipt", [tx_hash])
        if not r or r.get("blockNumber") is None:
            return None
        return {"status": int(r["status"], 16), "blockNumber": int(r["blockNumber"], 16),
                "blockHash": r["blockHash"].lower(), "gasUsed": int(r["gasUsed"], 16)}

    def known(self, tx_hash):
        """True if the node has the transaction (in its pool or in a block)."""
        return self.rpc("eth_getTransactionByHash", [tx_hash]) is not None

    def block_hash(self, number):
        block = self.rpc("eth_getBlockByNumber", [hex(number), False])
        return block["hash"].lower() if block else None

    # ---- calldata --------------------------------------------------------------------

    @cached_property
    def _functions(self):
        out = {}
        for item in artifact("WATT")["abi"]:
            if item.get("type") == "function":
                types = [_abi_type(i) for i in item["inputs"]]
                selector = keccak(f"{item['name']}({','.join(types)})".encode())[:4]
                out[item["name"]] = (selector, types)
        return out

    def encode(self, fn, args):
        """Calldata for WATT.fn(*args) with eth_abi directly (web3's encoder is slow for
        hundreds of tuples). Addresses as 0x-hex strings, bytes32 as bytes."""
        selector, types = self._functions[fn]
        return "0x" + (selector + abi_encode(types, args)).hex()

    def fees(self, max_fee_wei):
        """Fee fields for a new transaction: EIP-1559 when the chain has a base fee."""
        block = self.call(self.w3.eth.get_block, "latest")
        base = block.get("baseFeePerGas")
        if base is None:
            return {"gasPrice": min(self.call(lambda: self.w3.eth.gas_price), max_fee_wei)}
        try:
            tip = self.call(lambda: self.w3.eth.max_priority_fee)
        except Web3RPCError:
            tip = 10**9
        tip = min(tip, max_fee_wei)
        return {"maxFeePerGas": max(min(2 * base + tip, max_fee_wei), tip),
                "maxPriorityFeePerGas": tip, "type": 2}

    def applied(self, sid, block="latest"):
        return self.call(self.watt.functions.applied(_b32(sid)).call, block_identifier=block)

    def is_gateway(self, address):
        return self.call(self.watt.functions.isGateway(Web3.to_checksum_address(address)).call)

    def balances(self, accounts, block="latest", chunk=1000):
        """{address: (watt_wh, escrow_eea)} for many accounts, 1000 per call."""
        out = {}
        accounts = list(accounts)
        for i in range(0, len(accounts), chunk):
            part = accounts[i:i + chunk]
            watt, escrow = self.call(
                self.watt.functions.balancesOf([Web3.to_checksum_address(a) for a in part]).call,
                block_identifier=block)
            for a, w, e in zip(part, watt, escrow):
                out[a] = (w, e)
        return out

    def events(self, contract, name, from_block, to_block, step=5000):
        """Decoded logs of one event over a block range, in chain order."""
        ev = getattr(contract.events, name)
        out = []
        start = from_block
        while start <= to_block:
            end = min(start + step - 1, to_block)
            out.extend(self.call(ev.get_logs, from_block=start, to_block=end))
            start = end + 1
        return out

    # ---- writes ----------------------------------------------------------------------

    def deposit_for(self, signer, account, amount, max_fee_wei, min_nonce=0, timeout_s=120.0):
        """Move `amount` EEA base units from `signer`'s wallet into `account`'s escrow
        (EEA.approve when the allowance is short, then WATT.depositFor), each waited for.

        Checked before anything is signed: the EEA balance and the gas of both calls
        (ChainError naming what is missing). `min_nonce` keeps clear of nonces the
        gateway's outbox already signed with the same key. Returns the tx hash, its
        block and the Deposited events as (ref, account, amount), ref as the ledger
        worker writes it ("0x<tx hash>:<log index>")."""
        sender = Web3.to_checksum_address(signer.address)
        target = Web3.to_checksum_address(account)
        held = self.call(self.eea.functions.balanceOf(sender).call)
        if held < amount:
            raise ChainError(f"{sender.lower()} holds {format_eea(held)}, less than the "
                             f"{format_eea(amount)} to deposit")
        allowed = self.call(self.eea.functions.allowance(sender, self.watt.address).call)
        fees = self.fees(max_fee_wei)
        calls = ([self.eea.functions.approve(self.watt.address, amount)] if allowed < amount else [])
        calls.append(self.watt.functions.depositFor(target, amount))
        self.require_funds(sender, 200_000 * len(calls), fees, "the deposit")
        nonce = max(self.nonce(sender), min_nonce)
        receipt = None
        for fn in calls:
            tx = self.call(fn.build_transaction, {"from": sender, "nonce": nonce, "chainId": self.chain_id, **fees})
            raw = signer.sign_transaction(tx).raw_transaction
            try:
                tx_hash = self.call(self.w3.eth.send_raw_transaction, raw)
            except Web3RPCError as e:
                raise ChainError(f"the node refused the {fn.fn_name} transaction: {e}") from None
            receipt = self.call(self.w3.eth.wait_for_transaction_receipt, tx_hash, timeout=timeout_s,
                                poll_latency=0.2)
            if receipt["status"] != 1:
                raise ChainError(f"{fn.fn_name} reverted in transaction {_hex(tx_hash)}")
            nonce += 1
        events = [(f"0x{bytes(ev['transactionHash']).hex()}:{ev['logIndex']}", ev["args"]["account"].lower(),
                   int(ev["args"]["amount"]))
                  for ev in self.watt.events.Deposited().process_receipt(receipt)]
        return _hex(receipt["transactionHash"]), receipt["blockNumber"], events

    def send_raw(self, raw_hex):
        """Broadcast; returns None or the node's error message (the node did answer)."""
        try:
            self.call(self.w3.eth.send_raw_transaction, raw_hex)
            return None
        except Web3RPCError as e:
            message = e.rpc_response.get("error", {}).get("message") if e.rpc_response else None
            return message or str(e)


def _abi_type(item):
    t = item["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + t[len("tuple"):]
    return t


def _b32(sid):
    return bytes.fromhex(sid[2:]) if isinstance(sid, str) else bytes(sid)
