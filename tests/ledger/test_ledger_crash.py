"""Crash tests: the real `egs-gw ledger run` process is SIGKILLed at a chosen point
(EGS_LEDGER_FAULT, gateway/ledger/faults.py) — inside the settlement transaction,
between signing and broadcast, between broadcast and receipt, mid-way through a
window of transactions, after a confirmation — and restarted. Afterwards every
settlement is applied on chain exactly once, the transactions signed before the
crash went out as the very bytes stored (same hash, same nonce), and
`egs-gw ledger reconcile` is clean."""
import json

import pytest

from tests.ledger.fixtures import (
    T0,
    L,
    Signer,
    addr,
    applied_counts,
    ingest,
    ledger_env_fixture,  # noqa: F401 - the ledger_env fixture
)

ACCOUNTS = 5
INTERVALS = 3


def prepare(env, max_in_flight=8):
    env.ledger.update({"batch_accounts": 2, "max_in_flight": max_in_flight})
    env.write_config()
    conn = env.conn()
    for i in range(ACCOUNTS):
        s = Signer(f"dev{i}", f"SN{i}")
        s.register(conn, account=addr(i))
        ingest(conn, s, [(k + 1, T0 + k * L, 11 * k * (i % 3), 90 * k * (i + 1)) for k in range(INTERVALS + 1)])
    return conn


def run(env, fault=None):
    extra = {"EGS_LEDGER_FAULT": fault} if fault else {}
    return env.cli("ledger", "run", "--until-idle", "--timeout", "90", "--config", env.config_path, env=extra)


def txs(conn):
    return [dict(r) for r in conn.execute("SELECT * FROM ledger_txs ORDER BY id")]


@pytest.mark.parametrize("fault", ["settle_batch:2", "after_sign", "after_broadcast",
                                   "after_broadcast:3", "after_confirm:2"])
def test_killed_anywhere_every_settlement_applies_exactly_once(ledger_env, fault):
    env = ledger_env
    conn = prepare(env)
    chain = env.chain()
    nonce0 = chain.nonce(env.dep["gateway"])
    crashed = run(env, fault)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    before = txs(conn)
    if fault == "settle_batch:2":
        # killed inside the settlement transaction: nothing of it survived
        assert conn.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM ledger_batches").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM balance_entries").fetchone()[0] == 0
    elif fault == "after_sign":
        assert [t["state"] for t in before] == ["signed"]        # signed and stored...
        assert chain.nonce(env.dep["gateway"]) == nonce0         # ...but never broadcast
    elif fault == "after_broadcast":
        assert before[0]["state"] == "signed" and chain.nonce(env.dep["gateway"]) == nonce0 + 1
    elif fault == "after_broadcast:3":
        assert chain.nonce(env.dep["gateway"]) == nonce0 + 3 and len(before) == 8
    elif fault == "after_confirm:2":
        assert [t["state"] for t in before[:2]] == ["confirmed", "confirmed"]
    restarted = run(env)
    assert restarted.returncode == 0, restarted.stderr[-2000:]

    intents = [dict(r) for r in conn.execute("SELECT * FROM ledger_outbox ORDER BY id")]
    assert len(intents) == INTERVALS * 3 and {i["state"] for i in intents} == {"confirmed"}
    after = txs(conn)
    assert {t["state"] for t in after} == {"confirmed"}            # nothing dropped, nothing reverted
    assert len(after) == len(intents)                              # one signature per intent, ever
    for old in before:                                             # stored bytes went out unchanged
        new = next(t for t in after if t["id"] == old["id"])
        assert (new["tx_hash"], new["nonce"], new["raw_tx"]) == (old["tx_hash"], old["nonce"], old["raw_tx"])
    assert [t["nonce"] for t in after] == list(range(nonce0, nonce0 + len(after)))
    counts = applied_counts(chain)
    assert [counts.get(i["settlement_id"]) for i in intents] == [1] * len(intents)
    rec = env.cli("ledger", "reconcile", "--json", "--config", env.config_path)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    report = json.loads(rec.stdout)
    assert report["differences"] == [] and report["applied"] == len(intents)
    total = sum(90 * INTERVALS * (i + 1) - 11 * INTERVALS * (i % 3) for i in range(ACCOUNTS))
    assert int(report["watt_supply"]) == total


def test_a_transaction_priced_out_before_broadcast_is_replaced_with_its_nonce(ledger_env):
    """Signed and stored, then the base fee rose above its maxFeePerGas before it went
    out (killed after signing; the chain's fees jump meanwhile). On restart the node
    refuses it as underpriced: it is re-signed with the SAME nonce and higher fees, the
    old one is kept as 'replaced', and every settlement still applies exactly once."""
    env = ledger_env
    conn = prepare(env)
    chain = env.chain()
    nonce0 = chain.nonce(env.dep["gateway"])
    assert run(env, "after_sign").returncode == -9
    (old,) = txs(conn)
    from gateway.ledger.worker import decode_raw
    old_fee = decode_raw(old["raw_tx"])["maxFeePerGas"]
    rpc = chain.w3.provider.make_request
    rpc("anvil_setNextBlockBaseFeePerGas", [hex(old_fee * 20)])
    rpc("evm_mine", [])
    assert chain.w3.eth.get_block("latest")["baseFeePerGas"] > old_fee
    restarted = run(env)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    after = txs(conn)
    assert after[0]["id"] == old["id"] and after[0]["state"] == "replaced"
    assert "underpriced" in after[0]["error"]
    replacement = next(t for t in after[1:] if t["outbox_id"] == old["outbox_id"])
    assert replacement["nonce"] == old["nonce"] == nonce0 and replacement["state"] == "confirmed"
    assert decode_raw(replacement["raw_tx"])["maxFeePerGas"] > old_fee * 20
    intents = [dict(r) for r in conn.execute("SELECT * FROM ledger_outbox ORDER BY id")]
    assert {i["state"] for i in intents} == {"confirmed"}
    assert {t["state"] for t in after[1:]} == {"confirmed"}
    counts = applied_counts(chain)
    assert [counts.get(i["settlement_id"]) for i in intents] == [1] * len(intents)
    rec = env.cli("ledger", "reconcile", "--json", "--config", env.config_path)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert json.loads(rec.stdout)["differences"] == []


def test_replacement_fees_step_above_the_old_ones_within_the_cap():
    from gateway.ledger.worker import bumped_fees, fees_rose
    old = {"maxFeePerGas": 100, "maxPriorityFeePerGas": 8}
    # the going fees are lower: still 12.5 % above the old ones, or a node refuses it
    assert bumped_fees(old, {"maxFeePerGas": 50, "maxPriorityFeePerGas": 1, "type": 2}, 10**6) \
        == {"maxFeePerGas": 113, "maxPriorityFeePerGas": 9, "type": 2}
    assert bumped_fees(old, {"maxFeePerGas": 400, "maxPriorityFeePerGas": 20, "type": 2}, 10**6) \
        == {"maxFeePerGas": 400, "maxPriorityFeePerGas": 20, "type": 2}
    assert bumped_fees(old, {"maxFeePerGas": 400, "maxPriorityFeePerGas": 20}, 112) is None
    assert bumped_fees({"gasPrice": 80}, {"gasPrice": 50}, 10**6) == {"gasPrice": 90}
    assert not fees_rose(old, {"maxFeePerGas": 112}) and fees_rose(old, {"maxFeePerGas": 113})
