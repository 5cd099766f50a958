"""`egs-gw run`: the gateway as one asyncio process.

Tasks: MQTT ingest (aiomqtt; verification inline or in a process pool, one SQLite
transaction per batch, acks after the commit), interval aggregation (every
`intervals.tick_s`), a status heartbeat for `egs-gw status`, and the plug-in
components of later issues: for each name in `gateway.components` the module
below is imported when it is installed and its `run(ctx)` coroutine runs until
`ctx.stopping` is set.

    ledger  gateway.ledger.service     ocpp  ocpp_cs.service     market  gateway.market.service

`ctx` carries config (dict from gateway.config.load), db_path, community, log,
stopping (asyncio.Event), ocpp ("HOST:PORT" from --ocpp, or None) and hooks:
    hooks["interval_closed"]: list of callables(intervals) called when intervals of
        any device close (intervals as returned by gateway.intervals.closed_intervals);
    hooks["publish"]: async callable(topic, payload, qos=1, retain=False) on the
        gateway's MQTT connection (raises when disconnected).
SIGTERM/SIGINT set `stopping`: the components return first (the MQTT session and
the store are still there for them), then the batch in hand is committed and
acknowledged, and the process exits 0. A component that fails stops the
service with exit status 1 (systemd restarts it); nothing is acknowledged that was
not committed, so a crash at any point loses nothing a device still holds.
"""
import asyncio
import collections
import importlib
import inspect
import itertools
import json
import logging
import os
import signal
import sqlite3
import time

from gateway import clock, db, ingest, intervals, settings, store
from gateway import config as config_mod
from gateway.pool import VerifierPool, WorkerDied

COMPONENTS = {
    "ledger": "gateway.ledger.service",
    "ocpp": "ocpp_cs.service",
    "market": "gateway.market.service",
}

# Their config sections, declared before the file is read (`python -m gateway.service`
# does not import every component's commands the way `egs-gw` does).
COMPONENT_SETTINGS = ("gateway.ledger.settings", "ocpp_cs.settings", "gateway.market.settings")

HEARTBEAT_S = 2.0
PUBLISH_CONCURRENCY = 8   # below aiomqtt's warning threshold of 10 pending publishes


class Context:
    def __init__(self, config, db_path, community, log, ocpp=None):
        self.config = config
        self.db_path = db_path
        self.community = community
        self.log = log
        self.ocpp = ocpp
        self.stopping = asyncio.Event()
        self.hooks = {"interval_closed": []}


class Stats:
    def __init__(self):
        self.received = self.accepted = self.duplicates = self.rejected = self.status = 0
        self.window = collections.deque()   # (time, accepted) samples for the rate

    def add(self, outcome):
        self.accepted += outcome.accepted
        self.duplicates += outcome.duplicates
        self.rejected += sum(outcome.rejected.values())

    def rate(self, now, span=60.0):
        self.window.append((now, self.accepted))
        while len(self.window) > 2 and self.window[0][0] < now - span:
            self.window.popleft()
        t0, a0 = self.window[0]
        return (self.accepted - a0) / (now - t0) if now > t0 else 0.0


def _read_password(path):
    if not path:
        return None
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise config_mod.ConfigError(f"mqtt.password_file: cannot read {path}: {e.strerror}") from None


def _inbox_type(holder):
    """aiomqtt's incoming queue class, keeping the instance at hand in `holder` so a
    batch can be drained with get_nowait instead of one task per message."""

    class Inbox(asyncio.Queue):
        def __init__(self, maxsize=0):
            super().__init__(maxsize)
            holder["q"] = self

    return Inbox


