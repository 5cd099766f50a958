"""Ledger test helpers: a real Anvil with the contracts deployed from contracts/build,
a gateway store fed through the real ingest with signed OCMF records, and the
config/keystore files `egs-gw ledger …` reads.

The gateway's key is Anvil's first development key wrapped in a keystore (cheap
pbkdf2 so each subprocess decrypts it quickly); the company holding 35 % of EEA
is Anvil's second key, so tests can fund escrow deposits for accounts.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from gateway import config as config_mod
from gateway import db
from gateway.ingest import intervals
from gateway.ingest.core import IngestCore, Message
from gateway.ledger import keystore, tables
from gateway.ledger.chain import Chain
from gateway.ledger.deploy import deploy
from gateway.ledger.settings import Settings
from sim.services import ANVIL_KEYS, Anvil
from tests.gateway.fixtures import COMMUNITY, T0, Signer, topic  # noqa: F401 - re-exported

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
GATEWAY = Account.from_key(ANVIL_KEYS[0])
COMPANY = Account.from_key(ANVIL_KEYS[1])
L = intervals.LENGTH_S
FAR = T0 + 30 * 86400


def addr(n):
    """A deterministic account address for test number n."""
    return "0x" + Web3.keccak(text=f"account-{n}")[-20:].hex()


EDU, NET = addr("education"), addr("network")
DISTRIBUTION = [addr("open"), COMPANY.address.lower(), addr("foundation"), addr("team"), addr("contrib")]


class LedgerEnv:
    def __init__(self, tmp, anvil, **ledger):
        self.tmp = Path(tmp)
        self.anvil = anvil
        self.db_path = self.tmp / "gw.sqlite"
        self.keystore = self.tmp / "key.json"
        self.password_file = self.tmp / "password"
        self.deployment = self.tmp / "deployment.json"
        self.password_file.write_text(PASSWORD + "\n")
        if not self.keystore.exists():
            keystore.create(self.keystore, PASSWORD, ANVIL_KEYS[0], kdf="pbkdf2", iterations=1000)
        self.ledger = {"rpc_url": anvil.url, "chain_id": 31337, "keystore": str(self.keystore),
                       "password_file": str(self.password_file), "deployment": str(self.deployment),
                       "confirmations": 0, "grace_s": 60, "tick_s": 0.05, "batch_accounts": 3,
                       "education_pool": EDU, "network_pool": NET, **ledger}
        self.write_config()

    def write_config(self):
        lines = [f'[gateway]\ncommunity = "{COMMUNITY}"\n', f'[store]\ndb = "{self.db_path}"\n', "[ledger]"]
        for k, v in self.ledger.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("[ledger.distribution]")
        for k, a in zip(("open_issue", "company", "foundation", "founding_team", "contribution"), DISTRIBUTION):
            lines.append(f'{k} = "{a}"')
        self.config_path = self.tmp / "gateway.toml"
        self.config_path.write_text("\n".join(lines) + "\n")
        import gateway.ledger.settings  # noqa: F401 - declares [ledger]
        self.cfg = config_mod.load(self.config_path)
        self.settings = Settings(self.cfg)

    def deploy(self):
        chain = Chain(self.anvil.url, 31337)
        self.dep = deploy(chain, GATEWAY, DISTRIBUTION, EDU, NET, path=self.deployment)
        return self.dep

    def chain(self):
        return Chain.from_settings(self.settings)

    def conn(self):
        conn = db.connect(self.db_path)
        tables.init(conn)
        return conn

    def cli(self, *args, env=None, timeout=120):
        e = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
        e.update(env or {})
        return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, env=e, timeout=timeout, check=False)

    def deposit(self, account, amount):
        """The company prepays `amount` EEA base units into `account`'s escrow (on chain)."""
        chain = self.chain()
        send(chain, COMPANY, chain.eea.functions.approve(chain.watt.address, amount))
        send(chain, COMPANY, chain.watt.functions.depositFor(Web3.to_checksum_address(account), amount))


def send(chain, account, fn):
    w3 = chain.w3
    tx = fn.build_transaction({"from": account.address,
                               "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                               "chainId": 31337})
    h = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    r = w3.eth.wait_for_transaction_receipt(h, timeout=30, poll_latency=0.05)
    assert r["status"] == 1
    return r


@pytest.fixture(name="ledger_env")
def ledger_env_fixture(tmp_path):
    with Anvil(tmp_path / "anvil", state_file=tmp_path / "anvil" / "state.json") as chain:
        env = LedgerEnv(tmp_path, chain)
        env.deploy()
        yield env


ledger_env = ledger_env_fixture  # the name other test modules import


def ingest(conn, signer, rows, now=FAR):
    """rows: (seq, t, import_wh, export_wh) through the real ingest (verified signatures).

    The readings lie weeks before `now` and the devices' registration (the wall clock),
    and the property test's steps are faster than any meter: the ingest's time and energy
    limits are off here (tests/gateway/test_ingest_hostile.py tests them)."""
    core = IngestCore(conn, COMMUNITY, {"max_future_s": 10**9, "max_age_s": 0, "registration_skew_s": 10**10,
                                        "energy_limit": False}, clock=lambda: now)
    msgs = [Message(topic(signer.id), signer.record(seq, imp, exp, t).encode(), now)
            for seq, t, imp, exp in rows]
    out = core.commit(msgs, core.verify_inline(core.prepare(msgs)))
    assert sum(out.rejected.values()) == 0, out.rejected
    return out


def applied_counts(chain):
    """{sid: times a Settled/StorageSet/Withdrawn event carried it} over the whole chain."""
    counts = {}
    for name in ("Settled", "StorageSet", "Withdrawn"):
        for ev in chain.events(chain.watt, name, 0, chain.block_number()):
            sid = "0x" + bytes(ev["args"]["sid"]).hex()
            counts[sid] = counts.get(sid, 0) + 1
    return counts


