"""Helpers for the market tests: a store with accounts, a controllable clock."""
from gateway import accounts, db
from gateway.market.book import BUY, SELL, affordable
from gateway.market.exchange import Market
from gateway.market.settings import market_settings

EEA = 10**18


def addr(i):
    return "0x" + f"{i:040x}"


def price(text):
    """Whitepaper price '0.61' (EEA per kWh) -> base units."""
    whole, _, frac = text.partition(".")
    return int(whole) * EEA + int((frac + "0" * 18)[:18])


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def open_store(path):
    conn = db.connect(path)
    accounts.init(conn)
    return conn


def credit(conn, address, watt=0, eea=0, ref=None):
    entries = []
    if watt:
        entries.append((address, "WATT", watt))
    if eea:
        entries.append((address, "EEA", eea))
    with db.transaction(conn):
        accounts.post(conn, entries, "test", ref or "")


def settings(**over):
    s = dict(market_settings())
    s.update(over)
    return s


def market(conn, community="c1", clock=None, **over):
    return Market(conn, community, settings(**over), clock=clock or Clock())


def assert_not_crossed(book):
    """No pair of resting orders of different owners that could trade right now."""
    bal = book.balances
    asks = list(book.iter_side(SELL))
    for b in book.iter_side(BUY):
        for a in asks:
            if a.price > b.price or a.owner == b.owner:
                continue
            price = a.price if a.id < b.id else b.price
            executable = (bal.sellable(a.owner) > 0 and bal.headroom(b.owner) > 0
                          and affordable(bal.spendable(b.owner), price) > 0)
            assert not executable, f"executable crossing left in the book: {b} x {a}"
