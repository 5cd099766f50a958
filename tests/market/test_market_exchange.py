"""The market on the gateway store: real balance book, journal, settlement, agents, sessions."""
import json
import random

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway import accounts, db
from gateway.ledger import outbox
from gateway.market import journal
from gateway.market.book import BUY, SELL, MemoryBalances, OrderError
from gateway.market.exchange import Market, market_buy_for_session, session_price_source
from tests.market.fixtures import (
    EEA,
    Clock,
    addr,
    assert_not_crossed,
    credit,
    market,
    open_store,
    price,
    settings,
)


@pytest.fixture
def conn(tmp_path):
    c = open_store(tmp_path / "gw.sqlite")
    yield c
    c.close()


S061, S060, S056, S055, S053 = (addr(i) for i in range(1, 6))
B055, B053, B051, B050, B048 = (addr(i) for i in range(11, 16))
TAKER = addr(99)


def whitepaper_market(conn, clock=None, overlap=True):
    for s in (S061, S060, S056):
        credit(conn, s, watt=1000)
    for b in (B055, B053, B051, B050, B048, TAKER):
        credit(conn, b, eea=2 * EEA)
    m = market(conn, clock=clock, bmax_wh=0)
    for owner, p, q in ((S061, "0.61", 300), (S060, "0.60", 200), (S056, "0.56", 250)):
        m.place(owner, SELL, q, price(p))
    for owner, p, q in ((B055, "0.55", 200), (B053, "0.53", 250), (B051, "0.51", 300),
                        (B050, "0.50", 250), (B048, "0.48", 100)):
        m.place(owner, BUY, q, price(p))
    if overlap:
        for owner, p, q in ((S055, "0.55", 100), (S053, "0.53", 150)):
            r = m.place(owner, SELL, q, price(p))
            assert r["trades"] == [] and r["order"]["status"] == "open"
    return m


def test_whitepaper_overlap_on_the_store(conn):
    m = whitepaper_market(conn)
    q = m.quote()
    assert (q["best_bid"], q["best_ask"], q["spread"]) == (price("0.55"), price("0.53"),
                                                           -price("0.02"))
    assert q["best_executable_ask"] == price("0.56")
    r = m.place(TAKER, BUY, 300)  # market buy: "match the first seller with energy"
    assert [(t["seller"], t["price"], t["wh"]) for t in r["trades"]] == [
        (S056, price("0.56"), 250), (S060, price("0.60"), 50)]
    assert r["order"]["status"] == "filled"
    book = m.book_orders()
    assert [(o["owner"], o["executable"]) for o in book["asks"][:2]] == [(S053, False),
                                                                         (S055, False)]


def snapshot_three_ways(conn, m):
    live = m.book.snapshot()
    replayed, _ = journal.replay(conn, "c1", MemoryBalances())
    loaded, _ = journal.load(conn, "c1", MemoryBalances())
    return live, replayed.snapshot(), loaded.snapshot()


