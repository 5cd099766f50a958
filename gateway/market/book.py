"""The community order book: a continuous double auction with the whitepaper's twists.

Prices are integers in EEA base units per kWh, quantities integer Wh; the cost of q Wh
at price p is q * p // 1000 (floor), the same rule everywhere in the project. Priority is
price, then time (the order id, which only grows). Unlike a stock exchange (whitepaper
7.3; docs/market.md, "The rules"), a sell order may rest without energy to deliver (it
counts for the quote but cannot execute), a buy fills only up to its owner's B_max, and
a buyer's EEA must cover the price at match time; a user never trades with himself.

So executability is decided at match time from a balance view (MemoryBalances, or the
gateway's), never stored in the book; when balances change outside it, `rematch(owners)`
lets those owners' orders trade with what now crosses them. Whatever order was in the
book first sets the trade price, so a trade happens at the price it would have had if
everyone had had the energy. Data structures: Level; parking: the note above Book._park.
"""
from bisect import bisect_left, insort
from collections import deque

BUY = "buy"
SELL = "sell"
SIDES = (BUY, SELL)

# Status of an order once it has left the book (or while it is in it).
OPEN = "open"
FILLED = "filled"
CANCELLED = "cancelled"
DONE = "done"  # a market order's unfilled rest, dropped (market orders never rest)


class OrderError(ValueError):
    pass


def cost(wh, price):
    """EEA base units for `wh` Wh at `price` base units per kWh (floor)."""
    return wh * price // 1000


def affordable(eea, price):
    """The most Wh whose cost at `price` does not exceed `eea`."""
    return (eea * 1000 + 999) // price


class Order:
    __slots__ = ("id", "level", "owner", "parked", "price", "qty", "remaining", "side", "status")

    def __init__(self, oid, owner, side, price, qty, remaining=None, status=OPEN):
        self.id = oid
        self.owner = owner
        self.side = side
        self.price = price  # None for a market order
        self.qty = qty
        self.remaining = qty if remaining is None else remaining
        self.status = status
        self.level = None  # the Level it rests in, None when not resting
        self.parked = False  # resting but known unexecutable: out of the scan queue

    @property
    def live(self):
        return self.status == OPEN

    def as_dict(self):
        return {"id": self.id, "owner": self.owner, "side": self.side, "price": self.price,
                "qty": self.qty, "remaining": self.remaining, "status": self.status}

    def __repr__(self):
        return (f"Order({self.id}, {self.owner!r}, {self.side}, price={self.price}, "
                f"{self.remaining}/{self.qty} Wh, {self.status})")


class Trade:
    """One fill. `taker` is the order whose arrival (or new executability) caused it."""

    __slots__ = ("buy_id", "buyer", "eea", "price", "sell_id", "seller", "taker", "wh")

    def __init__(self, buy_id, sell_id, buyer, seller, price, wh, eea, taker):
        self.buy_id = buy_id
        self.sell_id = sell_id
        self.buyer = buyer
        self.seller = seller
        self.price = price
        self.wh = wh
        self.eea = eea
        self.taker = taker

    def as_tuple(self):
        return (self.buy_id, self.sell_id, self.buyer, self.seller, self.price, self.wh,
                self.eea, self.taker)

    def as_dict(self):
        return {"buy_order": self.buy_id, "sell_order": self.sell_id, "buyer": self.buyer,
                "seller": self.seller, "price": self.price, "wh": self.wh, "eea": self.eea,
                "taker": self.taker}

    def __eq__(self, other):
        return isinstance(other, Trade) and self.as_tuple() == other.as_tuple()

    def __repr__(self):
        return "Trade" + repr(self.as_tuple())


class Level:
    """One price of one side: a FIFO deque of orders.

    Per side the book keeps a dict price -> Level and a sorted list of the price keys
    (bids keyed by -price so both sides walk ascending); bisect keeps the key list sorted,
    which is cheap because a book has few distinct prices compared to orders. Cancels and
    fills only mark an order dead (O(1)); dead orders leave the deque when they reach its
    head or when the level is compacted.
    """

    __slots__ = ("dead", "idx", "key", "live", "orders", "parked", "price", "qty")

    def __init__(self, idx, key, price):
        self.idx = idx  # 0 bids, 1 asks
        self.key = key
        self.price = price
        self.orders = deque()  # scan queue in time order; may hold dead/parked entries
        self.live = 0  # open orders, parked ones included
        self.qty = 0  # their remaining Wh
        self.dead = 0  # entries in `orders` that are dead or parked
        self.parked = {}  # id -> parked Order

    def in_time_order(self):
        """Open orders of this level, parked ones included, oldest first."""
        active = [o for o in self.orders if o.status == OPEN and not o.parked]
        if not self.parked:
            return active
        return sorted(active + list(self.parked.values()), key=_order_id)


