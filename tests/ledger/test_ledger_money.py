"""Commands that spend gas or move money: a key without ETH is told what to fund before
anything is sent, and docs/ledger.md's local-chain recipe runs as written."""
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main
from gateway.ledger import keystore
from sim.services import free_port, wait_port
from tests.ledger.fixtures import GATEWAY, PASSWORD, addr, ledger_env_fixture  # noqa: F401
from tests.ledger.test_ledger_cli import fresh  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]


def cli(env, *args):
    return CliRunner().invoke(main, ["ledger", *map(str, args), "--config", str(env.config_path)],
                              env={"EGS_LEDGER_PASSWORD": None})


def test_deploy_with_an_unfunded_key_names_the_address_and_sends_nothing(fresh):
    env = fresh
    keystore.create(env.keystore, PASSWORD, kdf="pbkdf2", iterations=1000)    # a fresh key, no ETH
    address = keystore.address(env.keystore)
    r = cli(env, "deploy")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1, r.output
    assert re.search(rf"fund {address} with at least [0-9.]+ ETH", r.output), r.output
    chain = env_chain(env)
    assert chain.nonce(address) == 0 and not env.deployment.exists()
    r = cli(env, "fund", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"address": address, "balance_wei": str(100 * 10**18)}
    r = cli(env, "deploy", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["gateway"] == address


def env_chain(env):
    from gateway.ledger.chain import Chain

    return Chain(env.anvil.url, 31337)


def test_run_with_an_unfunded_key_says_what_to_fund_and_keeps_the_intent(ledger_env):
    env = ledger_env
    assert cli(env, "storage", "set", addr("st"), 1000).exit_code == 0
    chain = env_chain(env)
    chain.rpc("anvil_setBalance", [GATEWAY.address, "0x0"])
    r = cli(env, "run", "--until-idle", "--timeout", "30")
    assert r.exit_code == 1, r.output
    assert f"fund {GATEWAY.address.lower()} with at least" in r.output and r.output.count("\n") == 1
    assert json.loads(cli(env, "status", "--json").output)["outbox"] == {"queued": 1}


def test_fund_refuses_a_chain_that_is_not_anvil(fresh, tmp_path):
    env = fresh
    keystore.create(env.keystore, PASSWORD, kdf="pbkdf2", iterations=1000)
    env.ledger["rpc_url"] = f"http://127.0.0.1:{free_port()}"     # nothing listens: unreachable
    env.write_config()
    r = cli(env, "fund")
    assert r.exit_code == 1 and "not reachable" in r.output and "Traceback" not in r.output


# ---- docs/ledger.md: "A local chain to try it on" ----------------------------------------

def recipe():
    """The shell steps of docs/ledger.md's local-chain block; a heredoc is one step."""
    text = (ROOT / "docs/ledger.md").read_text()
    section = text.split("## A local chain to try it on", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    steps, lines = [], block.splitlines()
    while lines:
        line = lines.pop(0)
        m = re.search(r"<<'(\w+)'", line)
        if m:
            body = []
            while lines[0] != m[1]:
                body.append(lines.pop(0))
            lines.pop(0)
            line = "\n".join([line, *body, m[1]])
        steps.append(line)
    return steps


def test_docs_local_chain_recipe_runs_as_written(tmp_path):
    steps = recipe()
    port = str(free_port())
    local = lambda s: s.replace("8545", port).replace("node/node_modules/", f"{ROOT}/node/node_modules/") \
        .replace(".venv/bin/", f"{ROOT}/.venv/bin/")
    first = steps.pop(0)
    assert first.startswith("node/node_modules/.bin/anvil") and first.endswith("&")
    anvil = subprocess.Popen(shlex.split(local(first[:-1])), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
    try:
        wait_port(int(port), timeout=30, proc=anvil)
        outputs = []
        for line in steps:
            line = local(line)
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                env[key] = shlex.split(value)[0]
                continue
            r = subprocess.run(["bash", "-c", line], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=180, check=False)
            assert r.returncode == 0, (line, r.stdout, r.stderr)
            outputs.append(r.stdout)
    finally:
        anvil.terminate()
        anvil.wait(timeout=30)
    assert "role True" in outputs[-1] and "chain     up" in outputs[-1], outputs[-1]
    dep = json.loads((tmp_path / "ledger-deployment.json").read_text())
    assert dep["gateway"] == keystore.address(tmp_path / "ledger-key.json")
