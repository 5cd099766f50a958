"""The market inside `egs-gw run`: agents, rematching and per-interval trade settlement.

Every `[market] poll_s` the service lets the book react to balance changes (the
ledger's interval settlement, deposits, charging sessions, trade settlement
itself): orders that became executable trade, and the ZI agents of users whose
balance changed place their orders. Then the trades of every interval that has
closed settle in batches through the ledger outbox. SQLite work runs in a worker
thread so the event loop (MQTT ingest, OCPP) never waits on it.

With `[market] price_sessions` (default on) and an [ocpp] section naming the
energy pool and the configured price, the service publishes
`ctx.hooks["ocpp_price_source"]`: the central system then buys each session's
energy at the market (exchange.session_price_source), and falls back to the
configured price for what the market cannot supply.
"""
import asyncio
import sqlite3

from gateway import accounts, db
from gateway.market.exchange import Market, session_price_source
from gateway.market.settings import market_settings, validate
from gateway.units import format_price, parse_price


def install_price_hook(ctx, settings, log):
    """Publish the market as the central system's price source when it can be."""
    if not settings["price_sessions"]:
        return False
    ocpp = ctx.config.get("ocpp") or {}
    pool, fallback = ocpp.get("energy_pool"), ocpp.get("price_per_kwh")
    try:
        pool = accounts.normalize_address(pool) if isinstance(pool, str) else None
        fallback = parse_price(str(fallback), bare="eea") if isinstance(fallback, int | str) else None
    except ValueError:
        pool = None
    if pool is None or fallback is None:
        log.info("charging sessions keep the configured price (no [ocpp] energy_pool/price)")
        return False
    ctx.hooks["ocpp_price_source"] = session_price_source(
        ctx.community, pool, fallback, settings=settings, log=log)
    log.info("charging sessions buy at the market (pool %s, fallback %s EEA/kWh)", pool,
             format_price(fallback))
    return True


def _cycle(market):
    reacted = market.refresh()
    settled = market.settle()
    return reacted, settled


async def run(ctx):
    settings = validate(ctx.config) if "market" in ctx.config else market_settings()
    log = ctx.log.getChild("market")
    conn = db.connect(ctx.db_path)
    try:
        market = Market(conn, ctx.community, settings)
        install_price_hook(ctx, settings, log)
        while not ctx.stopping.is_set():
            try:
                reacted, settled = await asyncio.to_thread(_cycle, market)
            except sqlite3.OperationalError as e:  # e.g. locked for longer than the timeout
                log.warning("market cycle postponed: %s", e)
            except Exception:
                # A failed cycle changed nothing (one transaction per operation); the
                # gateway's ingest and the central system must not stop with it.
                log.exception("market cycle failed; retrying in %s s", settings["poll_s"])
            else:
                if reacted["trades"] or reacted["agent_orders"]:
                    log.info("balance changes: %d trades, %d agent orders",
                             len(reacted["trades"]), len(reacted["agent_orders"]))
                for s in settled:
                    log.info("settled %d trades (%d Wh, shortfall %d Wh) as %s", s["trades"],
                             s["wh"], s["shortfall_wh"], s["settlement_id"])
            try:
                await asyncio.wait_for(ctx.stopping.wait(), timeout=settings["poll_s"])
            except TimeoutError:
                pass
    finally:
        conn.close()
