"""`egs-gw run --ocpp HOST:PORT` runs the central system through this module.

The central system serves when `--ocpp HOST:PORT` is given (it sets the listener)
or `[ocpp] enabled = true`; otherwise this component idles until the service
stops, so a gateway without chargers needs no [ocpp] settings.

The price of energy comes from `ctx.hooks["ocpp_price_source"]` when another
component (the market) has set it, else from `[ocpp] price_per_kwh`.
It is looked up at each settlement, so the order in which components start does
not matter. A price source is `f(conn, transaction_row, energy_wh) -> EEA base
units per kWh`, called inside the settlement's SQLite transaction. The running
CentralSystem is published as `ctx.hooks["ocpp"]`.
"""
from ocpp_cs import store
from ocpp_cs.server import CentralSystem
from ocpp_cs.settings import Settings


def price_source_for(ctx, settings):
    configured = store.configured_price(settings.price_per_kwh)

    def price_source(conn, tx, energy_wh):
        hook = ctx.hooks.get("ocpp_price_source")
        return (hook or configured)(conn, tx, energy_wh)

    return price_source


async def run(ctx):
    section = dict(ctx.config["ocpp"])
    listen = getattr(ctx, "ocpp", None)
    if listen:
        section["listen"] = listen
    elif not section["enabled"]:
        ctx.log.info("OCPP central system off (start with --ocpp HOST:PORT)")
        ctx.health["ocpp"] = {"ok": True, "listening": None}
        await ctx.stopping.wait()
        return
    settings = Settings(section)
    cs = CentralSystem(ctx.db_path, settings, log=ctx.log.getChild("ocpp"),
                       price_source=price_source_for(ctx, settings))
    await cs.start()
    ctx.hooks["ocpp"] = cs
    ctx.health["ocpp"] = {"ok": True, "listening": section["listen"]}
    try:
        await ctx.stopping.wait()
    finally:
        await cs.stop()
