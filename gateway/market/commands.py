"""`egs-gw market …`: the community market from the command line.

    quote | book | orders | place | cancel | amend | trades | settle | agents set|list | sizing

Prices are EEA per kWh ("0.55" or "0.55 EEA"; base units only as "550000000000000000 base");
quantities Wh, or "1.5 kWh". People get rich tables (prices shown in EEA per kWh),
scripts get `--json` (prices and EEA as integers in base units). Mistakes are one
line on stderr, exit status 1 (2 for a usage mistake).
"""
import datetime

import click
from rich.console import Console
from rich.table import Table

from gateway import config as config_mod
from gateway.cliutil import OneLineGroup, UserError, common_options
from gateway.market import agents as agents_mod
from gateway.market import sizing as sizing_mod
from gateway.market.book import BUY, SELL
from gateway.market.settings import validate
from gateway.units import PriceType, WhType, format_price

_Group = OneLineGroup  # usage mistakes and database errors as one line on stderr

PRICE, WH = PriceType(bare="eea"), WhType()


def _console():
    return Console(highlight=False, soft_wrap=True)


def _iso(ts):
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _market(app, community):
    from gateway.market.exchange import Market
    cfg = app.config
    community = community or config_mod.require(cfg, "gateway.community")
    return Market(app.conn(), community, validate(cfg))


community_option = click.option("--community", default=None,
                                 help="Community (default: [gateway] community).")


@click.group("market", cls=_Group)
def market():
    """The community's energy market: order book, trades, agents, storage sizing."""


@market.command("quote")
@click.option("--depth", type=click.IntRange(1, 1000), default=5, show_default=True)
@community_option
@common_options
def quote_cmd(app, depth, community):
    """Best bid and ask, spread, last price and depth, from the whole book."""
    q = _market(app, community).quote(depth)

    def human(q):
        c = _console()
        c.print(f"best bid {format_price(q['best_bid'])}   best ask {format_price(q['best_ask'])}   "
                f"spread {format_price(q['spread'])}   last {format_price(q['last_price'])}   "
                "(EEA per kWh)")
        c.print(f"executable now: bid {format_price(q['best_executable_bid'])}   "
                f"ask {format_price(q['best_executable_ask'])}   "
                f"({q['orders']} orders, {q['bid_wh']} Wh bid, {q['ask_wh']} Wh asked)")
        t = Table("bid Wh", "bid", "ask", "ask Wh")
        for i in range(max(len(q["bids"]), len(q["asks"]))):
            b = q["bids"][i] if i < len(q["bids"]) else None
            a = q["asks"][i] if i < len(q["asks"]) else None
            t.add_row(str(b[1]) if b else "", format_price(b[0]) if b else "",
                      format_price(a[0]) if a else "", str(a[1]) if a else "")
        c.print(t)

    data = dict(q)
    data["bids"] = [{"price": p, "wh": w, "orders": n} for p, w, n in q["bids"]]
    data["asks"] = [{"price": p, "wh": w, "orders": n} for p, w, n in q["asks"]]
    app.emit(data, lambda _: human(q))


@market.command("book")
@click.option("--depth", type=click.IntRange(1, 100000), default=None,
              help="Price levels per side (default: all).")
@community_option
@common_options
def book_cmd(app, depth, community):
    """Every resting order, best first, and whether it can execute now."""
    data = _market(app, community).book_orders(depth)

    def human(data):
        t = Table("side", "id", "price", "remaining Wh", "of Wh", "owner", "executable")
        for side in ("asks", "bids"):
            rows = data[side] if side == "bids" else list(reversed(data[side]))
            for o in rows:
                t.add_row(o["side"], str(o["id"]), format_price(o["price"]), str(o["remaining"]),
                          str(o["qty"]), o["owner"], "yes" if o["executable"] else "no")
        _console().print(t)

    app.emit(data, human)


@market.command("orders")
@click.option("--account", default=None, help="Only this account's orders.")
@click.option("--all", "all_", is_flag=True, help="Closed orders too (default: open only).")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@community_option
@common_options
def orders_cmd(app, account, all_, limit, community):
    """Orders from the store, newest first."""
    m = _market(app, community)
    sql = "SELECT * FROM market_orders WHERE community=?"
    args = [m.community]
    if account:
        from gateway.accounts import normalize_address
        sql += " AND owner=?"
        args.append(normalize_address(account))
    if not all_:
        sql += " AND status='open'"
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    rows = [_order_row(r) for r in m.conn.execute(sql, args)]

    def human(rows):
        t = Table("id", "side", "kind", "price", "qty Wh", "remaining", "status", "source",
                  "owner", "created")
        for r in rows:
            t.add_row(str(r["id"]), r["side"], r["kind"], format_price(r["price"]), str(r["qty"]),
                      str(r["remaining"]), r["status"], r["source"], r["owner"],
                      _iso(r["created_at"]))
        _console().print(t)

    app.emit(rows, human)


def _order_row(r):
    d = dict(r)
    d["price"] = int(d["price"]) if d["price"] is not None else None
    return d


