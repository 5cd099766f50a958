"""An OCPP 1.6J charge point emulator with connectors, a meter and EVs.

`SimChargePoint` is a charge point on the `ocpp` library that tests and the demo
drive in-process (`await cp.start_transaction(1, "TAG")`, `await cp.deliver(1, 12345)`,
`await cp.stop_transaction(1)`); `egs-sim charger` runs one from the command line
with EVs arriving, charging at their own power and leaving.

What it models, because the central system must cope with each:
  * a lifetime energy register per connector (integer Wh), sampled into MeterValues;
  * optional OCMF-signed readings (its own P-256 meter key; protocol/ocmf.py) as
    `SignedData` sampled values: Transaction.Begin after the start, periodic, and
    Transaction.End in StopTransaction's transactionData;
  * transaction messages (Start, MeterValues of a transaction, Stop) go through a
    queue that survives disconnections: sent in order, retried after a reconnect,
    with original timestamps (OCPP 1.6 §4.8 offline behaviour). A start queued
    offline gets its transactionId when it is finally sent, and the messages
    queued after it are sent with that id;
  * reconnection with exponential backoff and jitter;
  * the Core CS → charger calls (remote start/stop, reset, unlock, availability,
    configuration, clear cache, trigger message).

The emulator's clock is `gateway.clock.now() + clock_offset` (the wall clock, or the
demo's shared simulated clock when EGS_CLOCK is set): delivering energy faster than
real time (`deliver`) moves the clock on by the time the EV would have needed, so
timestamps stay physically plausible for the central system's sanity checks.
"""
import asyncio
import base64
import json
import logging
import random
import signal
import ssl as ssl_mod
import sys
from datetime import UTC, datetime

import click
from ocpp.exceptions import OCPPError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as V16ChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from gateway import clock
from gateway.cliutil import secret_option

log = logging.getLogger("sim.charger")
STOP_TIMEOUT_S = 5.0       # `egs-sim charger` switched off: how long its last stops may take


def iso(epoch):
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class EV:
    """A car: battery size, charging power limit and state of charge (integer Wh/W)."""

    def __init__(self, battery_kwh=60, max_kw=11, arrival_soc=0.2, id_tag="EV-0001",
                 target_soc=1.0):
        self.battery_wh = round(battery_kwh * 1000)
        self.max_w = round(max_kw * 1000)
        self.soc_wh = int(self.battery_wh * arrival_soc)
        self.target_wh = int(self.battery_wh * target_soc)
        self.id_tag = id_tag

    @property
    def needed_wh(self):
        return max(0, self.target_wh - self.soc_wh)

    @property
    def soc(self):
        return self.soc_wh / self.battery_wh

    def __repr__(self):
        return f"EV({self.battery_wh/1000:g} kWh, {self.max_w/1000:g} kW, soc {self.soc:.0%})"


class LocalTx:
    """A transaction as the charge point knows it; `id` is the CS's transactionId."""

    def __init__(self, connector_id, id_tag, meter_start, start_epoch):
        self.connector_id = connector_id
        self.id_tag = id_tag
        self.meter_start = meter_start
        self.start_epoch = start_epoch
        self.id = None
        self.id_tag_status = None
        self.stopped = False
        self.meter_stop = None
        self.stop_answer = None
        self.started = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()


class Connector:
    def __init__(self, connector_id, register_wh, max_w):
        self.id = connector_id
        self.register_wh = register_wh
        self.max_w = max_w
        self.status = "Available"
        self.tx = None
        self.ev = None
        self.available = True


def _chain_error(fut, target):
    """A transaction message the CS refused (CALLERROR) fails the waiter on `target`."""
    def done(f):
        if f.cancelled() or target.done():
            return
        if f.exception() is not None:
            target.set_exception(f.exception())
    fut.add_done_callback(done)


class _Queued:
    def __init__(self, action, build, fut, on_result=None):
        self.action = action
        self.build = build
        self.fut = fut
        self.on_result = on_result


