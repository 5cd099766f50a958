"""`egs-gw ledger …` end to end (click in-process, one real subprocess): keys and
passwords, deploy, status, balances, reconcile exit codes, storage, withdraw, bad
configuration as one-line errors."""
import json

import pytest
from click.testing import CliRunner

from gateway import accounts
from gateway.cli import main
from gateway.ledger import keystore
from sim.services import ANVIL_KEYS, Anvil
from tests.ledger.fixtures import (
    PASSWORD,
    T0,
    L,
    LedgerEnv,
    Signer,
    addr,
    ingest,
    ledger_env_fixture,  # noqa: F401
)


def cli(env, *args):
    r = CliRunner().invoke(main, ["ledger", *map(str, args), "--config", str(env.config_path)],
                           env={"EGS_LEDGER_PASSWORD": None})
    return r


def js(r):
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.fixture
def fresh(tmp_path):
    """Anvil and config, nothing deployed, no keystore yet."""
    with Anvil(tmp_path / "anvil") as chain:
        env = LedgerEnv.__new__(LedgerEnv)
        env.tmp, env.anvil = tmp_path, chain
        env.db_path = tmp_path / "gw.sqlite"
        env.keystore = tmp_path / "keys" / "key.json"
        env.password_file = tmp_path / "password"
        env.deployment = tmp_path / "deployment.json"
        env.password_file.write_text(PASSWORD + "\n")
        env.ledger = {"rpc_url": chain.url, "keystore": str(env.keystore), "password_file": str(env.password_file),
                      "deployment": str(env.deployment), "confirmations": 0, "education_pool": addr("e"),
                      "network_pool": addr("n"), "tick_s": 0.05}
        env.write_config()
        yield env


def test_key_deploy_status_and_a_second_deploy_refused(fresh, monkeypatch):
    env = fresh
    monkeypatch.setenv("GW_IMPORT_KEY", ANVIL_KEYS[0])
    r = CliRunner().invoke(main, ["ledger", "key", "new", "--private-key-env", "GW_IMPORT_KEY",
                                  "--json", "--config", str(env.config_path)])
    created = js(r)
    assert created["address"] == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
    assert PASSWORD not in r.output and ANVIL_KEYS[0][2:] not in env.keystore.read_text()
    assert js(cli(env, "key", "show", "--json"))["address"] == created["address"]
    r = cli(env, "key", "new")
    assert r.exit_code == 1 and "exists already" in r.output
    r = cli(env, "deploy", "--json")                 # stderr: the hot-key-is-admin warning
    assert r.exit_code == 0, r.output
    dep = json.loads(r.stdout)
    assert json.loads(env.deployment.read_text())["watt"] == dep["watt"]
    status = js(cli(env, "status", "--json"))
    assert status["chain"] == "up" and status["gateway_role"] is True and status["watt"] == dep["watt"]
    assert status["outbox"] == {} and status["watt_supply_wh"] == 0
    r = cli(env, "deploy")
    assert r.exit_code == 1 and "exists" in r.output and "--force" in r.output


def test_password_problems_are_one_line_and_never_echo_the_password(fresh):
    env = fresh
    keystore.create(env.keystore, PASSWORD, ANVIL_KEYS[0], kdf="pbkdf2", iterations=1000)
    env.password_file.write_text("wrong horse\n")
    r = cli(env, "deploy")
    assert r.exit_code == 1 and "wrong password" in r.output and "wrong horse" not in r.output
    assert r.output.count("\n") == 1
    env.ledger["password_file"] = ""
    env.ledger["password_env"] = "NO_SUCH_VARIABLE_HERE"
    env.write_config()
    r = cli(env, "deploy")
    assert r.exit_code == 1 and "NO_SUCH_VARIABLE_HERE" in r.output


@pytest.mark.parametrize("body, message", [
    ("[ledger]\nrpc_ur = 'x'\n", "ledger.rpc_ur: unknown key"),
    ("[ledger]\nconfirmations = 'two'\n", "ledger.confirmations: expected int"),
    ("[ledger]\nbatch_accounts = 100000\n", "ledger.batch_accounts: at most 512"),
    ("[ledger]\ncommission_rate = 5\n", "needs ledger.education_pool"),
    ("[ledger]\neducation_pool = '0x12'\n", "not an EVM address"),
])
def test_bad_ledger_config_is_a_one_line_error(tmp_path, body, message):
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[gateway]\ncommunity = 'c'\n" + body)
    r = CliRunner().invoke(main, ["ledger", "status", "--config", str(cfg), "--db", str(tmp_path / "db")])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_deploy_needs_the_whole_distribution(fresh):
    env = fresh
    keystore.create(env.keystore, PASSWORD, ANVIL_KEYS[0], kdf="pbkdf2", iterations=1000)
    env.config_path.write_text(env.config_path.read_text().replace('company = ', 'companyy = '))
    r = cli(env, "deploy")
    assert r.exit_code == 1 and "ledger.distribution: missing company" in r.output


