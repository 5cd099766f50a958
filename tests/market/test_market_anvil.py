"""End to end on Anvil: market trades settle on the WATT contract once, and the chain's
balances equal the gateway's balance book afterwards.

Real parts: Anvil, the deployed Vyper contracts, the ledger's outbox worker
(gateway.ledger.runner), EEA deposits made on chain and picked up by the worker.
The sellers' WATT reaches chain and book the way interval settlement puts it
there: one "interval" intent with mint entries, and its book entries, in one
transaction.
"""
from gateway import accounts
from gateway.db import transaction
from gateway.ledger import outbox
from gateway.ledger.runner import Runner
from gateway.market.book import BUY, SELL
from gateway.market.exchange import Market, market_buy_for_session
from tests.ledger.fixtures import (
    COMMUNITY,
    addr,
    applied_counts,
    ledger_env_fixture,  # noqa: F401 - the ledger_env fixture
)
from tests.market.fixtures import EEA, Clock, price, settings

SELLERS = [addr(f"seller-{i}") for i in range(4)]
BUYERS = [addr(f"buyer-{i}") for i in range(3)]


def drain(env):
    runner = Runner(env.settings, env.db_path)
    try:
        assert runner.run_until(lambda: False, until_idle=True, timeout=90)
    finally:
        runner.close()


def mint(conn, amounts, ref):
    sid = outbox.settlement_id(COMMUNITY, "test-mint", ref)
    with transaction(conn):
        accounts.post(conn, [(a, "WATT", wh) for a, wh in amounts.items()], "test_mint", sid)
        outbox.enqueue(conn, "interval", sid, {
            "community": COMMUNITY, "start": 0, "batch": 0,
            "records_hash": "0x" + "11" * 32,
            "entries": [[a, wh, 0, 0] for a, wh in amounts.items()]})


def book_vs_chain(env, conn, owners):
    chain = env.chain()
    on_chain = chain.balances(owners)
    book = {a: (accounts.balance(conn, a, "WATT"), accounts.balance(conn, a, "EEA"))
            for a in owners}
    return book, {a: tuple(on_chain[a]) for a in owners}


def test_trades_of_an_interval_settle_once_and_chain_equals_book(ledger_env):
    env = ledger_env
    conn = env.conn()
    mint(conn, {SELLERS[0]: 1000, SELLERS[1]: 600, SELLERS[2]: 400}, "sellers")
    for b in BUYERS:
        env.deposit(b, 3 * EEA)
    drain(env)  # mints applied, deposits posted to the book
    assert accounts.balance(conn, BUYERS[0], "EEA") == 3 * EEA

    clock = Clock(1_800_000_000.0)
    m = Market(conn, COMMUNITY, settings(bmax_wh=2000, settle_batch=2), clock=clock)
    m.place(SELLERS[0], SELL, 800, price("0.56"))
    m.place(SELLERS[1], SELL, 600, price("0.60"))
    m.place(SELLERS[2], SELL, 400, price("0.61"))
    m.place(SELLERS[3], SELL, 300, price("0.53"))  # no energy: quotes, never executes
    trades = []
    clock.t += 10
    trades += m.place(BUYERS[0], BUY, 500)["trades"]
    trades += m.place(BUYERS[1], BUY, 700, price("0.60"))["trades"]
    trades += m.place(BUYERS[2], BUY, 300, price("0.55"))["trades"]  # rests: nothing at 0.55
    assert m.quote()["best_ask"] == price("0.53")
    assert {t["seller"] for t in trades} <= {SELLERS[0], SELLERS[1]}
    assert sum(t["wh"] for t in trades) == 1200

    clock.t += 900
    done = m.settle()
    assert [d["trades"] for d in done] == [2, 1] and sum(d["shortfall_wh"] for d in done) == 0
    drain(env)
    owners = SELLERS + BUYERS
    book, chain = book_vs_chain(env, conn, owners)
    assert book == chain
    assert chain[BUYERS[0]][0] == 500 and chain[BUYERS[1]][0] == 700
    counts = applied_counts(env.chain())
    assert all(counts[d["settlement_id"]] == 1 for d in done)

    # Nothing settles twice: settle again, run the worker again.
    assert m.settle() == [] and Market(conn, COMMUNITY, settings(), clock=clock).settle() == []
    drain(env)
    assert applied_counts(env.chain()) == counts
    assert book_vs_chain(env, conn, owners) == (book, chain)

    # A charging session bought at the market settles at once, on chain too.
    ev = addr("ev")
    env.deposit(ev, EEA)
    drain(env)
    with transaction(conn):
        r = market_buy_for_session(conn, COMMUNITY, ev, 250, ref="CP1:1", clock=clock)
    assert r["filled_wh"] == 250 and r["average_price"] >= price("0.60")
    drain(env)
    book, chain = book_vs_chain(env, conn, owners + [ev])
    assert book == chain and chain[ev][0] == 250
    assert applied_counts(env.chain())[r["settlement_id"]] == 1
    conn.close()
