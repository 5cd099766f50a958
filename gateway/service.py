"""`egs-gw run`: the gateway as one asyncio process.

Nothing is acknowledged to a device that was not committed, so a crash at any point loses
nothing a device still holds. SIGTERM/SIGINT set `ctx.stopping`: the components return
first (the MQTT session and the store are still there for them), then the batch in hand is
committed and acknowledged, and the process exits 0. A component that fails stops the
service with exit status 1 (systemd restarts it).

Tasks: MQTT ingest (aiomqtt; verification inline or in a process pool, one SQLite
transaction per batch, acks after the commit), interval aggregation (every
`intervals.tick_s`), a status heartbeat for `egs-gw status`, and the plug-in components:
for each name in `gateway.components` (COMPONENTS) the module is imported when it is
installed and its `run(ctx)` coroutine (ctx: Context) runs until `ctx.stopping` is set.
"""
import asyncio
import importlib
import json
import logging
import signal
import time

from gateway import config as config_mod
from gateway import db
from gateway.ingest import service as ingest_service
from gateway.ingest import store
from gateway.ingest.mqtt import MqttIngest

COMPONENTS = {
    "ledger": "gateway.ledger.service",
    "ocpp": "ocpp_cs.service",
    "market": "gateway.market.service",
}

# Their config sections, declared before the file is read (`python -m gateway.service`
# does not import every component's commands the way `egs-gw` does).
COMPONENT_SETTINGS = (
    "gateway.devices.settings", "gateway.ledger.settings", "ocpp_cs.settings", "gateway.market.settings",
)


class Context:
    """What a component's run(ctx) gets: config (dict from gateway.config.load), db_path,
    community, log, stopping (asyncio.Event), ocpp ("HOST:PORT" from --ocpp, or None) and
    hooks:
        hooks["interval_closed"]: list of callables(intervals) called when intervals of
            any device close (intervals as returned by gateway.ingest.intervals.closed_intervals);
        hooks["publish"]: async callable(topic, payload, qos=1, retain=False) on the
            gateway's MQTT connection (raises when disconnected).
    """

    def __init__(self, config, db_path, community, log, ocpp=None):
        self.config = config
        self.db_path = db_path
        self.community = community
        self.log = log
        self.ocpp = ocpp
        self.stopping = asyncio.Event()
        self.hooks = {"interval_closed": []}
        # per component a small dict for `egs-gw status`: {"ok": bool, ...}; the heartbeat writes it
        self.health = {}


def declare_sections():
    for modname in COMPONENT_SETTINGS:
        try:
            importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise


def load_components(names, log):
    """Import the plug-in modules that are installed; unknown names are config errors."""
    mods = []
    for name in names:
        if name not in COMPONENTS:
            raise config_mod.ConfigError(
                f"gateway.components: unknown component {name!r} (known: {', '.join(COMPONENTS)})")
        modname = COMPONENTS[name]
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            log.info("component %s not installed (%s); skipped", name, modname)
            continue
        if not hasattr(mod, "run"):
            log.info("component %s has no run(ctx); skipped", name)
            continue
        mods.append((name, mod))
    return mods


async def serve(cfg, ocpp=None, log=None):
    """Run until SIGTERM/SIGINT or a component fails. Returns the exit status."""
    log = log or logging.getLogger("egs.gateway")
    community = config_mod.require(cfg, "gateway.community")
    db_path = cfg["store"]["db"]
    ctx = Context(cfg, db_path, community, log, ocpp)
    conn = db.connect(db_path)
    store.init(conn)
    conn.close()
    components = load_components(cfg["gateway"]["components"], log)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.stopping.set)
    gw = MqttIngest(ctx)
    ctx.hooks["publish"] = gw.publish
    await gw.start_pool()
    started = time.time()
    log.info("gateway for community %s, database %s, %s verification", community, db_path,
             f"{gw.workers} worker process(es)" if gw.workers else "inline")
    core = {
        loop.create_task(gw.run(), name="ingest"),
        loop.create_task(ingest_service.intervals_task(ctx, gw), name="intervals"),
        loop.create_task(ingest_service.heartbeat(ctx, gw, started), name="heartbeat"),
    }
    parts = set()
    for name, mod in components:
        log.info("starting component %s", name)
        ctx.health[name] = {"ok": True}
        parts.add(loop.create_task(mod.run(ctx), name=name))
    status = 0
    try:
        done, _ = await asyncio.wait(core | parts | {loop.create_task(ctx.stopping.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t in core | parts and not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %r", t.get_name(), t.exception(), exc_info=t.exception())
                status = 1
        # components first (they may still publish or read the store), the ingest last
        ctx.stopping.set()
        if await _finish(parts, log, 15) and status == 0:
            status = 1
        gw.halt.set()
        if await _finish(core, log, 15) and status == 0:
            status = 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        gw.close()
        log.info("gateway stopped")
    return status


async def _finish(tasks, log, timeout):
    """Wait for tasks to end (cancel stragglers); True if one of them failed."""
    if not tasks:
        return False
    done, still = await asyncio.wait(tasks, timeout=timeout)
    for t in still:
        log.warning("%s did not stop in time; cancelled", t.get_name())
        t.cancel()
    failed = False
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.error("%s failed while stopping: %r", t.get_name(), t.exception())
            failed = True
    return failed


class JsonLines(logging.Formatter):
    """One JSON object per log line, for log collectors (`egs-gw run --json`)."""

    def format(self, record):
        out = {"at": round(record.created, 3), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level, as_json=False):
    lvl = getattr(logging, str(level).upper(), None)
    if not isinstance(lvl, int):
        raise config_mod.ConfigError(f"gateway.log_level: unknown level {level!r}")
    if as_json:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLines())
        logging.basicConfig(level=lvl, handlers=[handler])
    else:
        logging.basicConfig(level=lvl, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(cfg, ocpp=None, as_json=False):
    setup_logging(cfg["gateway"]["log_level"], as_json)
    return asyncio.run(serve(cfg, ocpp))


if __name__ == "__main__":
    # `python -m gateway.service [options]` is `egs-gw run [options]` without loading
    # the command modules of every other component (quicker to start).
    declare_sections()
    from gateway.run import run_cmd
    run_cmd(prog_name="egs-gw run")
