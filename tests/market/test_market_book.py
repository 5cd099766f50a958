"""The order book: the whitepaper's examples, then properties over random order streams."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.market.book import (
    BUY,
    CANCELLED,
    DONE,
    FILLED,
    OPEN,
    SELL,
    Book,
    MemoryBalances,
    OrderError,
    affordable,
    cost,
)
from gateway.market.reference import ReferenceBook
from tests.market.fixtures import assert_not_crossed

EEA = 10**18


def p(text):
    """Whitepaper price '0.61' -> EEA base units per kWh."""
    whole, _, frac = text.partition(".")
    return int(whole) * EEA + int((frac + "0" * 18)[:18])


RICH = 10**24  # EEA base units: plenty for any test order


def whitepaper_book(overlap=False):
    """Section 7.3's order book. Quantities in Wh; each order from its own user."""
    sellers = {f"s{t}": 10_000 for t in ("061", "060", "056")}
    buyers = {f"b{t}": 0 for t in ("055", "053", "051", "050", "048")}
    bal = MemoryBalances(watt={**sellers, **buyers, "s055": 0, "s053": 0, "taker": 0},
                         eea={b: RICH for b in list(buyers) + ["taker"]}, bmax=None)
    book = Book(bal)
    for owner, price, qty in (("s061", "0.61", 300), ("s060", "0.60", 200), ("s056", "0.56", 250)):
        assert book.limit(owner, SELL, p(price), qty)[1] == []
    bids = [("b055", "0.55", 200), ("b053", "0.53", 250), ("b051", "0.51", 300)]
    if overlap:
        bids += [("b050", "0.50", 250), ("b048", "0.48", 100)]
    for owner, price, qty in bids:
        assert book.limit(owner, BUY, p(price), qty)[1] == []
    if overlap:
        # Sellers whose energy does not exist yet: their asks cross the bids but rest.
        for owner, price, qty in (("s055", "0.55", 100), ("s053", "0.53", 150)):
            order, trades = book.limit(owner, SELL, p(price), qty)
            assert trades == [] and order.status == OPEN
    return book, bal


def test_whitepaper_order_book_quote_and_spread():
    book, _ = whitepaper_book()
    q = book.quote()
    # "buying-price = lowest ask", "selling-price = highest bid", the spread between.
    assert q["best_ask"] == p("0.56") and q["best_bid"] == p("0.55")
    assert q["spread"] == p("0.01")
    assert q["asks"] == [(p("0.56"), 250, 1), (p("0.60"), 200, 1), (p("0.61"), 300, 1)]
    assert q["bids"] == [(p("0.55"), 200, 1), (p("0.53"), 250, 1), (p("0.51"), 300, 1)]
    assert q["best_executable_ask"] == p("0.56")


