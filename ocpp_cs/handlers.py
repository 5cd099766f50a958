"""What the central system does with each OCPP 1.6 message a charger sends.

One method per action, marked `@on(Action.X)`, named and shaped like the spec:
it gets the payload as snake_case keyword arguments (already checked against the
schema by `frames.py`), hands the work to the store through the database worker,
and returns the answer. Decisions live in `ocpp_cs/store/`, not here.
idTags appear in logs masked (`mask_id_tag`); MeterValues rows are rationed per
charger (`WriteQuota`): beyond the quota they are answered but not stored.
"""
import json
import time

from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from ocpp_cs import store
from ocpp_cs.frames import FramedChargePoint, mask_id_tag

# OCPP 1.6 meter key announcement (OCA application note on Eichrecht/OCMF)
METER_CONFIG = ("generalConfiguration", "setMeterConfiguration")
# a charger over its meter value quota is written as a security event at most this often
QUOTA_EVENT_PERIOD_S = 3600.0


class WriteQuota:
    """Rows a charger may have stored per minute (fixed one-minute windows).

    `admit(charger_id, rows, now)` → (stored?, event detail or None): the detail
    (rows dropped since the last event) is returned at the first refusal, then at
    most once per QUOTA_EVENT_PERIOD_S. One small entry per registered charger.
    """

    def __init__(self, per_minute):
        self.per_minute = per_minute
        self.state = {}    # charger id -> [window start, rows in it, dropped, last event at]
        self.dropped = 0

    def admit(self, charger_id, rows, now):
        st = self.state.setdefault(charger_id, [now, 0, 0, None])
        if now - st[0] >= 60:
            st[0], st[1] = now, 0
        if st[1] + rows <= self.per_minute:
            st[1] += rows
            return True, None
        st[2] += rows
        self.dropped += rows
        if st[3] is not None and now - st[3] < QUOTA_EVENT_PERIOD_S:
            return False, None
        detail = {"rows_dropped": st[2], "per_minute": self.per_minute}
        st[2], st[3] = 0, now
        return False, detail


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
        status, _, reason = await self.db.run(store.authorize_for, self.id, id_tag,
                                              self.settings)
        if status != "Accepted":
            self.log.info("%s: Authorize %s → %s (%s)", self.id, mask_id_tag(id_tag), status,
                          reason)
        return call_result.Authorize(id_tag_info={"status": store.wire_status(status)})

    @on(Action.start_transaction)
    async def on_start_transaction(self, connector_id, id_tag, meter_start, timestamp, **kw):
        tx_id, info = await self.db.run(store.start_transaction, self.id, connector_id, id_tag,
                                        meter_start, timestamp, self.settings,
                                        kw.get("reservation_id"))
        self.log.info("%s: StartTransaction connector %s idTag %s → %s %s", self.id,
                      connector_id, mask_id_tag(id_tag), tx_id, info["status"])
        return call_result.StartTransaction(transaction_id=tx_id, id_tag_info=info)

    @on(Action.meter_values)
    async def on_meter_values(self, connector_id, meter_value, **kw):
        rows = sum(len(mv.get("sampled_value") or ()) for mv in meter_value)
        stored, detail = self.cs.meter_quota.admit(self.id, rows, time.monotonic())
        if not stored:
            if detail is not None:
                self.log.warning("%s: meter values over %s rows a minute: not stored", self.id,
                                 self.settings.meter_values_per_min)
                await self.db.run(store.event, self.id, "security",
                                  what="meter values over quota: answered, not stored", **detail)
            return call_result.MeterValues()
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