def _print_result(r):
    c = _console()
    o = r["order"]
    price = "market" if o["price"] is None else f"{format_price(o['price'])} EEA/kWh"
    c.print(f"order {o['id']}: {o['side']} {o['qty']} Wh at {price}: {o['status']}, "
            f"{o['remaining']} Wh open")
    for t in r.get("trades", []):
        c.print(f"  trade {t['id']}: {t['wh']} Wh at {format_price(t['price'])} "
                f"from {t['seller']} to {t['buyer']} for {format_price(t['eea'])} EEA")
    for a in r.get("agent_orders", []):
        c.print(f"  agent order {a['id']}: {a['side']} {a['qty']} Wh at {format_price(a['price'])}")


@market.command("place")
@click.option("--account", required=True, help="The owner's address (0x…).")
@click.option("--side", type=click.Choice([BUY, SELL]), required=True)
@click.option("--qty", type=WH, required=True, help="Wh, or e.g. '1.5 kWh'.")
@click.option("--price", type=PRICE, default=None,
              help="Limit price per kWh in EEA ('0.55'); base units need 'base'.")
@click.option("--market", "market_", is_flag=True, help="A market buy: take what sells now.")
@click.option("--max-price", type=PRICE, default=None, help="Market buy: pay at most this.")
@community_option
@common_options
def place_cmd(app, account, side, qty, price, market_, max_price, community):
    """Place a limit order, or a market buy (--market)."""
    if market_ == (price is not None):
        raise UserError("give either --price (a limit order) or --market (a market buy)")
    if market_ and side != BUY:
        raise UserError("only buy orders can be market orders")
    if max_price is not None and not market_:
        raise UserError("--max-price is for market buys")
    r = _market(app, community).place(account, side, qty, price, max_price=max_price)
    app.emit(r, _print_result)


@market.command("cancel")
@click.argument("order_id", type=int)
@click.option("--account", default=None, help="Refuse unless the order is this account's.")
@community_option
@common_options
def cancel_cmd(app, order_id, account, community):
    """Cancel an open order."""
    r = _market(app, community).cancel(order_id, owner=account)
    app.emit(r, lambda r: _console().print(f"order {order_id} cancelled "
                                           f"({r['order']['remaining']} Wh were open)"))


@market.command("amend")
@click.argument("order_id", type=int)
@click.option("--price", type=PRICE, default=None)
@click.option("--qty", type=WH, default=None, help="New open quantity.")
@community_option
@common_options
def amend_cmd(app, order_id, price, qty, community):
    """Change price or quantity: cancel and replace (the new order queues last)."""
    if price is None and qty is None:
        raise UserError("give --price, --qty or both")
    r = _market(app, community).amend(order_id, price=price, qty=qty)
    app.emit(r, _print_result)


@market.command("trades")
@click.option("--account", default=None, help="Trades where this account bought or sold.")
@click.option("--unsettled", is_flag=True, help="Only trades not settled yet.")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@community_option
@common_options
def trades_cmd(app, account, unsettled, limit, community):
    """Trades, newest first, with their settlement."""
    m = _market(app, community)
    sql = "SELECT * FROM market_trades WHERE community=?"
    args = [m.community]
    if account:
        from gateway.accounts import normalize_address
        a = normalize_address(account)
        sql += " AND (buyer=? OR seller=?)"
        args += [a, a]
    if unsettled:
        sql += " AND settlement_id IS NULL"
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    rows = []
    for r in m.conn.execute(sql, args):
        d = dict(r)
        d["price"], d["eea"] = int(d["price"]), int(d["eea"])
        d["settled_eea"] = int(d["settled_eea"]) if d["settled_eea"] is not None else None
        rows.append(d)

    def human(rows):
        t = Table("id", "time", "Wh", "price", "EEA", "seller", "buyer", "settled")
        for d in rows:
            settled = "pending" if d["settlement_id"] is None else (
                f"{d['settled_wh']} Wh {d['settlement_id'][:10]}…")
            t.add_row(str(d["id"]), _iso(d["created_at"]), str(d["wh"]), format_price(d["price"]),
                      format_price(d["eea"]), d["seller"], d["buyer"], settled)
        _console().print(t)

    app.emit(rows, human)


@market.command("settle")
@community_option
@common_options
def settle_cmd(app, community):
    """Settle the trades of every closed interval now (the service does this itself)."""
    done = _market(app, community).settle()

    def human(done):
        if not done:
            _console().print("nothing to settle")
        for d in done:
            _console().print(f"{d['settlement_id']}: interval {_iso(d['interval_start'])} batch "
                             f"{d['batch']}: {d['trades']} trades, {d['wh']} Wh, "
                             f"{format_price(d['eea'])} EEA, shortfall {d['shortfall_wh']} Wh")

    app.emit(done, human)


@market.group("agents", cls=_Group)
def agents_group():
    """Zero-intelligence agents: automatic orders at a user's target prices."""


