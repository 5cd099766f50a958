"""The ledger inside `egs-gw run`: the settlement loop and the outbox worker.

Runs the blocking Runner (SQLite + JSON-RPC) in a worker thread, tick by tick,
until ctx.stopping is set. The keystore is decrypted once, at the first tick.
A closed interval announced by the gateway (hooks["interval_closed"]) wakes the
loop at once instead of at the next tick.
"""
import asyncio

from gateway.ledger.runner import Runner
from gateway.ledger.settings import Settings


async def run(ctx):
    settings = Settings(ctx.config)
    runner = await asyncio.to_thread(Runner, settings, ctx.db_path, ctx.log.getChild("ledger"))
    wake = asyncio.Event()
    ctx.hooks.setdefault("interval_closed", []).append(lambda rows: wake.set())
    try:
        while not ctx.stopping.is_set():
            wake.clear()
            try:
                await asyncio.to_thread(runner.tick)
            except Exception:
                ctx.log.exception("ledger tick failed")  # one bad tick must not end the gateway
                runner.last = {}
            ctx.health["ledger"] = {"ok": runner.chain_up is not False,
                                    "chain": runner.last.get("chain", "up"),
                                    "error": runner.last.get("error")}
            if runner.busy():
                continue
            waiters = {asyncio.ensure_future(ctx.stopping.wait()), asyncio.ensure_future(wake.wait())}
            await asyncio.wait(waiters, timeout=settings.tick_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
    finally:
        runner.close()
