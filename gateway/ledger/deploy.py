"""Deploy EEA and WATT from the committed build and grant the gateway its role.

The deployer (the gateway's keystore key unless another account is given) becomes
WATT's admin. EEA's whole supply goes to the five distribution addresses in one
constructor call; WATT gets the EEA address and the two commission pools. The
result is written to the deployment file the rest of the ledger reads.
"""
import json
import time
from pathlib import Path

from eth_abi import encode as abi_encode
from web3 import Web3

from gateway.ledger.chain import artifact


class DeployError(ValueError):
    pass


def _send(chain, account, tx, what):
    w3 = chain.w3
    tx = dict(tx)
    tx.setdefault("from", account.address)
    tx["nonce"] = chain.nonce(account.address)
    tx["chainId"] = chain.chain_id
    tx.update(chain.fees(10**21))
    tx["gas"] = chain.call(w3.eth.estimate_gas, tx) * 12 // 10 + 20_000
    signed = account.sign_transaction(tx)
    tx_hash = chain.call(w3.eth.send_raw_transaction, signed.raw_transaction)
    receipt = chain.call(w3.eth.wait_for_transaction_receipt, tx_hash, timeout=120, poll_latency=0.2)
    if receipt["status"] != 1:
        raise DeployError(f"{what}: transaction {tx_hash.hex()} reverted")
    return receipt


def deploy_contract(chain, account, name, *args):
    art = artifact(name)
    ctor = next((e for e in art["abi"] if e["type"] == "constructor"), {"inputs": []})
    types = [i["type"] for i in ctor["inputs"]]
    data = art["bytecode"] + abi_encode(types, list(args)).hex()
    receipt = _send(chain, account, {"data": data, "value": 0}, f"deploy {name}")
    return receipt["contractAddress"], receipt["blockNumber"]


def deploy(chain, account, distribution, education_pool, network_pool, gateway=None, path=None):
    """Deploy both contracts; returns the deployment dict (also written to `path`)."""
    if not (education_pool and network_pool):
        raise DeployError("ledger.education_pool and ledger.network_pool must be set to deploy")
    chain.call(lambda: chain.w3.eth.chain_id)
    cs = Web3.to_checksum_address
    eea, first_block = deploy_contract(chain, account, "EEA", *[cs(a) for a in distribution])
    watt, _ = deploy_contract(chain, account, "WATT", eea, cs(education_pool), cs(network_pool))
    gateway = gateway or account.address
    contract = chain.contract("WATT", watt)
    data = contract.encode_abi("setGateway", args=[cs(gateway), True])
    _send(chain, account, {"to": watt, "data": data, "value": 0}, "grant the gateway role")
    out = {"chain_id": chain.chain_id, "eea": eea.lower(), "watt": watt.lower(),
           "block": first_block, "admin": account.address.lower(), "gateway": gateway.lower(),
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
