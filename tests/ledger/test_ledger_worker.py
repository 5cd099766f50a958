"""The outbox worker against a real Anvil: order, confirmations, chain outages,
duplicates, stolen nonces, rejected payloads, deposits, sessions and trades."""
import shutil

import pytest
from web3 import Web3

from gateway import accounts, db
from gateway.db import transaction
from gateway.ledger import keystore, outbox, tables
from gateway.ledger.chain import ChainUnavailable
from gateway.ledger.reconcile import reconcile
from gateway.ledger.settlement import Engine
from gateway.ledger.storage import set_capacity
from gateway.ledger.worker import Worker
from sim.services import ANVIL_KEYS, Anvil
from tests.ledger.fixtures import (
    COMMUNITY,
    GATEWAY,
    PASSWORD,
    T0,
    L,
    Signer,
    addr,
    applied_counts,
    ingest,
    ledger_env_fixture,  # noqa: F401 - the ledger_env fixture
    send,
)


def worker(env, conn=None, **overrides):
    if overrides:
        env.ledger.update(overrides)
        env.write_config()
    return Worker(conn or env.conn(), env.chain(), keystore.load(env.keystore, PASSWORD), env.settings)


def drain(w, steps=60):
    for _ in range(steps):
        w.step()
        if w.idle():
            return
    raise AssertionError(f"outbox not drained: {outbox.counts(w.conn)}")


def feed(env, conn, accounts_=3, intervals_=4):
    for i in range(accounts_):
        s = Signer(f"dev{i}", f"SN{i}")
        s.register(conn, account=addr(i))
        ingest(conn, s, [(k + 1, T0 + k * L, 37 * k * (i % 2), 100 * k * (i + 1)) for k in range(intervals_ + 1)])


def txs(conn):
    return [dict(r) for r in conn.execute(
        "SELECT t.*, o.id AS oid FROM ledger_txs t JOIN ledger_outbox o ON o.id=t.outbox_id ORDER BY o.id, t.id")]


def test_intents_reach_the_chain_in_order_exactly_once(ledger_env):
    env = ledger_env
    conn = env.conn()
    feed(env, conn)
    sids = Engine(env.settings).step(conn, now=T0 + 10 * L)
    assert len(sids) == 4
    w = worker(env, conn, max_in_flight=2)
    drain(w)
    rows = txs(conn)
    assert [r["state"] for r in rows] == ["confirmed"] * 4
    assert [r["nonce"] for r in rows] == sorted(r["nonce"] for r in rows)
    assert [r["block_number"] for r in rows] == sorted(r["block_number"] for r in rows)
    counts = applied_counts(env.chain())
    assert all(counts[s] == 1 for s in sids)
    report = reconcile(conn, env.chain())
    assert report["differences"] == [] and report["applied"] == 4
    chain = env.chain()
    for i in range(3):
        assert chain.balances([addr(i)])[addr(i)][0] == accounts.balance(conn, addr(i), "WATT") > 0


def test_confirmation_waits_for_blocks_on_top(ledger_env):
    env = ledger_env
    conn = env.conn()
    feed(env, conn, accounts_=1, intervals_=1)
    Engine(env.settings).step(conn, now=T0 + 10 * L)
    w = worker(env, conn, confirmations=2)
    for _ in range(3):
        w.step()
    assert outbox.counts(conn) == {"signed": 1} and txs(conn)[0]["state"] == "mined"
    env.chain().w3.provider.make_request("anvil_mine", [1])
    w.step()
    assert outbox.counts(conn) == {"signed": 1}
    env.chain().w3.provider.make_request("anvil_mine", [1])
    w.step()
    assert outbox.counts(conn) == {"confirmed": 1}


def test_chain_down_outbox_grows_then_drains_in_order(ledger_env):
    env = ledger_env
    conn = env.conn()
    feed(env, conn, accounts_=2, intervals_=6)
    eng = Engine(env.settings)
    w = worker(env, conn)
    eng.step(conn, now=T0 + 2 * L + 60)
    drain(w)
    port = env.anvil.port
    env.anvil.stop()
    with pytest.raises(ChainUnavailable):
        w.step()
    for k in range(3, 7):                       # four more intervals close while the chain is down
        eng.step(conn, now=T0 + k * L + 60)
        with pytest.raises(ChainUnavailable):
            w.step()
    assert outbox.counts(conn) == {"confirmed": 2, "queued": 4}
    assert len(txs(conn)) == 2                  # nothing signed while the chain was away
    env.anvil = Anvil(env.tmp / "anvil", port=port, state_file=env.tmp / "anvil" / "state.json").start()
    drain(w)
    rows = txs(conn)
    assert [r["oid"] for r in rows] == sorted(r["oid"] for r in rows)
    assert [r["nonce"] for r in rows] == list(range(rows[0]["nonce"], rows[0]["nonce"] + 6))
    assert all(v == 1 for v in applied_counts(env.chain()).values())
    assert reconcile(conn, env.chain())["differences"] == []