def test_whitepaper_market_buy_takes_lowest_ask_then_next():
    book, bal = whitepaper_book()
    order, trades = book.market_buy("taker", 300)
    assert [(t.seller, t.price, t.wh, t.eea) for t in trades] == [
        ("s056", p("0.56"), 250, 250 * p("0.56") // 1000),
        ("s060", p("0.60"), 50, 50 * p("0.60") // 1000),
    ]
    assert order.status == FILLED
    assert book.best_ask() == p("0.60") and book.last_price == p("0.60")
    assert bal.out_wh == {"s056": 250, "s060": 50}


def test_whitepaper_overlapping_book_quotes_whole_book_trades_with_first_seller_with_energy():
    book, _bal = whitepaper_book(overlap=True)
    q = book.quote()
    # Market prices come from the whole book "regardless of energy being available or not":
    assert q["best_ask"] == p("0.53") and q["best_bid"] == p("0.55")
    assert q["spread"] == -p("0.02")
    # ...but a user who buys right away must match the first seller with energy: 0.56.
    assert q["best_executable_ask"] == p("0.56")
    assert q["best_executable_bid"] == p("0.55")
    assert q["asks"][:2] == [(p("0.53"), 150, 1), (p("0.55"), 100, 1)]
    assert q["bids"][-2:] == [(p("0.50"), 250, 1), (p("0.48"), 100, 1)]
    _order, trades = book.market_buy("taker", 100)
    assert [(t.seller, t.price, t.wh) for t in trades] == [("s056", p("0.56"), 100)]
    # The unexecutable asks are still there and still quote.
    assert book.best_ask() == p("0.53")
    assert [o.owner for o in book.iter_side(SELL)][:2] == ["s053", "s055"]
    assert_not_crossed(book)


def test_overlap_resolves_when_the_seller_gets_energy():
    book, bal = whitepaper_book(overlap=True)
    bal.set("s053", watt=150)  # the 0.53 seller's energy arrives (interval settlement)
    trades = book.rematch({"s053"})
    # He sells to the highest bid; the bid was in the book first, so its price holds.
    assert [(t.buyer, t.seller, t.price, t.wh) for t in trades] == [("b055", "s053", p("0.55"), 150)]
    assert book.best_ask() == p("0.55") and book.best_bid() == p("0.55")
    assert_not_crossed(book)


def test_resting_bid_gets_the_older_asks_price_when_it_becomes_executable():
    bal = MemoryBalances(watt={"s": 1000}, eea={"b": 0}, bmax=None)
    book = Book(bal)
    book.limit("s", SELL, 500_000, 100)
    book.limit("b", BUY, 600_000, 100)  # no EEA yet: waits
    assert len(book) == 2
    bal.set("b", eea=10**12)
    (t,) = book.rematch({"b"})
    assert (t.price, t.wh, t.eea) == (500_000, 100, 50_000)


def test_resting_ask_keeps_its_price_when_its_seller_gets_energy():
    bal = MemoryBalances(watt={"s": 0}, eea={"b": RICH}, bmax=None)
    book = Book(bal)
    book.limit("s", SELL, 500_000, 100)  # no energy yet: rests although bids cross it
    book.limit("b", BUY, 600_000, 60)
    book.limit("b", BUY, 550_000, 60)
    bal.set("s", watt=100)
    trades = book.rematch({"s"})
    assert [(t.price, t.wh) for t in trades] == [(500_000, 60), (500_000, 40)]


def test_buy_above_bmax_waits_until_balance_falls():
    bal = MemoryBalances(watt={"s": 5000, "b": 3500}, eea={"b": RICH}, bmax=4000)
    book = Book(bal)
    book.limit("s", SELL, 1000, 2000)
    order, trades = book.limit("b", BUY, 1000, 1000)
    assert [t.wh for t in trades] == [500]  # up to B_max, the rest waits
    assert order.remaining == 500 and order.status == OPEN
    assert bal.headroom("b") == 0
    assert book.rematch({"b"}) == []  # nothing changed for b
    bal.settle()
    bal.set("b", watt=3000)  # b consumed 1000 Wh: the balance fell
    trades = book.rematch({"b"})
    assert [t.wh for t in trades] == [500] and order.status == FILLED


def test_buyer_eea_must_cover():
    bal = MemoryBalances(watt={"s": 5000}, eea={"b": 1000}, bmax=None)
    book = Book(bal)
    book.limit("s", SELL, 3000, 2000)  # 3 base units per Wh
    order, trades = book.limit("b", BUY, 3000, 1000)
    assert [(t.wh, t.eea) for t in trades] == [(333, 999)]
    assert order.remaining == 667
    order, trades = book.market_buy("b", 10)
    assert trades == [] and order.status == DONE


def test_self_trade_is_skipped():
    bal = MemoryBalances(watt={"a": 500, "c": 500}, eea={"a": RICH}, bmax=None)
    book = Book(bal)
    book.limit("a", SELL, 100, 100)
    book.limit("c", SELL, 200, 100)
    _, trades = book.limit("a", BUY, 300, 100)
    assert [(t.seller, t.price) for t in trades] == [("c", 200)]


def test_cancel_and_amend():
    bal = MemoryBalances(watt={"s": 5000}, eea={}, bmax=None)
    book = Book(bal)
    a, _ = book.limit("s", SELL, 100, 10)
    b, _ = book.limit("s", SELL, 100, 20)
    new, trades = book.amend(a.id, qty=15)
    assert trades == [] and new.id > b.id and a.status == CANCELLED
    assert [o.id for o in book.iter_side(SELL)] == [b.id, new.id]  # amend loses time priority
    book.cancel(b.id)
    with pytest.raises(OrderError):
        book.cancel(b.id)
    with pytest.raises(OrderError):
        book.amend(12345, price=5)
    assert book.snapshot() == [(SELL, 100, new.id, "s", 15, 15)]
    assert book.quote()["ask_wh"] == 15


@pytest.mark.parametrize("args", [(0, 10), (-5, 10), (10, 0), (10, -1), (1.5, 10), (10, 2.0),
                                  (True, 10), ("10", 10), (None, 10)])
def test_bad_orders_are_refused(args):
    book = Book(MemoryBalances())
    with pytest.raises(OrderError):
        book.limit("x", BUY, *args)
    with pytest.raises(OrderError):
        book.limit("x", "hold", 10, 10)
    assert len(book) == 0 and book.next_id >= 1


# ---- properties -----------------------------------------------------------------------

OWNERS = ["u0", "u1", "u2", "u3", "u4"]
BMAX = 3000


ops = st.one_of(
    st.tuples(st.just("limit"), st.sampled_from(OWNERS), st.sampled_from([BUY, SELL]),
              st.integers(90, 110).map(lambda x: x * 997), st.integers(1, 800)),
    st.tuples(st.just("market"), st.sampled_from(OWNERS), st.integers(1, 1500),
              st.one_of(st.none(), st.integers(95, 110).map(lambda x: x * 997)), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 60)),
    st.tuples(st.just("amend"), st.integers(0, 60), st.integers(90, 110).map(lambda x: x * 997),
              st.integers(1, 500)),
    st.tuples(st.just("credit"), st.sampled_from(OWNERS), st.integers(-800, 2000),
              st.integers(-200_000, 600_000)),
    st.tuples(st.just("settle")),
)


def initial_balances():
    return MemoryBalances(
        watt={"u0": 2000, "u1": 0, "u2": 500, "u3": 2900, "u4": 0},
        eea={"u0": 10**6, "u1": 2 * 10**6, "u2": 0, "u3": 300_000, "u4": 5 * 10**6},
        bmax=BMAX)


def totals(bal):
    watt = sum(bal.watt.values()) + sum(bal.in_wh.values()) - sum(bal.out_wh.values())
    eea = sum(bal.eea.values()) + sum(bal.in_eea.values()) - sum(bal.out_eea.values())
    return watt, eea


def apply_op(book, op, ids):
    """Run one op on a book; returns (trades, fresh aggressor or None)."""
    kind = op[0]
    bal = book.balances
    if kind == "limit":
        o, trades = book.limit(op[1], op[2], op[3], op[4])
        ids.append(o.id)
        return trades, o
    if kind == "market":
        o, trades = book.market_buy(op[1], op[2], max_price=op[3], cap=op[4])
        return trades, o
    if kind in ("cancel", "amend"):
        if not ids:
            return [], None
        oid = ids[op[1] % len(ids)]
        try:
            if kind == "cancel":
                book.cancel(oid)
                return [], None
            o, trades = book.amend(oid, price=op[2], qty=op[3])
            ids.append(o.id)
            return trades, o
        except OrderError:
            return [], None
    if kind == "credit":
        owner = op[1]
        bal.set(owner, watt=max(0, bal.watt.get(owner, 0) + op[2]),
                eea=max(0, bal.eea.get(owner, 0) + op[3]))
        return book.rematch({owner}), None
    if kind == "settle":
        return book.rematch(bal.settle()), None
    raise AssertionError(kind)


def priority_key(o):
    return (o.price, o.id) if o.side == SELL else (-o.price, o.id)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, max_size=60))
