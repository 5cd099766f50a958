"""The market's tables, and the journal from which a book is rebuilt exactly.

Every change to a book is an event in `market_journal` (add, fill, close: the comment on
its table), written in the same SQLite transaction as the order and trade rows it
concerns. Replaying the events in sequence, without matching, yields the same resting
orders with the same remaining quantities in the same time order, whatever the balances
are now — matching decisions are never re-taken, only re-read. A process also uses the
journal to catch up with what another process (the CLI next to the service) did since it
last looked.

`market_orders` and `market_trades` hold the current state and the history people
query; the open rows of `market_orders` are a second, faster way to load a book, and
the tests check both ways give the live book. Big amounts (prices, EEA) are stored as
decimal TEXT: SQLite integers stop at 2**63.
"""
from gateway.db import ensure_schema
from gateway.market.book import BUY, OPEN, SELL, Book

VERSION = 1

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS market_orders (
        id INTEGER PRIMARY KEY,
        community TEXT NOT NULL,
        owner TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
        kind TEXT NOT NULL CHECK (kind IN ('limit', 'market')),
        price TEXT,
        qty INTEGER NOT NULL,
        remaining INTEGER NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT 'user',
        ref TEXT NOT NULL DEFAULT '',
        replaces INTEGER,
        created_at REAL NOT NULL,
        closed_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS market_orders_open ON market_orders(community, status, id)",
    "CREATE INDEX IF NOT EXISTS market_orders_owner ON market_orders(owner, status)",
    "CREATE INDEX IF NOT EXISTS market_orders_ref ON market_orders(community, source, ref)",
    """CREATE TABLE IF NOT EXISTS market_trades (
        id INTEGER PRIMARY KEY,
        community TEXT NOT NULL,
        buy_order INTEGER NOT NULL,
        sell_order INTEGER NOT NULL,
        taker INTEGER NOT NULL,
        buyer TEXT NOT NULL,
        seller TEXT NOT NULL,
        price TEXT NOT NULL,
        wh INTEGER NOT NULL,
        eea TEXT NOT NULL,
        created_at REAL NOT NULL,
        interval_start INTEGER NOT NULL,
        settlement_id TEXT,
        settled_wh INTEGER,
        settled_eea TEXT
    )""",
    """CREATE INDEX IF NOT EXISTS market_trades_unsettled
        ON market_trades(community, settlement_id, interval_start, id)""",
    "CREATE INDEX IF NOT EXISTS market_trades_seller ON market_trades(seller, settlement_id)",
    "CREATE INDEX IF NOT EXISTS market_trades_buyer ON market_trades(buyer, settlement_id)",
    # The journal's events:
    #   add   (order id, owner, side, price or NULL for a market order, qty)
    #   fill  (order id, Wh, trade id)          one per side of every trade
    #   close (order id, status)                filled, cancelled, done (market rest dropped)
    """CREATE TABLE IF NOT EXISTS market_journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        community TEXT NOT NULL,
        event TEXT NOT NULL CHECK (event IN ('add', 'fill', 'close')),
        order_id INTEGER NOT NULL,
        owner TEXT,
        side TEXT,
        price TEXT,
        qty INTEGER,
        trade_id INTEGER,
        status TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS market_journal_community ON market_journal(community, seq)",
    # The last balance_entries.id whose change the book has reacted to (rematch, agents).
    """CREATE TABLE IF NOT EXISTS market_state (
        community TEXT PRIMARY KEY,
        balance_seen INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS market_settlements (
        settlement_id TEXT PRIMARY KEY,
        community TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('interval', 'session')),
        interval_start INTEGER,
        batch INTEGER,
        ref TEXT NOT NULL DEFAULT '',
        trades INTEGER NOT NULL,
        wh INTEGER NOT NULL,
        eea TEXT NOT NULL,
        shortfall_wh INTEGER NOT NULL,
        enqueued INTEGER NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS market_settlements_interval
        ON market_settlements(community, interval_start, batch)""",
    """CREATE TABLE IF NOT EXISTS market_agents (
        community TEXT NOT NULL,
        owner TEXT NOT NULL,
        buy_price TEXT,
        sell_price TEXT,
        buy_below_wh INTEGER,
        buy_up_to_wh INTEGER,
        sell_above_wh INTEGER,
        keep_wh INTEGER,
        enabled INTEGER NOT NULL DEFAULT 1,
        updated_at REAL NOT NULL,
        PRIMARY KEY (community, owner)
    )""",
]


def init(conn):
    ensure_schema(conn, "market", VERSION, SCHEMA)


def _int(text):
    return None if text is None else int(text)


# ---- writing (inside the caller's transaction) ------------------------------------

def add(conn, community, o, kind, source, ref, now, replaces=None):
    price = None if o.price is None else str(o.price)
    conn.execute(
        "INSERT INTO market_orders(id, community, owner, side, kind, price, qty, remaining, "
        "status, source, ref, replaces, created_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?)",
        (o.id, community, o.owner, o.side, kind, price, o.qty, o.qty, source, ref, replaces, now))
    conn.execute(
        "INSERT INTO market_journal(community, event, order_id, owner, side, price, qty) "
        "VALUES(?, 'add', ?, ?, ?, ?, ?)", (community, o.id, o.owner, o.side, price, o.qty))


def trade(conn, community, t, now, interval_start):
    cur = conn.execute(
        "INSERT INTO market_trades(community, buy_order, sell_order, taker, buyer, seller, price, "
        "wh, eea, created_at, interval_start) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (community, t.buy_id, t.sell_id, t.taker, t.buyer, t.seller, str(t.price), t.wh,
         str(t.eea), now, interval_start))
    tid = cur.lastrowid
    for oid in (t.buy_id, t.sell_id):
        conn.execute("UPDATE market_orders SET remaining = remaining - ? WHERE id=?", (t.wh, oid))
        conn.execute(
            "INSERT INTO market_journal(community, event, order_id, qty, trade_id) "
            "VALUES(?, 'fill', ?, ?, ?)", (community, oid, t.wh, tid))
    return tid


def close(conn, community, oid, status, now):
    conn.execute("UPDATE market_orders SET status=?, closed_at=? WHERE id=? AND status='open'",
                 (status, now, oid))
    conn.execute(
        "INSERT INTO market_journal(community, event, order_id, status) VALUES(?, 'close', ?, ?)",
        (community, oid, status))


# ---- reading -------------------------------------------------------------------------

def last_seq(conn, community):
    row = conn.execute("SELECT MAX(seq) FROM market_journal WHERE community=?",
                       (community,)).fetchone()
    return row[0] or 0


def next_order_id(conn):
    row = conn.execute("SELECT MAX(id) FROM market_orders").fetchone()
    return (row[0] or 0) + 1


def last_price(conn, community):
    row = conn.execute("SELECT price FROM market_trades WHERE community=? ORDER BY id DESC LIMIT 1",
                       (community,)).fetchone()
    return _int(row[0]) if row else None


def apply_events(book, rows):
    """Apply journal rows (in seq order) to `book` without matching."""
    for r in rows:
        event = r["event"]
        if event == "add":
            if r["price"] is not None:  # market orders never rest
                book.restore(r["order_id"], r["owner"], r["side"], int(r["price"]), r["qty"],
                             r["qty"])
            elif r["order_id"] >= book.next_id:
                book.next_id = r["order_id"] + 1
        elif event == "fill":
            if r["order_id"] in book.orders:
                book.restore_fill(r["order_id"], r["qty"])
        else:
            book.restore_close(r["order_id"], r["status"])


def events_after(conn, community, seq):
    return conn.execute("SELECT * FROM market_journal WHERE community=? AND seq > ? ORDER BY seq",
                        (community, seq)).fetchall()


def replay(conn, community, balances):
    """The book rebuilt from the whole journal: (book, last seq)."""
    book = Book(balances)
    rows = events_after(conn, community, 0)
    apply_events(book, rows)
    book.last_price = last_price(conn, community)
    return book, (rows[-1]["seq"] if rows else 0)


def load(conn, community, balances):
    """The book from the open orders (same result as `replay`, without reading history)."""
    seq = last_seq(conn, community)
    book = Book(balances)
    for r in conn.execute(
            "SELECT id, owner, side, price, qty, remaining FROM market_orders "
            "WHERE community=? AND status=? ORDER BY id", (community, OPEN)):
        book.restore(r["id"], r["owner"], r["side"], int(r["price"]), r["qty"], r["remaining"])
    book.next_id = max(book.next_id, next_order_id(conn))
    book.last_price = last_price(conn, community)
    return book, seq


__all__ = ["BUY", "SELL", "add", "apply_events", "close", "events_after", "init", "last_seq",
           "load", "replay", "trade"]
