"""Ingest's background tasks beside the MQTT session: 15-minute interval aggregation
(announcing closed intervals to the components' `interval_closed` hooks) and the
status heartbeat that `egs-gw status` reads.
"""
import asyncio
import inspect
import os
import sqlite3
import time

from gateway import clock, db
from gateway.ingest import intervals, store

HEARTBEAT_S = 2.0


async def intervals_task(ctx, gw):
    """Recompute intervals of devices with new readings; announce newly closed ones."""
    icfg = ctx.config["intervals"]
    conn = db.connect(ctx.db_path)
    intervals.set_estimate_gap(conn, icfg["estimate_gap_s"], icfg["long_gap_s"])
    announced = set()
    try:
        while not gw.halt.is_set():
            try:
                with db.transaction(conn):
                    intervals.refresh(conn, icfg["estimate_gap_s"], long_gap=icfg["long_gap_s"])
                closed = intervals.closed_intervals(conn, clock.now(), icfg["grace_s"], refresh_first=False)
                fresh = [r for r in closed if r["id"] not in announced]
                announced = {r["id"] for r in closed}
                if fresh:
                    for cb in list(ctx.hooks.get("interval_closed", [])):
                        res = cb(fresh)
                        if inspect.isawaitable(res):
                            await res
            except Exception:
                ctx.log.exception("interval aggregation failed; retrying")
            try:
                await asyncio.wait_for(gw.halt.wait(), icfg["tick_s"])
            except TimeoutError:
                pass
    finally:
        conn.close()


async def heartbeat(ctx, gw, started):
    conn = db.connect(ctx.db_path)
    last_log = time.time()
    logged = 0
    try:
        while True:
            now = time.time()
            s = gw.stats
            state = {
                "pid": os.getpid(), "started_at": started, "community": ctx.community,
                "broker": f"{gw.host}:{gw.port}", "connected": gw.connected,
                "received": s.received, "accepted": s.accepted, "duplicates": s.duplicates,
                "rejected": s.rejected, "status_messages": s.status, "rate_1m": round(s.rate(now), 2),
                "workers": gw.workers, "heartbeat_s": HEARTBEAT_S,
                "running": not gw.halt.is_set(),
                "components": {k: dict(v) for k, v in getattr(ctx, "health", {}).items()},
            }
            try:
                with db.transaction(conn):
                    store.put_state(conn, "service", state)
            except sqlite3.Error as e:
                ctx.log.warning("status heartbeat not written: %s", e)
            try:
                gw.core.flush_status()     # device statuses the per-device write quota held back
            except Exception:
                ctx.log.exception("device statuses not written; retrying")
            if now - last_log >= 30 and s.accepted != logged:
                ctx.log.info("ingest: %d stored (%.1f/s over the last minute), %d duplicates, %d rejected",
                             s.accepted, state["rate_1m"], s.duplicates, s.rejected)
                last_log, logged = now, s.accepted
            if gw.halt.is_set():
                return
            gw.changed.clear()
            waits = [asyncio.ensure_future(gw.halt.wait()), asyncio.ensure_future(gw.changed.wait())]
            await asyncio.wait(waits, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
    finally:
        conn.close()