class _CP(V16ChargePoint):
    """The ocpp-library side of one connection; CS → charger calls land here."""

    def __init__(self, sim, connection):
        super().__init__(sim.id, connection, response_timeout=sim.response_timeout,
                         logger=logging.getLogger("sim.charger.frames"))
        self.sim = sim

    @on(Action.remote_start_transaction)
    async def on_remote_start(self, id_tag, connector_id=None, **kw):
        c = self.sim.free_connector(connector_id)
        return call_result.RemoteStartTransaction(status="Accepted" if c else "Rejected")

    @after(Action.remote_start_transaction)
    async def after_remote_start(self, id_tag, connector_id=None, **kw):
        # the driver starts from an app standing by the car: its cable is plugged in, so
        # the charger starts charging it (a car of `remote_ev`, unless one is plugged in)
        c = self.sim.free_connector(connector_id)
        if c is not None:
            ev = c.ev or self.sim.remote_ev(id_tag)
            await self.sim.start_transaction(c.id, id_tag, ev=ev, authorize=False)

    @on(Action.remote_stop_transaction)
    async def on_remote_stop(self, transaction_id, **kw):
        c = self.sim.connector_of(transaction_id)
        return call_result.RemoteStopTransaction(status="Accepted" if c else "Rejected")

    @after(Action.remote_stop_transaction)
    async def after_remote_stop(self, transaction_id, **kw):
        c = self.sim.connector_of(transaction_id)
        if c is not None:
            await self.sim.stop_transaction(c.id, reason="Remote")

    @on(Action.reset)
    async def on_reset(self, type, **kw):
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    async def after_reset(self, type, **kw):
        await self.sim.reset(type)

    @on(Action.unlock_connector)
    async def on_unlock(self, connector_id, **kw):
        if connector_id not in self.sim.connectors:
            return call_result.UnlockConnector(status="NotSupported")
        self.sim.unlocked.append(connector_id)
        return call_result.UnlockConnector(status="Unlocked")

    @after(Action.unlock_connector)
    async def after_unlock(self, connector_id, **kw):
        c = self.sim.connectors.get(connector_id)
        if c is not None and c.tx is not None:
            await self.sim.stop_transaction(connector_id, reason="UnlockCommand")

    @on(Action.change_availability)
    async def on_change_availability(self, connector_id, type, **kw):
        targets = list(self.sim.connectors.values()) if connector_id == 0 else \
            [self.sim.connectors[connector_id]] if connector_id in self.sim.connectors else []
        if not targets:
            return call_result.ChangeAvailability(status="Rejected")
        busy = False
        for c in targets:
            c.available = type == "Operative"
            busy = busy or c.tx is not None
        return call_result.ChangeAvailability(status="Scheduled" if busy else "Accepted")

    @after(Action.change_availability)
    async def after_change_availability(self, connector_id, type, **kw):
        for c in self.sim.connectors.values():
            if (connector_id in (0, c.id)) and c.tx is None:
                await self.sim.set_status(c.id, "Available" if c.available else "Unavailable")

    @on(Action.change_configuration)
    async def on_change_configuration(self, key, value, **kw):
        entry = self.sim.configuration.get(key)
        if entry is None:
            return call_result.ChangeConfiguration(status="NotSupported")
        if entry["readonly"]:
            return call_result.ChangeConfiguration(status="Rejected")
        if entry.get("int") and not value.lstrip("-").isdigit():
            return call_result.ChangeConfiguration(status="Rejected")
        entry["value"] = value
        if key == "AuthorizationKey":
            self.sim.password = value
        return call_result.ChangeConfiguration(status="Accepted")

    @on(Action.get_configuration)
    async def on_get_configuration(self, key=None, **kw):
        keys = key if key else list(self.sim.configuration)
        known, unknown = [], []
        for k in keys:
            entry = self.sim.configuration.get(k)
            if entry is None:
                unknown.append(k)
            elif k == "AuthorizationKey":  # write-only by the security whitepaper
                continue
            else:
                known.append({"key": k, "readonly": entry["readonly"], "value": entry["value"]})
        return call_result.GetConfiguration(configuration_key=known or None,
                                            unknown_key=unknown or None)

    @on(Action.clear_cache)
    async def on_clear_cache(self, **kw):
        self.sim.auth_cache.clear()
        return call_result.ClearCache(status="Accepted")

    @on(Action.trigger_message)
    async def on_trigger(self, requested_message, connector_id=None, **kw):
        if requested_message in ("BootNotification", "Heartbeat", "StatusNotification",
                                 "MeterValues"):
            return call_result.TriggerMessage(status="Accepted")
        return call_result.TriggerMessage(status="NotImplemented")

    @after(Action.trigger_message)
    async def after_trigger(self, requested_message, connector_id=None, **kw):
        await self.sim.triggered(requested_message, connector_id)

    @on(Action.data_transfer)
    async def on_data_transfer(self, vendor_id, **kw):
        return call_result.DataTransfer(status="UnknownVendorId")


