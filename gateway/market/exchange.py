"""One community's market on the gateway store: the book, journaled, against real balances.

`Market` wraps book.Book. Every operation runs in one SQLite write transaction:
catch up with the journal (another process may have traded), react to balance
changes since the last operation (rematch, agents), do the operation, and journal
every order, trade and close it caused. If anything fails the transaction rolls
back and the in-memory book is dropped and reloaded, so memory never runs ahead
of the store.

Executability reads the balance book (gateway/accounts.py) at match time, minus what
unsettled trades already promised (SqlBalances). Trades settle per interval
(settlement.py), which moves them into the balance book.
"""
import sqlite3

from gateway import accounts
from gateway import clock as domain_clock
from gateway.db import transaction
from gateway.ledger import outbox
from gateway.market import agents as agents_mod
from gateway.market import journal, settlement
from gateway.market.book import (
    BUY,
    DONE,
    FILLED,
    OPEN,
    SELL,
    OrderError,
    affordable,
    check_amount,
    cost,
)
from gateway.market.settings import market_settings
from gateway.units import EEA_SUPPLY, MAX_WH, parse_price


class SqlBalances:
    """The balance view for one operation: read lazily, updated by the trades it makes.

        sellable  = WATT balance − WATT sold in unsettled trades
        spendable = EEA balance − EEA owed for unsettled buys
        headroom  = B_max − WATT balance − WATT bought in unsettled trades
    """

    def __init__(self, conn, bmax):
        self.conn = conn
        self.bmax = bmax or None
        self.cache = {}

    def _row(self, owner):
        c = self.cache.get(owner)
        if c is None:
            watt = eea = 0
            if self.conn.execute("SELECT 1 FROM accounts WHERE address=?", (owner,)).fetchone():
                watt = accounts.balance(self.conn, owner, "WATT")
                eea = accounts.balance(self.conn, owner, "EEA")
            out_wh = in_wh = out_eea = 0
            for r in self.conn.execute(
                    "SELECT seller, buyer, wh, eea FROM market_trades "
                    "WHERE settlement_id IS NULL AND (seller=? OR buyer=?)", (owner, owner)):
                if r["seller"] == owner:
                    out_wh += r["wh"]
                if r["buyer"] == owner:
                    in_wh += r["wh"]
                    out_eea += int(r["eea"])
            c = self.cache[owner] = [watt - out_wh, eea - out_eea, watt + in_wh, watt - out_wh + in_wh]
        return c

    def sellable(self, owner):
        return self._row(owner)[0]

    def spendable(self, owner):
        return self._row(owner)[1]

    def headroom(self, owner):
        if self.bmax is None:
            return 1 << 62
        return self.bmax - self._row(owner)[2]

    def stored(self, owner):
        """WATT the owner will hold once his unsettled trades settle."""
        return self._row(owner)[3]

    def apply(self, seller, buyer, wh, eea):
        s = self._row(seller)
        s[0] -= wh
        s[3] -= wh
        b = self._row(buyer)
        b[1] -= eea
        b[2] += wh
        b[3] += wh

    def clear(self):
        self.cache.clear()


class _Tx:
    """BEGIN IMMEDIATE … COMMIT; inside a caller's transaction a savepoint instead, so a
    failed market operation leaves the caller's transaction as it was."""

    def __init__(self, conn):
        self.conn = conn
        self.inner = None

    def __enter__(self):
        if self.conn.in_transaction:
            self.conn.execute("SAVEPOINT market_op")
        else:
            self.inner = transaction(self.conn)
            self.inner.__enter__()
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if self.inner is not None:
            return self.inner.__exit__(exc_type, exc, tb)
        if exc_type is not None:
            self.conn.execute("ROLLBACK TO market_op")
        self.conn.execute("RELEASE market_op")
        return False


