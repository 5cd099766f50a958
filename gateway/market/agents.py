"""Zero-intelligence agents: the platform trades for a user at the prices he set.

Whitepaper 7.3: a user defines only a target buying and a target selling price;
the platform places the order itself once a balance threshold is reached and no
other order of that side is open — so energy is sold before the battery (capped
at B_max) is full and profit is lost, and bought when it runs low. The thresholds
and their defaults from B_max: `decide`, `resolve`, docs/market.md. A side without
a price is not traded. Agents act when the user's balance changes (settlement,
meters, charging), which Market notices on its next operation.
"""
from gateway.market.book import BUY, SELL
from gateway.units import MAX_WH, UnitError, parse_price


class AgentError(ValueError):
    pass


FIELDS = ("buy_price", "sell_price", "buy_below_wh", "buy_up_to_wh", "sell_above_wh", "keep_wh",
          "enabled")


def _row_to_agent(r):
    return {
        "owner": r["owner"],
        "buy_price": int(r["buy_price"]) if r["buy_price"] is not None else None,
        "sell_price": int(r["sell_price"]) if r["sell_price"] is not None else None,
        "buy_below_wh": r["buy_below_wh"],
        "buy_up_to_wh": r["buy_up_to_wh"],
        "sell_above_wh": r["sell_above_wh"],
        "keep_wh": r["keep_wh"],
        "enabled": bool(r["enabled"]),
    }


def get(conn, community, owner):
    r = conn.execute("SELECT * FROM market_agents WHERE community=? AND owner=?",
                     (community, owner)).fetchone()
    return _row_to_agent(r) if r else None


def list_agents(conn, community):
    return [_row_to_agent(r) for r in conn.execute(
        "SELECT * FROM market_agents WHERE community=? ORDER BY owner", (community,))]


def resolve(agent, bmax):
    """The thresholds in force: explicit values, else the B_max defaults."""
    a = dict(agent)
    if a["sell_price"] is not None:
        if a["sell_above_wh"] is None:
            if not bmax:
                raise AgentError("sell_above_wh is required when there is no B_max")
            a["sell_above_wh"] = bmax
        if a["keep_wh"] is None:
            a["keep_wh"] = bmax // 2 if bmax else 0
    if a["buy_price"] is not None:
        if a["buy_below_wh"] is None:
            a["buy_below_wh"] = 0
        if a["buy_up_to_wh"] is None:
            if not bmax:
                raise AgentError("buy_up_to_wh is required when there is no B_max")
            a["buy_up_to_wh"] = bmax // 2
        if a["buy_up_to_wh"] <= a["buy_below_wh"]:
            raise AgentError("buy_up_to_wh must be above buy_below_wh")
    if a["sell_price"] is not None and a["sell_above_wh"] <= a["keep_wh"]:
        raise AgentError("sell_above_wh must be above keep_wh")
    return a


def store(conn, community, owner, fields, now, bmax):
    """Create or update an agent (None leaves a field as it was). → the stored agent."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise AgentError(f"unknown agent fields: {', '.join(sorted(unknown))}")
    old = get(conn, community, owner) or {
        "owner": owner, "buy_price": None, "sell_price": None, "buy_below_wh": None,
        "buy_up_to_wh": None, "sell_above_wh": None, "keep_wh": None, "enabled": True}
    new = dict(old)
    for key, value in fields.items():
        if value is None:
            continue
        if key in ("buy_price", "sell_price"):
            try:
                new[key] = None if value in ("", "none", "off") else parse_price(value, bare="eea")
            except UnitError as e:
                raise AgentError(f"{key}: {e}") from None
        elif key == "enabled":
            new[key] = bool(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WH:
                raise AgentError(f"{key}: a number of Wh from 0 to {MAX_WH}, got {value!r}")
            new[key] = value
    if new["buy_price"] is None and new["sell_price"] is None:
        raise AgentError("an agent needs a buy price, a sell price or both")
    resolve(new, bmax)
    conn.execute(
        "INSERT INTO market_agents(community, owner, buy_price, sell_price, buy_below_wh, "
        "buy_up_to_wh, sell_above_wh, keep_wh, enabled, updated_at) "
        "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(community, owner) DO UPDATE SET "
        "buy_price=excluded.buy_price, sell_price=excluded.sell_price, "
        "buy_below_wh=excluded.buy_below_wh, buy_up_to_wh=excluded.buy_up_to_wh, "
        "sell_above_wh=excluded.sell_above_wh, keep_wh=excluded.keep_wh, "
        "enabled=excluded.enabled, updated_at=excluded.updated_at",
        (community, owner, _text(new["buy_price"]), _text(new["sell_price"]), new["buy_below_wh"],
         new["buy_up_to_wh"], new["sell_above_wh"], new["keep_wh"], int(new["enabled"]), now))
    return new


def _text(value):
    return None if value is None else str(value)


def decide(agent, bal, open_sides, bmax):
    """The orders an agent places now: [(side, qty, price)]. Pure: balances in, orders out.

    Sell: when the energy he can sell reaches sell_above_wh (default B_max: "battery
    full"), offer everything above keep_wh (default B_max/2). Buy: when his stored energy
    falls to buy_below_wh (default 0: empty), bid for what brings it to buy_up_to_wh
    (default B_max/2). The defaults assume, as the whitepaper does, that users hold about
    half the maximum on average.
    """
    if not agent["enabled"]:
        return []
    try:
        a = resolve(agent, bmax)
    except AgentError:
        # Thresholds that no longer fit [market] bmax_wh (changed since the agent was
        # set): the agent waits until its owner sets them again. Raising here would
        # fail every market operation, `agents set` included, so nobody could fix it.
        return []
    owner = a["owner"]
    out = []
    if a["sell_price"] is not None and SELL not in open_sides:
        sellable = bal.sellable(owner)
        if sellable >= a["sell_above_wh"] and sellable > a["keep_wh"]:
            out.append((SELL, sellable - a["keep_wh"], a["sell_price"]))
    if a["buy_price"] is not None and BUY not in open_sides:
        stored = bal.stored(owner)
        if stored <= a["buy_below_wh"]:
            qty = min(a["buy_up_to_wh"] - stored, bal.headroom(owner))
            if qty > 0:
                out.append((BUY, qty, a["buy_price"]))
    return out


def react(market, owners):
    """Let the agents of `owners` act on their balances (inside market's operation)."""
    bmax = market.settings["bmax_wh"]
    for owner in owners:
        agent = get(market.conn, market.community, owner)
        if agent is None:
            continue
        open_sides = {o.side for o in market.book.open_orders(owner)}
        for side, qty, price in decide(agent, market.book.balances, open_sides, bmax):
            market.agent_place(owner, side, qty, price)
