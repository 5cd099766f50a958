"""The gateway side of a community, built the operator's way: one builder for the demo and
the HIL suite.

A Stack is what is set up before the first device connects: Anvil with EEA and WATT
deployed by `egs-gw ledger deploy`, the ledger keystore, `gateway.toml`, mosquitto with
the secured configuration of `egs-gw broker config` (a user and an ACL per device), and
the gateway service (`python -m gateway`, which is `egs-gw run`), waited for until it is
connected to the broker and its central system listens. Every role has a deterministic
account address (`address(community, label)`), so a run can be repeated and read back.

The community demo (sim/community.py) and the bench (hil_tests/targets.py) differ only in
what they pass: community name, addresses, timings, extra config sections. Every part is
put on the stack's stop list before it starts (a half-started one is stopped too), and so
is whatever its user starts around it (`on_stop`); `stop()` stops all in reverse order.
"""
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from sim.gwcli import egs_gw, toml_text
from sim.services import ANVIL_KEYS, Anvil, Mosquitto, Service, StopList, free_port, wait_port

QUARTER_S = 900              # the gateway's settlement interval (gateway/ingest/intervals.py)
CHAIN_ID = 31337             # Anvil's
LEDGER_KEY_ENV = "EGS_STACK_LEDGER_KEY"     # set only while `egs-gw ledger key new` runs


class StackError(RuntimeError):
    """A part of the stack that did not come up or did not finish; names it, with its log."""


def address(community, label):
    """A deterministic account address for a role (`energy-pool`, `house-01`, …)."""
    from eth_utils import keccak

    return "0x" + keccak(text=f"egs-{community}-{label}")[-20:].hex()


def host_port(value, default_host="127.0.0.1"):
    """"[HOST]:PORT" or None → (host, port); no host: default_host; port 0 or none: a free one."""
    host, _, port = (value or f"{default_host}:0").rpartition(":")
    return host or default_host, int(port) if port and port != "0" else free_port()