def test_a_restored_backup_cannot_apply_a_settlement_twice(ledger_env, tmp_path):
    env = ledger_env
    conn = env.conn()
    feed(env, conn, accounts_=2, intervals_=2)
    sids = Engine(env.settings).step(conn, now=T0 + 10 * L)
    conn.execute("PRAGMA wal_checkpoint(FULL)")
    backup = tmp_path / "backup.sqlite"
    shutil.copy(env.db_path, backup)          # taken before the worker ran
    drain(worker(env, conn))
    old = db.connect(backup)
    tables.init(old)
    w2 = Worker(old, env.chain(), keystore.load(env.keystore, PASSWORD), env.settings)
    nonce = env.chain().nonce(env.dep["gateway"])
    drain(w2)
    # the restored gateway sees each id applied before it signed anything: it confirms
    # them without a transaction (no gas spent on calls the contract would refuse)
    assert txs(old) == [] and env.chain().nonce(env.dep["gateway"]) == nonce
    notes = {r["last_error"] for r in old.execute("SELECT last_error FROM ledger_outbox")}
    assert len(notes) == 1 and notes.pop().startswith("settlement id was already applied on chain")
    assert {r["state"] for r in old.execute("SELECT state FROM ledger_outbox")} == {"confirmed"}
    counts = applied_counts(env.chain())
    assert [counts[s] for s in sids] == [1] * len(sids)
    assert reconcile(old, env.chain())["differences"] == []


def test_a_revert_is_retried_with_a_growing_backoff_and_applies_once_the_role_is_back(ledger_env):
    import time

    env = ledger_env
    conn = env.conn()
    feed(env, conn, accounts_=1, intervals_=2)
    sids = Engine(env.settings).step(conn, now=T0 + 10 * L)
    assert len(sids) == 2
    chain = env.chain()
    gw = Web3.to_checksum_address(env.dep["gateway"])
    send(chain, GATEWAY, chain.watt.functions.setGateway(gw, False))     # the admin revokes the role
    w = worker(env, conn, max_in_flight=1)
    for backoff in (30, 60, 120):            # doubles per attempt: each retry of a revert costs gas
        t0 = time.time()
        for _ in range(5):
            w.step()
        t1 = time.time()
        first = outbox.by_sid(conn, sids[0])
        assert first["state"] == "queued" and "reverted" in first["last_error"]
        assert first["not_before"] - t1 <= backoff <= first["not_before"] - t0
        with transaction(conn):              # the test does not wait the backoff out
            conn.execute("UPDATE ledger_outbox SET not_before=0 WHERE id=?", (first["id"],))
    assert outbox.by_sid(conn, sids[1])["state"] == "queued"                 # nothing signed past it
    assert [r["state"] for r in txs(conn)] == ["reverted"] * 3
    send(chain, GATEWAY, chain.watt.functions.setGateway(gw, True))
    drain(w)
    assert outbox.counts(conn) == {"confirmed": 2}
    counts = applied_counts(chain)
    assert [counts[s] for s in sids] == [1, 1]
    assert reconcile(conn, chain)["differences"] == []