def test_properties_against_reference_book(stream):
    book = Book(initial_balances())
    ref = ReferenceBook(initial_balances())
    ids, ref_ids = [], []
    start = totals(book.balances)
    for op in stream:
        before = {o: (book.balances.sellable(o), book.balances.spendable(o)) for o in OWNERS}
        trades, aggressor = apply_op(book, op, ids)
        ref_trades, _ = apply_op(ref, op, ref_ids)
        # Same rules, same stream: the fast book and the plain one agree exactly.
        assert trades == ref_trades, op
        assert book.snapshot() == ref.snapshot(), op
        assert_not_crossed(book)
        bal = book.balances
        for t in trades:
            assert t.wh > 0 and t.eea == cost(t.wh, t.price)
            assert t.buyer != t.seller
        # Conservation: trades move Wh and EEA, they never create or destroy them.
        if op[0] != "credit":
            assert totals(bal) == start
        else:
            start = totals(bal)
        # Nobody sells energy or spends EEA he does not have (a credit may take a
        # balance below what is already sold: then nothing more is sold).
        if op[0] != "credit":
            for owner in OWNERS:
                assert bal.sellable(owner) >= min(0, before[owner][0])
                assert bal.spendable(owner) >= min(0, before[owner][1])
        # B_max is never exceeded by a capped fill.
        capped = not (op[0] == "market" and op[4] is False)
        for t in trades:
            if capped or t.buyer != aggressor.owner:
                assert bal.headroom(t.buyer) >= 0
        # Price-time priority: makers in priority order, and nothing better left behind
        # that the aggressor could have traded with.
        if aggressor is not None and trades:
            makers = [book_order_key(t, aggressor) for t in trades]
            assert makers == sorted(makers)
            last = makers[-1]
            for o in book.iter_side(SELL if aggressor.side == BUY else BUY):
                if priority_key(o) >= last or o.owner == aggressor.owner:
                    continue
                if aggressor.side == BUY:
                    assert bal.sellable(o.owner) <= 0, (o, trades)
                else:
                    assert (bal.headroom(o.owner) <= 0
                            or affordable(bal.spendable(o.owner), o.price) <= 0), (o, trades)