class SimChargePoint:
    """An emulated charge point; see the module docstring."""

    def __init__(self, url, charger_id, password=None, connectors=1, sign=False,
                 meter_secret=None, signed_encoding="plain", ssl=None, register_wh=None,
                 connector_max_kw=22, vendor="EGS", model="SimCharger-1", serial=None,
                 backoff=(0.2, 30.0), response_timeout=10, heartbeat=True):
        self.url = url.rstrip("/")
        self.id = charger_id
        self.password = password
        self.ssl = ssl
        self.vendor, self.model = vendor, model
        self.serial = serial or f"SIM-{charger_id}"
        self.backoff = backoff
        self.response_timeout = response_timeout
        self.heartbeat_enabled = heartbeat
        rnd = random.Random(charger_id)
        self.connectors = {
            i: Connector(i, register_wh if register_wh is not None else rnd.randrange(10**6, 10**7),
                         int(connector_max_kw * 1000))
            for i in range(1, connectors + 1)}
        self.sign = sign
        self.signed_encoding = signed_encoding
        self.meter_secret = meter_secret
        self.meter_public_key = None
        self.seq = 0
        if sign:
            from protocol import p256
            if self.meter_secret is None:
                self.meter_secret = p256.generate_secret()
            self.meter_public_key = p256.public_key(self.meter_secret)
        self.configuration = {
            "HeartbeatInterval": {"value": "300", "readonly": False, "int": True},
            "MeterValueSampleInterval": {"value": "60", "readonly": False, "int": True},
            "NumberOfConnectors": {"value": str(connectors), "readonly": True},
            "AuthorizationKey": {"value": "", "readonly": False},
            "LocalAuthorizeOffline": {"value": "true", "readonly": False},
            "AllowOfflineTxForUnknownId": {"value": "true", "readonly": False},
            "StopTransactionOnInvalidId": {"value": "true", "readonly": False},
        }
        self.auth_cache = {}
        self.unlocked = []
        self.clock_offset = 0.0
        self.boot_status = None
        self.boots = 0
        self.resets = []
        self.last_error = None
        self.connected = asyncio.Event()
        self._network = asyncio.Event()
        self._network.set()
        self._queue = []
        self._queue_changed = asyncio.Event()
        self._cp = None
        self._ws = None
        self._runner = None
        self._closing = False
        self._need_boot = True

    # -------------------------------------------------------------- clock and meter

    def now(self):
        return clock.now() + self.clock_offset

    @staticmethod
    def remote_ev(id_tag):
        """The car a remote start charges when none is plugged in: a mid-size EV."""
        return EV(battery_kwh=60, max_kw=11, arrival_soc=0.3, id_tag=id_tag)

    def free_connector(self, connector_id=None):
        for c in self.connectors.values():
            if (connector_id in (None, c.id)) and c.tx is None and c.available:
                return c
        return None

    def connector_of(self, transaction_id):
        for c in self.connectors.values():
            if c.tx is not None and c.tx.id == transaction_id:
                return c
        return None

    def _ocmf(self, connector, context):
        from protocol import ocmf
        self.seq += 1
        record = ocmf.build(self.meter_secret, self.seq, connector.register_wh, 0, int(self.now()),
                            gi="EGS-SIM", gs=self.serial, gv="0.1", mv="EGS", mm="SIM-METER",
                            ms=f"{self.serial}-{connector.id}")
        if self.signed_encoding == "hex":      # OCPP 1.5 style: the record as hex
            return record.encode().hex()
        if self.signed_encoding == "oca":      # OCA application note JSON wrapper
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            der = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), self.meter_public_key).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            return json.dumps({
                "signedMeterData": base64.b64encode(record.encode()).decode(),
                "signingMethod": "ECDSA-secp256r1-SHA256", "encodingMethod": "OCMF",
                "publicKey": base64.b64encode(f"oca:base16:asn1:{der.hex()}".encode()).decode()})
        return record

    def sampled(self, connector, context):
        values = [{"value": str(connector.register_wh), "context": context,
                   "measurand": "Energy.Active.Import.Register", "unit": "Wh",
                   "location": "Outlet"}]
        if self.sign:
            values.append({"value": self._ocmf(connector, context), "context": context,
                           "format": "SignedData", "measurand": "Energy.Active.Import.Register",
                           "unit": "Wh", "location": "Outlet"})
        return [{"timestamp": iso(self.now()), "sampled_value": values}]

    # -------------------------------------------------------------- lifecycle

    async def start(self):
        self._closing = False
        self._runner = asyncio.create_task(self._run())
        return self

    async def wait_connected(self, timeout=10):
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def wait_idle(self, timeout=10):
        """Until every queued transaction message has been answered."""
        async def idle():
            while self._queue:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(idle(), timeout)

    async def close(self):
        self._closing = True
        self._network.set()
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        self.connected.clear()

    async def go_offline(self):
        """Network down: drop the connection and stop reconnecting until `go_online`."""
        self._network.clear()
        if self._ws is not None:
            await self._ws.close()
        while self.connected.is_set():
            await asyncio.sleep(0.01)

    def go_online(self):
        self._network.set()

    async def drop_connection(self):
        """A network blip: the socket dies, the charger reconnects by itself."""
        if self._ws is not None:
            self._ws.transport.abort()

    @property
    def online(self):
        return self.connected.is_set()

    def _headers(self):
        if not self.password:
            return None
        token = base64.b64encode(f"{self.id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _run(self):
        delay = self.backoff[0]
        while not self._closing:
            await self._network.wait()
            if self._closing:
                return
            try:
                ws = await connect(f"{self.url}/{self.id}", subprotocols=["ocpp1.6"],
                                   additional_headers=self._headers(), ssl=self.ssl,
                                   open_timeout=10, compression=None, ping_interval=None)
            except (OSError, InvalidHandshake, TimeoutError) as e:
                self.last_error = e
                log.info("%s: connect failed (%s), retry in %.1f s", self.id, e, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            self._ws = ws
            self._cp = _CP(self, ws)
            reader = asyncio.create_task(self._cp.start())
            helpers = []
            try:
                if self._need_boot:
                    await self._boot()
                self.connected.set()
                helpers.append(asyncio.create_task(self._flush()))
                if self.heartbeat_enabled:
                    helpers.append(asyncio.create_task(self._heartbeats()))
                await reader
            except (ConnectionClosed, TimeoutError, OCPPError) as e:
                self.last_error = e
            finally:
                self.connected.clear()
                for t in helpers + [reader]:
                    t.cancel()
                await asyncio.gather(*helpers, reader, return_exceptions=True)
                await ws.close()
                self._ws = None
                self._cp = None

    async def _boot(self):
        while True:
            res = await self._cp.call(call.BootNotification(
                charge_point_vendor=self.vendor, charge_point_model=self.model,
                charge_point_serial_number=self.serial, firmware_version="0.1.0"),
                suppress=False)
            self.boot_status = res.status
            self.boots += 1
            self.configuration["HeartbeatInterval"]["value"] = str(res.interval)
            if res.status == "Accepted":
                self._need_boot = False
                for c in self.connectors.values():
                    await self._cp.call(call.StatusNotification(
                        connector_id=c.id, error_code="NoError", status=c.status,
                        timestamp=iso(self.now())))
                return
            await asyncio.sleep(min(res.interval, 2) if res.interval > 0 else 2)

    async def _heartbeats(self):
        while True:
            await asyncio.sleep(max(1, int(self.configuration["HeartbeatInterval"]["value"])))
            try:
                await self._cp.call(call.Heartbeat(), suppress=False)
            except (TimeoutError, OCPPError) as e:  # one lost heartbeat does not end them
                log.info("%s: Heartbeat failed: %s", self.id, e)

    async def _flush(self):
        """Send queued transaction messages in order; an answer removes one from the queue."""
        while True:
            while self._queue:
                item = self._queue[0]
                payload = item.build()
                if payload is None:  # its transaction never got an id: nothing to send
                    self._queue.pop(0)
                    if not item.fut.done():
                        item.fut.set_result(None)
                    continue
                try:
                    result = await self._cp.call(payload, suppress=False)
                except TimeoutError:
                    # no answer in time, the connection still up: send the same message again
                    # (the CS answers a retried StartTransaction with the same transactionId)
                    log.info("%s: %s unanswered in %s s, retrying", self.id, item.action,
                             self.response_timeout)
                    continue
                except OCPPError as e:
                    # OCPP 1.6 §4.8: a CALLERROR to a transaction message is not retried forever
                    log.warning("%s: %s refused: %s", self.id, item.action, e)
                    self._queue.pop(0)
                    if not item.fut.done():
                        item.fut.set_exception(e)
                    continue
                self._queue.pop(0)
                if item.on_result is not None:
                    item.on_result(result)
                if not item.fut.done():
                    item.fut.set_result(result)
            self._queue_changed.clear()
            await self._queue_changed.wait()

    def _enqueue(self, action, build, on_result=None):
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(action, build, fut, on_result))
        self._queue_changed.set()
        return fut

    async def _call(self, payload):
        if self._cp is None or not self.connected.is_set():
            raise ConnectionError(f"{self.id} is not connected")
        return await self._cp.call(payload, suppress=False)

    # -------------------------------------------------------------- charger → CS

    async def heartbeat(self):
        return await self._call(call.Heartbeat())

    async def set_status(self, connector_id, status, error_code="NoError"):
        if connector_id:
            self.connectors[connector_id].status = status
        if not self.online:
            return  # a status is not a transaction message: the next boot reports it
        try:
            await self._call(call.StatusNotification(connector_id=connector_id,
                                                     error_code=error_code, status=status,
                                                     timestamp=iso(self.now())))
        except (ConnectionError, ConnectionClosed, TimeoutError) as e:
            log.info("%s: StatusNotification lost with the connection: %s", self.id, e)

    async def authorize(self, id_tag):
        res = await self._call(call.Authorize(id_tag=id_tag))
        status = res.id_tag_info["status"]
        self.auth_cache[id_tag] = status
        return status

    async def data_transfer(self, vendor_id, message_id=None, data=None):
        return await self._call(call.DataTransfer(vendor_id=vendor_id, message_id=message_id,
                                                  data=data))

    async def announce_meter_key(self):
        data = json.dumps({"meters": [
            {"connectorId": c, "meterSerialNumber": f"{self.serial}-{c}", "type": "SIGNATURE",
             "publicKey": self.meter_public_key.hex()} for c in self.connectors]})
        return await self.data_transfer("generalConfiguration", "setMeterConfiguration", data)

    async def start_transaction(self, connector_id, id_tag, ev=None, authorize=True):
        """Plug in and start. Online: Authorize first (unless told not to); offline: local
        decision (LocalAuthorizeOffline). → LocalTx (await `tx.started` for the CS's answer)."""
        c = self.connectors[connector_id]
        if c.tx is not None:
            raise RuntimeError(f"connector {connector_id} already in a transaction")
        if authorize and self.online:
            status = await self.authorize(id_tag)
            if status != "Accepted":
                return None
        c.ev = ev
        tx = LocalTx(connector_id, id_tag, c.register_wh, self.now())
        c.tx = tx
        c.status = "Charging"
        start_ts = iso(tx.start_epoch)

        def build():
            return call.StartTransaction(connector_id=connector_id, id_tag=id_tag,
                                         meter_start=tx.meter_start, timestamp=start_ts)

        def started(res):
            tx.id = res.transaction_id
            tx.id_tag_status = res.id_tag_info["status"]
            if not tx.started.done():
                tx.started.set_result(tx.id)

        _chain_error(self._enqueue("StartTransaction", build, started), tx.started)
        if self.online:
            await self.set_status(connector_id, "Charging")
        if self.sign:
            self._meter_values(c, "Transaction.Begin")
        return tx

    def _meter_values(self, c, context):
        tx = c.tx
        sampled = self.sampled(c, context)

        def build():
            if tx is not None and tx.id is None:
                return None
            return call.MeterValues(connector_id=c.id,
                                    transaction_id=tx.id if tx is not None else None,
                                    meter_value=sampled)
        if tx is None:  # not a transaction message: sent now or not at all
            if self.online:
                task = asyncio.ensure_future(self._call(build()))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return None
        return self._enqueue("MeterValues", build)

    async def deliver(self, connector_id, wh, seconds=None, meter_values=True):
        """Advance the register by `wh` (limited by the EV's need), as if charged over
        `seconds` (default: at the EV's or connector's power). → Wh delivered."""
        c = self.connectors[connector_id]
        if c.tx is None:
            raise RuntimeError(f"connector {connector_id} has no transaction")
        if c.ev is not None:
            wh = min(wh, c.ev.needed_wh)
            c.ev.soc_wh += wh
        power = min(c.max_w, c.ev.max_w if c.ev is not None else c.max_w)
        if seconds is None:
            seconds = wh * 3600 / power if power else 0
        c.register_wh += wh
        self.clock_offset += seconds
        if meter_values:
            self._meter_values(c, "Sample.Periodic")
        return wh

    async def stop_transaction(self, connector_id, reason="EVDisconnected", id_tag=None):
        """Stop and unplug. → LocalTx; `await tx.done` for the CS's answer."""
        c = self.connectors[connector_id]
        tx = c.tx
        if tx is None:
            raise RuntimeError(f"connector {connector_id} has no transaction")
        tx.stopped = True
        tx.meter_stop = c.register_wh
        stop_ts = iso(self.now())
        data = self.sampled(c, "Transaction.End") if self.sign else None
        tag = id_tag if id_tag is not None else tx.id_tag

        def build():
            if tx.id is None:
                return None
            return call.StopTransaction(meter_stop=tx.meter_stop, timestamp=stop_ts,
                                        transaction_id=tx.id, reason=reason, id_tag=tag,
                                        transaction_data=data)

        def stopped(res):
            tx.stop_answer = res
            if not tx.done.done():
                tx.done.set_result(res)

        _chain_error(self._enqueue("StopTransaction", build, stopped), tx.done)
        c.tx = None
        c.ev = None
        c.status = "Available" if c.available else "Unavailable"
        if self.online:
            await self.set_status(connector_id, c.status)
        return tx

    async def reset(self, kind):
        """Reset: stop running transactions (reason Hard/SoftReset), reconnect, boot again."""
        self.resets.append(kind)
        for c in self.connectors.values():
            if c.tx is not None:
                await self.stop_transaction(c.id, reason=f"{kind}Reset")
        await self.wait_idle(timeout=self.response_timeout)
        self._need_boot = True
        if self._ws is not None:
            await self._ws.close()

    async def triggered(self, message, connector_id):
        if message == "BootNotification":
            self._need_boot = True
            await self._boot()
        elif message == "Heartbeat":
            await self.heartbeat()
        elif message == "StatusNotification":
            for c in self.connectors.values():
                if connector_id in (None, 0, c.id):
                    await self.set_status(c.id, c.status)
        elif message == "MeterValues":
            for c in self.connectors.values():
                if connector_id in (None, 0, c.id):
                    self._meter_values(c, "Trigger")

    # -------------------------------------------------------------- EVs in real time

    async def serve_evs(self, id_tags, speed=1.0, meter_interval=60, ev_every=600, rnd=None,
                        until=None):
        """Run forever (or until the sim clock passes `until`): EVs arrive, charge, leave.

        Each idTag is one driver with one car: a tag in use on one connector is not
        presented on another. An Authorize that goes unanswered (central system frozen,
        connection lost) is retried with exponential backoff while the car waits; once
        the connection is gone the charger decides locally (LocalAuthorizeOffline)."""
        rnd = rnd or random.Random()
        loop = asyncio.get_running_loop()
        tick = max(0.05, meter_interval / speed)
        next_arrival = {c: self.now() + rnd.uniform(0, ev_every) for c in self.connectors}
        waiting = {}      # connector id → (ev, retry at (loop time), delay s)
        while until is None or self.now() < until:
            await asyncio.sleep(tick)
            if not clock.active():     # a shared simulated clock moves on by itself
                self.clock_offset += meter_interval - tick
            for c in self.connectors.values():
                if c.tx is None and c.id in waiting:
                    ev, retry_at, delay = waiting[c.id]
                    if loop.time() >= retry_at:
                        await self._arrive(c, ev, delay, waiting, next_arrival, rnd, ev_every)
                elif c.tx is None and self.now() >= next_arrival[c.id] and c.available:
                    busy = {x.tx.id_tag for x in self.connectors.values() if x.tx is not None}
                    busy |= {ev.id_tag for ev, _, _ in waiting.values()}
                    free = [t for t in id_tags if t not in busy]
                    if not free:       # every driver is charging elsewhere
                        next_arrival[c.id] = self.now() + rnd.uniform(0.5, 1.5) * ev_every
                        continue
                    ev = EV(battery_kwh=rnd.choice([40, 58, 77, 100]),
                            max_kw=rnd.choice([7.4, 11, 22]),
                            arrival_soc=rnd.uniform(0.1, 0.6), id_tag=rnd.choice(free))
                    await self._arrive(c, ev, None, waiting, next_arrival, rnd, ev_every)
                elif c.tx is not None and c.tx.id_tag_status not in (None, "Accepted"):
                    # StopTransactionOnInvalidId: the CS refused the idTag after the start
                    log.info("%s/%s: idTag %s, stopping", self.id, c.id, c.tx.id_tag_status)
                    await self.stop_transaction(c.id, reason="DeAuthorized")
                    next_arrival[c.id] = self.now() + rnd.uniform(0.5, 1.5) * ev_every
                elif c.tx is not None:
                    if c.ev is None:   # started without a car (in-process callers)
                        c.ev = self.remote_ev(c.tx.id_tag)
                    power = min(c.max_w, c.ev.max_w)
                    wh = await self.deliver(c.id, power * meter_interval // 3600,
                                            seconds=0, meter_values=True)
                    if c.ev.needed_wh == 0 or wh == 0:
                        log.info("%s/%s: %r full, leaves", self.id, c.id, c.ev)
                        await self.stop_transaction(c.id)
                        next_arrival[c.id] = self.now() + rnd.uniform(0.5, 1.5) * ev_every

    async def _arrive(self, c, ev, delay, waiting, next_arrival, rnd, ev_every):
        """A car at connector `c` presents its idTag; an unanswered Authorize is retried."""
        try:
            tx = await self.start_transaction(c.id, ev.id_tag, ev=ev, authorize=self.online)
        except (TimeoutError, ConnectionError, ConnectionClosed, OCPPError) as e:
            delay = max(1.0, self.backoff[0]) if delay is None else min(delay * 2,
                                                                         self.backoff[1])
            what = "unanswered" if isinstance(e, TimeoutError) else "failed"
            log.warning("%s/%s: Authorize %s (%s), retrying in %.1f s", self.id, c.id, what,
                        type(e).__name__, delay)
            waiting[c.id] = (ev, asyncio.get_running_loop().time() + delay, delay)
            return
        waiting.pop(c.id, None)
        log.info("%s/%s: %r arrives (tx %s)", self.id, c.id, ev,
                 "refused" if tx is None else "started")
        if tx is None:
            next_arrival[c.id] = self.now() + rnd.uniform(0.5, 1.5) * ev_every

    async def shutdown(self, reason="Other", timeout=5.0):
        """Switch off: a StopTransaction (`reason`) for every running transaction, up to
        `timeout` s for the central system to answer what is queued, then close. What is
        still unanswered then is logged (a real charger would send it after its reboot)."""
        for c in self.connectors.values():
            if c.tx is not None:
                log.info("%s/%s: switched off, stopping transaction %s", self.id, c.id, c.tx.id)
                await self.stop_transaction(c.id, reason=reason)
        try:
            await self.wait_idle(timeout)
        except TimeoutError:
            log.warning("%s: %d transaction message(s) unanswered at shutdown",
                        self.id, len(self._queue))
        await self.close()


def _ssl_context(url, cafile, insecure):
    if not url.startswith("wss://"):
        return None
    ctx = ssl_mod.create_default_context(cafile=cafile)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl_mod.CERT_NONE
    return ctx


@click.command("charger")
@click.option("--url", required=True, help="Central system base URL, e.g. ws://127.0.0.1:9000/ocpp")
@click.option("--id", "charger_id", required=True, help="chargeBoxId")
@click.option("--password-file", default=None,
              help="File holding the Basic auth password (security profile 1/2), - for stdin.")
@click.option("--password", default=None, help="The password itself (visible in shell history "
              "and ps; warned about).")
@click.option("--connectors", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option("--sign-meter-values", is_flag=True, help="Send OCMF-signed meter values.")
@click.option("--signed-encoding", type=click.Choice(["plain", "hex", "oca"]), default="plain",
              show_default=True, help="How SignedData values carry the OCMF record.")
@click.option("--meter-key-file", type=click.Path(dir_okay=False), default=None,
              help="Hex P-256 meter secret (created if missing); prints the public key.")
@click.option("--id-tag", "id_tags", multiple=True, default=("EV-0001",), show_default=True,
              help="idTags the arriving EVs present (repeatable).")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(0.1, 10000),
              help="Simulated seconds per real second.")
@click.option("--meter-interval", default=60, show_default=True, type=click.IntRange(1, 3600),
              help="Simulated seconds between MeterValues.")
@click.option("--ev-every", default=600, show_default=True, type=click.IntRange(1),
              help="Mean simulated seconds between EV arrivals per connector.")
@click.option("--duration", default=None, type=float, help="Stop after this many real seconds.")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA certificate for wss:// (profile 2).")
@click.option("--insecure", is_flag=True, help="wss:// without certificate verification.")
@click.option("--seed", type=int, default=None)
@click.option("--response-timeout", default=10.0, show_default=True,
              type=click.FloatRange(0.1, 600),
              help="Seconds to wait for the central system's answer to a call before retrying.")
@click.option("-v", "--verbose", is_flag=True)
def command(url, charger_id, password_file, password, connectors, sign_meter_values, signed_encoding,
            meter_key_file, id_tags,
            speed, meter_interval, ev_every, duration, cafile, insecure, seed, response_timeout,
            verbose):
    """An OCPP 1.6J charge point with EVs arriving, charging and leaving."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    if not url.startswith(("ws://", "wss://")):
        raise click.UsageError("--url must start with ws:// or wss://")
    password = secret_option(password, password_file, "--password")
    secret = None
    if meter_key_file:
        from pathlib import Path

        from protocol import p256
        p = Path(meter_key_file)
        if p.exists():
            try:
                secret = bytes.fromhex(p.read_text().strip())
            except ValueError:
                raise click.UsageError(f"{meter_key_file}: not a hex secret") from None
        else:
            secret = p256.generate_secret()
            p.write_text(secret.hex() + "\n")
            p.chmod(0o600)
        sign_meter_values = True

    async def main():
        cp = SimChargePoint(url, charger_id, password=password, connectors=connectors,
                            sign=sign_meter_values, meter_secret=secret,
                            signed_encoding=signed_encoding, ssl=_ssl_context(url, cafile, insecure),
                            response_timeout=response_timeout)
        if cp.meter_public_key is not None:
            click.echo(f"meter public key: {cp.meter_public_key.hex()}")
        # SIGTERM/SIGINT switch the charger off: running sessions are stopped first
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await cp.start()
        runner = asyncio.create_task(cp.serve_evs(list(id_tags), speed=speed,
                                                  meter_interval=meter_interval,
                                                  ev_every=ev_every, rnd=random.Random(seed)))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({runner, stopper}, timeout=duration,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            failed = runner.exception() if runner.done() and not runner.cancelled() else None
            runner.cancel()
            await asyncio.gather(runner, stopper, return_exceptions=True)
            await cp.shutdown(timeout=STOP_TIMEOUT_S)
        if failed is not None:      # never a silent exit: the cause, and status 1
            log.error("%s: the emulator failed: %s: %s", charger_id, type(failed).__name__,
                      failed, exc_info=failed)
            return 1
        return 0

    sys.exit(asyncio.run(main()))