class MemoryBalances:
    """A balance view kept in memory: settled balances plus unsettled trades.

    The same arithmetic as the SQLite view the gateway uses (see exchange.py):
    sellable = WATT − WATT sold but not settled; spendable = EEA − EEA owed on
    unsettled buys; headroom = B_max − WATT − WATT bought but not settled. Energy
    or EEA received in an unsettled trade is not usable until settlement, so a
    trade never makes another order executable; only settlement or an outside
    balance change does (and then the book is told with `rematch`).
    """

    # per owner: [WATT, EEA, WATT sold, WATT bought, EEA paid, EEA received] (unsettled)
    def __init__(self, watt=None, eea=None, bmax=None):
        self.bmax = bmax  # None = no cap
        self._rec = {}
        for owner, wh in (watt or {}).items():
            self._r(owner)[0] = wh
        for owner, units in (eea or {}).items():
            self._r(owner)[1] = units

    def _r(self, owner):
        r = self._rec.get(owner)
        if r is None:
            r = self._rec[owner] = [0, 0, 0, 0, 0, 0]
        return r

    def _column(self, i):
        return {o: r[i] for o, r in self._rec.items() if r[i] or i < 2}

    watt = property(lambda self: self._column(0))
    eea = property(lambda self: self._column(1))
    out_wh = property(lambda self: self._column(2))
    in_wh = property(lambda self: self._column(3))
    out_eea = property(lambda self: self._column(4))
    in_eea = property(lambda self: self._column(5))

    def sellable(self, owner):
        r = self._rec.get(owner)
        return r[0] - r[2] if r else 0

    def spendable(self, owner):
        r = self._rec.get(owner)
        return r[1] - r[4] if r else 0

    def headroom(self, owner):
        if self.bmax is None:
            return 1 << 62
        r = self._rec.get(owner)
        return self.bmax - r[0] - r[3] if r else self.bmax

    def stored(self, owner):
        """WATT the owner will hold once his unsettled trades settle."""
        r = self._rec.get(owner)
        return r[0] - r[2] + r[3] if r else 0

    def apply(self, seller, buyer, wh, eea):
        s = self._r(seller)
        s[2] += wh
        s[5] += eea
        b = self._r(buyer)
        b[3] += wh
        b[4] += eea

    def settle(self):
        """Move every unsettled trade into the balances; the owners that changed."""
        changed = set()
        for owner, r in self._rec.items():
            if r[2] or r[3] or r[4] or r[5]:
                r[0] += r[3] - r[2]
                r[1] += r[5] - r[4]
                r[2] = r[3] = r[4] = r[5] = 0
                changed.add(owner)
        return changed

    def set(self, owner, watt=None, eea=None):
        r = self._r(owner)
        if watt is not None:
            r[0] = watt
        if eea is not None:
            r[1] = eea