def book_order_key(t, aggressor):
    if aggressor.side == BUY:
        return (t.price, t.sell_id)
    return (-t.price, t.buy_id)


def test_many_orders_at_one_level_keep_fifo_after_cancels():
    bal = MemoryBalances(watt={f"s{i}": 10 for i in range(100)}, eea={"b": RICH}, bmax=None)
    book = Book(bal)
    orders = [book.limit(f"s{i}", SELL, 1000, 10)[0] for i in range(100)]
    for o in orders[::3]:
        book.cancel(o.id)
    _, trades = book.market_buy("b", 10 * 20)
    expected = [o.id for i, o in enumerate(orders) if i % 3][:20]
    assert [t.sell_id for t in trades] == expected
    assert len(book) == 100 - 34 - 20


@pytest.mark.parametrize("seed", range(6))
def test_long_random_streams_match_reference(seed):
    """Longer streams than hypothesis explores: parking, rematch and compaction at scale."""
    import random
    rnd = random.Random(seed)
    owners = [f"u{i}" for i in range(12)]

    def fresh():
        return MemoryBalances(watt={o: rnd2.choice([0, 0, 300, 5000]) for o in owners},
                              eea={o: rnd2.choice([0, 10**5, 10**7]) for o in owners}, bmax=6000)

    rnd2 = random.Random(seed)
    book = Book(fresh())
    rnd2 = random.Random(seed)
    ref = ReferenceBook(fresh())
    ids, ref_ids = [], []
    for step in range(1500):
        r = rnd.random()
        if r < 0.55:
            op = ("limit", rnd.choice(owners), rnd.choice([BUY, SELL]), rnd.randint(95, 105) * 991,
                  rnd.randint(1, 400))
        elif r < 0.65:
            op = ("market", rnd.choice(owners), rnd.randint(1, 900), None, rnd.random() < 0.8)
        elif r < 0.8:
            op = ("cancel", rnd.randrange(10**6))
        elif r < 0.85:
            op = ("amend", rnd.randrange(10**6), rnd.randint(95, 105) * 991, rnd.randint(1, 300))
        elif r < 0.97:
            op = ("credit", rnd.choice(owners), rnd.randint(-400, 900), rnd.randint(-10**5, 10**6))
        else:
            op = ("settle",)
        trades, _ = apply_op(book, op, ids)
        assert trades == apply_op(ref, op, ref_ids)[0], (step, op)
        if step % 50 == 0:
            assert book.snapshot() == ref.snapshot()
            assert_not_crossed(book)
    assert book.snapshot() == ref.snapshot()
    assert_not_crossed(book)