class Market:
    """One community's book on the store. Not thread-safe: one Market per thread."""

    def __init__(self, conn, community, settings=None, clock=domain_clock.now):
        self.conn = conn
        self.community = community
        self.settings = dict(settings or market_settings())
        self.clock = clock
        self.balances = SqlBalances(conn, self.settings["bmax_wh"])
        self.book = None
        self.seq = 0
        # The last balance entry this process's book has reacted to (parked orders are
        # only valid up to it); None right after loading, when nothing is parked.
        self.balance_seen = None
        if not conn.in_transaction:
            for init in (accounts.init, outbox.init, journal.init):
                init(conn)
        elif not conn.execute("SELECT 1 FROM sqlite_master WHERE name='market_journal'").fetchone():
            # Inside a caller's transaction (a session settlement): create our tables
            # in it; ensure_schema's own transaction cannot nest.
            for sql in journal.SCHEMA:
                conn.execute(sql)

    # ---- the operation frame ----------------------------------------------------
    def _op(self, fn, catch_up=True):
        caller_tx = self.conn.in_transaction
        try:
            with _Tx(self.conn):
                self.balances.clear()
                self._sync()
                self._log = {"orders": [], "trades": [], "agent_orders": []}
                self.book.retired = []
                if catch_up:
                    self._catch_up()
                result = fn()
                self._journal_retired()
                # We hold the write lock: every event up to here is ours or already applied.
                self.seq = journal.last_seq(self.conn, self.community)
            if caller_tx:
                self.book = None  # the caller may still roll back: reload next time
            return result
        except BaseException:
            self.book = None
            raise
        finally:
            if self.book is not None:
                self.book.retired = None
            self.balances.clear()

    def _sync(self):
        if self.book is not None:
            rows = journal.events_after(self.conn, self.community, self.seq)
            if rows or journal.last_seq(self.conn, self.community) == self.seq:
                journal.apply_events(self.book, rows)
                if rows:
                    self.seq = rows[-1]["seq"]
                    self.book.last_price = journal.last_price(self.conn, self.community)
                self.book.next_id = max(self.book.next_id, journal.next_order_id(self.conn))
                return
        self.book, self.seq = journal.load(self.conn, self.community, self.balances)
        self.balance_seen = None  # nothing parked yet: only changes the store has not seen

    def _now(self):
        return float(self.clock())

    def _interval(self, now):
        step = self.settings["interval_s"]
        return int(now // step) * step

    def _record(self, trades):
        now = self._now()
        start = self._interval(now)
        for t in trades:
            tid = journal.trade(self.conn, self.community, t, now, start)
            d = t.as_dict()
            d["id"] = tid
            self._log["trades"].append(d)

    def _journal_retired(self):
        now = self._now()
        for o in self.book.retired:
            journal.close(self.conn, self.community, o.id, o.status, now)
        self.book.retired = []

    def _catch_up(self):
        """React to balance changes since the last look: rematch, then agents."""
        row = self.conn.execute(
            "SELECT balance_seen FROM market_state WHERE community=?", (self.community,)).fetchone()
        shared = row[0] if row else 0
        since = shared if self.balance_seen is None else min(shared, self.balance_seen)
        top = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM balance_entries").fetchone()[0]
        if top > since:
            changed = {r[0] for r in self.conn.execute(
                "SELECT DISTINCT address FROM balance_entries WHERE id > ?", (since,))}
            trades = self.book.rematch(sorted(changed))
            self._record(trades)
            self._journal_retired()
            if top > shared:
                agents_mod.react(self, sorted(changed))
        self.conn.execute(
            "INSERT INTO market_state(community, balance_seen) VALUES(?, ?) "
            "ON CONFLICT(community) DO UPDATE SET balance_seen=excluded.balance_seen",
            (self.community, top))
        self.balance_seen = top

    # ---- operations -------------------------------------------------------------
    def _place(self, owner, side, qty, price=None, source="user", ref="", replaces=None,
               max_price=None, cap=True):
        owner = accounts.normalize_address(owner)
        check_amount(qty, "quantity")  # before any arithmetic: "100" * price is a string
        if qty > MAX_WH:
            raise OrderError(f"order too large: {qty} Wh, at most {MAX_WH} Wh")
        # An order that costs more than all the EEA there is can never be paid (the balance
        # book and the journal keep exact amounts of any size; this only refuses the absurd).
        if price is not None and cost(qty, check_amount(price, "price")) > EEA_SUPPLY:
            raise OrderError("order too large: it costs more than the total EEA supply")
        now = self._now()
        if price is None:
            if side != BUY:
                raise OrderError("only buy orders can be market orders")
            o, trades = self.book.market_buy(owner, qty, max_price=max_price, cap=cap)
            kind = "market"
        else:
            o, trades = self.book.limit(owner, side, price, qty)
            kind = "limit"
        journal.add(self.conn, self.community, o, kind, source, ref, now, replaces)
        self._record(trades)
        if o.status in (FILLED, DONE) and o.level is None:
            journal.close(self.conn, self.community, o.id, o.status, now)
        self._journal_retired()
        self._log["orders"].append(o.as_dict())
        return o, trades

    def place(self, owner, side, qty, price=None, max_price=None, source="user", ref=""):
        """A limit order (price given) or a market buy (price None). → {order, trades}."""
        if side not in (BUY, SELL):
            raise OrderError(f"side must be buy or sell, got {side!r}")

        def run():
            o, _ = self._place(owner, side, qty, price, source, ref, max_price=max_price)
            return self._result(o)
        return self._op(run)

    def cancel(self, oid, owner=None):
        def run():
            o = self.book.orders.get(oid)
            if o is None:
                raise OrderError(f"no open order {oid} in community {self.community}")
            if owner is not None and o.owner != accounts.normalize_address(owner):
                raise OrderError(f"order {oid} belongs to {o.owner}")
            self.book.cancel(oid)
            return {"order": o.as_dict(), "trades": self._log["trades"]}
        return self._op(run)

    def amend(self, oid, price=None, qty=None):
        """Cancel and replace; the new order queues behind everything at its price."""
        def run():
            o = self.book.orders.get(oid)
            if o is None:
                raise OrderError(f"no open order {oid} in community {self.community}")
            self.book.cancel(oid)
            self._journal_retired()
            new, _ = self._place(o.owner, o.side, o.remaining if qty is None else qty,
                                 o.price if price is None else price, replaces=oid)
            return self._result(new, cancelled=oid)
        return self._op(run)

    def refresh(self):
        """Catch up with balance changes (rematch, agents). → {trades, agent_orders}."""
        return self._op(lambda: {"trades": self._log["trades"],
                                 "agent_orders": self._log["agent_orders"]})

    def _result(self, o, **extra):
        out = {"order": o.as_dict(), "trades": self._log["trades"],
               "agent_orders": self._log["agent_orders"]}
        out.update(extra)
        return out

    # ---- agents -----------------------------------------------------------------
    def set_agent(self, owner, **fields):
        owner = accounts.normalize_address(owner)

        def run():
            agent = agents_mod.store(self.conn, self.community, owner, fields, self._now(),
                                     self.settings["bmax_wh"])
            agents_mod.react(self, [owner])
            return {"agent": agent, "agent_orders": self._log["agent_orders"],
                    "trades": self._log["trades"]}
        return self._op(run)

    def agent_place(self, owner, side, qty, price):
        o, _ = self._place(owner, side, qty, price, source="agent")
        self._log["agent_orders"].append(o.as_dict())
        return o

    # ---- reading ----------------------------------------------------------------
    def quote(self, depth=5):
        return self._op(lambda: self.book.quote(depth), catch_up=False)

    def book_orders(self, depth=None):
        """Every resting order, best first, with whether it could trade now."""
        def run():
            out = {}
            bal = self.book.balances
            for side in (BUY, SELL):
                rows = []
                prices = []
                for o in self.book.iter_side(side):
                    if o.price not in prices:
                        if depth is not None and len(prices) >= depth:
                            break
                        prices.append(o.price)
                    if side == SELL:
                        executable = bal.sellable(o.owner) > 0
                    else:
                        executable = (bal.headroom(o.owner) > 0
                                      and affordable(bal.spendable(o.owner), o.price) > 0)
                    d = o.as_dict()
                    d["executable"] = executable
                    rows.append(d)
                out["bids" if side == BUY else "asks"] = rows
            return out
        return self._op(run, catch_up=False)

    def settle(self, now=None):
        """Settle the trades of every closed interval (see settlement.py)."""
        return self._op(lambda: settlement.settle_closed(
            self.conn, self.community, self._now() if now is None else now, self.settings),
            catch_up=False)

    def session_buy(self, account, wh, ref, max_price=None):
        """A charging session's market buy, settled at once (see market_buy_for_session)."""
        if not ref:
            raise OrderError("a session buy needs its session reference")

        def run():
            row = self.conn.execute(
                "SELECT id FROM market_orders WHERE community=? AND source='session' AND ref=?",
                (self.community, ref)).fetchone()
            if row is None:
                o, _ = self._place(account, BUY, wh, None, source="session", ref=ref,
                                   max_price=max_price, cap=False)
                oid = o.id
                sid = outbox.settlement_id(self.community, "trades", "session", ref)
                tids = [t["id"] for t in self._log["trades"]]
                if tids:
                    settlement.settle_trades(self.conn, self.community, tids, sid, "session",
                                             self._now(), ref=ref)
            else:
                oid = row["id"]
            return session_result(self.conn, oid, wh)
        return self._op(run, catch_up=False)


def session_result(conn, oid, wh):
    rows = conn.execute(
        "SELECT id, seller, price, wh, eea, settled_wh, settled_eea, settlement_id "
        "FROM market_trades WHERE buy_order=? ORDER BY id", (oid,)).fetchall()
    fills = [{"trade": r["id"], "seller": r["seller"], "price": int(r["price"]),
              "wh": r["settled_wh"] if r["settled_wh"] is not None else r["wh"],
              "eea": int(r["settled_eea"] if r["settled_eea"] is not None else r["eea"])}
             for r in rows]
    filled = sum(f["wh"] for f in fills)
    eea = sum(f["eea"] for f in fills)
    return {
        "order": oid,
        "fills": fills,
        "filled_wh": filled,
        "unfilled_wh": wh - filled,
        "eea": eea,
        # EEA base units per kWh, rounded up so filled_wh * price // 1000 >= eea.
        "average_price": -(-eea * 1000 // filled) if filled else None,
        "settlement_id": rows[0]["settlement_id"] if rows else None,
    }


def market_buy_for_session(conn, community, account, wh, *, ref, max_price=None, settings=None,
                           clock=domain_clock.now):
    """Buy a charging session's energy at the market for `account`, settled at once.

    Call it inside the session settlement's transaction (or alone: it then opens
    its own). A market buy of `wh` Wh on behalf of `account` trades with the
    sellers who have energy now, cheapest first; B_max does not apply (the energy is
    consumed as it is bought), the account's EEA must cover. Its trades are
    settled immediately, not at the interval's end: the balance book entries (WATT
    seller→account, EEA account→seller) and one "trades" outbox intent with
    settlement id settlement_id(community, "trades", "session", ref) are written in
    the same transaction, before anything the caller writes next, so the caller may
    burn or pass on the WATT right away. Idempotent per `ref`: a second call returns
    the first call's fills and trades nothing.

    Returns {"order", "fills": [{"trade", "seller", "price", "wh", "eea"}],
             "filled_wh", "unfilled_wh", "eea", "average_price", "settlement_id"};
    average_price is EEA base units per kWh rounded up (None when nothing filled).
    """
    s = dict(settings or market_settings())
    if max_price is None and s.get("session_max_price"):
        max_price = parse_price(s["session_max_price"], bare="eea")
    market = Market(conn, community, s, clock=clock)
    return market.session_buy(account, wh, ref, max_price=max_price)


def session_price_source(community, pool, fallback_price, settings=None, clock=domain_clock.now,
                         log=None):
    """A price source for ocpp_cs.store.settle that buys each session's energy at the market.

    f(conn, tx, energy_wh) -> EEA base units per kWh. The community's energy pool
    buys the session's energy at the market (market_buy_for_session with the pool
    as buyer, ref "<chargeBoxId>:<transactionId>"), and the price returned makes the
    EV pay the pool what the fills cost (rounded up), with any unfilled rest at
    `fallback_price`. So ocpp_cs's own entries — EV pays energy to the pool, the
    pool's WATT for the energy is burned — stay correct unchanged. The pool needs
    EEA to pay sellers before the EV reimburses it in the same transaction; what it
    cannot pay for is billed at `fallback_price` (as is everything if the market
    fails: a charging session is always billed).
    """
    def price_source(conn, tx, energy_wh):
        if energy_wh <= 0:
            return fallback_price
        ref = f"{tx['charger_id']}:{tx['id']}"
        try:
            r = market_buy_for_session(conn, community, pool, energy_wh, ref=ref,
                                       settings=settings, clock=clock)
        except (ValueError, sqlite3.Error) as e:
            # The market must not stop a session from being billed: configured price.
            if log is not None:
                log.warning("market buy for session %s failed, configured price used: %s", ref, e)
            return fallback_price
        total = r["eea"] * 1000 + r["unfilled_wh"] * fallback_price
        return -(-total // energy_wh)
    return price_source


__all__ = ["OPEN", "Market", "OrderError", "SqlBalances", "market_buy_for_session",
           "session_price_source"]
