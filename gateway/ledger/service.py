"""The ledger inside `egs-gw run`: the settlement loop and the outbox worker.

Runs the blocking Runner (SQLite + JSON-RPC) in a worker thread, tick by tick,
until ctx.stopping is set. The keystore is decrypted once, at the first tick.
"""
import asyncio

from gateway.ledger.runner import Runner
from gateway.ledger.settings import Settings


async def run(ctx):
    settings = Settings(ctx.config)
    runner = await asyncio.to_thread(Runner, settings, ctx.db_path, ctx.log.getChild("ledger"))
    try:
        while not ctx.stopping.is_set():
            try:
                await asyncio.to_thread(runner.tick)
            except Exception:
                ctx.log.exception("ledger tick failed")
                runner.last = {}
            if runner.busy():
                continue
            try:
                await asyncio.wait_for(ctx.stopping.wait(), settings.tick_s)
            except TimeoutError:
                pass
    finally:
        runner.close()
