"""What the central system does with each OCPP 1.6 message a charger sends.

One method per action, marked `@on(Action.X)`, named and shaped like the spec:
it gets the payload as snake_case keyword arguments (already checked against the
schema by `frames.py`), hands the work to the store through the database worker,
and returns the answer. Decisions live in `ocpp_cs/store/`, not here.
"""
import json
import time

from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from ocpp_cs import store
from ocpp_cs.frames import FramedChargePoint

# OCPP 1.6 meter key announcement (OCA application note on Eichrecht/OCMF)
METER_CONFIG = ("generalConfiguration", "setMeterConfiguration")


class CSChargePoint(FramedChargePoint):
    """One connected charger as the central system sees it."""

    def __init__(self, charger_id, connection, cs, pending):
        super().__init__(charger_id, connection, cs.settings.call_timeout, cs.log, pending)
        self.cs = cs
        self.db = cs.db
        self.settings = cs.settings

    def frame_received(self):
        self.cs.seen[self.id] = time.time()

    # -------------------------------------------------------------- Core: charger → CS

    @on(Action.boot_notification)
    async def on_boot_notification(self, charge_point_vendor, charge_point_model, **kw):
        if self.pending:
            self.log.info("%s: BootNotification from unregistered charger: Pending", self.id)
            return call_result.BootNotification(current_time=store.iso(time.time()),
                                                interval=self.settings.heartbeat_interval,
                                                status="Pending")
        await self.db.run(store.record_boot, self.id, charge_point_vendor, charge_point_model,
                          kw.get("charge_point_serial_number") or kw.get("charge_box_serial_number"),
                          kw.get("firmware_version"))
        return call_result.BootNotification(current_time=store.iso(time.time()),
                                            interval=self.settings.heartbeat_interval,
                                            status="Accepted")

    @on(Action.heartbeat)
    async def on_heartbeat(self, **kw):
        return call_result.Heartbeat(current_time=store.iso(time.time()))

    @on(Action.status_notification)
    async def on_status_notification(self, connector_id, error_code, status, **kw):
        await self.db.run(store.record_status, self.id, connector_id, status, error_code,
                          kw.get("info"), kw.get("vendor_error_code"), kw.get("timestamp"))
        self.cs.connector_status[(self.id, connector_id)] = status
        return call_result.StatusNotification()

    @on(Action.authorize)
    async def on_authorize(self, id_tag, **kw):
        status, _, reason = await self.db.run(store.authorize, id_tag, self.settings, self.id)
        if status != "Accepted":
            self.log.info("%s: Authorize %s → %s (%s)", self.id, id_tag, status, reason)
        return call_result.Authorize(id_tag_info={"status": status})

    @on(Action.start_transaction)
    async def on_start_transaction(self, connector_id, id_tag, meter_start, timestamp, **kw):
        tx_id, info = await self.db.run(store.start_transaction, self.id, connector_id, id_tag,
                                        meter_start, timestamp, self.settings,
                                        kw.get("reservation_id"))
        self.log.info("%s: StartTransaction connector %s idTag %s → %s %s", self.id,
                      connector_id, id_tag, tx_id, info["status"])
        return call_result.StartTransaction(transaction_id=tx_id, id_tag_info=info)

    @on(Action.meter_values)
    async def on_meter_values(self, connector_id, meter_value, **kw):
        await self.db.run(store.record_meter_values, self.id, connector_id,
                          kw.get("transaction_id"), snake_to_camel_case(meter_value),
                          "MeterValues")
        return call_result.MeterValues()

    @on(Action.stop_transaction)
    async def on_stop_transaction(self, meter_stop, timestamp, transaction_id, **kw):
        data = kw.get("transaction_data")
        info = await self.db.run(store.stop_transaction, self.id, transaction_id, meter_stop,
                                 timestamp, self.settings, self.cs.price_source,
                                 kw.get("reason"), kw.get("id_tag"),
                                 snake_to_camel_case(data) if data else None)
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.data_transfer)
    async def on_data_transfer(self, vendor_id, **kw):
        message_id = kw.get("message_id")
        data = kw.get("data")
        if (vendor_id, message_id) == METER_CONFIG:
            try:
                meters = json.loads(data)["meters"]
                keys = {str(m.get("connectorId", 0)): str(m["publicKey"]) for m in meters}
            except (TypeError, ValueError, KeyError, AttributeError, RecursionError):
                return call_result.DataTransfer(status="Rejected", data="expected {\"meters\": "
                                                "[{\"connectorId\", \"publicKey\"}]}")
            await self.db.run(store.record_announced_keys, self.id, keys)
            return call_result.DataTransfer(status="Accepted")
        await self.db.run(store.event, self.id, "data_transfer", vendor_id=vendor_id,
                          message_id=message_id, data=(data or "")[:1000])
        if vendor_id == METER_CONFIG[0]:
            return call_result.DataTransfer(status="UnknownMessageId")
        return call_result.DataTransfer(status="UnknownVendorId")