class Gateway:
    """The ingest side of the service: MQTT in, store, acks out."""

    def __init__(self, ctx):
        self.ctx = ctx
        cfg = ctx.config
        self.log = ctx.log
        self.mqtt = cfg["mqtt"]
        self.icfg = cfg["ingest"]
        self.host, self.port = settings.host_port(self.mqtt["broker"], "mqtt.broker")
        self.password = _read_password(self.mqtt["password_file"])
        self.conn = db.connect(ctx.db_path)
        self.core = ingest.IngestCore(self.conn, ctx.community, self.icfg)
        self.stats = Stats()
        self.connected = False
        self.client = None
        self.pool = None
        workers = self.icfg["workers"]
        if workers < 0:
            workers = os.cpu_count() or 1
        self.workers = workers
        self._out = {}                    # topic -> payload waiting to be published
        self._out_ready = asyncio.Event()
        self.changed = asyncio.Event()    # wakes the heartbeat on (dis)connection
        self.halt = asyncio.Event()       # set after the components stopped: ingest ends last
        self.sub_ocmf = f"egs/v1/{ctx.community}/+/ocmf"
        self.sub_status = f"egs/v1/{ctx.community}/+/status"

    async def start_pool(self):
        if self.workers > 0 and self.pool is None:
            self.pool = VerifierPool(self.workers)
            # warm the workers up so the first batch does not pay for their start
            await asyncio.gather(*(self.pool.submit([]) for _ in range(self.workers)))

    def close(self):
        if self.pool is not None:
            self.pool.close()
        self.conn.close()

    def _topic(self, device, kind):
        return f"egs/v1/{self.ctx.community}/{device}/{kind}"

    async def publish(self, topic, payload, qos=1, retain=False):
        if self.client is None or not self.connected:
            raise ConnectionError("not connected to the MQTT broker")
        await self.client.publish(topic, payload, qos=qos, retain=retain)

    def _fire(self, topic, payload):
        """Queue an ack or command. Per topic only the newest counts: acks coalesce."""
        self._out[topic] = payload
        self._out_ready.set()

    async def _sender(self):
        """Publish queued acks/commands (QoS 1), a few at a time, in order per topic."""
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            while self._out and self.connected:
                items = list(itertools.islice(self._out.items(), PUBLISH_CONCURRENCY))
                for t, _ in items:
                    del self._out[t]
                results = await asyncio.gather(*(self.publish(t, p) for t, p in items),
                                               return_exceptions=True)
                for (t, p), r in zip(items, results, strict=True):
                    if isinstance(r, Exception):   # kept for after the reconnect
                        self.log.warning("publish to %s failed: %s", t, r)
                        self._out.setdefault(t, p)
                        return

    async def _flush(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self._out and self.connected and time.monotonic() < deadline:
            self._out_ready.set()
            await asyncio.sleep(0.02)

    def _ask_for_replay(self):
        """After each connection, ask every device to resend what it has not seen
        acknowledged.

        A previous run may have died, or the last connection dropped, between receiving
        messages (the broker already considers them delivered) and committing them; only
        the devices still hold them.
        """
        for d in self.core.devices.values():
            if d.revoked:
                continue
            first = d.acked_seq + 1
            self._fire(self._topic(d.id, "cmd"), json.dumps({"cmd": "resend", "from": first}))

    # -- the MQTT session ------------------------------------------------------------
    async def run(self):
        import aiomqtt

        backoff = 0.5
        client_id = self.mqtt["client_id"] or f"egs-gw-{self.ctx.community}"
        tls = aiomqtt.TLSParameters(ca_certs=self.mqtt["ca_file"] or None) if self.mqtt["tls"] else None
        while not self.halt.is_set():
            holder = {}
            try:
                async with aiomqtt.Client(
                    self.host, self.port, username=self.mqtt["user"] or None, password=self.password,
                    identifier=client_id, clean_session=False, keepalive=self.mqtt["keepalive"],
                    queue_type=_inbox_type(holder), tls_params=tls, max_inflight_messages=100,
                ) as client:
                    self.client = client
                    await client.subscribe([(self.sub_ocmf, 1), (self.sub_status, 1)])
                    self.connected = True
                    self.changed.set()
                    backoff = 0.5
                    self.log.info("connected to MQTT broker %s:%d as %s", self.host, self.port,
                                  self.mqtt["user"] or "(anonymous)")
                    self._ask_for_replay()
                    await self._pump(client, holder["q"])
            except aiomqtt.MqttError as e:
                if self.halt.is_set():
                    break
                self.log.warning("MQTT broker %s:%d: %s; retrying in %.1f s", self.host, self.port, e, backoff)
            finally:
                self.connected = False
                self.client = None
                self.changed.set()
            try:
                await asyncio.wait_for(self.halt.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, self.mqtt["reconnect_max_s"])

    async def _pump(self, client, queue):
        """Receive → verify → commit → ack, batches pipelined through the pool."""
        pending = asyncio.Queue(maxsize=max(2, self.workers + 1))
        committer = asyncio.get_running_loop().create_task(self._committer(pending))
        sender = asyncio.get_running_loop().create_task(self._sender())
        self._out_ready.set()      # what is left from before a reconnect
        messages = client.messages.__aiter__()
        stop = asyncio.get_running_loop().create_task(self.halt.wait())
        try:
            while True:
                nxt = asyncio.ensure_future(messages.__anext__())
                done, _ = await asyncio.wait({nxt, stop, committer}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    if committer in done:
                        committer.result()  # re-raise its failure
                    break
                batch = [nxt.result()]
                await self._gather(queue, batch)
                await pending.put(self._submit(batch))
        finally:
            stop.cancel()
            if not committer.done():
                await pending.put(None)   # commit and acknowledge what is in hand
                await committer
            await self._flush()
            sender.cancel()

    async def _gather(self, queue, batch):
        """Fill a batch from what has arrived, lingering up to ingest.linger_ms while more
        keeps coming: one commit (one fsync) for many readings under load, no wait when idle."""
        size = self.icfg["batch_size"]
        deadline = time.monotonic() + self.icfg["linger_ms"] / 1000
        idle = 0
        while len(batch) < size:
            try:
                batch.append(queue.get_nowait())
                idle = 0
                continue
            except asyncio.QueueEmpty:
                pass
            idle += 1
            if idle > 2 or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0)      # let the MQTT reader take the next packet

    def _submit(self, batch):
        now = clock.now()
        msgs, statuses = [], []
        for m in batch:
            topic = str(m.topic)
            if topic.endswith("/status"):
                statuses.append((topic, m.payload))
            else:
                msgs.append(ingest.Message(topic, m.payload if isinstance(m.payload, bytes)
                                           else str(m.payload or "").encode(), now))
        self.stats.received += len(batch)
        for topic, payload in statuses:
            self.stats.status += 1
            try:
                self.core.status(topic, payload if isinstance(payload, bytes) else str(payload).encode())
            except Exception:
                self.log.exception("status message on %s not recorded", topic)
        work = self.core.prepare(msgs)
        if self.pool is not None and len(work) >= self.icfg["pool_min_batch"]:
            return msgs, work, self.pool.submit([(m.payload, pub) for m, pub in work])
        results = self.core.verify_inline(work)
        return msgs, work, results

    async def _committer(self, pending):
        while True:
            item = await pending.get()
            if item is None:
                return
            msgs, work, results = item
            if isinstance(results, asyncio.Future):
                try:
                    values = await results
                except WorkerDied as e:  # verify here instead
                    self.log.error("%s; verifying in the gateway process", e)
                    values = ingest.verify_batch([(m.payload, pub) for m, pub in work])
                results = {id(m): r for (m, _), r in zip(work, values)}
            outcome = self.core.commit(msgs, results)
            self.stats.add(outcome)
            for device, seq in outcome.acks.items():
                self._fire(self._topic(device, "ack"), json.dumps({"seq": seq}))
            for device, first in outcome.resend.items():
                self.log.info("asking %s to resend from %d", device, first)
                self._fire(self._topic(device, "cmd"), json.dumps({"cmd": "resend", "from": first}))
            await asyncio.sleep(0)


async def _intervals_task(ctx, gw):
    """Recompute intervals of devices with new readings; announce newly closed ones."""
    icfg = ctx.config["intervals"]
    conn = db.connect(ctx.db_path)
    intervals.set_estimate_gap(conn, icfg["estimate_gap_s"])
    announced = set()
    try:
        while not gw.halt.is_set():
            try:
                with db.transaction(conn):
                    intervals.refresh(conn, icfg["estimate_gap_s"])
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


async def _heartbeat(ctx, gw, started):
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
            }
            try:
                with db.transaction(conn):
                    store.put_state(conn, "service", state)
            except sqlite3.Error as e:
                ctx.log.warning("status heartbeat not written: %s", e)
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
    gw = Gateway(ctx)
    ctx.hooks["publish"] = gw.publish
    await gw.start_pool()
    started = time.time()
    log.info("gateway for community %s, database %s, %s verification", community, db_path,
             f"{gw.workers} worker process(es)" if gw.workers else "inline")
    core = {
        loop.create_task(gw.run(), name="ingest"),
        loop.create_task(_intervals_task(ctx, gw), name="intervals"),
        loop.create_task(_heartbeat(ctx, gw, started), name="heartbeat"),
    }
    parts = set()
    for name, mod in components:
        log.info("starting component %s", name)
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
    from gateway.commands import run_cmd
    run_cmd(prog_name="egs-gw run")