@agents_group.command("set")
@click.argument("account")
@click.option("--buy-price", default=None, help="Target buying price ('off' to stop buying).")
@click.option("--sell-price", default=None, help="Target selling price ('off' to stop selling).")
@click.option("--buy-below", type=WhType(minimum=0), default=None,
              help="Buy when stored Wh fall to this (default 0).")
@click.option("--buy-up-to", type=WH, default=None,
              help="Buy what brings stored Wh to this (default B_max/2).")
@click.option("--sell-above", type=WH, default=None,
              help="Sell when sellable Wh reach this (default B_max: battery full).")
@click.option("--keep", type=WhType(minimum=0), default=None,
              help="Sell everything above this (default B_max/2).")
@click.option("--enable/--disable", "enabled", default=None)
@community_option
@common_options
def agents_set(app, account, buy_price, sell_price, buy_below, buy_up_to, sell_above, keep,
               enabled, community):
    """Create or change a user's agent; it acts at once if a threshold is reached."""
    r = _market(app, community).set_agent(
        account, buy_price=buy_price, sell_price=sell_price, buy_below_wh=buy_below,
        buy_up_to_wh=buy_up_to, sell_above_wh=sell_above, keep_wh=keep, enabled=enabled)

    def human(r):
        a = r["agent"]
        _console().print(f"agent {a['owner']}: buy at {format_price(a['buy_price'])}, sell at "
                         f"{format_price(a['sell_price'])} EEA/kWh "
                         f"({'enabled' if a['enabled'] else 'disabled'})")
        for o in r["agent_orders"]:
            _console().print(f"  placed order {o['id']}: {o['side']} {o['qty']} Wh at "
                             f"{format_price(o['price'])}, {o['status']}")

    app.emit(r, human)


@agents_group.command("list")
@community_option
@common_options
def agents_list(app, community):
    """The agents of the community, with the thresholds in force."""
    m = _market(app, community)
    bmax = m.settings["bmax_wh"]
    rows = []
    for a in agents_mod.list_agents(m.conn, m.community):
        try:
            rows.append(agents_mod.resolve(a, bmax))
        except agents_mod.AgentError as e:  # e.g. bmax_wh changed: show it, it is idle
            rows.append(dict(a, error=str(e)))

    def human(rows):
        t = Table("owner", "buy at", "below Wh", "up to Wh", "sell at", "above Wh", "keep Wh", "on")
        for a in rows:
            if "error" in a:
                t.add_row(a["owner"], format_price(a["buy_price"]), "", "",
                          format_price(a["sell_price"]), "", "", f"idle: {a['error']}")
                continue
            t.add_row(a["owner"], format_price(a["buy_price"]), str(a["buy_below_wh"] or ""),
                      str(a["buy_up_to_wh"] or ""), format_price(a["sell_price"]),
                      str(a["sell_above_wh"] or ""), str(a["keep_wh"] if a["keep_wh"] is not None
                                                         else ""),
                      "yes" if a["enabled"] else "no")
        _console().print(t)

    app.emit(rows, human)


@market.command("sizing")
@click.option("--households", type=click.IntRange(1, sizing_mod.MAX_HOUSEHOLDS), multiple=True,
              required=True,
              help="Connected households (repeat for several rows).")
@click.option("--average-kwh", multiple=True, required=True,
              help="Average energy stored per household, kWh (repeat for several rows).")
@click.option("--price-per-kwh", default="200", show_default=True,
              help="Battery capacity price, $ per kWh.")
@click.option("--headroom", default="1.5", show_default=True,
              help="Battery size over the average balance.")
@click.option("--target-cost", default=None, help="Target storage cost per user, $: gives B_max.")
@click.option("--container-kwh", default="800", show_default=True)
@click.option("--container-sqm", default="30", show_default=True)
@common_options
def sizing_cmd(app, households, average_kwh, price_per_kwh, headroom, target_cost,
               container_kwh, container_sqm):
    """The whitepaper's storage table (7.3) for given inputs, and B_max for a target cost."""
    data = sizing_mod.table(households, average_kwh, price_per_kwh, headroom, target_cost,
                            container_kwh, container_sqm)

    def human(data):
        t = Table("households", "avg kWh", "battery kWh", "cost $", "$ per household",
                  "containers", "area m²")
        for r in data["rows"]:
            t.add_row(str(r["households"]), str(r["average_kwh"]), str(r["battery_kwh"]),
                      f"{r['cost']:,}", f"{r['cost_per_household']:,}", str(r["containers"]),
                      str(r["area_sqm"]))
        c = _console()
        c.print(t)
        c.print(f"capacity price {data['price_per_kwh']} $/kWh, battery = {data['headroom']} × "
                f"average balance, so {data['rows'][0]['cost_per_average_kwh']} $ per average kWh")
        if "bmax_wh" in data:
            c.print(f"B_max for {data['target_cost']} $ per user: {data['bmax_kwh']} kWh "
                    f"({data['bmax_wh']} Wh; set \\[market] bmax_wh)")

    app.emit(data, human)


COMMANDS = [market]