def test_a_nonce_taken_by_another_transaction_is_signed_again(ledger_env):
    env = ledger_env
    conn = env.conn()
    feed(env, conn, accounts_=1, intervals_=1)
    (sid,) = Engine(env.settings).step(conn, now=T0 + 10 * L)
    w = worker(env, conn)
    w._fees = None
    assert w._sign_new() == 1                 # signed and stored, not broadcast
    stored = txs(conn)[0]
    chain = env.chain()
    # someone uses the gateway key for something else with that very nonce
    tx = {"to": GATEWAY.address, "value": 0, "gas": 21000, "nonce": stored["nonce"], "chainId": 31337,
          "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "type": 2}
    chain.w3.eth.send_raw_transaction(GATEWAY.sign_transaction(tx).raw_transaction)
    drain(w)
    rows = txs(conn)
    assert [r["state"] for r in rows] == ["dropped", "confirmed"]
    assert rows[1]["nonce"] == stored["nonce"] + 1
    assert applied_counts(chain)[sid] == 1
    assert reconcile(conn, chain)["differences"] == []


def test_a_payload_that_can_never_be_valid_is_rejected_and_the_queue_moves_on(ledger_env):
    env = ledger_env
    conn = env.conn()
    with transaction(conn):
        outbox.enqueue(conn, "trades", outbox.settlement_id("bad"),
                       {"trades": [{"seller": "0xnothex", "buyer": addr(1), "wh": 1, "eea": 1}],
                        "records_hash": "0x" + "00" * 32})
        outbox.enqueue(conn, "trades", outbox.settlement_id("neg"),
                       {"trades": [{"seller": addr(1), "buyer": addr(2), "wh": -5, "eea": 1}],
                        "records_hash": "0x" + "00" * 32})
        outbox.enqueue(conn, "session", outbox.settlement_id("missing"), {"payer": addr(1)})
        # the contract reverts these on every retry: rejected before signing, the queue goes on
        zero = "0x" + "00" * 20
        outbox.enqueue(conn, "storage", outbox.settlement_id("zero-owner"), {"owner": zero, "capacity_wh": 5})
        outbox.enqueue(conn, "withdraw", outbox.settlement_id("zero-payee"), {"account": zero, "amount": 1})
    feed(env, conn, accounts_=1, intervals_=1)
    Engine(env.settings).step(conn, now=T0 + 10 * L)
    drain(worker(env, conn))
    assert outbox.counts(conn) == {"rejected": 5, "confirmed": 1}
    reasons = [r["last_error"] for r in conn.execute("SELECT last_error FROM ledger_outbox WHERE state='rejected'")]
    assert any("not an address" in r for r in reasons) and any("payload misses" in r for r in reasons)
    assert sum("zero address" in r for r in reasons) == 2
    assert conn.execute("SELECT COUNT(*) FROM ledger_txs").fetchone()[0] == 1   # nothing signed for them
    diffs = reconcile(conn, env.chain())["differences"]
    assert len(diffs) == 5 and all("rejected" in d for d in diffs)


def test_deposits_sessions_trades_storage_and_withdrawals_agree_with_the_book(ledger_env):
    env = ledger_env
    conn = env.conn()
    seller, buyer, pool, owner, store_owner = addr(1), addr(2), addr("pool"), addr("owner"), addr("store")
    feed_rows = [(1, T0, 0, 0), (2, T0 + L, 0, 5000)]
    for n, a in ((1, seller), (2, pool)):
        s = Signer(f"dev{n}", f"SN{n}")
        s.register(conn, account=a)
        ingest(conn, s, feed_rows)
    env.deposit(buyer, 10**19)
    w = worker(env, conn)
    drain(w)
    assert accounts.balance(conn, buyer, "EEA") == 10**19   # the deposit event reached the book
    set_capacity(conn, COMMUNITY, store_owner, 20_000)
    Engine(env.settings).step(conn, now=T0 + L + 60)
    with transaction(conn):
        sid = outbox.settlement_id("charger-1", 42)
        accounts.post(conn, [(buyer, "EEA", -(3 * 10**17 + 10**16)), (pool, "EEA", 3 * 10**17),
                             (owner, "EEA", 10**16), (pool, "WATT", -1200)], "ocpp_session", sid)
        outbox.enqueue(conn, "session", sid, {
            "payer": buyer, "pool": pool, "station_owner": owner, "energy_wh": 1200,
            "energy_eea": 3 * 10**17, "fee_eea": 10**16, "records_hash": "0x" + "ab" * 32})
        sid = outbox.settlement_id("market", 1)
        accounts.post(conn, [(seller, "WATT", -700), (buyer, "WATT", 700), (buyer, "EEA", -2 * 10**17),
                             (seller, "EEA", 2 * 10**17)], "market_trade", sid)
        outbox.enqueue(conn, "trades", sid, {"trades": [{"seller": seller, "buyer": buyer, "wh": 700,
                                                        "eea": 2 * 10**17}], "records_hash": "0x" + "cd" * 32})
    from gateway.ledger.storage import withdraw
    withdraw(conn, COMMUNITY, seller, 5 * 10**16)
    drain(w)
    chain = env.chain()
    bal = chain.balances([seller, buyer, pool, owner])
    assert bal[seller] == (4300, 2 * 10**17 - 5 * 10**16)
    assert bal[buyer] == (700, 10**19 - 5 * 10**17 - 10**16)
    assert bal[pool] == (3800, 3 * 10**17)
    assert bal[owner] == (0, 10**16)
    assert chain.call(chain.watt.functions.capacityOf(Web3.to_checksum_address(store_owner)).call) == 20_000
    assert chain.call(chain.eea.functions.balanceOf(Web3.to_checksum_address(seller)).call) == 5 * 10**16
    report = reconcile(conn, chain)
    assert report["differences"] == [], report["differences"]


def test_reconcile_reports_what_happened_outside_the_gateway(ledger_env):
    env = ledger_env
    conn = env.conn()
    holder = Web3().eth.account.from_key(ANVIL_KEYS[3])
    s = Signer("dev1", "SN1")
    s.register(conn, account=holder.address)
    ingest(conn, s, [(1, T0, 0, 0), (2, T0 + L, 0, 900)])
    Engine(env.settings).step(conn, now=T0 + L + 60)
    drain(worker(env, conn))
    chain = env.chain()
    assert reconcile(conn, chain)["differences"] == []
    send(chain, holder, chain.watt.functions.transfer(Web3.to_checksum_address(addr(9)), 400))
    accounts.credit(conn, addr(8), "EEA", 5, reason="manual", ref="")
    diffs = reconcile(conn, chain)["differences"]
    assert f"{holder.address.lower()}: WATT on chain 500, book 900" in diffs
    assert any(d.startswith(f"{addr(8)}: 5 EEA in the book (manual)") for d in diffs)
