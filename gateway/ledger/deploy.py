"""Deploy EEA and WATT from the committed build and grant the gateway its role.

The deployer (the gateway's keystore key unless another account is given) becomes
WATT's admin and grants the gateway role. Given a separate admin (a cold key), the
deployer then proposes it; the admin takes over by calling `acceptAdmin()` from its
own wallet, and until then the deployer stays admin. EEA's whole supply goes to the five distribution addresses in one
constructor call; WATT gets the EEA address and the two commission pools. The
result is written to the deployment file the rest of the ledger reads.

Before anything is sent, the gas of all three transactions is estimated and the
deployer's balance checked: a key without enough ETH gets one line naming the
address and the amount to fund, and no half-deployed contracts.
"""
import json
import time
from pathlib import Path

from eth_abi import encode as abi_encode
from web3 import Web3

from gateway.ledger.chain import artifact

ROLE_GAS = 100_000   # setGateway, proposeAdmin: a bound each (WATT is not deployed yet when deploy checks funds)


class DeployError(ValueError):
    pass


def _estimate(chain, tx, what):
    from web3.exceptions import Web3RPCError

    try:
        return chain.call(chain.w3.eth.estimate_gas, tx) * 12 // 10 + 20_000
    except Web3RPCError as e:
        message = e.rpc_response.get("error", {}).get("message") if e.rpc_response else None
        raise DeployError(f"{what}: the node refuses to estimate it: {message or e}") from None


def _creation(name, args):
    art = artifact(name)
    ctor = next((e for e in art["abi"] if e["type"] == "constructor"), {"inputs": []})
    types = [i["type"] for i in ctor["inputs"]]
    return art["bytecode"] + abi_encode(types, list(args)).hex()


def _send(chain, account, tx, what):
    w3 = chain.w3
    tx = dict(tx)
    tx.setdefault("from", account.address)
    tx["nonce"] = chain.nonce(account.address)
    tx["chainId"] = chain.chain_id
    tx["gas"] = _estimate(chain, tx, what)
    tx.update(chain.fees(10**21))
    chain.require_funds(account.address, tx["gas"], tx, what)
    signed = account.sign_transaction(tx)
    tx_hash = chain.call(w3.eth.send_raw_transaction, signed.raw_transaction)
    receipt = chain.call(w3.eth.wait_for_transaction_receipt, tx_hash, timeout=120, poll_latency=0.2)
    if receipt["status"] != 1:
        raise DeployError(f"{what}: transaction {tx_hash.hex()} reverted")
    return receipt


def deploy_contract(chain, account, name, *args):
    data = _creation(name, args)
    receipt = _send(chain, account, {"data": data, "value": 0}, f"deploy {name}")
    return receipt["contractAddress"], receipt["blockNumber"]


def check_funds(chain, account, distribution, education_pool, network_pool, roles=1):
    """The deployer can pay both deployments and `roles` role calls at today's fees;
    else InsufficientFunds."""
    cs = Web3.to_checksum_address
    me = account.address
    gas = _estimate(chain, {"from": me, "data": _creation("EEA", [cs(a) for a in distribution]), "value": 0},
                    "deploy EEA")
    gas += _estimate(chain, {"from": me, "data": _creation("WATT", [me, cs(education_pool), cs(network_pool)]),
                             "value": 0}, "deploy WATT")
    return chain.require_funds(me, gas + roles * ROLE_GAS, chain.fees(10**21), "deploying EEA and WATT")


def deploy(chain, account, distribution, education_pool, network_pool, gateway=None, path=None, admin=None):
    """Deploy both contracts; returns the deployment dict (also written to `path`).
    `admin`: the address the deployer proposes as WATT's admin (None: the deployer stays)."""
    if not (education_pool and network_pool):
        raise DeployError("ledger.education_pool and ledger.network_pool must be set to deploy")
    cs = Web3.to_checksum_address
    if admin is not None:
        if int(admin, 16) == 0:
            raise DeployError("the admin cannot be the zero address")
        if admin.lower() == account.address.lower():
            admin = None
    chain.call(lambda: chain.w3.eth.chain_id)
    check_funds(chain, account, distribution, education_pool, network_pool, roles=2 if admin else 1)
    eea, first_block = deploy_contract(chain, account, "EEA", *[cs(a) for a in distribution])
    watt, _ = deploy_contract(chain, account, "WATT", eea, cs(education_pool), cs(network_pool))
    gateway = gateway or account.address
    contract = chain.contract("WATT", watt)
    data = contract.encode_abi("setGateway", args=[cs(gateway), True])
    _send(chain, account, {"to": watt, "data": data, "value": 0}, "grant the gateway role")
    if admin:
        data = contract.encode_abi("proposeAdmin", args=[cs(admin)])
        _send(chain, account, {"to": watt, "data": data, "value": 0}, "propose the admin")
    out = {"chain_id": chain.chain_id, "eea": eea.lower(), "watt": watt.lower(),
           "block": first_block, "admin": account.address.lower(), "gateway": gateway.lower(),
           "proposed_admin": admin.lower() if admin else None,
           "education_pool": education_pool, "network_pool": network_pool,
           "distribution": [a.lower() for a in distribution],
           "deployed_at": int(time.time()), "build": {
               n: artifact(n)["sourceSha256"] for n in ("WATT", "EEA")}}
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    chain.deployment = out
    chain.__dict__.pop("watt", None)
    chain.__dict__.pop("eea", None)
    return out
