"""A deliberately plain order book with the same rules as book.Book.

Two sorted Python lists (one per side, in priority order), insertion by linear
search, matching by a linear scan from the front, cancel by linear search. It is
the baseline bench/market.py measures the real book against, and the oracle the
property tests compare it with: same order stream, same trades, same book.
"""
from gateway.market.book import (
    BUY,
    CANCELLED,
    DONE,
    FILLED,
    OPEN,
    SELL,
    Order,
    OrderError,
    Trade,
    affordable,
    check_amount,
)


class ReferenceBook:
    def __init__(self, balances, next_id=1):
        self.balances = balances
        self.next_id = next_id
        self.bids = []  # best first: price high to low, then id
        self.asks = []  # best first: price low to high, then id
        self.last_price = None

    def _new(self, owner, side, price, qty):
        o = Order(self.next_id, owner, side, price, qty)
        self.next_id += 1
        return o

    def _insert(self, o):
        lst = self.bids if o.side == BUY else self.asks
        i = 0
        while i < len(lst):
            other = lst[i]
            better = other.price > o.price if o.side == BUY else other.price < o.price
            if not better and other.price != o.price:
                break
            i += 1
        lst.insert(i, o)

    def limit(self, owner, side, price, qty):
        check_amount(price, "price")
        check_amount(qty, "quantity")
        if side not in (BUY, SELL):
            raise OrderError(f"side must be buy or sell, got {side!r}")
        o = self._new(owner, side, price, qty)
        trades = self._match(o, price, True, True)
        if o.remaining:
            self._insert(o)
        else:
            o.status = FILLED
        return o, trades

    def market_buy(self, owner, qty, max_price=None, cap=True):
        check_amount(qty, "quantity")
        o = self._new(owner, BUY, None, qty)
        trades = self._match(o, max_price, True, cap)
        o.status = FILLED if o.remaining == 0 else DONE
        return o, trades

    def _find(self, oid):
        for lst in (self.bids, self.asks):
            for o in lst:
                if o.id == oid:
                    return lst, o
        raise OrderError(f"no open order {oid}")

    def cancel(self, oid):
        lst, o = self._find(oid)
        lst.remove(o)
        o.status = CANCELLED
        return o

    def amend(self, oid, price=None, qty=None):
        _, o = self._find(oid)
        price = o.price if price is None else price
        qty = o.remaining if qty is None else qty
        check_amount(price, "price")
        check_amount(qty, "quantity")
        self.cancel(oid)
        return self.limit(o.owner, o.side, price, qty)

    def rematch(self, owners):
        todo = sorted((o for o in self.bids + self.asks if o.owner in owners), key=lambda o: o.id)
        trades = []
        for o in todo:
            if o.status == OPEN:
                trades.extend(self._match(o, o.price, False, True))
        return trades

    def _match(self, o, limit, fresh, cap):
        bal = self.balances
        trades = []
        other = self.asks if o.side == BUY else self.bids
        for m in list(other):
            if o.remaining == 0:
                break
            if limit is not None and (m.price > limit if o.side == BUY else m.price < limit):
                break
            if m.status != OPEN or m.owner == o.owner:
                continue
            buy, sell = (o, m) if o.side == BUY else (m, o)
            price = m.price if (fresh or m.id < o.id) else o.price
            head = bal.headroom(buy.owner) if (cap or buy is m) else 1 << 62
            q = min(o.remaining, m.remaining, bal.sellable(sell.owner), head,
                    affordable(bal.spendable(buy.owner), price))
            if q <= 0:
                continue
            c = q * price // 1000
            bal.apply(sell.owner, buy.owner, q, c)
            trades.append(Trade(buy.id, sell.id, buy.owner, sell.owner, price, q, c, o.id))
            self.last_price = price
            for x in (o, m):
                x.remaining -= q
            if m.remaining == 0:
                m.status = FILLED
                other.remove(m)
        if o.remaining == 0 and o.status == OPEN and o in (self.bids if o.side == BUY
                                                           else self.asks):
            o.status = FILLED
            (self.bids if o.side == BUY else self.asks).remove(o)
        return trades

    def snapshot(self):
        return [(o.side, o.price, o.id, o.owner, o.qty, o.remaining)
                for o in self.bids + self.asks]

    def best_bid(self):
        return self.bids[0].price if self.bids else None

    def best_ask(self):
        return self.asks[0].price if self.asks else None