class Stack:
    """Chain, ledger key, config, broker and gateway of one community under `workdir`."""

    def __init__(self, workdir, community, password, broker=None, ocpp=None):
        self.workdir = Path(workdir)
        self.community = community
        self.password = password               # of the ledger keystore
        self.db_path = self.workdir / "gateway.sqlite"
        self.config_path = self.workdir / "gateway.toml"
        self.broker_dir = self.workdir / "broker"
        self.log_path = self.workdir / "gateway.log"
        self.keystore_path = self.workdir / "ledger-key.json"
        self.password_path = self.workdir / "ledger-password"
        self.deployment_path = self.workdir / "ledger-deployment.json"
        self.broker_host, self.broker_port = host_port(broker)
        self.ocpp_host, self.ocpp_port = host_port(ocpp)
        self.company_key = ANVIL_KEYS[1]       # the company's EEA holding (pays deposits)
        self.pool = self.address("energy-pool")
        self.education = self.address("education-pool")
        self.network = self.address("network-pool")
        self.anvil = self.broker = self.gateway = None
        self.deployment = self.broker_summary = None
        self._stops = StopList()

    def address(self, label):
        return address(self.community, label)

    @property
    def ocpp_url(self):
        return f"ws://{self.ocpp_host}:{self.ocpp_port}/ocpp"

    def gw(self, *args, check=True):
        """`egs-gw ARGS` on the stack's config (sim/gwcli.py)."""
        return egs_gw(self.config_path, *args, check=check)

    # -- life cycle --------------------------------------------------------------------
    def on_stop(self, name, stop):
        """Stop `stop` with the stack (reverse order of registration)."""
        self._stops.add(name, stop)

    def stop(self):
        """Stop everything on the stop list; → the errors of the stops that failed."""
        return self._stops.stop_all()

    # -- setting up, in this order --------------------------------------------------------
    def start_anvil(self, persist=False):
        """Anvil on a free port; with persist, its state is kept in anvil/state.json."""
        state = self.workdir / "anvil" / "state.json" if persist else None
        self.anvil = Anvil(self.workdir / "anvil", state_file=state)
        self.on_stop("anvil", self.anvil.stop)
        self.anvil.start()
        return self.anvil

    def write_config(self, components, **sections):
        """gateway.toml and the keystore's password file. `sections` are merged over the
        sections every stack has, key by key; a section of its own (`market`) is added."""
        from eth_account import Account

        company = Account.from_key(self.company_key).address.lower()
        self.password_path.write_text(self.password + "\n")
        os.chmod(self.password_path, 0o600)
        config = {
            "gateway": {"community": self.community, "components": list(components)},
            "store": {"db": str(self.db_path)},
            "mqtt": {"broker": f"{self.broker_host}:{self.broker_port}", "user": "egs-gateway",
                     "password_file": str(self.broker_dir / "credentials" / "egs-gateway.password"),
                     "keepalive": 10, "reconnect_max_s": 1.0},
            # a gap is filled by the device, never given up: a lost reading fails the run
            "ingest": {"resend_cooldown_s": 1.0, "gap_give_up": 0},
            "broker": {"dir": str(self.broker_dir), "host": self.broker_host,
                       "port": self.broker_port},
            "ledger": {
                "rpc_url": self.anvil.url, "chain_id": CHAIN_ID,
                "keystore": str(self.keystore_path), "password_file": str(self.password_path),
                "deployment": str(self.deployment_path),
                # Anvil mines on every transaction: nothing is ever reorganised
                "confirmations": 0,
                "education_pool": self.education, "network_pool": self.network,
                "distribution": {"open_issue": self.address("open-issue"), "company": company,
                                 "foundation": self.address("foundation"),
                                 "founding_team": self.address("founding-team"),
                                 "contribution": self.address("contribution")},
            },
            "ocpp": {"enabled": True, "listen": f"{self.ocpp_host}:{self.ocpp_port}",
                     "min_deposit_eea": "1 EEA", "energy_pool": self.pool},
        }
        for name, body in sections.items():
            config.setdefault(name, {}).update(body)
        self.config_path.write_text(toml_text(config))

    def create_ledger_key(self, cheap_kdf=False):
        """The gateway's ledger key is Anvil's first development account (it pays the gas):
        a keystore made with `egs-gw ledger key new`, as an operator makes one; with
        cheap_kdf written directly with a fast pbkdf2 instead (a test key, quick to open)."""
        if cheap_kdf:
            from gateway.ledger import keystore

            keystore.create(self.keystore_path, self.password, ANVIL_KEYS[0],
                            kdf="pbkdf2", iterations=1000)
            return
        saved = os.environ.get(LEDGER_KEY_ENV)
        os.environ[LEDGER_KEY_ENV] = ANVIL_KEYS[0]
        try:
            self.gw("ledger", "key", "new", "--private-key-env", LEDGER_KEY_ENV)
        finally:
            if saved is None:
                os.environ.pop(LEDGER_KEY_ENV, None)
            else:
                os.environ[LEDGER_KEY_ENV] = saved

    def deploy(self):
        """EEA and WATT on the chain with `egs-gw ledger deploy`; → its summary."""
        self.deployment = self.gw("ledger", "deploy")
        return self.deployment

    def credential(self, user, create=True):
        """The broker password of `user` (a device id), made on first use as `egs-gw`
        makes it (gateway/devices/broker.py)."""
        from gateway.devices import broker as broker_mod

        if create:
            self.broker_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return broker_mod.credential(self.broker_dir, user, create=create)

    def start_broker(self):
        """`egs-gw broker config` (users and ACL of every device known so far, and the
        gateway's), then mosquitto on that configuration."""
        args = ["broker", "config", "--out", self.broker_dir, "--community", self.community,
                "--host", self.broker_host, "--port", self.broker_port, "--init"]
        if os.geteuid() == 0:
            args += ["--run-as", "root"]
        self.broker_summary = self.gw(*args)
        self.broker = Mosquitto(self.broker_dir, port=self.broker_port,
                                config_text=(self.broker_dir / "mosquitto.conf").read_text())
        self.on_stop("mosquitto", self.broker.stop)
        self.broker.start()
        return self.broker

    def start_gateway(self, timeout=60):
        """`python -m gateway --config … --ocpp …` (= `egs-gw run`), in this process's
        environment as it is now (the demo's clock included). Returns once the service
        has recorded that it is connected to the broker and the central system listens."""
        from gateway.ingest import store

        self.gateway = Service([sys.executable, "-m", "gateway", "--config", self.config_path,
                                "--ocpp", f"{self.ocpp_host}:{self.ocpp_port}"],
                               log_path=self.log_path, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.on_stop("gateway", lambda: self.gateway.stop(timeout=30))
        self.gateway.start()
        deadline = time.monotonic() + timeout
        while True:
            if not self.gateway.alive:
                raise StackError("egs-gw run exited:\n" + self.tail("gateway.log"))
            try:
                conn = self.db(timeout=1)
                try:
                    value, _ = store.get_state(conn, "service")
                finally:
                    conn.close()
            except sqlite3.Error:              # not created yet, or its schema not there yet
                value = None
            if value and value.get("pid") == self.gateway.proc.pid and value.get("connected"):
                break
            if time.monotonic() > deadline:
                raise StackError("the gateway did not connect to the broker:\n"
                                 + self.tail("gateway.log"))
            time.sleep(0.1)
        wait_port(self.ocpp_port, timeout=30, proc=self.gateway.proc, host=self.ocpp_host)
        return self.gateway

    # -- using it --------------------------------------------------------------------------
    def db(self, timeout=5):
        """A read-only connection to the gateway's store (rows by name)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=timeout)
        conn.row_factory = sqlite3.Row
        return conn

    def chain(self):
        """The deployed contracts (gateway/ledger/chain.py)."""
        from gateway.ledger.chain import Chain

        return Chain(self.anvil.url, CHAIN_ID, json.loads(self.deployment_path.read_text()))

    def deposit(self, wanted):
        """Prepaid EEA: the company's holding pays into each account's escrow on chain,
        [(account, amount)] (`approve` once, then `depositFor` each); the ledger worker
        books the Deposited events."""
        from eth_account import Account
        from web3 import Web3

        chain = self.chain()
        payer = Account.from_key(self.company_key)
        w3 = chain.w3
        nonce = w3.eth.get_transaction_count(payer.address, "pending")
        calls = [chain.eea.functions.approve(chain.watt.address, sum(a for _, a in wanted))]
        calls += [chain.watt.functions.depositFor(Web3.to_checksum_address(acct), amount)
                  for acct, amount in wanted]
        hashes = []
        for fn in calls:
            tx = fn.build_transaction({"from": payer.address, "chainId": CHAIN_ID, "nonce": nonce,
                                       "gas": 200_000})
            nonce += 1
            hashes.append(w3.eth.send_raw_transaction(payer.sign_transaction(tx).raw_transaction))
        for h in hashes:
            receipt = w3.eth.wait_for_transaction_receipt(h, timeout=60, poll_latency=0.05)
            if receipt["status"] != 1:
                raise StackError(f"deposit transaction {h.hex()} reverted")

    def drain_outbox(self, timeout=60, always=False):
        """The ledger worker alone, no service around it, until the outbox is on chain
        (with always, one step even when nothing is queued: it books deposits and
        registrations made on chain). → how many intents were waiting."""
        from gateway import config as config_mod
        from gateway import db
        from gateway.ledger import keystore
        from gateway.ledger.chain import Chain
        from gateway.ledger.settings import Settings
        from gateway.ledger.worker import Worker
        from gateway.service import declare_sections

        declare_sections()
        settings = Settings(config_mod.load(self.config_path))
        conn = db.connect(self.db_path)
        try:
            busy = conn.execute("SELECT count(*) FROM ledger_outbox WHERE state NOT IN "
                                "('confirmed', 'rejected')").fetchone()[0]
            if not busy and not always:
                return busy
            account = keystore.load(settings.keystore, keystore.read_password(
                settings.password_file, settings.password_env))
            worker = Worker(conn, Chain.from_settings(settings), account, settings)
            deadline = time.monotonic() + timeout
            worker.step()
            while not worker.idle():
                worker.step()
                if time.monotonic() > deadline:
                    raise StackError("the ledger outbox did not drain")
                time.sleep(0.05)
            return busy
        finally:
            conn.close()

    def tail(self, name, n=3000):
        """The last n characters of a log under workdir ("" if there is none)."""
        try:
            return (self.workdir / name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def log_tails(self):
        """The gateway's and the broker's logs, for a failure report."""
        return [f"--- {name}\n" + text for name, text in
                (("gateway", self.tail("gateway.log")),
                 ("mosquitto", self.tail("broker/mosquitto.log"))) if text]