def test_balances_reconcile_storage_withdraw(ledger_env):
    env = ledger_env
    conn = env.conn()
    s = Signer("dev1", "SN1")
    s.register(conn, account=addr(1))
    ingest(conn, s, [(1, T0, 0, 0), (2, T0 + L, 100, 2500)])
    env.deposit(addr(1), 20 * 10**18)       # beyond 64-bit integers
    assert js(cli(env, "storage", "set", addr("st"), 13500, "--json"))["capacity_wh"] == 13500
    assert js(cli(env, "storage", "list", "--json")) == [{"owner": addr("st"), "capacity_wh": 13500}]
    for bad, message in ((["0x" + "00" * 20, 5], "cannot be the zero address"),
                         ([addr("st"), 10**30], "capacity must be at most")):
        r = cli(env, "storage", "set", *bad)
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    r = cli(env, "run", "--until-idle", "--timeout", "60", "--json")
    assert r.exit_code == 0, r.output
    ticks = [json.loads(line) for line in r.stdout.splitlines()]     # one JSON object per line
    assert ticks and all(t["chain"] == "up" for t in ticks)
    assert sum(t["settled"] for t in ticks) == 1 and sum(t["confirmed"] for t in ticks) == 2
    assert ticks[-1]["pending"] == 0
    b = js(cli(env, "balances", "--account", addr(1), "--json"))["accounts"]
    assert b == [{"account": addr(1), "book_watt_wh": 2400, "chain_watt_wh": 2400, "book_eea": str(20 * 10**18),
                  "chain_eea": str(20 * 10**18), "grid_import_wh": 0}]
    w = js(cli(env, "withdraw", addr(1), 1, "--json"))                 # a bare number is EEA
    assert w["amount"] == str(10**18)
    r = cli(env, "withdraw", addr(1), "30000000000000000000 base")
    assert r.exit_code == 1 and "not enough EEA" in r.output
    r = cli(env, "run", "--until-idle", "--timeout", "60")
    assert r.exit_code == 0, r.output
    r = cli(env, "reconcile")
    assert r.exit_code == 0 and "clean" in r.output, r.output
    outbox = js(cli(env, "outbox", "--json"))
    assert [o["kind"] for o in outbox] == ["withdraw", "interval", "storage"]
    assert all(o["state"] == "confirmed" and o["tx_hash"] for o in outbox)
    accounts.credit(conn, addr(5), "WATT", 77, reason="hand_edit")
    r = cli(env, "reconcile")
    assert r.exit_code == 1 and "DIFF" in r.output and "77 WATT in the book (hand_edit)" in r.output
    r = cli(env, "reconcile", "--json")
    assert r.exit_code == 1
    [diff] = json.loads(r.stdout)["differences"]
    assert diff == {"kind": "unbacked_watt", "account": addr(5), "settlement": None, "store": "77",
                    "chain": "0", "difference": "-77", "detail": diff["detail"]}
    assert "77 WATT in the book (hand_edit)" in diff["detail"]


def test_chain_down_status_still_answers_and_run_reports_an_undrained_outbox(ledger_env):
    env = ledger_env
    conn = env.conn()
    s = Signer("dev1", "SN1")
    s.register(conn, account=addr(1))
    ingest(conn, s, [(1, T0, 0, 0), (2, T0 + L, 0, 10)])
    env.anvil.stop()
    r = cli(env, "status", "--json")       # answers, and exits 1: the ledger cannot settle
    status = json.loads(r.stdout)
    assert r.exit_code == 1 and status["chain"] == "down" and "not reachable" in status["chain_error"]
    r = env.cli("ledger", "run", "--until-idle", "--timeout", "2", "--config", env.config_path)
    assert r.returncode == 1 and "outbox not drained" in r.stderr
    assert "chain not reachable" in r.stderr and PASSWORD not in r.stderr
    assert json.loads(cli(env, "status", "--json").stdout)["outbox"] == {"queued": 1}
    r = cli(env, "reconcile")
    assert r.exit_code == 1 and "chain not reachable" in r.output


def test_read_commands_refuse_a_missing_database(ledger_env, tmp_path):
    env = ledger_env
    for args in (["reconcile"], ["balances"], ["outbox"], ["storage", "list"]):
        r = CliRunner().invoke(main, ["ledger", *args, "--config", str(env.config_path),
                                      "--db", str(tmp_path / "typo.sqlite")])
        assert r.exit_code == 1 and "no gateway database at" in r.output, (args, r.output)
    assert not (tmp_path / "typo.sqlite").exists()