def check_amount(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise OrderError(f"{what} must be an integer, got {value!r}")
    if value <= 0:
        raise OrderError(f"{what} must be positive, got {value}")
    return value


class Book:
    """One community's book. Every public method leaves the book consistent."""

    def __init__(self, balances, next_id=1):
        self.balances = balances
        self.next_id = next_id
        self.orders = {}  # id -> live resting Order
        self.by_owner = {}  # owner -> {id: Order} of live resting orders
        self._levels = ({}, {})  # index 0 buys (key -price), 1 sells (key price)
        self._keys = ([], [])
        self._touched = []
        self._parked = {}  # owner -> {id: parked Order}
        self.last_price = None
        self.retired = None  # a list to collect resting orders that leave the book, or None

    # ---- placing and cancelling -------------------------------------------------
    def limit(self, owner, side, price, qty):
        """Place a limit order: trade what crosses and is executable, rest the rest."""
        check_amount(price, "price")
        check_amount(qty, "quantity")
        if side not in SIDES:
            raise OrderError(f"side must be buy or sell, got {side!r}")
        o = Order(self._new_id(), owner, side, price, qty)
        if side == BUY:
            trades = self._take_asks(o, price, True, True)
        else:
            trades = self._take_bids(o, price, True)
        if o.remaining:
            self._rest(o)
        else:
            o.status = FILLED
        self._cleanup()
        return o, trades

    def market_buy(self, owner, qty, max_price=None, cap=True):
        """Buy up to `qty` Wh now from executable sellers; the unfilled rest is dropped.

        `cap=False` ignores B_max: for energy that is consumed as it is bought
        (a charging session), where nothing is stored.
        """
        check_amount(qty, "quantity")
        if max_price is not None:
            check_amount(max_price, "max price")
        o = Order(self._new_id(), owner, BUY, None, qty)
        trades = self._take_asks(o, max_price, True, cap)
        o.status = FILLED if o.remaining == 0 else DONE
        self._cleanup()
        return o, trades

    def cancel(self, oid):
        o = self.orders.get(oid)
        if o is None:
            raise OrderError(f"no open order {oid}")
        self._retire(o, CANCELLED)
        self._cleanup()
        return o

    def amend(self, oid, price=None, qty=None):
        """Cancel and replace: the new order has a new id and queues at the back."""
        o = self.orders.get(oid)
        if o is None:
            raise OrderError(f"no open order {oid}")
        price = o.price if price is None else price
        qty = o.remaining if qty is None else qty
        check_amount(price, "price")
        check_amount(qty, "quantity")
        self.cancel(oid)
        return self.limit(o.owner, o.side, price, qty)

    def rematch(self, owners):
        """Balances of `owners` changed: trade whatever crossing pairs became executable.

        Only a pair involving one of these owners can have become executable, so
        their orders are walked in time order against the other side.
        """
        self._unpark(owners)
        todo = []
        for owner in owners:
            mine = self.by_owner.get(owner)
            if mine:
                todo.extend(mine.values())
        todo.sort(key=_order_id)
        trades = []
        for o in todo:
            if o.status != OPEN:
                continue
            if o.side == BUY:
                trades.extend(self._take_asks(o, o.price, False, True))
            else:
                trades.extend(self._take_bids(o, o.price, False))
        self._cleanup()
        return trades

    # ---- restoring from the journal (no matching) -------------------------------
    def restore(self, oid, owner, side, price, qty, remaining):
        """Put an order back exactly as it was; used when rebuilding from the journal."""
        o = Order(oid, owner, side, price, qty, remaining)
        if oid >= self.next_id:
            self.next_id = oid + 1
        self._rest(o)
        return o

    def restore_fill(self, oid, wh):
        o = self.orders[oid]
        self._reduce(o, wh)
        self._cleanup()

    def restore_close(self, oid, status):
        o = self.orders.get(oid)
        if o is not None:
            self._retire(o, status)
            self._cleanup()

    # ---- reading ----------------------------------------------------------------
    def best_bid(self):
        keys = self._keys[0]
        return -keys[0] if keys else None

    def best_ask(self):
        keys = self._keys[1]
        return keys[0] if keys else None

    def iter_side(self, side):
        """Live orders of one side in priority order."""
        idx = 0 if side == BUY else 1
        levels = self._levels[idx]
        for key in self._keys[idx]:
            yield from levels[key].in_time_order()

    def levels(self, side, depth=None):
        """[(price, total Wh, order count)] best first."""
        idx = 0 if side == BUY else 1
        out = []
        for key in self._keys[idx][:depth]:
            lvl = self._levels[idx][key]
            out.append((lvl.price, lvl.qty, lvl.live))
        return out

    def best_executable_ask(self):
        """The lowest ask whose seller has energy now: what a buyer pays right away."""
        sellable = self.balances.sellable
        for key in self._keys[1]:
            for o in self._levels[1][key].orders:
                if o.status == OPEN and not o.parked and sellable(o.owner) > 0:
                    return o.price
        return None

    def best_executable_bid(self):
        """The highest bid whose buyer may receive energy and has EEA for 1 Wh at it."""
        bal = self.balances
        for key in self._keys[0]:
            for o in self._levels[0][key].orders:
                if (o.status == OPEN and not o.parked and bal.headroom(o.owner) > 0
                        and affordable(bal.spendable(o.owner), o.price) > 0):
                    return o.price
        return None

    def quote(self, depth=5):
        """Prices from the whole book (whitepaper: regardless of energy being available)."""
        bid, ask = self.best_bid(), self.best_ask()
        return {
            "best_bid": bid,
            "best_ask": ask,
            "spread": (ask - bid) if bid is not None and ask is not None else None,
            "last_price": self.last_price,
            "best_executable_ask": self.best_executable_ask(),
            "best_executable_bid": self.best_executable_bid(),
            "bids": self.levels(BUY, depth),
            "asks": self.levels(SELL, depth),
            "bid_wh": sum(lvl.qty for lvl in self._levels[0].values()),
            "ask_wh": sum(lvl.qty for lvl in self._levels[1].values()),
            "orders": len(self.orders),
        }

    def snapshot(self):
        """Everything that defines the book, in priority order; equal books, equal snapshots."""
        return [(o.side, o.price, o.id, o.owner, o.qty, o.remaining)
                for side in SIDES for o in self.iter_side(side)]

    def open_orders(self, owner, side=None):
        mine = self.by_owner.get(owner, {})
        return [o for o in mine.values() if side is None or o.side == side]

    def __len__(self):
        return len(self.orders)

    # ---- matching ---------------------------------------------------------------
    def _take_asks(self, o, limit, fresh, cap):
        """Buy order `o` takes executable asks priced <= limit (None: any price)."""
        bal = self.balances
        buyer = o.owner
        head = bal.headroom(buyer) if cap else 1 << 62
        if head <= 0:
            return []
        eea = bal.spendable(buyer)
        if eea <= 0:
            return []
        sellable = bal.sellable
        levels = self._levels[1]
        trades = []
        rem = o.remaining
        stop = False
        for key in self._keys[1]:
            if limit is not None and key > limit:
                break
            lvl = levels[key]
            self._touched.append(lvl)
            for m in lvl.orders:
                if m.status != OPEN or m.parked or m.owner == buyer:
                    continue
                avail = sellable(m.owner)
                if avail <= 0:  # a seller without energy: quotes, but cannot execute
                    self._park(m)
                    continue
                price = m.price if (fresh or m.id < o.id) else o.price
                can = affordable(eea, price)
                if can <= 0:
                    if fresh:  # every later ask costs at least as much
                        stop = True
                        break
                    continue
                q = min(rem, m.remaining, avail, head, can)
                c = q * price // 1000
                bal.apply(m.owner, buyer, q, c)
                trades.append(Trade(o.id, m.id, buyer, m.owner, price, q, c, o.id))
                self.last_price = price
                self._reduce(m, q)
                rem -= q
                head -= q
                eea -= c
                if rem == 0 or head == 0:
                    stop = True
                    break
            if stop:
                break
        if rem != o.remaining:
            self._reduce(o, o.remaining - rem)
        return trades

    def _take_bids(self, o, limit, fresh):
        """Sell order `o` takes executable bids priced >= limit."""
        bal = self.balances
        seller = o.owner
        avail = bal.sellable(seller)
        if avail <= 0:
            return []  # rests: it still quotes
        headroom = bal.headroom
        spendable = bal.spendable
        levels = self._levels[0]
        trades = []
        rem = o.remaining
        stop = False
        for key in self._keys[0]:
            if -key < limit:
                break
            lvl = levels[key]
            self._touched.append(lvl)
            for m in lvl.orders:
                if m.status != OPEN or m.parked or m.owner == seller:
                    continue
                buyer = m.owner
                head = headroom(buyer)
                eea = spendable(buyer)
                if head <= 0 or eea <= 0:  # waits until the balance falls / EEA arrives
                    self._park(m)
                    continue
                price = m.price if (fresh or m.id < o.id) else o.price
                can = affordable(eea, price)
                if can <= 0:
                    continue
                q = min(rem, m.remaining, avail, head, can)
                c = q * price // 1000
                bal.apply(seller, buyer, q, c)
                trades.append(Trade(m.id, o.id, buyer, seller, price, q, c, o.id))
                self.last_price = price
                self._reduce(m, q)
                rem -= q
                avail -= q
                if rem == 0 or avail == 0:
                    stop = True
                    break
            if stop:
                break
        if rem != o.remaining:
            self._reduce(o, o.remaining - rem)
        return trades

    # ---- bookkeeping ------------------------------------------------------------
    def _new_id(self):
        oid = self.next_id
        self.next_id = oid + 1
        return oid

    def _rest(self, o):
        idx = 0 if o.side == BUY else 1
        key = -o.price if idx == 0 else o.price
        levels = self._levels[idx]
        lvl = levels.get(key)
        if lvl is None:
            lvl = levels[key] = Level(idx, key, o.price)
            insort(self._keys[idx], key)
        lvl.orders.append(o)
        lvl.live += 1
        lvl.qty += o.remaining
        o.level = lvl
        self.orders[o.id] = o
        mine = self.by_owner.get(o.owner)
        if mine is None:
            self.by_owner[o.owner] = {o.id: o}
        else:
            mine[o.id] = o

    def _reduce(self, o, q):
        o.remaining -= q
        lvl = o.level
        if lvl is not None:
            lvl.qty -= q
        if o.remaining == 0:
            self._retire(o, FILLED)

    # Parking: an order found unexecutable during a scan (a seller without energy, a buyer
    # at B_max or without EEA) stays in its level for the quote but leaves the level's scan
    # queue, so the next buyer does not walk past it again. Sound because a trade never
    # makes anyone more able to trade (see MemoryBalances); only an outside balance change
    # does, and the book hears of those through `rematch(owners)`, which first puts the
    # owners' parked orders back in their queues, in time order. Without parking, a few
    # thousand resting asks of sellers without energy near the best price cut throughput by
    # half (bench/market.py).
    def _park(self, o):
        o.parked = True
        lvl = o.level
        lvl.parked[o.id] = o
        lvl.dead += 1
        mine = self._parked.get(o.owner)
        if mine is None:
            self._parked[o.owner] = {o.id: o}
        else:
            mine[o.id] = o

    def _unpark(self, owners):
        """Put the owners' parked orders back into their levels' queues, in time order."""
        back = {}
        for owner in owners:
            mine = self._parked.pop(owner, None)
            if mine:
                for o in mine.values():
                    o.parked = False
                    del o.level.parked[o.id]
                    back.setdefault(id(o.level), (o.level, []))[1].append(o)
        for lvl, orders in back.values():
            # A parked order may still sit in the queue as garbage: rebuild, no duplicates.
            active = {o.id: o for o in lvl.orders if o.status == OPEN and not o.parked}
            for o in orders:
                active[o.id] = o
            lvl.orders = deque(sorted(active.values(), key=_order_id))
            lvl.dead = 0

    def _retire(self, o, status):
        o.status = status
        lvl = o.level
        if lvl is None:
            return
        if self.retired is not None:
            self.retired.append(o)
        lvl.live -= 1
        lvl.qty -= o.remaining
        if o.parked:
            o.parked = False
            del lvl.parked[o.id]
            mine = self._parked[o.owner]
            del mine[o.id]
            if not mine:
                del self._parked[o.owner]
        else:
            lvl.dead += 1
        o.level = None
        self._touched.append(lvl)
        del self.orders[o.id]
        mine = self.by_owner[o.owner]
        del mine[o.id]
        if not mine:
            del self.by_owner[o.owner]

    def _cleanup(self):
        """Drop emptied levels and dead heads of the levels an operation touched."""
        if not self._touched:
            return
        for lvl in self._touched:
            orders = lvl.orders
            if lvl.live == 0:
                levels = self._levels[lvl.idx]
                if levels.get(lvl.key) is lvl:
                    del levels[lvl.key]
                    keys = self._keys[lvl.idx]
                    del keys[bisect_left(keys, lvl.key)]
                orders.clear()
                lvl.dead = 0
                continue
            while orders and (orders[0].status != OPEN or orders[0].parked):
                orders.popleft()
                lvl.dead -= 1
            if lvl.dead > 16 and lvl.dead > lvl.live - len(lvl.parked):
                lvl.orders = deque(x for x in orders if x.status == OPEN and not x.parked)
                lvl.dead = 0
        self._touched.clear()


def _order_id(o):
    return o.id
