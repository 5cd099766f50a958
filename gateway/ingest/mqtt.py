"""The MQTT session of ingest: receive, verify, commit, then acknowledge.

Acknowledge-after-commit (DESIGN.md invariant 1) lives in `MqttIngest._committer`:
an ack for a device is published only after the SQLite transaction holding its
readings has committed, so a crash at any point loses nothing a device still holds.
After every (re)connection each device is asked to resend what it has not seen
acknowledged. Verification runs inline or in a process pool (`ingest.workers`).
"""
import asyncio
import collections
import itertools
import logging
import os
import time

from gateway import clock, db
from gateway import config as config_mod
from gateway.ingest import core as ingest
from gateway.ingest import settings, verify
from gateway.ingest.pool import VerifierPool, WorkerDied
from protocol import messages_gateway, topics

PUBLISH_CONCURRENCY = 8   # below aiomqtt's warning threshold of 10 pending publishes


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


def read_password(path, key="mqtt.password_file"):
    """The password in `path` (None without one); a file others may read is warned about."""
    if not path:
        return None
    try:
        with open(path) as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read().strip()
    except OSError as e:
        raise config_mod.ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
    if mode & 0o077:
        logging.getLogger("egs.gateway.ingest.mqtt").warning(
            "%s: %s is readable by others (mode %04o); chmod 600 it", key, path, mode & 0o777)
    return text


def _inbox_type(holder):
    """aiomqtt's incoming queue class, keeping the instance at hand in `holder` so a
    batch can be drained with get_nowait instead of one task per message."""

    class Inbox(asyncio.Queue):
        def __init__(self, maxsize=0):
            super().__init__(maxsize)
            holder["q"] = self

    return Inbox


class MqttIngest:
    """The ingest side of the service: MQTT in, store, acks out."""

    def __init__(self, ctx):
        self.ctx = ctx
        cfg = ctx.config
        self.log = ctx.log
        self.mqtt = cfg["mqtt"]
        self.icfg = cfg["ingest"]
        self.host, self.port = settings.host_port(self.mqtt["broker"], "mqtt.broker")
        self.password = read_password(self.mqtt["password_file"])
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
        self.sub_ocmf = topics.subscription(ctx.community, "ocmf")
        self.sub_status = topics.subscription(ctx.community, "status")

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
        return topics.topic(self.ctx.community, device, kind)

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
            self._ask_resend(d.id, d.acked_seq + 1)

    def _ask_resend(self, device, first):
        # a device numbers its records from 1, a registration may start at 0: "from": 1
        # asks for the same records, "from": 0 would be refused by the device as malformed
        self._fire(self._topic(device, "cmd"), messages_gateway.resend(max(1, first)))

    # -- the MQTT session ------------------------------------------------------------
    async def run(self):
        import aiomqtt

        backoff = 0.5
        # a broker configured by `egs-gw broker config` uses the user name as client id
        # whatever we send (use_username_as_clientid): send it too, so the persistent
        # session is the same one on any broker
        client_id = self.mqtt["client_id"] or self.mqtt["user"] or f"egs-gw-{self.ctx.community}"
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
                    values = verify.verify_batch([(m.payload, pub) for m, pub in work])
                results = {id(m): r for (m, _), r in zip(work, values)}
            outcome = self.core.commit(msgs, results)
            self.stats.add(outcome)
            for device, seq in outcome.acks.items():
                if seq >= 0:    # else nothing is stored yet (a registration from 0)
                    self._fire(self._topic(device, "ack"), messages_gateway.ack(seq))
            for device, first in outcome.resend.items():
                self.log.info("asking %s to resend from %d", device, first)
                self._ask_resend(device, first)
            await asyncio.sleep(0)
