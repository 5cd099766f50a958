"""`egs-gw ledger deploy --admin`: a cold admin key apart from the gateway's hot key.
The deployer proposes the admin, the admin accepts from its own wallet with exactly the
transaction docs/ledger.md gives, and the gateway's key settles as before."""
import json
import re

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError

from gateway.cli import main
from gateway.ledger import keystore
from gateway.ledger.chain import Chain
from gateway.ledger.commands import ACCEPT_ADMIN_DATA
from sim.services import ANVIL_KEYS
from tests.ledger.fixtures import GATEWAY, PASSWORD, ROOT, T0, L, Signer, addr, ingest
from tests.ledger.test_ledger_cli import fresh  # noqa: F401 - the fixture

COLD = Account.from_key(ANVIL_KEYS[2])


def cli(env, *args):
    return CliRunner().invoke(main, ["ledger", *map(str, args), "--config", str(env.config_path)],
                              env={"EGS_LEDGER_PASSWORD": None})


def documented_accept():
    """The data of the acceptance transaction, as docs/ledger.md gives it."""
    text = (ROOT / "docs/ledger.md").read_text()
    found = re.search(r"`acceptAdmin\(\)`[^`]*`(0x[0-9a-f]{8})`", text)
    assert found, "docs/ledger.md gives acceptAdmin()'s call data"
    assert found.group(1) == ACCEPT_ADMIN_DATA == "0x" + Web3.keccak(text="acceptAdmin()")[:4].hex()
    return found.group(1)


def send_raw(chain, account, to, data):
    w3 = chain.w3
    tx = {"from": account.address, "to": to, "data": data, "value": 0, "chainId": 31337,
          "nonce": w3.eth.get_transaction_count(account.address, "pending")}
    tx["gas"] = w3.eth.estimate_gas(tx)
    tx.update(chain.fees(10**21))
    h = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    return w3.eth.wait_for_transaction_receipt(h, timeout=30, poll_latency=0.05)


def refused(chain, account, to, data, message):
    """What the node answers `account` sending `data` to `to`: a revert with `message`."""
    with pytest.raises(ContractLogicError, match=message):
        chain.w3.eth.call({"from": account.address, "to": to, "data": data, "value": 0})


def test_deploy_with_a_cold_admin_then_the_gateway_key_still_settles(fresh):
    env = fresh
    keystore.create(env.keystore, PASSWORD, ANVIL_KEYS[0], kdf="pbkdf2", iterations=1000)
    r = cli(env, "deploy", "--admin", COLD.address, "--json")
    assert r.exit_code == 0, r.output
    dep = json.loads(r.stdout)
    assert dep["admin"] == GATEWAY.address.lower() and dep["proposed_admin"] == COLD.address.lower()
    assert "warning" not in r.stderr
    chain = env.chain()
    watt = chain.watt
    assert watt.functions.pendingAdmin().call() == COLD.address
    # only the proposed address can accept: the gateway's own key cannot
    refused(chain, GATEWAY, watt.address, documented_accept(), "not the proposed admin")
    assert send_raw(chain, COLD, watt.address, documented_accept())["status"] == 1
    assert watt.functions.admin().call() == COLD.address
    assert watt.functions.pendingAdmin().call() == "0x" + "00" * 20
    gateway_grant = watt.functions.setGateway(Web3.to_checksum_address(addr(9)), True)
    refused(chain, GATEWAY, watt.address, gateway_grant._encode_transaction_data(), "not the admin")

    conn = env.conn()
    s = Signer("dev1", "SN1")
    s.register(conn, account=addr(1))
    ingest(conn, s, [(1, T0, 0, 0), (2, T0 + L, 100, 2500)])
    r = cli(env, "run", "--until-idle", "--timeout", "60")
    assert r.exit_code == 0, r.output
    b = json.loads(cli(env, "balances", "--account", addr(1), "--json").stdout)["accounts"][0]
    assert b["book_watt_wh"] == b["chain_watt_wh"] == 2400


def test_deploy_without_admin_warns_in_one_line_that_the_hot_key_is_admin(fresh):
    env = fresh
    keystore.create(env.keystore, PASSWORD, ANVIL_KEYS[0], kdf="pbkdf2", iterations=1000)
    r = cli(env, "deploy", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["proposed_admin"] is None
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "admin" in warnings[0] and "--admin" in warnings[0]


def test_deploy_refuses_a_bad_admin_address_before_sending_anything(fresh):
    env = fresh
    keystore.create(env.keystore, PASSWORD, ANVIL_KEYS[0], kdf="pbkdf2", iterations=1000)
    for bad, message in (("0x12", "not an EVM address"), ("0x" + "00" * 20, "zero address")):
        r = cli(env, "deploy", "--admin", bad)
        assert r.exit_code == 2 and "--admin" in r.output and message in r.output, r.output
        assert r.output.count("\n") == 1 and "Traceback" not in r.output
        assert not env.deployment.exists()
    assert Chain(env.anvil.url, 31337).w3.eth.get_transaction_count(GATEWAY.address) == 0