def test_restart_rebuilds_the_same_book_from_the_journal(tmp_path):
    path = tmp_path / "gw.sqlite"
    conn = open_store(path)
    rnd = random.Random(5)
    owners = [addr(i) for i in range(1, 9)]
    for i, o in enumerate(owners):
        credit(conn, o, watt=rnd.choice([0, 400, 3000]), eea=rnd.choice([0, EEA // 100, EEA]))
    clock = Clock()
    m = market(conn, clock=clock, bmax_wh=4000)
    other = market(conn, clock=clock, bmax_wh=4000)  # the CLI next to the service
    for step in range(250):
        who = m if rnd.random() < 0.7 else other
        r = rnd.random()
        try:
            if r < 0.55:
                who.place(rnd.choice(owners), rnd.choice([BUY, SELL]), rnd.randint(1, 600),
                          rnd.randint(90, 110) * 10**16)
            elif r < 0.65:
                who.place(rnd.choice(owners), BUY, rnd.randint(1, 900))
            elif r < 0.8:
                open_ids = list(who.book.orders) if who.book else []
                if open_ids:
                    who.cancel(rnd.choice(open_ids))
            elif r < 0.85:
                open_ids = list(who.book.orders) if who.book else []
                if open_ids:
                    who.amend(rnd.choice(open_ids), price=rnd.randint(90, 110) * 10**16)
            elif r < 0.95:
                credit(conn, rnd.choice(owners), watt=rnd.randint(1, 800),
                       eea=rnd.randint(1, EEA // 50))
                who.refresh()
            else:
                clock.t += 900
                who.settle()
        except OrderError:
            pass  # an order the other process already closed
        if step % 25 == 0:
            who.refresh()
            live, replayed, loaded = snapshot_three_ways(conn, who)
            assert live == replayed == loaded
    m.refresh()
    other.refresh()
    assert m.book.snapshot() == other.book.snapshot()
    live, replayed, loaded = snapshot_three_ways(conn, m)
    assert live == replayed == loaded and len(live) > 10
    conn.close()
    # A restart: a new process, a new Market, the same book.
    conn2 = open_store(path)
    m2 = market(conn2, clock=clock, bmax_wh=4000)
    m2.refresh()
    assert m2.book.snapshot() == live
    # open rows in the table agree with the book
    rows = conn2.execute("SELECT id, remaining FROM market_orders WHERE status='open' ORDER BY id")
    assert sorted((r[0], r[1]) for r in rows) == sorted((s[2], s[5]) for s in live)
    conn2.close()


def test_failed_operation_leaves_store_and_book_consistent(conn, monkeypatch):
    m = whitepaper_market(conn, overlap=False)
    before = m.book.snapshot()
    trades_before = conn.execute("SELECT COUNT(*) FROM market_trades").fetchone()[0]
    original = journal.trade

    def boom(*a, **kw):
        original(*a, **kw)
        raise RuntimeError("power cut")
    monkeypatch.setattr(journal, "trade", boom)
    with pytest.raises(RuntimeError):
        m.place(TAKER, BUY, 100)
    monkeypatch.setattr(journal, "trade", original)
    assert conn.execute("SELECT COUNT(*) FROM market_trades").fetchone()[0] == trades_before
    assert not conn.in_transaction
    assert m.quote()["asks"][0] == (price("0.56"), 250, 1)
    assert m.book.snapshot() == before


def test_bad_input_is_refused_cleanly(conn):
    m = whitepaper_market(conn, overlap=False)
    with pytest.raises(accounts.BalanceError):
        m.place("not-an-address", SELL, 10, 1000)
    with pytest.raises(OrderError):
        m.place(S056, SELL, 10)  # no market sells
    with pytest.raises(OrderError):
        m.place(S056, "lend", 10, 1000)
    with pytest.raises(OrderError):
        m.place(S056, SELL, 0, 1000)
    with pytest.raises(OrderError):
        m.place(S056, SELL, 10, -1)
    with pytest.raises(OrderError):
        m.place(S056, SELL, 10**6, 2**80)  # cost beyond the balance book's integers
    with pytest.raises(OrderError):
        m.cancel(424242)
    oid = m.book_orders()["asks"][0]["id"]
    with pytest.raises(OrderError):
        m.cancel(oid, owner=TAKER)
    m.refresh()
    assert len(m.book) == 8 and conn.execute("SELECT COUNT(*) FROM market_orders").fetchone()[0] == 8


# ---- settlement -------------------------------------------------------------------------

def balances(conn, *owners):
    return {o: (accounts.balance(conn, o, "WATT"), accounts.balance(conn, o, "EEA"))
            for o in owners}


def test_trades_of_an_interval_settle_once_in_batches(conn):
    clock = Clock(1_800_000_000.0)  # an interval start (divisible by 900)
    sellers = [addr(i) for i in range(1, 6)]
    buyer = addr(50)
    for s in sellers:
        credit(conn, s, watt=500)
    credit(conn, buyer, eea=EEA)
    m = market(conn, clock=clock, bmax_wh=0, settle_batch=2)
    for i, s in enumerate(sellers):
        m.place(s, SELL, 100, price("0.50") + i)
    before = balances(conn, buyer, *sellers)
    clock.t += 60
    r = m.place(buyer, BUY, 450)
    assert [t["wh"] for t in r["trades"]] == [100, 100, 100, 100, 50]
    # Unsettled trades already count: the sellers cannot sell the same energy twice.
    assert m.settle() == []  # the interval is still open
    assert balances(conn, buyer, *sellers) == before
    clock.t += 900
    done = m.settle()
    assert [(d["batch"], d["trades"]) for d in done] == [(0, 2), (1, 2), (2, 1)]
    sids = [outbox.settlement_id("c1", "trades", 1_800_000_000, b) for b in range(3)]
    assert [d["settlement_id"] for d in done] == sids
    rows = conn.execute("SELECT settlement_id, kind, payload FROM ledger_outbox ORDER BY id").fetchall()
    assert [r["settlement_id"] for r in rows] == sids and {r["kind"] for r in rows} == {"trades"}
    payload = [t for r in rows for t in json.loads(r["payload"])["trades"]]
    assert sum(t["wh"] for t in payload) == 450
    assert sum(t["eea"] for t in payload) == sum(t["eea"] for t in r["trades"])
    after = balances(conn, buyer, *sellers)
    assert after[buyer] == (450, EEA - sum(t["eea"] for t in r["trades"]))
    assert sum(after[s][0] for s in sellers) == 2500 - 450
    # Conservation: WATT and EEA only moved.
    assert sum(w for w, _ in after.values()) == sum(w for w, _ in before.values())
    assert sum(e for _, e in after.values()) == sum(e for _, e in before.values())
    # Exactly once: again, and from another process, nothing more.
    assert m.settle() == [] and market(conn, clock=clock, bmax_wh=0).settle() == []
    assert conn.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 3
    assert balances(conn, buyer, *sellers) == after
    # Settlement is a balance change: the buyer's energy is now his to sell.
    r2 = m.place(buyer, SELL, 450, price("0.70"))
    assert r2["order"]["status"] == "open"
    assert m.book_orders()["asks"][-1]["executable"] is True


def test_settlement_after_the_seller_consumed_the_energy_records_a_shortfall(conn):
    clock = Clock(1_800_000_000.0)
    seller, buyer = addr(1), addr(2)
    credit(conn, seller, watt=300)
    credit(conn, buyer, eea=EEA)
    m = market(conn, clock=clock, bmax_wh=0)
    m.place(seller, SELL, 300, price("0.50"))
    m.place(buyer, BUY, 300, price("0.50"))
    # The ledger burns 200 Wh of the seller's own consumption before the trade settles.
    with db.transaction(conn):
        accounts.post(conn, [(seller, "WATT", -200)], "interval_burn", "x")
    clock.t += 900
    (d,) = m.settle()
    assert (d["wh"], d["shortfall_wh"]) == (100, 200)
    row = conn.execute("SELECT wh, settled_wh FROM market_trades").fetchone()
    assert (row["wh"], row["settled_wh"]) == (300, 100)
    assert balances(conn, seller, buyer) == {seller: (0, 100 * price("0.50") // 1000),
                                             buyer: (100, EEA - 100 * price("0.50") // 1000)}


# ---- B_max on the store ---------------------------------------------------------------

def test_buy_above_bmax_waits_until_the_balance_falls(conn):
    clock = Clock(1_800_000_000.0)
    seller, buyer = addr(1), addr(2)
    credit(conn, seller, watt=5000)
    credit(conn, buyer, watt=3500, eea=EEA)
    m = market(conn, clock=clock, bmax_wh=4000)
    m.place(seller, SELL, 2000, price("0.40"))
    r = m.place(buyer, BUY, 1000, price("0.40"))
    assert [t["wh"] for t in r["trades"]] == [500] and r["order"]["status"] == "open"
    clock.t += 900
    m.settle()
    assert m.refresh()["trades"] == []  # at B_max: still waiting
    with db.transaction(conn):  # the buyer's consumption is burned: the balance falls
        accounts.post(conn, [(buyer, "WATT", -1200)], "interval_burn", "y")
    r = m.refresh()
    assert [t["wh"] for t in r["trades"]] == [500]
    assert accounts.balance(conn, buyer, "WATT") + 500 <= 4000


# ---- agents ---------------------------------------------------------------------------

def test_zi_agent_with_full_battery_sells_at_its_target_price(conn):
    clock = Clock()
    user = addr(7)
    m = market(conn, clock=clock, bmax_wh=4000)
    r = m.set_agent(user, sell_price="0.58 EEA")
    assert r["agent_orders"] == []  # an empty battery has nothing to sell
    credit(conn, user, watt=3999)
    assert m.refresh()["agent_orders"] == []  # not full yet
    credit(conn, user, watt=1, ref="full")  # settlement fills the battery to B_max
    r = m.refresh()
    assert [(o["side"], o["qty"], o["price"]) for o in r["agent_orders"]] == [
        (SELL, 2000, price("0.58"))]
    # Another balance change: a sell order is open, so no second one.
    credit(conn, user, watt=1, ref="more")
    assert m.refresh()["agent_orders"] == []
    assert len([o for o in m.book.open_orders(user) if o.side == SELL]) == 1


def test_zi_agent_does_not_sell_when_the_user_has_an_open_sell(conn):
    user = addr(8)
    credit(conn, user, watt=100)
    m = market(conn, bmax_wh=4000)
    m.place(user, SELL, 50, price("0.90"))
    m.set_agent(user, sell_price="0.60 EEA")
    credit(conn, user, watt=3900, ref="fill up")
    assert m.refresh()["agent_orders"] == []
    assert [(o.qty, o.price) for o in m.book.open_orders(user)] == [(50, price("0.90"))]


def test_zi_agent_buys_when_low_and_bids_are_capped(conn):
    user, seller = addr(9), addr(10)
    credit(conn, user, watt=300, eea=EEA)
    credit(conn, seller, watt=5000)
    m = market(conn, bmax_wh=4000)
    m.place(seller, SELL, 5000, price("0.40"))
    r = m.set_agent(user, buy_price="0.45 EEA", buy_below_wh=500)
    # stored 300 <= 500: buys up to B_max/2 = 2000, at the seller's ask
    assert [(o["side"], o["qty"]) for o in r["agent_orders"]] == [(BUY, 1700)]
    assert [(t["wh"], t["price"]) for t in r["trades"]] == [(1700, price("0.40"))]


def test_agent_settings_are_validated(conn):
    m = market(conn, bmax_wh=0)
    with pytest.raises(ValueError):
        m.set_agent(addr(1), sell_price="0.5 EEA")  # no B_max: the threshold must be given
    with pytest.raises(ValueError):
        m.set_agent(addr(1))
    with pytest.raises(ValueError):
        m.set_agent(addr(1), sell_price="cheap", sell_above_wh=10)
    with pytest.raises(ValueError):
        m.set_agent(addr(1), buy_price="1 EEA", buy_below_wh=100, buy_up_to_wh=50)
    m.set_agent(addr(1), sell_price="0.5 EEA", sell_above_wh=1000, keep_wh=200)
    assert conn.execute("SELECT COUNT(*) FROM market_agents").fetchone()[0] == 1


# ---- charging sessions ----------------------------------------------------------------

def test_session_buy_settles_at_once_and_is_idempotent(conn):
    m = whitepaper_market(conn)
    ev = addr(77)
    credit(conn, ev, eea=EEA)
    with db.transaction(conn):  # inside the central system's settlement transaction
        r = market_buy_for_session(conn, "c1", ev, 300, ref="CP1:17",
                                   settings=settings(bmax_wh=1000))
        # The EV holds the WATT already, inside the same transaction.
        assert accounts.balance(conn, ev, "WATT") == 300
    assert [(f["seller"], f["price"], f["wh"]) for f in r["fills"]] == [
        (S056, price("0.56"), 250), (S060, price("0.60"), 50)]
    assert (r["filled_wh"], r["unfilled_wh"]) == (300, 0)
    assert r["eea"] == 250 * price("0.56") // 1000 + 50 * price("0.60") // 1000
    assert 300 * r["average_price"] // 1000 >= r["eea"]
    assert r["settlement_id"] == outbox.settlement_id("c1", "trades", "session", "CP1:17")
    row = conn.execute("SELECT kind, payload FROM ledger_outbox").fetchone()
    assert row["kind"] == "trades" and len(json.loads(row["payload"])["trades"]) == 2
    assert accounts.balance(conn, ev, "EEA") == EEA - r["eea"]
    again = market_buy_for_session(conn, "c1", ev, 300, ref="CP1:17")
    assert again == r and accounts.balance(conn, ev, "WATT") == 300
    # The sellers' rest is still in the book, the trades are not settled twice.
    assert m.quote()["asks"][2] == (price("0.60"), 150, 1)
    assert conn.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 1


def test_session_buy_rolled_back_with_its_caller_leaves_nothing(conn):
    m = whitepaper_market(conn, overlap=False)
    ev = addr(78)
    credit(conn, ev, eea=EEA)
    before = m.book.snapshot()
    with pytest.raises(RuntimeError), db.transaction(conn):
        market_buy_for_session(conn, "c1", ev, 100, ref="CP1:18")
        raise RuntimeError("the session could not settle")
    assert conn.execute("SELECT COUNT(*) FROM market_trades").fetchone()[0] == 0
    m.refresh()
    assert m.book.snapshot() == before


def test_session_price_source_fits_ocpp_settlement(conn):
    whitepaper_market(conn, overlap=False)
    pool = addr(200)
    credit(conn, pool, watt=1000, eea=EEA)
    source = session_price_source("c1", pool, fallback_price=price("0.70"))
    tx = {"charger_id": "CP9", "id": 3}
    with db.transaction(conn):
        p = source(conn, tx, 800)  # 250 @0.56 + 200 @0.60 + 300 @0.61 + 50 Wh unfilled
    filled = 250 * price("0.56") // 1000 + 200 * price("0.60") // 1000 + 300 * price("0.61") // 1000
    expect = -(-(filled * 1000 + 50 * price("0.70")) // 800)
    assert p == expect
    assert 800 * p // 1000 >= filled + 50 * price("0.70") // 1000
    assert source(conn, tx, 800) == p  # a retry buys nothing more
    assert accounts.balance(conn, pool, "WATT") == 1000 + 750


def test_market_settings_are_validated():
    from gateway.config import ConfigError
    from gateway.market.settings import validate
    base = {"bmax_wh": 8000, "interval_s": 900, "settle_delay_s": 0, "settle_batch": 200,
            "poll_s": 2.0, "session_max_price": "", "price_sessions": True}
    validate({"market": base})
    for key, bad in (("bmax_wh", -1), ("interval_s", 7), ("settle_batch", 0),
                     ("settle_batch", 1000), ("poll_s", 0), ("session_max_price", "free"),
                     ("settle_delay_s", -5)):
        with pytest.raises(ConfigError, match=f"market.{key}"):
            validate({"market": {**base, key: bad}})


def test_two_markets_on_one_store_never_sell_the_same_energy_twice(conn):
    seller = addr(1)
    b1, b2 = addr(2), addr(3)
    credit(conn, seller, watt=100)
    credit(conn, b1, eea=EEA)
    credit(conn, b2, eea=EEA)
    m1, m2 = market(conn, bmax_wh=0), market(conn, bmax_wh=0)
    m1.place(seller, SELL, 100, price("0.5"))
    m2.place(seller, SELL, 100, price("0.5"))  # the same 100 Wh offered twice
    r1 = m1.place(b1, BUY, 100)
    r2 = m2.place(b2, BUY, 100)
    assert sum(t["wh"] for t in r1["trades"] + r2["trades"]) == 100


def test_market_rejects_wrong_use_of_session_buy(conn):
    m = Market(conn, "c1", settings())
    with pytest.raises(OrderError):
        m.session_buy(addr(1), 100, ref="")
    for wh in (0, -5, 1.5, "100"):
        with pytest.raises(OrderError):
            market_buy_for_session(conn, "c1", addr(1), wh, ref="CP:1")
    with pytest.raises(accounts.BalanceError):
        market_buy_for_session(conn, "c1", "0xnope", 100, ref="CP:2")
    assert conn.execute("SELECT COUNT(*) FROM market_orders").fetchone()[0] == 0


# ---- journal replay, as a property -------------------------------------------------------

OWNERS = [addr(i) for i in range(1, 5)]
store_ops = st.lists(st.one_of(
    st.tuples(st.just("limit"), st.sampled_from(OWNERS), st.sampled_from([BUY, SELL]),
              st.integers(95, 105).map(lambda x: x * 10**16), st.integers(1, 500)),
    st.tuples(st.just("market"), st.sampled_from(OWNERS), st.integers(1, 700)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("amend"), st.integers(0, 50), st.integers(95, 105).map(lambda x: x * 10**16)),
    st.tuples(st.just("credit"), st.sampled_from(OWNERS), st.integers(0, 600),
              st.integers(0, EEA // 20)),
    st.tuples(st.just("settle")),
), max_size=30)


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(store_ops)
def test_journal_replay_rebuilds_the_live_book(ops):
    conn = open_store(":memory:")
    clock = Clock()
    m = market(conn, clock=clock, bmax_wh=2000)
    for i, o in enumerate(OWNERS):
        credit(conn, o, watt=[0, 300, 1500, 0][i], eea=[EEA // 10, 0, EEA // 100, EEA][i])
    n = 0
    for op in ops:
        if op[0] == "limit":
            m.place(op[1], op[2], op[4], op[3])
        elif op[0] == "market":
            m.place(op[1], BUY, op[2])
        elif op[0] in ("cancel", "amend"):
            m.refresh()
            ids = sorted(m.book.orders)
            if ids:
                oid = ids[op[1] % len(ids)]
                if op[0] == "cancel":
                    m.cancel(oid)
                else:
                    m.amend(oid, price=op[2])
        elif op[0] == "credit":
            n += 1
            if op[2] or op[3]:
                credit(conn, op[1], watt=op[2], eea=op[3], ref=f"c{n}")
            m.refresh()
        else:
            clock.t += 900
            m.settle()
    m.refresh()
    assert_not_crossed(m.book)  # against the real balance book and unsettled trades
    m.balances.clear()
    live, replayed, loaded = snapshot_three_ways(conn, m)
    assert live == replayed == loaded
    conn.close()


def test_session_buy_beyond_64_bit_amounts(conn):
    """A 50 kWh session at 0.30 EEA/kWh costs 15 EEA = 1.5e19 base units, more than SQLite's
    64-bit integers hold: the buy, the book and the balances stay exact."""
    ev, seller = addr(78), addr(79)
    credit(conn, seller, watt=60_000)
    credit(conn, ev, eea=100 * EEA)
    m = market(conn, bmax_wh=0)
    m.place(seller, SELL, 60_000, price("0.30"))
    with db.transaction(conn):
        r = market_buy_for_session(conn, "c1", ev, 50_000, ref="CP9:1",
                                   settings=settings(bmax_wh=0))
    assert (r["filled_wh"], r["eea"]) == (50_000, 15 * EEA)
    assert r["eea"] > 2**63
    assert accounts.balance(conn, ev, "EEA") == 85 * EEA
    assert accounts.balance(conn, ev, "WATT") == 50_000


def test_an_order_costing_more_than_all_eea_is_refused(conn):
    m = market(conn, bmax_wh=0)
    with pytest.raises(ValueError, match="total EEA supply"):
        m.place(addr(80), BUY, 1000, 700_000_001 * EEA)


# ---- hostile sizes and stale agent settings (audit) ------------------------------------

def test_absurd_quantities_are_refused_not_crashed(conn):
    """Quantities beyond SQLite's 64-bit integers used to escape as OverflowError."""
    from gateway.units import MAX_WH
    seller, buyer = addr(1), addr(2)
    credit(conn, seller, watt=100)
    credit(conn, buyer, eea=EEA)
    m = market(conn, bmax_wh=0)
    huge = 10**20
    with pytest.raises(OrderError, match="too large"):
        m.place(seller, SELL, huge, 1)
    with pytest.raises(OrderError, match="too large"):
        m.place(buyer, BUY, huge)  # a market buy
    with pytest.raises(OrderError, match="too large"):
        m.place(seller, SELL, MAX_WH + 1, 1)
    with pytest.raises(OrderError):
        m.place(seller, SELL, "100", 10**18)  # never string arithmetic ("100" * price)
    oid = m.place(seller, SELL, 100, price("0.5"))["order"]["id"]
    with pytest.raises(OrderError, match="too large"):
        m.amend(oid, qty=huge)
    with pytest.raises(ValueError, match="Wh"):
        m.set_agent(seller, sell_price="0.5 EEA", sell_above_wh=huge)
    # Nothing was written by the refused operations; the amended order is still there.
    assert [o["id"] for o in m.book_orders()["asks"]] == [oid]
    assert conn.execute("SELECT COUNT(*) FROM market_orders").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM market_agents").fetchone()[0] == 0
    # A charging session claiming absurd energy is billed at the configured price.
    source = session_price_source("c1", buyer, fallback_price=777)
    with db.transaction(conn):
        assert source(conn, {"charger_id": "CP", "id": 1}, huge) == 777
    assert conn.execute("SELECT COUNT(*) FROM market_trades").fetchone()[0] == 0


def test_agent_left_invalid_by_a_bmax_change_does_not_stop_the_market(conn):
    """An agent set with B_max defaults, then [market] bmax_wh = 0: its thresholds no
    longer resolve. The market used to fail every operation (catch-up lets agents act),
    `agents set` included, so the agent could not even be fixed."""
    user, buyer = addr(1), addr(2)
    market(conn, bmax_wh=4000).set_agent(user, sell_price="0.5 EEA")
    m = market(conn, bmax_wh=0)  # the operator removed the cap
    credit(conn, user, watt=5000)
    credit(conn, buyer, eea=EEA)
    r = m.place(buyer, BUY, 10, price("0.6"))
    assert r["agent_orders"] == [] and r["order"]["status"] == "open"
    assert m.refresh()["agent_orders"] == []  # the agent waits, idle
    # The owner sets explicit thresholds: the agent acts again.
    r = m.set_agent(user, sell_above_wh=1000, keep_wh=0)
    assert [(o["side"], o["qty"]) for o in r["agent_orders"]] == [(SELL, 5000)]
    assert [(t["seller"], t["buyer"], t["wh"]) for t in r["trades"]] == [(user, buyer, 10)]
